"""``crucible env import|pull|ls|inspect|rm`` (and build's argument checks) with Typer's
CliRunner, against a real store: images made by ``oci_images``, imported with the
real skopeo and umoci, pulled from registries on 127.0.0.1 (``registry_fixtures``)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from crucible.cli import app
from crucible.cli import env as cli_env
from crucible.environments.store import EnvironmentStore
from support.oci_images import (
    Image,
    directory,
    file,
    layer_tar,
    symlink,
    tar_directory,
    write_docker_archive,
    write_oci_layout,
)
from support.registry_fixtures import Registry


def needs_tools() -> None:
    import shutil

    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"importing an image needs {tool}")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    needs_tools()
    return tmp_path / "data"


def env(data_dir: Path, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(app, ["env", *args, "--data-dir", str(data_dir)], input=input)


def small_image() -> Image:
    return Image(
        layers=[
            layer_tar(
                [
                    directory("usr"),
                    directory("usr/bin"),
                    file("usr/bin/python3", "#!fake\n", mode=0o755),
                    file("usr/bin/bash", "#!fake\n", mode=0o755),
                    symlink("bin", "usr/bin"),
                    file("etc/motd", "hello\n"),
                ]
            )
        ],
        env=["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        workdir="/srv",
    )


def store_of(data_dir: Path) -> EnvironmentStore:
    return EnvironmentStore(data_dir / "environments")


@pytest.mark.parametrize("kind", ["docker-archive", "oci-dir", "oci-tar", "stdin"])
def test_import_each_format(data_dir: Path, tmp_path: Path, kind: str) -> None:
    image = small_image()
    if kind == "oci-dir":
        source = str(write_oci_layout(image, tmp_path / "layout"))
    elif kind == "oci-tar":
        source = str(
            tar_directory(write_oci_layout(image, tmp_path / "layout"), tmp_path / "o.tar")
        )
    else:
        source = str(write_docker_archive(image, tmp_path / "d.tar"))
    stdin = Path(source).read_bytes() if kind == "stdin" else None
    done = env(
        data_dir, "import", "-" if kind == "stdin" else source, "--name", "tiny:1", input=stdin
    )
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("tiny:1 · sha256:")
    record = store_of(data_dir).get("tiny:1")
    assert (record.root / "etc/motd").read_text() == "hello\n"
    assert record.languages == ["bash", "python"] and record.workdir == "/srv"
    assert record.source == ("oci" if kind.startswith("oci") else "docker-archive")


def test_ls_inspect_rm(data_dir: Path, tmp_path: Path) -> None:
    archive = write_docker_archive(small_image(), tmp_path / "d.tar")
    assert env(data_dir, "import", str(archive), "--name", "tiny:1").exit_code == 0
    assert env(data_dir, "import", str(archive), "--name", "other").exit_code == 0

    listed = env(data_dir, "ls")
    assert listed.exit_code == 0, listed.output
    record = store_of(data_dir).get("tiny:1")
    short = record.digest.removeprefix("sha256:")[:12]
    rows = [line for line in listed.stdout.splitlines() if short in line]
    assert len(rows) == 2  # two names, one root
    assert "tiny:1" in rows[1] and "docker-archive" in rows[1] and "bash" in rows[1]
    as_json = json.loads(env(data_dir, "ls", "--json").stdout)
    assert sorted(e["name"] for e in as_json) == ["other", "tiny:1"]
    assert as_json[0]["languages"] == ["bash", "python"]

    shown = env(data_dir, "inspect", "tiny:1")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["digest"] == record.digest and doc["languages"] == ["bash", "python"]
    assert doc["env"] == ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"] and doc["workdir"] == "/srv"
    assert doc["programs"]["python3"] == "/usr/bin/python3"
    assert Path(doc["root"]) == record.root and doc["size_bytes"] > 0

    removed = env(data_dir, "rm", "tiny:1")
    assert removed.exit_code == 0 and "tiny:1 · removed" in removed.stdout
    assert record.root.is_dir()  # "other" still names it
    assert env(data_dir, "rm", "other").exit_code == 0
    assert not record.root.exists()
    assert "tiny:1" not in env(data_dir, "ls").stdout
    assert not list((data_dir / "environments" / "tmp").iterdir())


def test_rm_is_refused_while_in_use(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_docker_archive(small_image(), tmp_path / "d.tar")
    assert env(data_dir, "import", str(archive), "--name", "busy").exit_code == 0
    asked: list[str] = []

    def in_use(settings: object, name: str) -> bool:
        asked.append(name)
        return True

    monkeypatch.setattr(cli_env, "environment_in_use", in_use)
    refused = env(data_dir, "rm", "busy")
    assert refused.exit_code == 2 and asked == ["busy"]
    assert "error:" in refused.stderr and "in use" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert store_of(data_dir).get("busy").root.is_dir()


def test_in_use_is_read_from_the_database(data_dir: Path) -> None:
    """A running sandbox over an environment keeps it in use; stopped, it does not."""
    from crucible.core.config import Settings
    from crucible.core.lifecycle import StopReason
    from crucible.store import Store
    from crucible.store.sandboxes import NewSandbox, Owner, SandboxStore

    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    assert cli_env.environment_in_use(settings, "busy") is False  # migrates a new database
    store = Store(settings.sqlalchemy_url)
    sandboxes = SandboxStore(store)
    owner = Owner("embedded@h:1:abc", "boot/4026531836", "h", 1, "100")
    limits = {"memory_mb": 64, "cpus": 1, "pids": 16, "disk_mb": 16}
    sandboxes.create(NewSandbox("sbx_busy", "runc", limits, 60, 60, owner, environment="busy"))
    assert cli_env.environment_in_use(settings, "busy") is True
    assert cli_env.environment_in_use(settings, "other") is False
    sandboxes.stop("sbx_busy", StopReason.deleted)
    assert cli_env.environment_in_use(settings, "busy") is False
    store.dispose()


def one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_errors(data_dir: Path, tmp_path: Path) -> None:
    # Reading commands on a data dir without environments: nothing is created.
    assert env(data_dir, "ls").exit_code == 0
    one_line_error(env(data_dir, "inspect", "nope"), "no environment 'nope'")
    one_line_error(env(data_dir, "rm", "nope"), "no environment 'nope'")
    assert not data_dir.exists()

    archive = write_docker_archive(small_image(), tmp_path / "d.tar")
    one_line_error(
        env(data_dir, "import", str(archive), "--name", "Bad Name"), "invalid environment name"
    )
    one_line_error(
        env(data_dir, "import", str(archive), "--name", "host"), "invalid environment name"
    )
    assert not data_dir.exists()  # a bad name is refused before the store is made
    one_line_error(
        env(data_dir, "import", str(tmp_path / "missing.tar"), "--name", "x"), "no such file"
    )
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    one_line_error(
        env(data_dir, "import", str(tmp_path / "junk.tar"), "--name", "x"), "not a readable tar"
    )

    assert env(data_dir, "import", str(archive), "--name", "known").exit_code == 0
    unknown = env(data_dir, "inspect", "unknown")
    one_line_error(unknown, "no environment 'unknown'", "known: known", "crucible env import")
    one_line_error(env(data_dir, "rm", "unknown"), "no environment 'unknown'")


def test_a_refused_image_leaves_nothing(data_dir: Path, tmp_path: Path) -> None:
    hostile = Image(layers=[layer_tar([file("../../etc/evil", "x")])])
    archive = write_docker_archive(hostile, tmp_path / "evil.tar")
    one_line_error(env(data_dir, "import", str(archive), "--name", "evil"), "path traversal")
    store = store_of(data_dir)
    assert store.all() == []
    assert not list((store.root / "tmp").iterdir())
    assert not list((store.root / "sha256").iterdir())
    assert not (tmp_path.parent / "etc" / "evil").exists()


def test_build_arguments_are_checked_before_anything_runs(data_dir: Path) -> None:
    one_line_error(env(data_dir, "build", "--name", "x"), "--debian or --pip")
    one_line_error(
        env(data_dir, "build", "--name", "x", "--debian", "bash;reboot"),
        "not a Debian package name",
    )
    one_line_error(
        env(data_dir, "build", "--name", "x", "--debian", "bash", "--pip", "-e ."),
        "not a pip requirement",
    )
    one_line_error(
        env(data_dir, "build", "--name", "BAD", "--debian", "bash"), "invalid environment name"
    )
    assert not data_dir.exists()


def test_pull(
    data_dir: Path, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    """``crucible env pull REF``: named as Docker shows the reference, pinned by the
    manifest digest (printed as a reference to pull again); ``--name`` for another."""
    short = f"crucible-cli-{secrets.token_hex(4)}"
    digest = registry.push(small_image(), f"library/{short}:1", tmp_path)  # the docker.io mirror
    done = env(data_dir, "pull", f"docker.io/library/{short}:1")
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"{short}:1 · sha256:")
    assert done.stdout.strip().endswith(f"docker.io/library/{short}@{digest}")
    shown = json.loads(env(data_dir, "inspect", f"{short}:1").stdout)
    assert shown["source"] == "registry" and shown["manifest_digest"] == digest
    assert shown["ref"] == f"docker.io/library/{short}:1"
    pinned = env(data_dir, "pull", f"{registry.host}/library/{short}@{digest}", "--name", "pinned")
    assert pinned.exit_code == 0, pinned.output
    assert store_of(data_dir).get("pinned").digest == shown["digest"]
    assert "registry" in env(data_dir, "ls").stdout


def test_pull_errors(
    data_dir: Path, registry: Registry, auth_registry: Registry, registry_env: dict[str, str]
) -> None:
    one_line_error(env(data_dir, "pull", "no way"), "invalid image reference 'no way'")
    one_line_error(env(data_dir, "pull", "python:3", "--name", "Bad"), "invalid environment name")
    assert not data_dir.exists()  # refused before the store is made
    one_line_error(env(data_dir, "pull", f"{registry.host}/nothing/here:1"), "manifest unknown")
    one_line_error(env(data_dir, "pull", f"{auth_registry.host}/private/x:1"), "unauthorized")
    assert store_of(data_dir).all() == []
