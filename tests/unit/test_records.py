"""Public records rendered once: ``RecordCache`` and the list's JSON."""

from __future__ import annotations

import json
from pathlib import Path

from crucible.core.lifecycle import Priority, Status
from crucible.domain.evaluations import EvaluationList, EvaluationPublic
from crucible.services.records import (
    RecordCache,
    evaluation_fields,
    evaluation_list_json,
    evaluation_public,
)
from crucible.store import EvaluationFilter, NewEvaluation, Store

REQUEST = {
    "language": "python",
    "code": "print(1)",
    "files": None,
    "entrypoint": None,
    "stdin": "",
    "args": [],
    "runtime": "crun",
    "limits": {
        "timeout_s": 5,
        "cpu_s": 5,
        "memory_mb": 256,
        "pids": 64,
        "cpus": 1,
        "output_bytes": 65536,
        "disk_mb": 64,
    },
    "priority": "normal",
    "expected_output": None,
    "test_code": None,
}


def record(n: int, status: Status = Status.completed, error: str = "") -> EvaluationPublic:
    return EvaluationPublic.model_validate(
        {
            "id": f"ev_{n}",
            "status": status,
            "batch_id": None,
            "created_at": "2026-12-04T12:00:00Z",
            "started_at": None,
            "finished_at": None,
            "queue_wait_ms": None,
            "attempts": 1,
            "error": error or None,
            "request": {**REQUEST, "labels": {}},
            "result": None,
        }
    )


def test_only_final_records_are_kept() -> None:
    cache = RecordCache(1 << 20)
    for status in (Status.queued, Status.running):
        cache.render(record(1, status))
        assert cache.get("ev_1") is None
    data = cache.render(record(1, Status.error, "boom"))
    assert cache.get("ev_1") == data
    assert json.loads(data) == record(1, Status.error, "boom").model_dump(mode="json")


def test_the_least_recently_used_go_first_and_the_bytes_stay_bounded() -> None:
    one = len(RecordCache(1 << 20).render(record(10)))
    cache = RecordCache(one * 20)  # room for twenty (ids of one more digit aside)
    for n in range(10, 30):
        cache.render(record(n))
    assert cache.size == (20, one * 20)
    assert cache.get("ev_10") is not None  # now the most recently used
    cache.render(record(30))
    assert cache.get("ev_11") is None
    assert all(cache.get(f"ev_{n}") is not None for n in (10, *range(12, 31)))
    assert cache.size[1] <= cache.max_bytes
    off = RecordCache(0)
    off.render(record(1))
    assert off.get("ev_1") is None and off.size == (0, 0)


def test_a_record_larger_than_a_sixteenth_of_the_cache_is_not_kept() -> None:
    cache = RecordCache(1 << 16)
    big = record(1, Status.error, "x" * (1 << 13))
    cache.render(big)
    assert cache.get("ev_1") is None


def test_the_list_json_is_the_validated_page_whether_records_are_held_or_not(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    store.migrate()
    for n in range(4):
        store.create_evaluation(
            NewEvaluation(
                id=f"ev_{n}",
                priority=Priority.normal,
                language="python",
                request=REQUEST,
                request_hash=f"h{n}",
                labels={"n": str(n)},
            )
        )
    for n in (1, 2):
        claim = store.claim(f"ev_{n}")
        assert claim is not None
        store.finish(claim, Status.error, error=f"boom {n}")
    where = EvaluationFilter()
    full = store.list_records(where, cursor=None, limit=3)
    expected = EvaluationList.model_validate(
        {
            "items": [
                evaluation_fields(full.rows[i], full.labels[full.rows[i].seq]) for i in full.ids
            ],
            "next_cursor": str(full.next_cursor),
        }
    ).model_dump(mode="json")

    cache = RecordCache(1 << 20)
    cold = evaluation_list_json(full, {}, cache)
    assert json.loads(cold) == expected
    assert cache.size[0] == 2  # the two finished ones
    held = {i: data for i in full.ids if (data := cache.get(i)) is not None}
    warm_page = store.list_records(where, cursor=None, limit=3, known=held.__contains__)
    assert sorted(warm_page.rows) == ["ev_3"]  # the queued one, read again
    assert json.loads(evaluation_list_json(warm_page, held, cache)) == expected
    # A record deleted between the page's reads is left out, not an error.
    gone = warm_page._replace(rows={})
    assert [r["id"] for r in json.loads(evaluation_list_json(gone, held, cache))["items"]] == [
        "ev_2",
        "ev_1",
    ]
    row = full.rows["ev_1"]
    assert json.loads(held["ev_1"]) == evaluation_public(row, {"n": "1"}).model_dump(mode="json")
    store.dispose()
