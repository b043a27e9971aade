"""/api/v1/audit: the hash-chained record of every state-changing request (admins)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from crucible.api.deps import AdminDep, CursorDep, ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import AuditList, AuditPublic
from crucible.core.errors import InvalidSubmission
from crucible.store.audit import AuditFilter

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", responses=responses(401, 403, 422))
async def list_audit(
    service: ServiceDep,
    _admin: AdminDep,
    cursor: CursorDep,
    actor: Annotated[str | None, Query(max_length=100, description="key id or name")] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="e.g. submit_evaluation")
    ] = None,
    target: Annotated[
        str | None, Query(max_length=200, description="evaluation, batch or key id")
    ] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AuditList:
    """Entries newest first: who (key id and name), what, target, when, source address,
    request id and outcome (HTTP status), with the chain's hashes."""
    for name, when in (("since", since), ("until", until)):
        if when is not None and when.tzinfo is None:
            raise InvalidSubmission(f"{name} needs a time zone (e.g. Z)", field=name)
    where = AuditFilter(actor=actor, action=action, target=target, since=since, until=until)
    rows, nxt = await asyncio.to_thread(
        service.access.audit.list, where, cursor=cursor, limit=limit
    )
    return AuditList.of([AuditPublic.model_validate(r, from_attributes=True) for r in rows], nxt)
