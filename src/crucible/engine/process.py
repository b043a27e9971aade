"""Every helper subprocess (the runtimes' verbs, compilers of the init) goes through here:
one timeout, one output cap and one concurrency bound for all of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from dataclasses import dataclass

from crucible.engine import reaper

_MAX_CAPTURE = 64 << 10
_MAX_IN_FLIGHT = 32  # runtime verbs running at once, per event loop
_bounds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _bound() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _bounds:
        _bounds[loop] = asyncio.Semaphore(_MAX_IN_FLIGHT)
    return _bounds[loop]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


async def run_tool(
    argv: list[str],
    *,
    timeout: float,
    stdin: int | None = asyncio.subprocess.DEVNULL,
    stdout: int | None = asyncio.subprocess.PIPE,
    stderr: int | None = asyncio.subprocess.PIPE,
    pass_fds: tuple[int, ...] = (),
) -> Completed:
    """Run ``argv`` to completion; kill it after ``timeout`` seconds.

    Captured output is capped at 64 KiB per stream. Raises ``TimeoutError`` when the
    tool had to be killed, ``FileNotFoundError`` when it is not installed.
    """
    async with _bound():
        with reaper.spawning() as spawned:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=pass_fds,
                close_fds=True,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
            spawned(proc)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            # Never leave a runtime verb running (or its transport open) behind a
            # timed-out or cancelled caller.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
    return Completed(
        argv=tuple(argv),
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=(out or b"")[:_MAX_CAPTURE].decode("utf-8", "replace"),
        stderr=(err or b"")[:_MAX_CAPTURE].decode("utf-8", "replace"),
    )
