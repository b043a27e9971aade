"""The committed OpenAPI document is what the app serves, and documents every status code."""

from __future__ import annotations

import json

from crucible.api.export_openapi import COMMITTED, openapi_document, render


def test_committed_document_is_current() -> None:
    assert COMMITTED.read_text() == render(), (
        "src/crucible/api/openapi.json is stale: run python -m crucible.api.export_openapi"
    )


def test_endpoints_document_their_status_codes() -> None:
    doc = openapi_document()
    paths = doc["paths"]
    submit = paths["/api/v1/evaluations"]["post"]["responses"]
    assert {"200", "202", "409", "413", "422", "503"} <= set(submit)
    assert {"200", "404"} <= set(paths["/api/v1/evaluations/{evaluation_id}"]["get"]["responses"])
    cancel = paths["/api/v1/evaluations/{evaluation_id}/cancel"]["post"]["responses"]
    assert {"404", "409"} <= set(cancel)
    events = paths["/api/v1/evaluations/{evaluation_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    for path, operations in paths.items():
        for method, op in operations.items():
            assert op.get("description") or op.get("summary"), f"{method} {path} undocumented"
    schemas = doc["components"]["schemas"]
    assert {"EvaluationCreate", "EvaluationPublic", "BatchCreate", "BatchPublic"} <= set(schemas)
    json.dumps(doc)


def test_sandbox_endpoints_document_their_status_codes() -> None:
    paths = openapi_document()["paths"]
    base = "/api/v1/sandboxes"
    assert {"201", "403", "422", "429", "503"} <= set(paths[base]["post"]["responses"])
    assert {"204", "404"} <= set(paths[f"{base}/{{sandbox_id}}"]["delete"]["responses"])
    assert {"200", "404", "409"} <= set(paths[f"{base}/{{sandbox_id}}/exec"]["post"]["responses"])
    read = paths[f"{base}/{{sandbox_id}}/file"]["get"]["responses"]
    assert {"403", "404", "409", "413"} <= set(read)
    assert "application/octet-stream" in read["200"]["content"]
    events = paths[f"{base}/{{sandbox_id}}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    error = openapi_document()["components"]["schemas"]["ErrorPublic"]["properties"]
    assert "error" in error
