"""Environments end to end in the engine: an image built by the test, imported in every
form, run under every runtime as one-shot runs and as agent sandboxes, checking
exactly what the program sees."""

from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path

import pytest

from crucible.core.errors import InvalidSubmission
from crucible.engine import Sandbox
from crucible.engine.models import SessionSpec
from crucible.environments.store import Environment, EnvironmentStore
from support import oci_images
from support.sandbox_fixtures import SESSION_LIMITS, run_code

pytestmark = pytest.mark.timeout(120)

PROBE = textwrap.dedent(
    """
    import errno, json, os, subprocess
    def attempt(fn):
        try:
            fn()
            return "ok"
        except OSError as exc:
            return errno.errorcode[exc.errno]
    seen = {
        "data": sorted(os.listdir("/data")),
        "opq": sorted(os.listdir("/opq")),
        "motd": open("/etc/motd").read(),
        "hard_is_keep": os.stat("/data/hard").st_ino == os.stat("/data/keep").st_ino,
        "setuid_bit": bool(os.stat("/usr/local/bin/su-probe").st_mode & 0o4000),
        "su_probe": subprocess.run(["/usr/local/bin/su-probe"], capture_output=True,
                                   text=True).stdout,
        "host_etc_link": os.readlink("/host-etc"),
        "passwd_via_link": open("/host-etc/passwd").read(),
        "passwd_via_up": open("/up/etc/passwd").read(),
        "foo": os.environ.get("FOO"),
        "home": os.environ.get("HOME"),
        "path": os.environ.get("PATH"),
        "cwd": os.getcwd(),
        "uid": os.getuid(),
        "host_gcc": os.path.exists("/usr/bin/gcc"),
        "host_docs": os.path.exists("/usr/share/doc"),
        "write_scratch": attempt(lambda: open("/scratch/x", "w")),
        "write_tmp": attempt(lambda: open("/tmp/x", "w").write("1")),
        "tmp_mode": oct(os.stat("/tmp").st_mode & 0o7777),
    }
    print(json.dumps(seen))
    """
)


@pytest.mark.parametrize("form", ["docker-archive", "oci-layout", "oci-archive"])
def test_every_form_imports_to_one_content_addressed_root(
    environments: EnvironmentStore, image_files: dict[str, Path], form: str
) -> None:
    name = f"test/form-{form}"
    env = environments.import_image(image_files[form], name)
    first = environments.import_image(image_files["docker-archive"], "test/form-reference")
    assert env.digest == first.digest  # the same image saved two ways is one root
    assert env.root == first.root
    assert env.languages == ["bash", "python"]
    assert env.programs["python3"] == "/usr/bin/python3"
    assert "FOO=from-image" in env.env and env.workdir == "/data" and env.user == "nobody"
    assert {e.name for e in environments.all()} >= {name, "test/form-reference"}
    environments.remove(name)
    assert (env.root / "etc/motd").read_text() == "layer three\n"  # still named elsewhere


def test_removing_the_last_name_removes_the_root(
    sandbox_settings, image_files: dict[str, Path]
) -> None:
    store = EnvironmentStore(sandbox_settings.data_dir / f"own-{secrets.token_hex(3)}")
    env = store.import_image(image_files["oci-layout"], "test/alone")
    store.import_image(image_files["oci-layout"], "test/alias")
    store.remove("test/alone")
    assert env.root.is_dir()
    store.remove("test/alias")
    assert not env.root.exists() and store.all() == []
    assert list((store.root / "tmp").iterdir()) == []


async def test_a_run_sees_exactly_the_image(
    sandbox: Sandbox, runtime: str, test_environment: Environment
) -> None:
    result = await run_code(sandbox, runtime, PROBE, environment=test_environment)
    assert result.termination == "exited" and result.exit_code == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["data"] == ["hard", "keep"]  # the whiteout removed "gone"
    assert seen["opq"] == ["new"]  # the opaque directory hid "old"
    assert seen["motd"] == "layer three\n"
    assert seen["hard_is_keep"] is True
    # The setuid bit is kept in the image, and does nothing: every mount is nosuid.
    assert seen["setuid_bit"] is True
    assert "uid=65534" in seen["su_probe"] and "euid=0" not in seen["su_probe"]
    # Links pointing out of the image resolve inside it, never to the host.
    assert seen["host_etc_link"] == "/etc"
    assert seen["passwd_via_link"] == seen["passwd_via_up"] == oci_images.FEATURE_PASSWD
    assert seen["foo"] == "from-image" and seen["path"] == "/usr/local/bin:/usr/bin:/bin"
    assert seen["home"] == "/workspace" and seen["cwd"] == "/workspace"
    assert seen["uid"] == 65534  # never the image's User for a one-shot run
    assert seen["host_gcc"] is False and seen["host_docs"] is False
    assert seen["write_scratch"] == "EROFS"  # the root is read-only, whatever its modes
    assert seen["write_tmp"] == "ok" and seen["tmp_mode"] == "0o1777"


async def test_a_language_the_environment_lacks_is_refused_naming_what_it_has(
    sandbox: Sandbox, test_environment: Environment
) -> None:
    with pytest.raises(InvalidSubmission, match=r"no javascript \(it has: bash, python\)"):
        await run_code(sandbox, "runc", "console.log(1)", language="javascript",
                       environment=test_environment)  # fmt: skip


async def test_bash_runs_in_the_environment(
    sandbox: Sandbox, test_environment: Environment
) -> None:
    result = await run_code(
        sandbox, "crun", 'echo "$FOO"; cat /etc/motd', language="bash",
        environment=test_environment,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "from-image\nlayer three\n"


async def test_an_agent_sandbox_in_the_environment(
    sandbox: Sandbox, runtime: str, test_environment: Environment
) -> None:
    spec = SessionSpec(
        runtime=runtime,  # type: ignore[arg-type]
        limits=SESSION_LIMITS,
        environment=test_environment.root_spec(),
    )
    one = await sandbox.sessions.create(spec, session_id=f"sb_env{secrets.token_hex(4)}")
    two = await sandbox.sessions.create(spec, session_id=f"sb_env{secrets.token_hex(4)}")
    try:
        # The image's User, WorkingDir and Env are the defaults of every exec.
        r = await one.exec(["bash", "-c", 'id -un; pwd; echo "$FOO"'])
        assert r.stdout == b"nobody\n/data\nfrom-image\n", r.stderr
        # Root on request; what one exec writes over the image, the next one sees.
        r = await one.exec(["bash", "-c", "echo changed > /etc/motd"], user="root")
        assert r.returncode == 0, r.stderr
        r = await one.exec(["cat", "/etc/motd"])
        assert r.stdout == b"changed\n"
        await one.write_file("notes.txt", b"in /data")
        assert await one.read_file("/data/notes.txt") == b"in /data"
        # Each sandbox has its own upper layer: the other one sees the image unchanged.
        r = await two.exec(["cat", "/etc/motd"])
        assert r.stdout == b"layer three\n"
        r = await two.exec(["python3", "-c", "import os; print(*sorted(os.listdir('/data')))"])
        assert r.stdout == b"hard keep\n", r
        r = await two.exec(["ls", "-l", "/data/keep"])  # the image's own ls (gVisor: statx)
        assert r.returncode == 0 and r.stdout.endswith(b" /data/keep\n"), r
        # And the environment's own root was never written.
        assert (test_environment.root / "etc/motd").read_text() == "layer three\n"
        assert not (test_environment.root / "data/notes.txt").exists()
    finally:
        await one.close()
        await two.close()


@pytest.fixture(scope="module")
def numpy_environment(environments: EnvironmentStore) -> Environment:
    """The cached ``crucible env build --debian python3-numpy`` (tests/support/env_fixtures.py),
    in this session's store."""
    from support.env_fixtures import install_numpy_environment, require_build_tools

    require_build_tools()
    return install_numpy_environment(environments, name="test/numpy")


@pytest.mark.timeout(600)  # the first build on a machine: mmdebstrap, about 25 s here
async def test_a_built_environment_runs_numpy(
    sandbox: Sandbox, runtime: str, numpy_environment: Environment
) -> None:
    code = "import numpy, sys; print(numpy.arange(6).reshape(2, 3).sum(), sys.executable)"
    result = await run_code(sandbox, runtime, code, environment=numpy_environment)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "15 /usr/bin/python3\n"
    session = await sandbox.sessions.create(
        SessionSpec(
            runtime=runtime,  # type: ignore[arg-type]
            limits=SESSION_LIMITS,
            environment=numpy_environment.root_spec(),
        ),
        session_id=f"sb_np{secrets.token_hex(4)}",
    )
    try:
        r = await session.exec(["bash", "-c", "cat /etc/debian_version; python3 -c 'import numpy'"])
        assert r.returncode == 0 and r.stdout.startswith(b"12."), r
    finally:
        await session.close()
