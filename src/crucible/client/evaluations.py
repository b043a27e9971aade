"""The evaluation and batch routes as :class:`~crucible.client.transport.Call`\\ s, each
written once (``Client`` sends them; see its methods for what they do)."""

from __future__ import annotations

from typing import Any

from crucible.client.transport import Call, content, model, text
from crucible.domain.evaluations import (
    BatchCreated,
    BatchPublic,
    CancelPublic,
    EvaluationList,
    EvaluationPublic,
    QueuePublic,
)


def submit_call(
    body: dict[str, Any],
    wait: float | None,
    idempotency_key: str | None,
    read_timeout: float | None,
) -> Call[EvaluationPublic]:
    """POST /evaluations; with ``wait`` the answer may take that long beyond the
    client's ``read_timeout`` (None: no bound)."""
    return Call(
        "POST",
        "/evaluations",
        model(EvaluationPublic),
        json={k: v for k, v in body.items() if v is not None},
        headers={"Idempotency-Key": idempotency_key} if idempotency_key else {},
        params={"wait": wait} if wait else {},
        timeout=(wait or 0) + read_timeout if read_timeout else None,
    )


def get_call(evaluation_id: str) -> Call[EvaluationPublic]:
    return Call("GET", f"/evaluations/{evaluation_id}", model(EvaluationPublic))


def list_call(cursor: str | None, limit: int, filters: dict[str, Any]) -> Call[EvaluationList]:
    params = {k: v for k, v in {**filters, "cursor": cursor, "limit": limit}.items() if v}
    return Call("GET", "/evaluations", model(EvaluationList), params=params)


def cancel_call(evaluation_id: str) -> Call[CancelPublic]:
    return Call("POST", f"/evaluations/{evaluation_id}/cancel", model(CancelPublic))


def output_call(evaluation_id: str, stream: str) -> Call[str]:
    return Call("GET", f"/evaluations/{evaluation_id}/output/{stream}", text)


def file_call(evaluation_id: str, path: str) -> Call[bytes]:
    return Call("GET", f"/evaluations/{evaluation_id}/files/{path}", content)


def batch_call(
    items: list[dict[str, Any]],
    defaults: dict[str, Any] | None,
    labels: dict[str, str] | None,
    environment: str | None,
    idempotency_key: str | None,
) -> Call[BatchCreated]:
    """POST /batches; ``environment`` goes into ``defaults`` (an item's own wins)."""
    body: dict[str, Any] = {"items": items}
    if environment is not None:
        defaults = {**(defaults or {}), "environment": environment}
    if defaults:
        body["defaults"] = defaults
    if labels:
        body["labels"] = labels
    return Call(
        "POST",
        "/batches",
        model(BatchCreated),
        json=body,
        headers={"Idempotency-Key": idempotency_key} if idempotency_key else None,
        timeout=max(60.0, len(items) / 50),
    )


def get_batch_call(batch_id: str) -> Call[BatchPublic]:
    return Call("GET", f"/batches/{batch_id}", model(BatchPublic))


def cancel_batch_call(batch_id: str) -> Call[BatchPublic]:
    return Call("POST", f"/batches/{batch_id}/cancel", model(BatchPublic))


def queue_call() -> Call[QueuePublic]:
    return Call("GET", "/queue", model(QueuePublic))
