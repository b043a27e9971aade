"""Each operation of the API described once, as a :class:`Call`; sent by one of two thin
transports, :class:`SyncTransport` (``Client``) and :class:`AsyncTransport`
(``AsyncClient``).

A ``Call`` is the whole of an operation as the client sees it: the request (method,
path, query, body, headers, how long to wait), how a success is read, which file the
request is about (so the server's file error codes map back to the
``crucible.core.errors.SandboxFile*`` exceptions, :func:`crucible.client.errors.check`)
and whether a lost answer is sent again. The transports only build the request with
httpx's ``build_request``, ``send`` it (sleeping between tries in their own way) and
hand the response to the call; so a new route is written once, in a function that
returns its ``Call``, and both clients get it by a one-line method.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel

from crucible.client.errors import check
from crucible.client.events import ServerEvent

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# A call marked ``retried`` whose answer was lost is sent again after these waits.
RETRIES_S = (0.5, 1.0, 2.0)
# What an API instance answers when the answer was lost behind it (its proxy, or the
# sandbox host it routes to): the request may have run, so it is retried as lost.
RETRY_STATUS = frozenset({502, 503, 504})
# A file sent as a body goes in chunks of this size (never read whole).
CHUNK = 1 << 20

Timeout = float | None | httpx._client.UseClientDefault  # the type of httpx.USE_CLIENT_DEFAULT


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how its answer is read. ``content``: bytes, or an open binary
    file streamed in chunks; ``file``: the sandbox path a file operation is about;
    ``retried``: a lost answer (no response, or 502/503/504) is sent again, for a
    request the server deduplicates (an exec under its Idempotency-Key)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: httpx.QueryParams | Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | IO[bytes] | None = None
    headers: Mapping[str, str] | None = None
    timeout: Timeout = httpx.USE_CLIENT_DEFAULT
    file: str | None = None
    retried: bool = False

    def answer(self, response: httpx.Response) -> T:
        """The parsed success; raises what :func:`~crucible.client.errors.check` maps
        an error response to."""
        return self.parse(check(response, path=self.file))

    def retry_after(self, attempt: int, response: httpx.Response | None) -> float | None:
        """How long to wait before sending this call again, or None: its answer (or
        ``response`` None: its transport error) stands. Only a lost answer is retried,
        never the server's own refusal."""
        if not self.retried or attempt >= len(RETRIES_S):
            return None
        if response is not None and response.status_code not in RETRY_STATUS:
            return None
        return RETRIES_S[attempt]


def model(kind: type[M]) -> Callable[[httpx.Response], M]:
    """Reads a JSON body as ``kind``."""
    return lambda response: kind.model_validate(response.json())


def models(kind: type[M]) -> Callable[[httpx.Response], list[M]]:
    """Reads a JSON array as a list of ``kind``."""
    return lambda response: [kind.model_validate(item) for item in response.json()]


def nothing(_response: httpx.Response) -> None:
    return None


def text(response: httpx.Response) -> str:
    return response.text


def content(response: httpx.Response) -> bytes:
    return response.content


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


async def _achunks(f: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, CHUNK):
        yield chunk


def _request(
    http: httpx.Client | httpx.AsyncClient,
    call: Call[Any],
    stream: Callable[[IO[bytes]], Iterator[bytes] | AsyncIterator[bytes]],
) -> httpx.Request:
    body = call.content
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        content=body if body is None or isinstance(body, bytes) else stream(body),
        headers=call.headers,
        timeout=call.timeout,
    )


class SyncTransport:
    """Sends calls through an ``httpx.Client``; follows event streams."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def __call__(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self.http.send(_request(self.http, call, _chunks))
            except httpx.TransportError:
                if (delay := call.retry_after(attempt, None)) is None:
                    raise
            else:
                if (delay := call.retry_after(attempt, response)) is None:
                    return call.answer(response)
            time.sleep(delay)
            attempt += 1

    def events(
        self, path: str, last_event_id: int | None, final: set[str]
    ) -> Iterator[ServerEvent]:
        """Follow an event stream, reconnecting with Last-Event-ID after a drop."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                with connect_sse(self.http, "GET", path, headers=headers, timeout=None) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        check(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:
                            # A keep-alive comment after an event: httpx-sse hands it
                            # over as an event with the last id and no data.
                            continue
                        event = ServerEvent(int(sse.id or 0), sse.event, sse.json())
                        last_event_id = event.id
                        failures = 0
                        yield event
                        if event.type in final:
                            return
                raise httpx.RemoteProtocolError("event stream ended early")
            except httpx.TransportError:
                failures += 1
                if failures > 5:
                    raise
                time.sleep(min(0.2 * 2**failures, 5.0))


class AsyncTransport:
    """Sends calls through an ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __call__(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self.http.send(_request(self.http, call, _achunks))
            except httpx.TransportError:
                if (delay := call.retry_after(attempt, None)) is None:
                    raise
            else:
                if (delay := call.retry_after(attempt, response)) is None:
                    return call.answer(response)
            await asyncio.sleep(delay)
            attempt += 1
