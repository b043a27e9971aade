"""Conformance suite for the sandbox engine: every runtime must pass it.

Languages, compile errors, multi-file programs, stdin, live output, cancellation,
produced files, concurrency and cleanup, under real runc and real runsc.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from crucible.core.errors import InvalidSubmission
from crucible.engine import RunRequest, Sandbox
from support.polling import aeventually
from support.sandbox_fixtures import leftovers, limits, run_code, settled_leftovers

pytestmark = pytest.mark.timeout(180)

HELLO = {
    "python": 'print("hello")',
    "javascript": 'console.log("hello")',
    "bash": "echo hello",
    "c": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello" << std::endl; }',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hello"); } }',
}
RUNTIME_ERROR = {
    "python": "raise ValueError('boom')",
    "javascript": "throw new Error('boom')",
    "bash": "echo boom >&2; exit 3",
    "c": '#include <stdio.h>\nint main(void) { fprintf(stderr, "boom\\n"); return 3; }',
    "cpp": '#include <stdexcept>\nint main() { throw std::runtime_error("boom"); }',
    "java": 'public class Main { public static void main(String[] a) { throw new RuntimeException("boom"); } }',
}
COMPILE_ERROR = {
    "c": "int main(void) { return undefined_name; }",
    "cpp": "int main() { undefined_name(); }",
    "java": "public class Main { public static void main(String[] a) { int x = ; } }",
}


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_hello_world(language: str, runtime: str, sandbox: Sandbox) -> None:
    r = await run_code(sandbox, runtime, HELLO[language], language=language)
    assert (r.termination, r.exit_code, r.stdout) == ("exited", 0, "hello\n"), r.stderr
    assert r.runtime.version
    assert r.peak_memory_bytes > 0 and r.cpu_ms >= 0


@pytest.mark.parametrize("language", sorted(RUNTIME_ERROR))
async def test_runtime_error(language: str, runtime: str, sandbox: Sandbox) -> None:
    r = await run_code(sandbox, runtime, RUNTIME_ERROR[language], language=language)
    assert r.termination == "exited"
    assert (r.exit_code not in (0, None)) or r.signal == "SIGABRT", (r.exit_code, r.signal)
    assert "boom" in r.stderr


@pytest.mark.parametrize("language", sorted(COMPILE_ERROR))
async def test_compile_error(language: str, runtime: str, sandbox: Sandbox) -> None:
    r = await run_code(sandbox, runtime, COMPILE_ERROR[language], language=language)
    assert r.termination == "compile_error"
    assert r.exit_code not in (0, None)
    assert "error" in r.stderr.lower()
    assert r.stdout == ""


async def test_syntax_error_is_a_program_failure(runtime: str, sandbox: Sandbox) -> None:
    r = await run_code(sandbox, runtime, "def broken(:\n")
    assert (r.termination, r.exit_code) == ("exited", 1)
    assert "SyntaxError" in r.stderr


async def test_multi_file_program_and_args(runtime: str, sandbox: Sandbox) -> None:
    request = RunRequest(
        files={
            "app/main.py": "import sys\nfrom helpers.util import shout\nprint(shout(sys.argv[1]))",
            "app/helpers/__init__.py": "",
            "app/helpers/util.py": "def shout(s):\n    return s.upper() + '!'",
        },
        entrypoint="app/main.py",
        args=["hi there"],
        limits=limits(sandbox.settings),
        runtime=runtime,  # type: ignore[arg-type]
    )
    r = await sandbox.run(request)
    assert (r.exit_code, r.stdout) == (0, "HI THERE!\n"), r.stderr


async def test_multi_file_c_program(runtime: str, sandbox: Sandbox) -> None:
    request = RunRequest(
        language="c",
        files={
            "main.c": '#include "add.h"\n#include <stdio.h>\nint main(void) { printf("%d\\n", add(2, 3)); }',
            "add.h": "static inline int add(int a, int b) { return a + b; }",
        },
        limits=limits(sandbox.settings),
        runtime=runtime,  # type: ignore[arg-type]
    )
    r = await sandbox.run(request)
    assert (r.exit_code, r.stdout) == (0, "5\n"), r.stderr


async def test_stdin(runtime: str, sandbox: Sandbox) -> None:
    r = await run_code(
        sandbox,
        runtime,
        "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))",
        stdin="1 2 3\n40",
    )
    assert r.stdout == "46\n"


async def test_tmp_is_world_writable_and_sticky(runtime: str, sandbox: Sandbox) -> None:
    """/tmp is 1777 as the README says, under every runtime (runc 1.1 copied the
    skeleton directory's 0755 onto the tmpfs, whatever mode= the mount asked for)."""
    code = (
        "import os, stat\n"
        "st = os.stat('/tmp')\n"
        "print(oct(stat.S_IMODE(st.st_mode)), st.st_uid)\n"
        "open('/tmp/scratch', 'w').write('ok')\n"
        "print(open('/tmp/scratch').read())\n"
    )
    r = await run_code(sandbox, runtime, code)
    assert (r.exit_code, r.stdout) == (0, "0o1777 0\nok\n"), r.stderr


async def test_live_output_arrives_before_the_end(runtime: str, sandbox: Sandbox) -> None:
    seen: list[tuple[float, str, bytes]] = []
    code = (
        "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.4)\n"
    )
    request = RunRequest(code=code, limits=limits(sandbox.settings), runtime=runtime)  # type: ignore[arg-type]
    r = await sandbox.run(request, on_output=lambda s, d: seen.append((time.monotonic(), s, d)))
    finished = time.monotonic()
    assert r.stdout == "tick 0\ntick 1\ntick 2\n"
    assert b"".join(d for _, _, d in seen) == r.stdout.encode()
    first = seen[0][0]
    assert finished - first >= 0.6, "the first chunk only arrived at the end"


async def test_cancel_kills_within_a_second(runtime: str, sandbox: Sandbox) -> None:
    cancel = asyncio.Event()
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"
    request = RunRequest(code=code, limits=limits(sandbox.settings, timeout_s=60), runtime=runtime)  # type: ignore[arg-type]
    started = asyncio.Event()

    def on_output(stream: str, data: bytes) -> None:
        started.set()

    task = asyncio.create_task(sandbox.run(request, on_output=on_output, cancel=cancel))
    await asyncio.wait_for(started.wait(), 30)
    cancelled_at = time.monotonic()
    cancel.set()
    r = await task
    # The container is dead (its wall time stops) within a second of the request.
    assert r.termination == "cancelled"
    assert r.signal == "SIGKILL"
    assert time.monotonic() - cancelled_at < 5  # includes runtime delete
    assert r.wall_ms < (time.monotonic() - cancelled_at) * 1000 + r.wall_ms
    assert await settled_leftovers(sandbox) == []


async def test_produced_files_listed_and_copied(
    runtime: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    code = (
        "import os\nos.makedirs('out', exist_ok=True)\n"
        "open('out/result.txt', 'w').write('42')\nopen('big.bin', 'wb').write(b'x' * 5000)\n"
        "os.symlink('/etc/passwd', 'link')\n"
    )
    request = RunRequest(code=code, limits=limits(sandbox.settings), runtime=runtime)  # type: ignore[arg-type]
    r = await sandbox.run(request, files_dir=tmp_path)
    assert [(f.path, f.size) for f in r.files] == [("big.bin", 5000), ("out/result.txt", 2)]
    assert (tmp_path / "out" / "result.txt").read_text() == "42"
    assert not (tmp_path / "link").exists() and not (tmp_path / "main.py").exists()


async def test_many_runs_at_once(runtime: str, sandbox: Sandbox) -> None:
    runs = [run_code(sandbox, runtime, f"print({i} * {i})") for i in range(8)]
    results = await asyncio.gather(*runs)
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]
    assert await settled_leftovers(sandbox) == []


async def test_runs_cannot_see_each_other(runtime: str, sandbox: Sandbox) -> None:
    writer = run_code(
        sandbox,
        runtime,
        "import time\nopen('secret.txt', 'w').write('s3cr3t-' + 'token')\ntime.sleep(2)",
    )
    reader = run_code(
        sandbox,
        runtime,
        "import os, time\ntime.sleep(0.8)\n"
        "hits = []\n"
        "for dirpath, dirs, files in os.walk('/'):\n"
        "    if dirpath == '/':\n"
        "        dirs[:] = [d for d in dirs if d not in ('usr', 'proc', 'sys')]\n"
        "    hits += [os.path.join(dirpath, f) for f in files if f == 'secret.txt']\n"
        "hits += [p for p in os.listdir('/proc') if os.path.exists(f'/proc/{p}/root/workspace/secret.txt')]\n"
        "print(hits)",
    )
    _, r = await asyncio.gather(writer, reader)
    assert r.stdout.strip() == "[]", r.stdout


async def test_cleanup_after_every_kind_of_end(runtime: str, sandbox: Sandbox) -> None:
    await run_code(sandbox, runtime, "print(1)")
    await run_code(sandbox, runtime, "while True: pass", timeout_s=0.5)
    await run_code(sandbox, runtime, "x = bytearray(300 << 20)", memory_mb=64)
    await run_code(sandbox, runtime, "int main(void) { return }", language="c")
    assert await settled_leftovers(sandbox) == []


async def test_invalid_requests_raise_before_running(sandbox: Sandbox) -> None:
    with pytest.raises(
        InvalidSubmission, match="supported: bash, c, cpp, java, javascript, python"
    ):
        await run_code(sandbox, "runc", "print(1)", language="cobol")
    bad = RunRequest(
        files={"../escape.py": "print(1)"},
        entrypoint="../escape.py",
        limits=limits(sandbox.settings),
    )
    with pytest.raises(InvalidSubmission, match="inside /workspace"):
        await sandbox.run(bad)
    missing = RunRequest(files={"a.py": "1"}, entrypoint="main.py", limits=limits(sandbox.settings))
    with pytest.raises(InvalidSubmission, match="entrypoint"):
        await sandbox.run(missing)
    assert await settled_leftovers(sandbox) == []


async def test_sweep_removes_a_crashed_supervisors_containers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """kill -9 a supervisor mid-run; the next one's sweep removes what it left."""
    import os
    import subprocess
    import sys

    state = sandbox.settings.state_dir
    script = (
        "import asyncio\nfrom crucible.core.config import Settings\nfrom crucible.engine import Sandbox\n"
        "from crucible.domain.limits import resolve_limits\nfrom crucible.engine import RunRequest\n"
        f"s = Settings(state_dir={str(state)!r}, prefix={sandbox.settings.prefix!r},"
        " max_concurrency=3)\n"
        "async def main():\n"
        "    sb = Sandbox(s)\n"
        "    req = lambda rt: RunRequest(code='import time; print(1, flush=True); time.sleep(60)',"
        " limits=resolve_limits({'timeout_s': 60}, s), runtime=rt)\n"
        "    await asyncio.gather(sb.run(req('runc')), sb.run(req('crun')), sb.run(req('gvisor')))\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    await aeventually(
        lambda: len([x for x in leftovers(sandbox.settings) if x.startswith("container")]) >= 3,
        within=30,
        reason="a container of each runtime",
        interval=0.1,
    )
    os.kill(proc.pid, 9)
    proc.wait()
    assert leftovers(sandbox.settings) != []
    removed = await sandbox.sweep()
    # runc's container outlives its supervisor and must be deleted; gVisor's sandbox
    # dies with its parent (runsc sets a parent-death signal), leaving its bundle,
    # workspace mount and cgroup, which the sweep removes as well.
    assert any(r.startswith("container runc:") for r in removed), removed
    assert any(r.startswith("container crun:") for r in removed), removed
    # (3 runs, and the warm spares its pool was making)
    assert len([r for r in removed if r.startswith("bundle")]) >= 3, removed
    assert any(r.startswith("view ") for r in removed), removed  # its assets' tmpfs
    assert await settled_leftovers(sandbox) == []


async def test_sweep_spares_live_runs_started_while_it_sweeps(sandbox: Sandbox) -> None:
    """Several supervisors share a state directory: a sweep must never take a run of a
    live one, not even one whose bundle is still being set up (no owner file yet), nor
    a run that started after the sweep began."""
    from crucible.engine.sweep import owner_token

    await sandbox.prepare()
    bundles = sandbox.settings.state_dir.resolve() / "bundles"
    prefix = sandbox.settings.prefix
    setting_up = bundles / f"{prefix}-settingup"
    setting_up.mkdir(parents=True)
    dead = bundles / f"{prefix}-dead"
    dead.mkdir()
    (dead / "owner").write_text("999999999:1\n")
    slow = RunRequest(
        code="import time; print('started', flush=True); time.sleep(2); print('survived')",
        limits=limits(sandbox.settings, timeout_s=20),
        runtime="crun",
    )
    started = asyncio.Event()
    run = asyncio.create_task(sandbox.run(slow, on_output=lambda _name, _data: started.set()))
    await asyncio.wait_for(started.wait(), 30)  # its bundle and container exist now
    assert any((b / "owner").read_text().strip() == owner_token() for b in bundles.iterdir()
               if (b / "owner").exists())  # fmt: skip
    removed = await sandbox.sweep()
    result = await run
    assert (result.termination, result.stdout) == ("exited", "started\nsurvived\n"), result
    assert f"bundle {prefix}-dead" in removed and setting_up.exists(), removed
    setting_up.rmdir()


async def test_ls_and_stat_work_under_every_runtime(runtime: str, sandbox: Sandbox) -> None:
    """coreutils 9 passes AT_NO_AUTOMOUNT to statx, which Debian's runsc refuses with
    EINVAL; under gVisor a preloaded statx drops the flag (gvisor_statx.c)."""
    r = await run_code(
        sandbox, runtime, "ls -ld / /usr/bin/ls; stat -c '%n %a' /workspace", language="bash"
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("d") and lines[0].endswith(" /"), r.stdout
    assert lines[1].endswith(" /usr/bin/ls") and lines[2] == "/workspace 700", r.stdout


async def test_python_and_pip_names_in_one_shot_runs(runtime: str, sandbox: Sandbox) -> None:
    """A run without an environment has `python` and `pip` as an agent sandbox does
    (spec.COMPAT_BIN), for the host's python3."""
    code = (
        "python -c 'import sys; print(sys.version_info[0])'; "
        "v=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'); "
        'pip --version | grep -qF "(python $v)" && echo pip-ok; '
        "echo $((1+2)) | tee n | sha256sum | cut -c1-8; cat n; ls"
    )
    r = await run_code(sandbox, runtime, code, language="bash")
    assert (r.exit_code, r.stdout) == (0, "3\npip-ok\n1121cfcc\n3\nmain.sh\nn\n"), r.stderr
