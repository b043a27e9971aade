"""Drives the OCI runtimes (runc, crun, and gVisor's runsc) through their command lines.

Each function is named after the runtime verb it wraps. All three take the same
bundle and the same verbs; they differ only in how they are invoked, collected in
:class:`Runtime`: runsc's global flags, and for crun on a cgroup *hybrid* host a
wrapper that hides the cgroup2 mount crun 1.8 refuses (``hidecg.c``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from crucible.core.errors import RuntimeFailure, SandboxUnavailable
from crucible.engine import reaper
from crucible.engine.models import RuntimeName
from crucible.engine.process import run_tool


@dataclass(frozen=True)
class Runtime:
    name: RuntimeName
    binary: str
    root: Path  # the runtime's state directory, private to this platform
    timeout: float = 30.0
    wrapper: tuple[str, ...] = ()  # a command the runtime runs under (see hidecg.c)

    @property
    def argv(self) -> list[str]:
        base = [*self.wrapper, self.binary, "--root", str(self.root)]
        if self.name == "gvisor":
            # ptrace: the KVM platform hangs on the project's machines. network=none:
            # the sandbox gets no network stack beyond its own loopback. The program's
            # seccomp filter is installed by the init inside the sandbox (gVisor
            # implements seccomp-bpf for its guests), as under runc.
            base += ["--platform=ptrace", "--network=none"]
        return base


def make_runtime(
    name: RuntimeName, *, binary: str, state_dir: Path, timeout: float = 30.0,
    wrapper: tuple[str, ...] = (),
) -> Runtime:  # fmt: skip
    """Resolve a runtime's binary; raises SandboxUnavailable when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        raise SandboxUnavailable(f"{binary} not found on PATH (install Debian's {binary})")
    return Runtime(name, path, state_dir / f"{name}-root", timeout=timeout, wrapper=wrapper)


async def _verb(rt: Runtime, args: list[str], **kwargs: object) -> str:
    try:
        done = await run_tool(rt.argv + args, timeout=rt.timeout, **kwargs)  # type: ignore[arg-type]
    except TimeoutError:
        raise RuntimeFailure(args[0], None, f"timed out after {rt.timeout}s") from None
    if done.returncode != 0:
        raise RuntimeFailure(args[0], done.returncode, done.stderr or done.stdout)
    return done.stdout


async def runtime_run_detached(
    rt: Runtime, container_id: str, bundle: Path, pid_file: Path, stdio: tuple[int, int, int]
) -> None:
    """``run --detach``: create and start the container in one runtime invocation.

    One process instead of ``create`` + ``start`` saves a Go binary's start-up per
    run. The three fds become the container's stdin, stdout and stderr (pass-through
    mode). The runtime's own error text also lands on that stderr, so on failure the
    caller reads it back from there.
    """
    argv = [*rt.argv, "run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file)]
    try:
        done = await run_tool(
            [*argv, container_id],
            timeout=rt.timeout,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
        )
    except TimeoutError:
        raise RuntimeFailure("run", None, f"timed out after {rt.timeout}s") from None
    if done.returncode != 0:
        raise RuntimeFailure("run", done.returncode, "see the run's stderr")


async def runtime_exec(
    rt: Runtime,
    container_id: str,
    process_json: Path,
    stdio: tuple[int, int, int],
    *,
    internal_pid_file: Path | None = None,
) -> asyncio.subprocess.Process:
    """``exec --process``: start a process in the running container and return the
    runtime's own process, which stays in the foreground until that process ends and
    exits with its status. Not through ``run_tool``: it lives as long as the process
    it runs, whose caller owns the timeout (and kills it).

    runc and crun forward the signals their ``exec`` receives to the process; runsc
    does not, so there ``internal_pid_file`` (runsc only) records the process's pid
    inside the sandbox, for ``runtime_kill(..., pid=)``."""
    extra = ["--internal-pid-file", str(internal_pid_file)] if internal_pid_file else []
    argv = [*rt.argv, "exec", *extra, "--process", str(process_json), container_id]
    with reaper.spawning() as spawned:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            close_fds=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )
        spawned(proc)
    return proc


async def runtime_start(rt: Runtime, container_id: str) -> None:
    await _verb(rt, ["start", container_id])


async def runtime_kill(
    rt: Runtime, container_id: str, signal: str = "KILL", *, pid: int | None = None
) -> None:
    """Signal the container's init; when it dies the kernel kills the whole pid namespace.
    ``pid`` (runsc only): signal that process of the sandbox instead."""
    target = ["--pid", str(pid)] if pid is not None else []
    await _verb(rt, ["kill", *target, container_id, signal])


async def runtime_delete(rt: Runtime, container_id: str) -> None:
    """Delete the container, killing it first if it still runs (idempotent)."""
    try:
        await _verb(rt, ["delete", "--force", container_id])
    except RuntimeFailure as exc:
        if "does not exist" not in exc.stderr and "not exist" not in exc.stderr:
            raise


async def runtime_list(rt: Runtime) -> list[str]:
    """Ids of every container in this runtime's state directory."""
    if not rt.root.exists():
        return []
    out = await _verb(rt, ["list", "--format", "json"])
    entries = json.loads(out or "[]") or []
    return [e["id"] for e in entries]


_versions: dict[str, str] = {}


async def runtime_version(rt: Runtime) -> str:
    """First line of ``--version``, e.g. ``runc version 1.1.5`` → ``1.1.5``."""
    if rt.binary not in _versions:
        done = await run_tool([rt.binary, "--version"], timeout=rt.timeout)
        first = (done.stdout.splitlines() or ["unknown"])[0]
        _versions[rt.binary] = first.split("version", 1)[-1].strip() or first
    return _versions[rt.binary]
