"""The accounting and tables of bench/soak.py: what a run observed goes in, the counts
(lost, duplicated, stuck, ...) and plain and Markdown tables come out."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from _server import percentile
from crucible.services.events import IDS_PER_MS

KINDS = ("kill_worker", "kill_api", "restart_redis", "restart_postgres")

# The counts that fail the run (exit status 1) when not zero.
FAILING = (
    "lost",
    "duplicated",
    "stuck (queued at the deadline)",
    "still running (at the deadline)",
    "failed (error, cancelled, wrong output)",
    "not accepted",
    "faults that failed to inject or recover",
)

WINDOW = (
    "A fault's window: the evaluations created before the next fault and not started"
    " before this one; waits are created_at to started_at (the latest start) in the API"
    " records, t from the first submission."
)


@dataclass
class Fault:
    at: float  # epoch seconds, when the fault was injected
    kind: str
    detail: str = ""
    recovery_s: float = 0.0  # until the killed or restarted part answered again
    failed: str = ""  # the fault could not be injected or undone


@dataclass
class Stream:
    """One SSE stream followed live, over however many connections it took."""

    item: int
    evaluation_id: str
    got_result: bool = False
    result_ok: bool = False
    connections: int = 0
    ids: list[int] = field(default_factory=list)

    @property
    def gaps(self) -> bool:
        """Event ids that repeat, go backwards or skip within an epoch, across the
        reconnections. Ids are consecutive within a bus log (an *epoch*, see
        crucible.services.events); a log recreated after a restart starts at the clock's
        epoch base, at least IDS_PER_MS per elapsed millisecond above the old one,
        so a jump of 2 to IDS_PER_MS is a lost event, a larger one a new epoch."""
        steps = [b - a for a, b in zip(self.ids, self.ids[1:], strict=False)]
        return any(step < 1 or 1 < step <= IDS_PER_MS for step in steps)


@dataclass
class Observed:
    """One run: its submissions as the API accepted them, its faults and streams; then
    every evaluation (API records) and every claim (the attempts table)."""

    n: int
    start: float
    singles: dict[int, str]  # item -> evaluation id
    batches: dict[str, list[int]]  # batch id -> items
    not_accepted: list[int]
    submit_retries: int
    batch_lookups: int
    originals: int  # retried singles answered with the evaluation their first try made
    faults: list[Fault]
    streams: list[Stream]
    records: list[dict[str, Any]]
    # (evaluation_id, attempt, worker_id, started_at, finished_at, outcome, error)
    attempts: list[tuple[Any, ...]]
    killed_workers: set[str]  # worker ids of the processes the chaos loop SIGKILLed


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def item_of(record: dict[str, Any]) -> int:
    return int(record["request"]["labels"]["soak_item"])


def duplicated_runs(
    records: list[dict[str, Any]], attempts: list[tuple[Any, ...]], killed: set[str]
) -> tuple[set[str], set[str]]:
    """The ids of (evaluations with more than one completed attempt, evaluations with a
    claim that no recorded fault explains). Every attempt but the last must have been re-queued
    for a platform fault; one re-queued because its process died only counts when the
    chaos loop killed that process (otherwise a live worker was declared dead, and the
    program ran twice)."""
    by_eval: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in attempts:
        by_eval[row[0]].append(row)
    two_results: set[str] = set()
    unexplained: set[str] = set()
    for rec in records:
        # The attempts table is read after the records: ignore claims made in between.
        rows = sorted(
            (r for r in by_eval[rec["id"]] if r[1] <= rec["attempts"]), key=lambda r: r[1]
        )
        if [r[5] for r in rows].count("completed") > 1:
            two_results.add(rec["id"])
        explained = 0
        for _eid, _n, worker_id, _start, _end, outcome, error in rows[:-1]:
            died = any(word in (error or "") for word in ("interrupted", "died"))
            if outcome == "requeued" and (not died or worker_id in killed):
                explained += 1
        if rec["attempts"] != len(rows) or rec["attempts"] - 1 > explained:
            unexplained.add(rec["id"])
    return two_results, unexplained


def fault_windows(records: list[dict[str, Any]], faults: list[Fault]) -> list[dict[str, Any]]:
    """Per fault: the first start after it, and the longest queued-to-started wait
    among the evaluations waiting in its window (created before the next fault, not
    started before this one); those that never started are counted apart."""
    times = [(ts(r["created_at"]) or 0.0, ts(r["started_at"])) for r in records]
    out = []
    for i, fault in enumerate(faults):
        until = faults[i + 1].at if i + 1 < len(faults) else float("inf")
        waiting = [(c, s) for c, s in times if c < until and (s is None or s >= fault.at)]
        started = [(c, s) for c, s in waiting if s is not None]
        out.append(
            {
                "fault": fault,
                "first_start": min(s for _, s in started) - fault.at if started else None,
                "max_wait": max(s - c for c, s in started) if started else None,
                "never_started": len(waiting) - len(started),
            }
        )
    return out


def account(obs: Observed) -> dict[str, Any]:
    """The report of one run: counts by name (the table's rows), in display order."""
    records = obs.records
    by_id = {r["id"]: r for r in records}
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    in_batch: dict[str, set[int]] = defaultdict(set)
    for r in records:
        by_item[item_of(r)].append(r)
        if r["batch_id"]:
            in_batch[r["batch_id"]].add(item_of(r))
    lost = sum(1 for i in obs.singles.values() if i not in by_id)
    lost += sum(len(set(items) - in_batch[b]) for b, items in obs.batches.items())
    twice = sum(1 for rs in by_item.values() if len(rs) > 1)
    two_results, unexplained = duplicated_runs(records, obs.attempts, obs.killed_workers)
    status = Counter(r["status"] for r in records)
    completed = [
        r
        for r in records
        if r["status"] == "completed" and r["result"]["stdout"] == f"hello {item_of(r)}\n"
    ]
    final = sum(status[s] for s in ("completed", "error", "cancelled"))
    finished = [t for r in completed if (t := ts(r["finished_at"])) is not None]
    span = max(finished) - obs.start if finished else float("nan")
    waits = [
        s - c
        for r in records
        if (s := ts(r["started_at"])) is not None and (c := ts(r["created_at"])) is not None
    ]
    faults = sorted(obs.faults, key=lambda f: f.at)
    streams = obs.streams
    return {
        "submitted": obs.n,
        "accepted": len(obs.singles) + sum(len(v) for v in obs.batches.values()),
        "not accepted": len(obs.not_accepted),
        "completed": len(completed),
        "lost": lost,
        "duplicated": twice + len(two_results | unexplained),
        "duplicated: item accepted twice": twice,
        "duplicated: two completed attempts": len(two_results),
        "duplicated: claims no fault explains": len(unexplained),
        "stuck (queued at the deadline)": status["queued"],
        "still running (at the deadline)": status["running"],
        "failed (error, cancelled, wrong output)": final - len(completed),
        "retried (attempts > 1)": sum(1 for r in records if r["attempts"] > 1),
        "submission retries / originals returned / batch look-ups": (
            f"{obs.submit_retries} / {obs.originals} / {obs.batch_lookups}"
        ),
        **{f"faults: {k}": sum(1 for f in faults if f.kind == k) for k in KINDS},
        "faults that failed to inject or recover": sum(1 for f in faults if f.failed),
        "SSE streams followed": len(streams),
        "SSE streams ended without result": sum(1 for s in streams if not s.got_result),
        "SSE wrong result / id gaps or repeats": (
            f"{sum(1 for s in streams if s.got_result and not s.result_ok)} / "
            f"{sum(1 for s in streams if s.gaps)}"
        ),
        "SSE reconnections": sum(max(0, s.connections - 1) for s in streams),
        "throughput (completed/s)": len(completed) / span if finished else float("nan"),
        "queue wait p50 / max (s)": f"{percentile(waits, 50):.1f} / {max(waits, default=0):.1f}",
        "first submission to last result (s)": span,
        "_faults": [{**w, "t": w["fault"].at - obs.start} for w in fault_windows(records, faults)],
    }


# -- tables ----------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.1f}"
    return str(value)


def tables(reports: dict[str, dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    """(the summary, one column per run; the soak's faults, one row each)."""
    names = list(reports)
    soak = reports["soak"]
    summary = [["", *names]]
    for key in [k for k in soak if not k.startswith("_")]:
        summary.append([key, *(fmt(reports[n].get(key, "")) for n in names)])
    if "baseline" in reports:
        base = reports["baseline"]["throughput (completed/s)"]
        ratio = soak["throughput (completed/s)"] / base if base else float("nan")
        summary.append(["throughput vs baseline", "1.00", f"{ratio:.2f}"])
    faults = [["#", "t (s)", "fault", "which", "back after (s)", "first start after (s)",
               "longest queued-to-started wait in its window (s)"]]  # fmt: skip
    for i, row in enumerate(soak["_faults"], 1):
        f: Fault = row["fault"]
        longest = "-" if row["max_wait"] is None else f"{row['max_wait']:.1f}"
        if row["never_started"]:
            longest += f" (+{row['never_started']} never started)"
        faults.append(
            [
                str(i),
                f"{row['t']:.0f}",
                f.kind + (" (FAILED)" if f.failed else ""),
                f.detail or "-",
                f"{f.recovery_s:.1f}",
                "-" if row["first_start"] is None else f"{row['first_start']:.1f}",
                longest,
            ]
        )
    return summary, faults


def plain(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) for c, w in zip(cells, widths, strict=True)]
        padded[0] = cells[0].ljust(widths[0])
        return "  ".join(padded)

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def markdown(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)
