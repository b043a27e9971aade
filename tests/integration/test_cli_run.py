"""`crucible run` end to end: a real subprocess, a real sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CRUCIBLE = str(Path(sys.executable).with_name("crucible"))

RESULT_FIELDS = {
    "termination", "exit_code", "signal", "stdout", "stderr", "stdout_truncated",
    "stderr_truncated", "wall_ms", "cpu_ms", "peak_memory_bytes", "files", "files_omitted", "runtime",
    "limits", "events",
}  # fmt: skip


def crucible(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRUCIBLE_STATE_DIR": str(state_dir)}
    return subprocess.run([CRUCIBLE, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("runtime", ["runc", "crun", "gvisor"])
def test_run_json_prints_the_result_fields(tmp_path: Path, state_dir: Path, runtime: str) -> None:
    prog = tmp_path / "p.py"
    prog.write_text("import sys\nprint(sys.stdin.read().upper())\nsys.exit(4)\n")
    stdin = tmp_path / "in.txt"
    stdin.write_text("abc")
    done = crucible(
        "run", str(prog), "--json", "--runtime", runtime, "--stdin", str(stdin), "--memory", "64",
        state_dir=state_dir,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == RESULT_FIELDS
    assert (result["termination"], result["exit_code"], result["stdout"]) == ("exited", 4, "ABC\n")
    assert result["limits"]["memory_mb"] == 64
    assert result["runtime"]["name"] == runtime


def test_run_prints_output_and_a_verdict_line(tmp_path: Path, state_dir: Path) -> None:
    prog = tmp_path / "spin.c"
    prog.write_text(
        '#include <stdio.h>\nint main(void) { puts("go"); fflush(stdout); for (;;); }\n'
    )
    done = crucible("run", str(prog), "--timeout", "1", state_dir=state_dir)
    assert done.stdout == "go\n"
    assert "timeout" in done.stderr
    assert done.returncode == 137  # killed: 128 + SIGKILL


def test_run_rejects_bad_limits_clearly(tmp_path: Path, state_dir: Path) -> None:
    prog = tmp_path / "p.py"
    prog.write_text("print(1)")
    done = crucible("run", str(prog), "--memory", "999999", state_dir=state_dir)
    assert done.returncode == 2
    assert "limits.memory_mb must be between" in done.stderr
