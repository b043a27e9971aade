"""``crucible.environments.build``: the tree digest on small trees, the build container's config,
and real builds with mmdebstrap and pip (the network: deb.debian.org and PyPI).

What a built root holds is checked by running its own python3 in a read-only runc
container with no network (``envbuild.runc_run``), not through the engine."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from crucible.core.errors import InvalidSubmission
from crucible.environments.build import (
    VENV,
    BuildFailed,
    BuildSpec,
    build_environment,
    container_config,
    environment_digest,
    runc_run,
)
from crucible.environments.store import EnvironmentStore, resolve_in_root
from crucible.environments.treedigest import tree_digest
from support.env_fixtures import (
    BUILD_TIMEOUT_S,
    NUMPY_SPEC,
    cached_environment,
    install_numpy_environment,
    require_build_tools,
)
from support.polling import eventually

# -- the tree digest ----------------------------------------------------------------------


def small_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "su").write_bytes(b"setuid")
    (root / "bin" / "su").chmod(0o4755)
    (root / "etc").mkdir()
    (root / "etc" / "conf").write_text("a = 1\n")
    (root / "empty").mkdir()
    (root / "link").symlink_to("bin/tool")
    (root / "abs").symlink_to("/etc/passwd")  # dangling inside the tree: recorded, not followed
    os.link(root / "etc" / "conf", root / "etc" / "hard")
    os.mkfifo(root / "fifo")
    return root


def test_tree_digest_is_stable_and_ignores_times_and_copies(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "a")
    first = tree_digest(tree)
    assert first.startswith("sha256:") and len(first) == 71
    assert tree_digest(tree) == first
    os.utime(tree / "etc" / "conf", (1, 1))  # times do not count
    (tree).chmod(0o700)  # nor the root's own mode: the store sets it
    assert tree_digest(tree) == first
    copy = tmp_path / "b"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    assert tree_digest(copy) == first  # other inodes, times, same content


Mutation = Callable[[Path], None]


def _write(path: str, data: bytes) -> Mutation:
    return lambda root: (root / path).write_bytes(data)


def _retarget(root: Path) -> None:
    (root / "link").unlink()
    (root / "link").symlink_to("bin/su")


def _symlink_for_file(root: Path) -> None:
    (root / "etc" / "conf").unlink()
    (root / "etc" / "conf").symlink_to("hard")


def _hard_to_copy_differently(root: Path) -> None:
    (root / "etc" / "hard").unlink()
    (root / "etc" / "hard").write_text("a = 2\n")


MUTATIONS: dict[str, Mutation] = {
    "content": _write("etc/conf", b"a = 2\n"),
    "one byte more": _write("bin/tool", b"#!/bin/sh\necho hi\n\n"),
    "mode": lambda root: (root / "bin" / "tool").chmod(0o775),
    "setuid bit dropped": lambda root: (root / "bin" / "su").chmod(0o755),
    "owner": lambda root: os.chown(root / "etc" / "conf", 1000, 0),
    "group": lambda root: os.lchown(root / "link", 0, 1000),
    "symlink target": _retarget,
    "file became a symlink": _symlink_for_file,
    "new empty file": lambda root: (root / "empty" / "x").touch(),
    "new empty dir": lambda root: (root / "empty" / "d").mkdir(),
    "renamed": lambda root: (root / "etc" / "conf").rename(root / "etc" / "conf2"),
    "removed": lambda root: (root / "fifo").unlink(),
    "xattr": lambda root: os.setxattr(root / "bin" / "tool", "user.crucible", b"1"),
    "hard link became a different file": _hard_to_copy_differently,
}


@pytest.mark.parametrize("change", list(MUTATIONS))
def test_tree_digest_sees_every_change(tmp_path: Path, change: str) -> None:
    tree = small_tree(tmp_path / "a")
    before = tree_digest(tree)
    MUTATIONS[change](tree)
    assert tree_digest(tree) != before


def test_tree_digest_does_not_follow_symlinks_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("1")
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "out").symlink_to(outside)
    (tree / "outf").symlink_to(outside / "f")
    before = tree_digest(tree)
    (outside / "f").write_text("2")
    (outside / "g").write_text("new")
    assert tree_digest(tree) == before


def test_tree_digest_names_are_unambiguous(tmp_path: Path) -> None:
    # "a/b" + file "c" and "a" + file "b/c"-like splits, and names holding newlines,
    # must never digest alike.
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "a").mkdir(parents=True)
    (one / "a" / "b\nc").write_text("x")
    (two / "a").mkdir(parents=True)
    (two / "a" / "b").write_text("")
    (two / "a" / "c").write_text("x")
    assert tree_digest(one) != tree_digest(two)


def test_environment_digest_covers_the_env() -> None:
    tree = "sha256:" + "0" * 64
    base = environment_digest(tree, ["PATH=/usr/bin"])
    assert base == environment_digest(tree, ["PATH=/usr/bin"])
    assert base != environment_digest(tree, ["PATH=/opt/venv/bin:/usr/bin"])
    assert base != environment_digest("sha256:" + "1" * 64, ["PATH=/usr/bin"])
    assert base != environment_digest(tree, ["PATH=/usr/bin"], workdir="/w")


# -- the spec and the build container ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"debian": ()}, "debian"),
        ({"debian": ("bash;rm -rf /",)}, "debian"),
        ({"debian": ("Bash",)}, "debian"),
        ({"debian": ("bash",), "pip": ("--index-url=http://evil",)}, "pip"),
        ({"debian": ("bash",), "pip": ("six; echo",)}, "pip"),
        ({"debian": ("bash",), "suite": "../x"}, "suite"),
        ({"debian": ("bash",), "mirror": "deb.debian.org"}, "mirror"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        BuildSpec(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_spec_packages_env_and_key() -> None:
    plain = BuildSpec(debian=("python3-numpy",))
    assert plain.packages() == ["python3-numpy"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in plain.env()
    with_pip = BuildSpec(debian=("bash",), pip=("tomli-w==1.0.0", "attrs>=23,<24"))
    assert {"python3", "python3-venv", "bash"} <= set(with_pip.packages())
    assert with_pip.env()[0].startswith(f"PATH={VENV}/bin:")  # the venv's python3 first
    assert plain.key() == BuildSpec(debian=("python3-numpy",)).key()
    assert plain.key() != BuildSpec(debian=("python3-numpy",), suite="trixie").key()


def test_build_container_config(tmp_path: Path) -> None:
    build = container_config(tmp_path, ["true"], [], network=True, readonly=False)
    names = [ns["type"] for ns in build["linux"]["namespaces"]]
    assert "network" not in names and {"pid", "mount", "ipc", "uts"} <= set(names)
    dests = {m["destination"]: m for m in build["mounts"]}
    assert "ro" in dests["/etc/resolv.conf"]["options"]
    assert {"/proc", "/dev", "/tmp"} <= dests.keys()
    assert build["root"] == {"path": str(tmp_path), "readonly": False}
    assert build["process"]["noNewPrivileges"] and build["linux"]["seccomp"]
    assert "CAP_SYS_ADMIN" not in build["process"]["capabilities"]["bounding"]
    check = container_config(tmp_path, ["true"], [], network=False, readonly=True)
    assert "network" in [ns["type"] for ns in check["linux"]["namespaces"]]
    assert "/etc/resolv.conf" not in {m["destination"] for m in check["mounts"]}
    assert check["root"]["readonly"]


# -- real builds ---------------------------------------------------------------------------


def run_in(root: Path, tmp_path: Path, code: str, env: list[str]) -> list[str]:
    """python3 -c CODE in ``root``, read-only, no network; its output lines."""
    lines: list[str] = []
    work = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    work.mkdir()
    runc_run(
        root, ["python3", "-B", "-c", code], env, work=work, network=False, readonly=True,
        timeout=60, what="the check run failed", log=lines.append,
    )  # fmt: skip
    return lines


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_numpy_build(numpy_environment_root: Path, tmp_path: Path) -> None:
    root = numpy_environment_root
    python = resolve_in_root(root, "/usr/bin/python3")
    assert python is not None and python.is_file() and os.access(python, os.X_OK)
    assert (root / "usr/lib/python3/dist-packages/numpy/__init__.py").is_file()
    # Tidied: no apt lists or caches, none of the host's files, no device nodes.
    assert not list((root / "var/lib/apt/lists").iterdir())
    assert not list((root / "var/cache/apt").iterdir())
    assert not (root / "etc/resolv.conf").exists() and not (root / "etc/hostname").exists()
    assert not [p for p in (root / "dev").iterdir() if stat.S_ISCHR(p.lstat().st_mode)]
    assert not [p for p in (root / "usr/share/man").rglob("*") if p.is_file()]  # excluded
    env = cached_environment(NUMPY_SPEC, "numpy")
    assert "python" in env.languages and "bash" in env.languages
    assert env.source == "build" and env.programs["python3"] == "/usr/bin/python3"
    out = run_in(root, tmp_path, "import numpy; print(numpy.arange(10).sum())", env.env)
    assert out[-1] == "45"


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_install_numpy_environment_copies_into_a_store_of_its_own(
    numpy_environment_root: Path, tmp_path: Path
) -> None:
    store = EnvironmentStore(tmp_path / "envs")
    env = install_numpy_environment(store)
    again = install_numpy_environment(store, name="numpy-too")
    cached = cached_environment(NUMPY_SPEC, "numpy")
    assert env.digest == again.digest == cached.digest and env.root == again.root  # one root
    assert env.root != numpy_environment_root and "python" in env.languages
    ours = (env.root / "usr/bin/python3").resolve()
    theirs = (numpy_environment_root / "usr/bin/python3").resolve()
    assert os.stat(ours).st_ino != os.stat(theirs).st_ino  # no inode shared with the cache
    assert not list((store.root / "tmp").iterdir())


def _nothing_left(store: EnvironmentStore) -> None:
    assert not list((store.root / "tmp").iterdir())
    assert store.all() == []
    assert not list((store.root / "sha256").iterdir())
    with open("/proc/mounts") as f:
        assert str(store.root) not in f.read()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failing_build_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    require_build_tools()
    store = EnvironmentStore(tmp_path / "envs")
    with pytest.raises(BuildFailed, match="Unable to locate package no-such-package-crucible"):
        build_environment(store, "broken", BuildSpec(debian=("no-such-package-crucible",)))
    _nothing_left(store)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_build_past_its_time_limit_is_killed_and_leaves_nothing(tmp_path: Path) -> None:
    require_build_tools()
    store = EnvironmentStore(tmp_path / "envs")
    with pytest.raises(BuildFailed, match="time limit of 5 s"):
        build_environment(store, "slow", BuildSpec(debian=("python3-numpy",)), timeout=5)
    _nothing_left(store)

    def no_builder() -> subprocess.CompletedProcess[bytes] | None:
        ps = subprocess.run(["pgrep", "-f", f"mmdebstrap.*{store.root}"], capture_output=True)
        return ps if ps.returncode == 1 else None

    # SIGKILL through the pid namespace is asynchronous.
    ps = eventually(no_builder, within=5, reason="the builder's processes to end", interval=0.1)
    assert ps.returncode == 1, ps.stdout  # no builder left running


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_pip_build_installs_into_the_venv(tmp_path: Path) -> None:
    # tomli-w: small, pure Python, and in neither Python's standard library nor the
    # Debian packages a build starts from.
    require_build_tools()
    store = EnvironmentStore(tmp_path / "envs")
    spec = BuildSpec(debian=("bash",), pip=("tomli-w==1.0.0",))
    env = build_environment(store, "toml", spec, timeout=BUILD_TIMEOUT_S - 60)
    assert env.programs["python3"] == f"{VENV}/bin/python3" and "python" in env.languages
    assert env.env[0].startswith(f"PATH={VENV}/bin:")
    code = (
        "import sys, tomli_w; print(sys.prefix); print(tomli_w.__file__);"
        "print(tomli_w.dumps({'a': 1}).strip())"
    )
    out = run_in(env.root, tmp_path, code, env.env)
    assert out[-3:] == [
        VENV, f"{VENV}/lib/python3.11/site-packages/tomli_w/__init__.py", "a = 1",
    ]  # fmt: skip
    # Debian's files are Debian's: pip wrote nothing under /usr, cached nothing.
    assert not list((env.root / "usr/local/lib").glob("python3*/dist-packages/*"))
    assert not (env.root / "root/.cache/pip").exists()
    assert not list((store.root / "tmp").iterdir())
