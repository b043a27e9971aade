"""The engine's end of the exec agent's channel (engine/agent.py), with the test as the
init on the other end of a real socketpair: frames and fds as init.c reads them,
replies matched to their exec, and an init that goes away failing what is in flight."""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import struct

import pytest

from crucible.core.errors import SandboxStopped
from crucible.engine import agent

HEADER = struct.Struct("=IIQ")
REPLY = struct.Struct("=IiQqqqq")


def read_request(init: socket.socket) -> tuple[int, int, bytes, list[int]]:
    """One request as init.c's handle_request reads it: the header with its fds, then
    the payload."""
    fds = array.array("i")
    data, ancdata, _, _ = init.recvmsg(HEADER.size, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, cdata in ancdata:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    while len(data) < HEADER.size:
        data += init.recv(HEADER.size - len(data))
    kind, length, exec_id = HEADER.unpack(data)
    payload = b""
    while len(payload) < length:
        payload += init.recv(length - len(payload))
    return kind, exec_id, payload, list(fds)


def test_the_payload_is_the_fields_init_c_reads() -> None:
    payload = agent.exec_payload("agent", "/root", "ch", ["sh", "-c", "x"], {"A": "1"})
    fields = [b"agent", b"/root", b"ch", b"3", b"sh", b"-c", b"x", b"1", b"A=1", b""]
    assert payload.split(b"\0") == fields


async def test_an_exec_round_trip_with_its_fds() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = agent.Agent(ours)
    try:
        big = ["x" * 100_000] * 20  # 2 MB: more than the socket's buffer
        run = await asyncio.wait_for(
            asyncio.gather(
                channel.start(agent.exec_payload("", "/", "-", big, {}), (0, 1, 2)),
                asyncio.to_thread(read_request, theirs),
            ),
            10,
        )
        handle, (kind, exec_id, payload, fds) = run
        assert (kind, exec_id, len(fds)) == (1, handle.id, 3)
        assert payload.count(b"x" * 100_000) == 20
        for fd in fds:
            os.close(fd)
        await channel.signal(handle.id, signal.SIGUSR1)
        kind, exec_id, payload, fds = await asyncio.to_thread(read_request, theirs)
        assert (kind, exec_id, payload, fds) == (2, handle.id, struct.pack("=i", 10), [])
        # A reply for an exec nobody started is dropped; the right one ends the wait.
        theirs.sendall(REPLY.pack(1, 0, 999, 0, 0, 0, 0) + REPLY.pack(1, 3, handle.id, 5, 6, 7, 8))
        done = await asyncio.wait_for(handle.wait(), 10)
        assert done == agent.AgentExit(code=3, wall_us=5, cpu_us=13, max_rss_kb=8)
    finally:
        channel.close()
        theirs.close()


async def test_the_init_going_away_fails_what_is_in_flight() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = agent.Agent(ours)
    handle = await channel.start(agent.exec_payload("", "/", "-", ["true"], {}), (0, 1, 2))
    theirs.close()  # the init died
    with pytest.raises(SandboxStopped):
        await asyncio.wait_for(handle.wait(), 10)
    assert channel.closed
    with pytest.raises(SandboxStopped):
        await channel.start(agent.exec_payload("", "/", "-", ["true"], {}), (0, 1, 2))
