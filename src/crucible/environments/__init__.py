"""Environments: the root file systems runs and sandboxes use. The image store with
import and pull (:mod:`.store`), builds with mmdebstrap/buildah (:mod:`.build`) and
content digests of trees (:mod:`.treedigest`). Above the domain, below the services."""
