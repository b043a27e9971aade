"""Request dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from crucible.service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
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
