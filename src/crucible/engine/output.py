"""Collects a run's stdout and stderr: capped, streamed live, status trailer removed."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

OutputCallback = Callable[[str, bytes], None]
"""Called as ``on_output(stream, chunk)`` with ``stream`` "stdout" or "stderr"."""


@dataclass
class ExitStatus:
    exit_code: int | None = None
    signal: int | None = None
    wall_us: int | None = None  # the program's own run time, measured by the init


# What follows a trailer's "\x1ecrucible-status:<nonce>:" (see init.c).
_TRAILER_FIELDS = re.compile(rb"(exit|signal):(\d+):(\d+)\n")


@dataclass
class OutputCollector:
    """Keeps up to ``cap`` bytes of stdout+stderr; sets ``exceeded`` past it.

    stderr also carries the init's status trailer (see init.c), framed by ``nonce``:
    it is cut out before anything is stored or forwarded.
    """

    cap: int
    nonce: str
    on_output: OutputCallback | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    exceeded: asyncio.Event = field(default_factory=asyncio.Event)
    status: ExitStatus | None = None
    _carry: bytes = b""

    def __post_init__(self) -> None:
        self._marker = b"\x1ecrucible-status:" + self.nonce.encode() + b":"

    def _find_trailer(self, data: bytes) -> tuple[int, int, re.Match[bytes]] | None:
        """The status trailer framed by our nonce in ``data``: where it starts and ends,
        and its fields. (One pattern for every run: a pattern per nonce was compiled
        per run, more CPU than the rest of the output handling.)"""
        start = data.find(self._marker)
        while start != -1:
            fields = _TRAILER_FIELDS.match(data, start + len(self._marker))
            if fields:
                return start, fields.end(), fields
            start = data.find(self._marker, start + 1)
        return None

    @property
    def total(self) -> int:
        return len(self.stdout) + len(self.stderr)

    def _store(self, stream: str, data: bytes) -> None:
        if not data:
            return
        buf = self.stdout if stream == "stdout" else self.stderr
        room = self.cap - self.total
        kept = data[: max(room, 0)]
        if len(kept) < len(data):
            setattr(self, f"{stream}_truncated", True)
            self.exceeded.set()
        if kept:
            buf.extend(kept)
            if self.on_output is not None:
                self.on_output(stream, kept)

    def feed(self, stream: str, data: bytes) -> None:
        if stream == "stdout":
            self._store(stream, data)
            return
        data = self._carry + data
        self._carry = b""
        found = self._find_trailer(data)
        if found:
            begin, end, match = found
            kind, number = match.group(1), int(match.group(2))
            self.status = ExitStatus(
                exit_code=number if kind == b"exit" else None,
                signal=number if kind == b"signal" else None,
                wall_us=int(match.group(3)),
            )
            data = data[:begin] + data[end:]
        else:
            # Hold back a possible partial trailer at the end of this read.
            start = data.rfind(b"\x1e")
            if start != -1 and len(data) - start < len(self._marker) + 48:
                self._carry, data = data[start:], data[:start]
        self._store(stream, data)

    def finish(self) -> None:
        """Flush bytes held back as a possible partial trailer."""
        if self._carry:
            carry, self._carry = self._carry, b""
            self._store("stderr", carry)


async def pump(fd: int, stream: str, feed: OutputCallback, chunk: int) -> None:
    """Read ``fd`` until EOF, handing each read to ``feed(stream, data)`` (e.g. an
    OutputCollector's ``feed``); closes ``fd``."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            try:
                data = os.read(fd, chunk)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            if not data:
                return
            feed(stream, data)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
