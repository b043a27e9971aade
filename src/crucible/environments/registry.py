"""Images in a registry: references, and what skopeo tells of them before a pull.

``crucible env pull REF`` (:meth:`crucible.environments.store.EnvironmentStore.pull_image`)
takes a Docker reference: ``[host[:port]/]path[:tag][@sha256:hex]``, normalised as
Docker does (no host: ``docker.io``; one path component on ``docker.io``: ``library/``).
A digest wins over a tag, as for Docker and podman: ``python:3.12@sha256:…`` is the
image of that digest, whatever the tag names today.

Everything about reaching the registry is containers/image's (skopeo's), configured
the standard way and never overridden here: credentials from ``REGISTRY_AUTH_FILE``,
else ``${XDG_RUNTIME_DIR}/containers/auth.json``, ``~/.config/containers/auth.json``,
``~/.docker/config.json``; mirrors, blocked and insecure registries from
``/etc/containers/registries.conf`` (and ``registries.conf.d``); signature
requirements from ``/etc/containers/policy.json`` when there is one. The only thing
added: ``CONTAINERS_REGISTRIES_CONF`` (the containers tools' variable for another
registries.conf) is handed to skopeo as ``--registries-conf``, because Debian 12's
skopeo 1.9 does not read the variable itself (later ones do, the same way).

A pull is pinned before anything is downloaded: ``skopeo inspect --raw`` fetches the
manifest the reference names and its sha256 is the digest the environment records
(a reference with a digest must match it: a registry answering with other bytes is
refused); for an index (a multi-platform image) this host's entry is chosen and
fetched by digest the same way. Its declared sizes (which containers/image holds the
blobs to) must fit the store's limit. Only then ``skopeo copy`` fetches exactly that
manifest by digest, verifying every blob against its digest as it copies, so a tag
moved meanwhile cannot change what is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.core.errors import ImageRejected, InvalidSubmission, PayloadTooLarge, PullFailed
from crucible.environments.tools import run_tool

DOCKER_HUB = "docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]{1,5})?"
)
_REMAINDER = re.compile(
    rf"(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}  # fmt: skip
# containers/image's words when what it fetched is not what the digest names.
_MISMATCH = re.compile(r"did not match|does not match|size mismatch", re.IGNORECASE)


@dataclass(frozen=True)
class ImageRef:
    """A normalised Docker reference."""

    domain: str  # docker.io, ghcr.io, 127.0.0.1:5000
    path: str  # library/python
    tag: str | None = None
    digest: str | None = None  # sha256:<hex>

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        return (
            self.repository
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    def familiar(self) -> str:
        """The reference as Docker shows it: ``docker.io/`` and ``library/`` left out
        (``python:3.12-slim``), any other host kept; the tag and digest as given."""
        repo = self.repository
        if self.domain == DOCKER_HUB:
            repo = self.path.removeprefix("library/")
        return repo + str(self).removeprefix(self.repository)

    def fetched(self) -> str:
        """What to ask the registry for: by digest when there is one (skopeo takes no
        reference with both), else by tag (none: ``latest``, the registry's default)."""
        if self.digest:
            return self.at(self.digest)
        return self.repository + (f":{self.tag}" if self.tag else "")

    def at(self, digest: str) -> str:
        """``repository@digest``: the reference pinned (the tag dropped)."""
        return f"{self.repository}@{digest}"


def parse_ref(text: str) -> ImageRef:
    """Raises InvalidSubmission (field ``ref``) for anything but a Docker reference
    (a leading ``docker://`` is allowed; no other transport is)."""
    raw = text.strip().removeprefix("docker://")
    domain, _, rest = raw.partition("/")
    # Docker's rule: the first component is a host when it has a '.' or a ':', is
    # localhost, or has upper case (a path component never has).
    is_host = any(c in domain for c in ".:") or domain == "localhost"
    if rest and (is_host or domain != domain.lower()):
        if not _DOMAIN.fullmatch(domain):
            raise _bad_ref(text, f"{domain!r} is not a registry host")
    else:
        domain, rest = DOCKER_HUB, raw
    match = _REMAINDER.fullmatch(rest)
    if match is None or len(raw) > 255:
        raise _bad_ref(text, "expected [host[:port]/]name[:tag][@sha256:<64 hex digits>]")
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    path = match["path"]
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageRef(domain, path, match["tag"], match["digest"])


def _bad_ref(text: str, why: str) -> InvalidSubmission:
    return InvalidSubmission(f"invalid image reference {text!r}: {why}", field="ref")


def default_name(ref: ImageRef) -> str:
    """The environment a pull makes when no name is given: the reference as Docker
    shows it (:meth:`ImageRef.familiar`)."""
    return ref.familiar()


# -- skopeo -----------------------------------------------------------------------------


def _policy_files() -> list[Path]:
    home = Path(os.environ.get("HOME", "/root"))
    return [home / ".config/containers/policy.json", Path("/etc/containers/policy.json")]


def skopeo_argv(*args: str) -> list[str]:
    """``skopeo`` with the global options of a registry command (module docstring)."""
    argv = ["skopeo"]
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if conf:
        argv += ["--registries-conf", conf]
    # An operator's signature policy applies; without one skopeo would refuse to run,
    # and the digests are checked all the same.
    if not any(p.is_file() for p in _policy_files()):
        argv.append("--insecure-policy")
    return [*argv, *args]


def skopeo(*args: str, what: str, timeout: float) -> bytes:
    """A registry command; PullFailed when the registry cannot be read (unreachable,
    unauthorised, no such image), ImageRejected when what it sent does not match its
    digest."""
    try:
        return run_tool(skopeo_argv(*args), what, failure=PullFailed, timeout=timeout)
    except PullFailed as exc:
        if _MISMATCH.search(str(exc)):
            raise ImageRejected(str(exc)) from None
        raise


def skopeo_inspect_raw(reference: str, *, timeout: float) -> bytes:
    return skopeo(
        "inspect", "--raw", f"docker://{reference}",
        what=f"cannot read {reference} from its registry", timeout=timeout,
    )  # fmt: skip


def skopeo_copy(reference: str, layout: Path, tag: str, *, timeout: float) -> None:
    """Copy the image ``reference`` (pinned by digest) into the OCI layout ``layout``."""
    skopeo(
        "copy", "--quiet", f"docker://{reference}", f"oci:{layout}:{tag}",
        what=f"cannot pull {reference}", timeout=timeout,
    )  # fmt: skip


# -- pinning a reference ----------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """What a pull of ``ref`` will import."""

    ref: ImageRef
    digest: str  # of the manifest (or index) ``ref`` names: what the pull is pinned by
    instance: str  # the image manifest imported: ``digest``, or this host's entry of an index
    size: int  # compressed bytes (config and layers), as the manifest declares them

    @property
    def source(self) -> str:
        """The reference to copy: the image manifest, by digest."""
        return self.ref.at(self.instance)


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _manifest(raw: bytes, ref: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ImageRejected(f"the registry's manifest of {ref} is not JSON") from None
    if not isinstance(doc, dict):
        raise ImageRejected(f"the registry's manifest of {ref} is not a JSON object")
    return doc


def host_architecture() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


def choose_instance(index: dict[str, Any], ref: str, arch: str) -> str:
    """This host's image (linux/``arch``) in a multi-platform index; its digest."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    ours = [
        m for m in entries
        if (m.get("platform") or {}).get("os") == "linux"
        and (m.get("platform") or {}).get("architecture") == arch
    ]  # fmt: skip
    # arm64's variant is v8 or unset; prefer those (as containers/image does).
    ours.sort(key=lambda m: (m.get("platform") or {}).get("variant") not in (None, "v8"))
    if not ours:
        have = sorted(
            "{}/{}".format(*(str((m.get("platform") or {}).get(k)) for k in ("os", "architecture")))
            for m in entries
        )
        raise ImageRejected(f"{ref} has no image for linux/{arch} (it has: {', '.join(have)})")
    return str(ours[0].get("digest"))


def resolve(ref: ImageRef, *, max_bytes: int, timeout: float) -> Resolved:
    """Pin ``ref`` (module docstring). Raises PullFailed (the registry cannot be read),
    ImageRejected (a digest that does not match, no image for this host, not an image
    manifest), PayloadTooLarge (over ``max_bytes`` as declared)."""
    raw = skopeo_inspect_raw(ref.fetched(), timeout=timeout)
    digest = instance = _digest(raw)
    if ref.digest is not None and digest != ref.digest:
        raise ImageRejected(
            f"the registry answered {ref} with a manifest of digest {digest}, not {ref.digest}"
        )
    doc = _manifest(raw, str(ref))
    if doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
        instance = choose_instance(doc, str(ref), host_architecture())
        raw = skopeo_inspect_raw(ref.at(instance), timeout=timeout)
        if _digest(raw) != instance:
            raise ImageRejected(
                f"the registry's manifest {ref.at(instance)} does not match its digest"
            )
        doc = _manifest(raw, ref.at(instance))
    layers, config = doc.get("layers"), doc.get("config")
    if (
        doc.get("schemaVersion") != 2
        or not isinstance(layers, list)
        or not isinstance(config, dict)
    ):
        raise ImageRejected(
            f"{ref} is not an OCI or Docker schema 2 image manifest (schema 1 is not supported)"
        )
    try:
        size = int(config.get("size", 0)) + sum(int(layer.get("size", 0)) for layer in layers)
    except (TypeError, ValueError, AttributeError):
        raise ImageRejected(f"the manifest of {ref} has unreadable sizes") from None
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{ref} is {size} bytes (compressed), over the limit of {max_bytes} bytes"
        )
    return Resolved(ref, digest, instance, size)
