"""Hostile and malformed images: each is refused with a clear error, leaves no
environment (named or not) and no work files behind, and writes nothing outside the
store. Real skopeo and umoci, on images the tests build byte by byte."""

from __future__ import annotations

import gzip
import io
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from crucible.core.errors import PayloadTooLarge
from crucible.environments.store import EnvironmentStore, ImageRejected
from support.oci_images import (
    Entry,
    Image,
    directory,
    file,
    hardlink,
    layer_tar,
    sha256,
    symlink,
    write_docker_archive,
    write_oci_layout,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = secrets.token_hex(4)


@pytest.fixture
def store(tmp_path: Path) -> EnvironmentStore:
    return EnvironmentStore(tmp_path / "environments", max_bytes=64 << 20)


def assert_nothing_left(store: EnvironmentStore) -> None:
    assert store.all() == []
    for part in ("sha256", "names", "tmp"):
        assert list((store.root / part).iterdir()) == [], part
    # Nothing escaped: no file carrying this run's token anywhere a layer aimed at.
    for where in (Path("/tmp"), store.root.parent, Path("/")):
        assert not [p for p in where.iterdir() if TOKEN in p.name], where


def one_layer(*entries: Entry) -> Image:
    return Image([layer_tar([directory("etc"), *entries])])


HOSTILE: dict[str, tuple[Callable[[], Image], str]] = {
    "dot-dot": (lambda: one_layer(file(f"../../escape-{TOKEN}", "x")), "path traversal"),
    "dot-dot-inside": (
        lambda: one_layer(file(f"etc/../../escape-{TOKEN}", "x")),
        "path traversal",
    ),
    "absolute": (lambda: one_layer(file(f"/tmp/abs-{TOKEN}", "x")), "absolute path"),
    "char-device": (lambda: one_layer(Entry("etc/mem", "chr")), "device node"),
    "block-device": (lambda: one_layer(Entry("etc/sda", "blk")), "device node"),
    "hard-link-out": (
        lambda: one_layer(hardlink("etc/passwd", "../../../etc/passwd")),
        "points outside",
    ),
    "write-through-a-symlink-of-an-earlier-layer": (
        lambda: Image(
            [
                layer_tar([symlink("lnk", f"/tmp/victim-{TOKEN}")]),
                layer_tar([file("lnk/owned", "x")]),
            ]
        ),
        "writes through the symlink",
    ),
    "write-through-a-symlink-of-the-same-layer": (
        lambda: one_layer(symlink("etc/x", "/etc"), file("etc/x/passwd", "root::0:0::/:/bin/sh")),
        "writes through the symlink",
    ),
}


@pytest.mark.parametrize("form", ["oci-layout", "docker-archive"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_layer_is_refused(
    store: EnvironmentStore, tmp_path: Path, case: str, form: str
) -> None:
    make, message = HOSTILE[case]
    image = make()
    source = (
        write_oci_layout(image, tmp_path / "img")
        if form == "oci-layout"
        else write_docker_archive(image, tmp_path / "img.tar")
    )
    with pytest.raises(ImageRejected, match=message):
        store.import_image(source, "hostile")
    assert_nothing_left(store)


def test_a_tampered_layer_in_a_docker_archive_is_refused(
    store: EnvironmentStore, tmp_path: Path
) -> None:
    honest = layer_tar([directory("etc"), file("etc/motd", "honest\n")])
    evil = layer_tar([directory("etc"), file("etc/motd", "evil!!\n")])
    image = Image([honest])
    path = write_docker_archive(image, tmp_path / "img.tar")
    # Same length, other bytes: the layer no longer matches the config's diff_id.
    data = path.read_bytes().replace(honest, evil)
    assert data != path.read_bytes()
    path.write_bytes(data)
    with pytest.raises(ImageRejected, match=r"(?i)diff_id|digest"):
        store.import_image(path, "tampered")
    assert_nothing_left(store)


def test_a_blob_not_matching_its_digest_is_refused(store: EnvironmentStore, tmp_path: Path) -> None:
    image = one_layer(file("etc/motd", "hello\n"))
    layout = write_oci_layout(image, tmp_path / "img")
    _manifest, _config, (layer,) = image.blobs()
    blob = layout / "blobs" / "sha256" / sha256(layer).removeprefix("sha256:")
    blob.write_bytes(gzip.compress(layer_tar([file("etc/motd", "other\n")]), mtime=0))
    with pytest.raises(ImageRejected, match=r"(?i)digest"):
        store.import_image(layout, "tampered")
    assert_nothing_left(store)


def test_a_truncated_archive_is_refused(store: EnvironmentStore, tmp_path: Path) -> None:
    image = one_layer(file("etc/big", secrets.token_bytes(200_000)))
    path = write_docker_archive(image, tmp_path / "img.tar")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageRejected):
        store.import_image(path, "truncated")
    assert_nothing_left(store)


def test_something_else_than_an_image_is_refused(store: EnvironmentStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(secrets.token_bytes(4096))
    with pytest.raises(ImageRejected, match="not a readable tar"):
        store.import_image(junk, "junk")
    with pytest.raises(ImageRejected, match="not an OCI image layout"):
        store.import_image(tmp_path, "a-directory")
    assert_nothing_left(store)


def test_an_archive_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "environments", max_bytes=100_000)
    image = one_layer(file("etc/big", secrets.token_bytes(200_000)))
    path = write_docker_archive(image, tmp_path / "img.tar")
    with pytest.raises(PayloadTooLarge, match="larger than the limit"):
        store.import_image(path, "big")
    with pytest.raises(PayloadTooLarge, match="larger than the limit"):  # streamed (stdin)
        store.import_image(io.BytesIO(path.read_bytes()), "big")
    assert_nothing_left(store)


def test_a_small_archive_that_unpacks_past_the_limit_is_refused(tmp_path: Path) -> None:
    """A decompression bomb: 64 MiB of zeros gzip to 64 KiB; the limit is 16 MiB."""
    store = EnvironmentStore(tmp_path / "environments", max_bytes=16 << 20)
    image = one_layer(file("etc/zeros", bytes(64 << 20)))
    layout = write_oci_layout(image, tmp_path / "img")
    assert sum(f.stat().st_size for f in layout.rglob("*") if f.is_file()) < 1 << 20
    with pytest.raises(PayloadTooLarge, match="unpacks to more than"):
        store.import_image(layout, "bomb")
    assert_nothing_left(store)


def test_an_image_from_a_stream_is_imported(store: EnvironmentStore, tmp_path: Path) -> None:
    image = one_layer(file("etc/motd", "streamed\n"))
    path = write_docker_archive(image, tmp_path / "img.tar")
    env = store.import_image(io.BytesIO(path.read_bytes()), "test/streamed:1")
    assert (env.root / "etc/motd").read_text() == "streamed\n"
    assert env.source == "docker-archive" and store.get("test/streamed:1").digest == env.digest
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("name", ["host", "UPPER", "../x", "a" * 300, "", "x:"])
def test_bad_names_are_refused(store: EnvironmentStore, tmp_path: Path, name: str) -> None:
    path = write_docker_archive(one_layer(), tmp_path / "img.tar")
    with pytest.raises(Exception, match="invalid environment name"):
        store.import_image(path, name)
    assert_nothing_left(store)


def test_replacing_a_name_drops_the_root_nothing_else_names(
    store: EnvironmentStore, tmp_path: Path
) -> None:
    first = store.import_image(
        write_docker_archive(one_layer(file("etc/v", "1")), tmp_path / "1.tar"), "test/x"
    )
    second = store.import_image(
        write_docker_archive(one_layer(file("etc/v", "2")), tmp_path / "2.tar"), "test/x"
    )
    assert first.digest != second.digest and store.get("test/x").digest == second.digest
    assert not first.root.exists() and (second.root / "etc/v").read_text() == "2"


def test_the_sweep_keeps_an_import_in_progress(store: EnvironmentStore) -> None:
    import os

    fresh, stale = store.root / "tmp" / "fresh", store.root / "tmp" / "stale"
    fresh.mkdir()
    stale.mkdir()
    os.utime(stale, (0, 0))
    store.sweep()
    assert fresh.exists() and not stale.exists()
