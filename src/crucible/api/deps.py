"""Request dependencies, as ``Annotated`` aliases; authentication lives here.

Every /api/v1 route depends on :func:`authenticate` (set on the routers in app.py):
``Authorization: Bearer crk_…`` → the caller's :class:`KeyRecord`, kept on
``request.state.principal`` for the audit middleware. ``AdminDep`` adds the role check.
The exception is the agent's hot path, POST …/exec: it takes a :class:`Claim`
(``ClaimDep``), the key as this process last verified it, without a read, and the
service checks the key again in the transaction that records the exec (see
``crucible.services.access.Claim``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crucible.core.errors import Forbidden, InvalidSubmission, Unauthenticated
from crucible.services.access import Claim
from crucible.services.evaluations import Service
from crucible.store.keys import KeyRecord

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`crk_…`) from `crucible keys create` or POST /api/v1/keys",
)


# The dependencies are coroutines even where nothing is awaited: FastAPI runs a plain
# function in a worker thread, a hop per dependency per request.
async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def authenticate(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> KeyRecord:
    """The caller's key; raises Unauthenticated (401) when missing, unknown or revoked
    (revoked elsewhere: within key_cache_s, see crucible.services.access.VerifiedKeys)."""
    if credentials is None:
        raise Unauthenticated("an API key is required: send Authorization: Bearer <key>")
    key = await service.access.authenticate(credentials.credentials)
    if key is None:
        raise Unauthenticated("the API key is not valid (unknown or revoked)")
    request.state.principal = key
    return key


async def claim(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Claim:
    """The caller's key as verified before (no read), else :func:`authenticate`'s;
    whatever takes it checks it again (Claim). 401 when missing, unknown or revoked."""
    found = None if credentials is None else service.access.claim(credentials.credentials)
    if found is None:
        return Claim(await authenticate(request, service, credentials))
    request.state.principal = found.key
    return found


PrincipalDep = Annotated[KeyRecord, Depends(authenticate)]
ClaimDep = Annotated[Claim, Depends(claim)]


async def require_admin(key: PrincipalDep) -> KeyRecord:
    """The caller's key if it is an admin's; raises Forbidden (403) otherwise."""
    if not key.admin:
        raise Forbidden("this needs an admin key")
    return key


AdminDep = Annotated[KeyRecord, Depends(require_admin)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="same key + same body → the original evaluation; different body → 409",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", description="resume after this event id (SSE reconnect)"),
]


async def parse_cursor(
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> int | None:
    """A list's ``?cursor=`` (the ``next_cursor`` a previous page gave) as a number."""
    if cursor is None:
        return None
    try:
        value = int(cursor)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:  # a database integer (beyond it, SQLite raises)
        raise InvalidSubmission("cursor is not one this server gave", field="cursor")
    return value


CursorDep = Annotated[int | None, Depends(parse_cursor)]
