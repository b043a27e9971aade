"""The store's share of one evaluation, alone: a batch of ``--n`` in SQLite, then each
claimed and finished with a result the size of a hello world's, and the final record read
back, as the executor does. Prints this process's CPU per evaluation (time.process_time,
which moves far less with other load than wall time), best of ``--rounds``; then the CPU of
one claim and one finish behind queues of ``--depths`` evaluations (50 of each, best of
``--rounds``): a claim must not cost more behind a longer queue.

    .venv/bin/python bench/store_path.py [--n 600] [--rounds 3] [--depths 100,1000,10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from crucible.core.lifecycle import Priority, Status
from crucible.store import NewEvaluation, Store

RESULT = {
    "stdout": "hello\n",
    "stderr": "",
    "exit_code": 0,
    "termination": "exited",
    "wall_ms": 20.0,
    "cpu_ms": 15.0,
}


def hello(i: int, **fields: Any) -> NewEvaluation:
    return NewEvaluation(
        id=f"ev_{i}",
        priority=Priority.normal,
        language="python",
        request={"code": "print('hello')", "language": "python"},
        request_hash=f"h{i}",
        **fields,
    )


def one_round(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = Store(f"sqlite:///{Path(d) / 'db.sqlite'}")
        store.migrate()
        items = [hello(i, labels={"run": "bench"}) for i in range(n)]
        store.create_batch("b_1", items, {"run": "bench"})
        finish = getattr(store, "finish_and_read", None)
        start = time.process_time()
        while (claim := store.claim_next(worker_id="w")) is not None:
            fields = {"result": RESULT, "termination": "exited", "verdict": "passed"}
            if finish is not None:
                assert finish(claim, Status.completed, **fields) is not None
            else:
                assert store.finish(claim, Status.completed, **fields)
                store.get_with_labels(claim.id)
        spent = time.process_time() - start
        store.dispose()
    return spent / n * 1000


def behind(depth: int, claims: int = 50) -> tuple[float, float]:
    """CPU ms of one claim and of one finish with ``depth`` evaluations queued."""
    with tempfile.TemporaryDirectory() as d:
        store = Store(f"sqlite:///{Path(d) / 'db.sqlite'}")
        store.migrate()
        items = [hello(i, owner_key_id=f"key_{i % 3}") for i in range(depth)]
        store.create_batch("b_1", items, {})
        start = time.process_time()
        taken = [store.claim_next(worker_id="w") for _ in range(claims)]
        claim_ms = (time.process_time() - start) / claims * 1000
        start = time.process_time()
        for claim in taken:
            assert claim is not None
            store.finish(claim, Status.completed, result=RESULT, termination="exited")
        finish_ms = (time.process_time() - start) / claims * 1000
        store.dispose()
    return claim_ms, finish_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depths", default="100,1000,10000")
    args = parser.parse_args()
    best = min(one_round(args.n) for _ in range(args.rounds))
    print(f"store CPU per evaluation (claim, finish, read back): {best:.2f} ms")
    print("\nqueued   claim ms  finish ms  (CPU, 3 owners, best of rounds)")
    for depth in (int(x) for x in args.depths.split(",")):
        runs = [behind(depth) for _ in range(args.rounds)]
        claim_ms = min(c for c, _ in runs)
        finish_ms = min(f for _, f in runs)
        print(f"{depth:>6} {claim_ms:10.2f} {finish_ms:10.2f}")


if __name__ == "__main__":
    main()
