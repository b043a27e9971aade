"""The exec agent (init.c's ``--session --agent``, engine/agent.py) against hostile
programs, under runc and crun (gVisor keeps the runtime's ``exec``).

The program inside runs as the sandbox's root (or another uid) in the same sandbox as
the agent: it must not reach the channel (fds, /proc/1, ptrace-like calls, sockets),
must not forge an exec's status or read another exec's output through it, and killing
the agent's pieces ends an exec or the sandbox cleanly. Every test also checks, by
``host_unharmed``, that the host is intact and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crucible.core.errors import SandboxStopped
from crucible.engine import Sandbox
from crucible.engine.models import SessionSpec
from crucible.engine.session import Session
from support.sandbox_fixtures import HAVE, SESSION_LIMITS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["runc", "crun"])
async def agent_session(
    request: pytest.FixtureRequest, sandbox: Sandbox, host_unharmed: Path
) -> AsyncIterator[Session]:
    if not HAVE[request.param]:
        pytest.fail(f"{request.param} is not installed; `make test` installs it")
    made = await sandbox.sessions.create(
        SessionSpec(runtime=request.param, limits=SESSION_LIMITS),
        session_id=f"sb_agent{secrets.token_hex(4)}",
        exec_agent=True,
    )
    assert made.exec_mechanism == "agent"
    yield made
    await made.close()


async def py(session: Session, code: str, **kwargs: object) -> str:
    r = await session.exec(["python3", "-c", code], timeout_s=60, **kwargs)  # type: ignore[arg-type]
    assert r.returncode == 0, r
    return r.stdout.decode()


async def still_serves(session: Session) -> None:
    r = await session.exec(["sh", "-c", "echo alive"], timeout_s=30)
    assert (r.returncode, r.stdout) == (0, b"alive\n"), r
    assert session.alive


# What the exec holds, and what it can reach of PID 1, as root and as another uid.
_REACH = r"""
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
out = []
out.append("fds " + ",".join(sorted(os.listdir("/proc/self/fd"), key=int)))
written = []
for fd in range(3, 1024):
    try:
        os.write(fd, b"CRUCIBLE-EXEC\0")
        written.append(fd)
    except OSError:
        pass
out.append(f"writable {written}")
# /proc/1/fd may be listed (its names are numbers), never followed or opened.
try:
    entries = [f"/proc/1/fd/{n}" for n in os.listdir("/proc/1/fd")]
except PermissionError:  # another uid than the agent's may not even list them
    entries = []
out.append(f"entries {len(entries)}")
for path in (*entries, "/proc/1/fd/0", "/proc/1/fdinfo/0", "/proc/1/mem", "/proc/1/environ",
             "/proc/1/map_files", "/proc/1/root/.", "/proc/1/cwd/."):
    try:
        if path.startswith("/proc/1/fd/"):
            try:
                os.readlink(path)
                out.append(f"{path} READLINK")
                continue
            except OSError:
                pass
        if path.endswith(("map_files", "/.")):
            os.listdir(path)
        else:
            os.open(path, os.O_RDWR if path.endswith("/0") else os.O_RDONLY)
        out.append(f"{path} OPEN")
    except OSError as e:
        out.append(f"{path} {errno.errorcode[e.errno]}")
pidfd = os.pidfd_open(1)
fd = libc.syscall(438, pidfd, 0, 0)  # pidfd_getfd(PID 1, its fd 0: the channel)
out.append(f"pidfd_getfd {fd} {errno.errorcode.get(ctypes.get_errno(), 0)}")
fd = libc.syscall(101, 16, 1, 0, 0)  # ptrace(PTRACE_ATTACH, 1)
out.append(f"ptrace {fd} {errno.errorcode.get(ctypes.get_errno(), 0)}")
buf = ctypes.create_string_buffer(8)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = iovec(0x400000, 8)
n = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out.append(f"process_vm_readv {n} {errno.errorcode.get(ctypes.get_errno(), 0)}")
# Every unix socket the sandbox's network namespace has: none answers as the agent.
names = [line.split()[-1] for line in open("/proc/net/unix").read().splitlines()[1:]
         if len(line.split()) > 7]
for name in names:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(name.replace("@", "\0", 1) if name.startswith("@") else name)
        s.send(b"\1\0\0\0\0\0\0\0" * 2)
    except OSError:
        pass
out.append(f"sockets {len(names)}")
print("\n".join(out))
"""


@pytest.mark.parametrize("user", ["", "agent"])
async def test_the_channel_is_out_of_reach(agent_session: Session, user: str) -> None:
    if user:
        r = await agent_session.exec(["adduser", "--disabled-password", "--comment", "", user])
        assert r.returncode == 0, r
    lines = (await py(agent_session, _REACH, user=user or None)).splitlines()
    found = dict(line.split(" ", 1) for line in lines)
    # Only the exec's own stdio (and the directory listing's fd) are open.
    assert found["fds"] in ("0,1,2,3", "0,1,2"), found["fds"]
    assert found["writable"] == "[]", found
    assert int(found["entries"]) >= (0 if user else 1)
    for path, what in found.items():
        if path.startswith("/proc/1/"):
            assert what in ("EACCES", "EPERM"), (path, what)
    assert found["pidfd_getfd"].startswith("-1 "), found  # not in the seccomp profile
    assert found["ptrace"].startswith("-1 "), found
    assert found["process_vm_readv"] == "-1 EPERM", found  # allowed by seccomp: dumpable
    await still_serves(agent_session)


async def test_a_status_written_by_the_program_is_only_output(agent_session: Session) -> None:
    # A reply record as the agent writes it (exit 0 for exec 1..64), on every stream.
    code = (
        "import struct, sys\n"
        "fake = b''.join(struct.pack('=IiQqqqq', 1, 0, i, 1, 1, 1, 1) for i in range(1, 65))\n"
        "sys.stdout.buffer.write(fake); sys.stderr.buffer.write(fake)\n"
        "sys.exit(3)\n"
    )
    r = await agent_session.exec(["python3", "-c", code], timeout_s=60)
    assert r.returncode == 3 and len(r.stdout) == 64 * 48 and len(r.stderr) == 64 * 48, r
    await still_serves(agent_session)


async def test_killing_pid_1_from_inside_does_nothing(agent_session: Session) -> None:
    # SIGKILL and SIGSTOP from inside the namespace never reach its init; others have
    # no handler but SIGCHLD's signalfd; a flood of SIGCHLD and real-time signals
    # only wakes it.
    script = (
        "kill -KILL 1; kill -STOP 1; kill -TERM 1; kill -SEGV 1; kill -PIPE 1; "
        "i=0; while [ $i -lt 300 ]; do kill -CHLD 1; kill -RTMIN 1; kill -USR1 1; "
        "i=$((i+1)); done; echo done"
    )
    r = await agent_session.exec(["sh", "-c", script], timeout_s=60)
    assert r.stdout == b"done\n", r
    await still_serves(agent_session)


async def test_killing_the_exec_wrapper_ends_that_exec_only(agent_session: Session) -> None:
    # $PPID of the shell is the wrapper the agent forked; root may kill it.
    r = await agent_session.exec(["sh", "-c", "kill -KILL $PPID; sleep 30"], timeout_s=60)
    assert r.returncode == 128 + 9 and not r.timed_out, r
    await still_serves(agent_session)


async def test_kill_minus_one_hits_other_execs_not_the_agent(agent_session: Session) -> None:
    other = asyncio.ensure_future(agent_session.exec(["sleep", "60"], timeout_s=60))
    await asyncio.sleep(0.5)  # not a bound: a head start; the sleep may not have begun
    r = await agent_session.exec(["sh", "-c", "kill -KILL -1; echo after"], timeout_s=30)
    assert r.returncode in (0, 137), r  # kill -1 spares the caller
    slept = await asyncio.wait_for(other, 30)  # bound: it was killed, not slept out
    assert slept.returncode == 137 and not slept.timed_out, slept
    await still_serves(agent_session)


async def test_the_host_killing_the_init_ends_a_running_exec(agent_session: Session) -> None:
    running = asyncio.ensure_future(agent_session.exec(["sleep", "100"], timeout_s=100))
    await asyncio.sleep(0.5)  # a head start (see above)
    started = time.monotonic()
    os.kill(agent_session._container.pid, 9)
    with pytest.raises(SandboxStopped):
        await asyncio.wait_for(running, 10)  # bound: the agent's EOF arrives at once
    assert time.monotonic() - started < 10
    assert not agent_session.alive
    with pytest.raises(SandboxStopped):
        await agent_session.exec(["true"])


async def test_concurrent_execs_keep_their_own_output(agent_session: Session) -> None:
    flood = "yes flood | head -c 50000000; echo end-flood >&2"
    quiet = [f"for i in 1 2 3; do echo q{n}-$i; echo e{n}-$i >&2; done" for n in range(5)]
    runs = [agent_session.exec(["sh", "-c", flood], timeout_s=60, output_cap=1 << 16)]
    runs += [agent_session.exec(["sh", "-c", q], timeout_s=60) for q in quiet]
    first, *rest = await asyncio.gather(*runs)
    assert first.stdout_truncated and set(first.stdout) <= set(b"flood\ny"), first.stderr
    assert first.stderr == b"end-flood\n"
    for n, r in enumerate(rest):
        assert r.stdout == b"".join(b"q%d-%d\n" % (n, i) for i in (1, 2, 3)), r
        assert r.stderr == b"".join(b"e%d-%d\n" % (n, i) for i in (1, 2, 3)), r
    await still_serves(agent_session)


async def test_a_daemon_outlives_its_exec_and_does_not_hold_it(agent_session: Session) -> None:
    started = time.monotonic()
    # The daemon keeps the exec's stdout: the exec still ends (the drain is bounded).
    r = await agent_session.exec(["sh", "-c", "(setsid sleep 77 &) ; echo forked"], timeout_s=30)
    assert r.stdout == b"forked\n" and r.returncode == 0, r
    assert time.monotonic() - started < 10
    ps = (await agent_session.exec(["ps", "-eo", "args"])).stdout.decode()
    assert "sleep 77" in ps
    await still_serves(agent_session)


async def test_timeout_kills_the_whole_tree(agent_session: Session) -> None:
    script = "sleep 1001 & (sleep 1002 &) ; setsid sleep 1003 & sleep 1000"
    r = await agent_session.exec(["sh", "-c", script], timeout_s=1)
    assert r.timed_out and r.returncode == 137, r
    ps = (await agent_session.exec(["ps", "-eo", "args"])).stdout.decode()
    assert "sleep 100" not in ps, ps
    await still_serves(agent_session)


async def test_a_fork_bomb_is_contained_and_the_agent_recovers(agent_session: Session) -> None:
    # Every child becomes a small `sleep` (a bomb of whole Pythons would hit the memory
    # limit first, and the OOM killer would end the exec before its timeout); the pids
    # limit stops the forks, the parent keeps trying until the timeout.
    bomb = (
        "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n"
        "            os.execv('/bin/sleep', ['sleep', '1000'])\n    except OSError:\n"
        "        pass\n"
    )
    r = await agent_session.exec(["python3", "-c", bomb], timeout_s=3)
    assert r.timed_out, r
    ps = (await agent_session.exec(["ps", "-eo", "args"])).stdout.decode()
    assert "sleep 1000" not in ps, ps
    await still_serves(agent_session)


# What an exec is given, by the agent or by the runtime's exec: the same.
_PROBE = r"""
import os
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
for key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp"):
    print(key, status[key].split())
print(open("/proc/self/limits").read())
print(open("/proc/self/cgroup").read())
print(sorted((n, os.readlink(f"/proc/self/ns/{n}")) for n in os.listdir("/proc/self/ns")))
print(open("/proc/self/uid_map").read(), os.getcwd(), os.getpgrp() == os.getsid(0))
print(sorted(k for k in os.environ))
"""


@pytest.mark.parametrize("runtime_name", ["runc", "crun"])
async def test_an_agent_exec_gets_what_a_runtime_exec_gets(
    sandbox: Sandbox, host_unharmed: Path, runtime_name: str
) -> None:
    made = await sandbox.sessions.create(
        SessionSpec(runtime=runtime_name, limits=SESSION_LIMITS),  # type: ignore[arg-type]
        session_id=f"sb_parity{secrets.token_hex(4)}",
        exec_agent=True,
    )
    try:
        via_agent = await py(made, _PROBE)
        made._agent, saved = None, made._agent  # the same sandbox, through `exec`
        try:
            via_runtime = await py(made, _PROBE)
        finally:
            made._agent = saved
    finally:
        await made.close()
    # The session id (its own pgrp) differs by design: the agent's wrapper is setsid.
    assert via_agent.replace("True", "?") == via_runtime.replace("False", "?").replace(
        "True", "?"
    ), (via_agent, via_runtime)
    assert "Seccomp ['2']" in via_agent and "NoNewPrivs ['1']" in via_agent
