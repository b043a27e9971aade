"""Pulling environments from registries: ``EnvironmentStore.pull_image`` with the real
skopeo and umoci, against real registries on 127.0.0.1 (Debian's ``docker-registry``,
tests/support/registry_fixtures.py) seeded with the tests' own images; nothing leaves the
machine (the fixture's proxy refuses anything not on loopback)."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from crucible.core.errors import ImageRejected, InvalidSubmission, PayloadTooLarge, PullFailed
from crucible.environments.registry import host_architecture
from crucible.environments.store import EnvironmentStore
from support.oci_images import Image, file, layer_tar, sha256
from support.registry_fixtures import Registry, unique_image

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="needs skopeo and umoci"
)


@pytest.fixture
def store(tmp_path: Path) -> EnvironmentStore:
    return EnvironmentStore(tmp_path / "environments")


def repo() -> str:
    return f"test/app-{secrets.token_hex(4)}"


def untouched(store: EnvironmentStore) -> None:
    """A refused pull left nothing: no name, no root, nothing in tmp."""
    assert store.all() == []
    assert not list((store.root / "sha256").iterdir())
    assert not list((store.root / "tmp").iterdir())


def test_pull_by_tag(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    image = unique_image("by tag")
    name = f"{registry.host}/{repo()}:1"
    digest = registry.push(image, name.split("/", 1)[1], tmp_path)
    env = store.pull_image(name)
    assert env.name == name  # the reference as given (no docker.io to leave out)
    assert (env.source, env.ref, env.manifest_digest) == ("registry", name, digest)
    assert (env.root / "etc/pulled").read_text().startswith("by tag ")
    assert env.languages == ["python"] and env.env == image.env
    # The record survives a fresh look (it is kept with the name).
    again = EnvironmentStore(store.root).get(name)
    assert (again.source, again.ref, again.manifest_digest) == ("registry", name, digest)
    assert again.public()["manifest_digest"] == digest
    assert not list((store.root / "tmp").iterdir())


def test_pull_by_digest_and_a_name_of_ones_own(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    image = unique_image("by digest")
    path = repo()
    digest = registry.push(image, f"{path}:1", tmp_path)
    pinned = f"{registry.host}/{path}@{digest}"
    env = store.pull_image(pinned)
    assert env.name == pinned and env.manifest_digest == digest and env.ref == pinned
    mine = store.pull_image(pinned, "mine:v1")
    assert mine.name == "mine:v1" and mine.digest == env.digest  # one root, two names
    # A tag and a digest: the digest wins (as for Docker), whatever the tag names.
    other = registry.push(unique_image("moved"), f"{path}:1", tmp_path)
    assert other != digest
    both = store.pull_image(f"{registry.host}/{path}:1@{digest}", "both")
    assert both.digest == env.digest and both.manifest_digest == digest


def test_a_wrong_digest_is_refused(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    path = repo()
    registry.push(unique_image(), f"{path}:1", tmp_path)
    wrong = "sha256:" + hashlib.sha256(b"not this image").hexdigest()
    for ref in (f"{registry.host}/{path}@{wrong}", f"{registry.host}/{path}:1@{wrong}"):
        with pytest.raises(PullFailed, match="manifest unknown"):
            store.pull_image(ref, "wrong")
    with pytest.raises(PullFailed, match="manifest unknown"):
        store.pull_image(f"{registry.host}/{path}:nope")
    untouched(store)


def test_a_tampered_blob_is_refused(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    image = unique_image("tampered layer")
    path = repo()
    registry.push(image, f"{path}:1", tmp_path)
    _manifest, _config, [layer] = image.blobs()
    blob = registry.blob(sha256(layer))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same length: only the digest tells
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageRejected, match="Digest did not match"):
        store.pull_image(f"{registry.host}/{path}:1")
    untouched(store)


def test_a_tampered_manifest_is_refused(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    path = repo()
    digest = registry.push(unique_image("tampered manifest"), f"{path}:1", tmp_path)
    blob = registry.blob(digest)
    manifest = json.loads(blob.read_bytes())
    manifest["annotations"] = {"evil": "yes"}  # still a valid manifest, other bytes
    blob.write_bytes(json.dumps(manifest).encode())
    # Pinned: the registry's answer is not what the digest names.
    with pytest.raises(ImageRejected, match=f"not {digest}"):
        store.pull_image(f"{registry.host}/{path}@{digest}", "pinned")
    # By tag: the manifest served names a digest the registry does not know.
    with pytest.raises(PullFailed, match="manifest unknown"):
        store.pull_image(f"{registry.host}/{path}:1", "tagged")
    untouched(store)


def test_credentials_from_the_auth_file(
    store: EnvironmentStore,
    auth_registry: Registry,
    registry_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = repo()
    digest = auth_registry.push(unique_image("private"), f"{path}:1", tmp_path)
    ref = f"{auth_registry.host}/{path}:1"
    with pytest.raises(PullFailed, match="unauthorized"):
        store.pull_image(ref)
    untouched(store)
    wrong = Registry(auth_registry.host, auth_registry.storage, auth_registry.proc,
                     auth_registry.log, "alice", "not-the-password")  # fmt: skip
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(wrong.auth_file(tmp_path / "wrong.json")))
    with pytest.raises(PullFailed, match="unauthorized"):
        store.pull_image(ref)
    untouched(store)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_registry.auth_file(tmp_path / "auth.json")))
    env = store.pull_image(ref)
    assert env.manifest_digest == digest and (env.root / "etc/pulled").is_file()


def test_a_mirror_in_registries_conf(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    """``docker.io/library/NAME:TAG`` comes from the mirror registries.conf names for
    docker.io (the fixture's proxy refuses docker.io itself)."""
    short = f"crucible-mirror-{secrets.token_hex(4)}"
    digest = registry.push(unique_image("mirrored"), f"library/{short}:1", tmp_path)
    env = store.pull_image(f"docker.io/library/{short}:1")
    assert env.name == f"{short}:1"  # as Docker shows it
    assert env.ref == f"docker.io/library/{short}:1" and env.manifest_digest == digest
    assert (env.root / "etc/pulled").read_text().startswith("mirrored ")
    # The short form is the same image; the mirror lacking one, docker.io is tried
    # (through the fixture's dead proxy: refused on this machine, nothing sent out).
    assert store.pull_image(f"{short}:1").digest == env.digest
    with pytest.raises(PullFailed, match="Mirrors also failed"):
        store.pull_image(f"{short}:missing")


def test_bad_references_change_nothing(store: EnvironmentStore) -> None:
    for ref in ("", "Upper", "a b", "-rf", "oci:/tmp/layout", "x@sha256:12", "x:"):
        with pytest.raises(InvalidSubmission, match="invalid image reference") as caught:
            store.pull_image(ref)
        assert caught.value.field == "ref"
    with pytest.raises(InvalidSubmission, match="invalid environment name"):
        store.pull_image("python:3", "Bad Name")
    with pytest.raises(InvalidSubmission, match="invalid environment name"):
        store.pull_image("python:3", "host")
    untouched(store)


def test_the_size_limit_applies_before_the_download(
    registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    store = EnvironmentStore(tmp_path / "environments", max_bytes=100)
    path = repo()
    registry.push(unique_image("too big"), f"{path}:1", tmp_path)
    with pytest.raises(PayloadTooLarge, match="over the limit of 100 bytes"):
        store.pull_image(f"{registry.host}/{path}:1")
    untouched(store)


def _push_index(registry: Registry, images: dict[str, Image], path: str, work: Path) -> str:
    """A multi-platform image (an OCI index of one image per architecture), pushed
    with ``skopeo copy --all``; the index's digest."""
    layout = work / f"index-{secrets.token_hex(4)}"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    entries = []
    for arch, image in images.items():
        manifest, config, stored = image.blobs()
        for blob in (manifest, config, *stored):
            (blobs / sha256(blob).removeprefix("sha256:")).write_bytes(blob)
        entries.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest), "size": len(manifest),
            "platform": {"os": "linux", "architecture": arch},
        })  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }).encode()  # fmt: skip
    (blobs / sha256(index).removeprefix("sha256:")).write_bytes(index)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(index),
        "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }]}))  # fmt: skip
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--dest-tls-verify=false",
         f"oci:{layout}:latest", f"docker://{registry.host}/{path}"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return sha256(index)


def test_a_multi_platform_image_gives_this_hosts(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    ours, theirs = host_architecture(), "s390x" if host_architecture() != "s390x" else "amd64"
    path = repo()
    index = _push_index(
        registry,
        {theirs: unique_image("theirs"), ours: unique_image("ours")},
        f"{path}:1",
        tmp_path,
    )
    env = store.pull_image(f"{registry.host}/{path}:1")
    assert (env.root / "etc/pulled").read_text().startswith("ours ")
    assert env.manifest_digest == index  # pinned by what the tag names: the index
    only_theirs = Image([layer_tar([file("etc/pulled", "theirs only")])])
    _push_index(registry, {theirs: only_theirs}, f"{path}:2", tmp_path)
    with pytest.raises(ImageRejected, match=f"no image for linux/{ours}"):
        store.pull_image(f"{registry.host}/{path}:2", "nope")
