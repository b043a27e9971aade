"""Soak: N hello-world evaluations through two API instances and several workers while
a chaos loop SIGKILLs workers and API instances and restarts Redis and PostgreSQL.

Everything is real and throwaway: a PostgreSQL cluster and a redis-server of this run
on free ports (the machine's own 5432/6379 are never touched), `crucible serve
--dispatcher celery` twice and `crucible worker --concurrency C` per worker, started
with tests/support/local_cluster.py. By default a fault-free run of the same size, on a fresh
deployment, goes first: its throughput is the baseline of the ratio.

* Work: items 0..N-1, about half as batches of random size, half as single
  submissions, interleaved and spread over both APIs, paced so that about --backlog
  are queued at any time (so the faults meet submissions as well as runs). A single
  submission carries an Idempotency-Key and is retried, on the other API, until it is
  answered; POST /batches has no Idempotency-Key, so a batch whose answer was lost is
  looked up by its label before being sent again.
* Chaos, every --chaos-min..--chaos-max s (seeded): SIGKILL a worker and start a new
  one, SIGKILL an API and start it on its port, restart Redis (empty: no
  persistence), restart PostgreSQL. The first faults are each kind twice, shuffled, and
  the chaos phase lasts until they have all happened.
* --streams SSE streams of single submissions are followed live on the other API,
  reconnecting (alternating APIs) with Last-Event-ID until their `result` event.
* Afterwards, with no more faults, the queue gets --drain-timeout s to drain; then every
  evaluation is read back through the API, and the attempts and workers tables straight
  from the run's own PostgreSQL (the API shows attempt history only for dead letters).

Counted: lost (accepted, not in the store), duplicated (an item accepted twice, more
than one `completed` attempt, or a claim that no recorded fault explains: every attempt
but the last must have been re-queued for a platform fault, and one re-queued because
"its process died" only counts when that process is one the chaos loop killed), stuck
(queued at the deadline), still running (at the deadline), failed (ended otherwise
than completed with its own output), not accepted (given up after --give-up s). The
exit status is 1 when any of these is non-zero. Per fault: how long it took to come
back, and the longest queued-to-started wait (created_at to started_at, from the API
records) among the evaluations that started between it and the next fault.

    PYTHONPATH=src .venv/bin/python bench/soak.py [--n 10000] [--seed 1] [--no-baseline]
    PYTHONPATH=src .venv/bin/python bench/soak.py --n 300 --chaos-min 5 --chaos-max 10

Needs root (runc, initdb through runuser), redis-server and PostgreSQL's binaries.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from httpx_sse import connect_sse

from _soak_report import (
    FAILING,
    KINDS,
    WINDOW,
    Fault,
    Observed,
    Stream,
    account,
    markdown,
    plain,
    tables,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.local_cluster import AUTH, Cluster, PostgresServer, Proc, RedisServer

LOGS = Path(tempfile.gettempdir()) / "crucible-soak-logs"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the deployment and its faults ------------------------------------------------------


class Deployment:
    """A throwaway PostgreSQL and Redis, two API instances and ``workers`` workers."""

    def __init__(self, name: str, workers: int, concurrency: int) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"crucible-soak-{name}-", dir="/tmp"))
        self.n_workers = workers
        self.concurrency = concurrency
        self.killed_pids: list[int] = []

    def __enter__(self) -> Deployment:
        try:
            self.pg = PostgresServer(self.root / "pg")
            self.pg.init()
            self.pg.start()
            self.redis = RedisServer(self.root / "redis")
            self.redis.start()
            self.cluster = Cluster(self.root, self.pg.url, self.redis)
            self.apis = [self.cluster.api() for _ in range(2)]
            self.urls = [url for _, url in self.apis]
            self.workers = [self.cluster.worker(self.concurrency) for _ in range(self.n_workers)]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(AttributeError):
            self.cluster.teardown()
        with contextlib.suppress(AttributeError):
            self.redis.stop()
        with contextlib.suppress(AttributeError):
            self.pg.stop("immediate")
        keep = LOGS / self.name
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True, exist_ok=True)
        for path in self.root.glob("*.log"):  # the APIs' and workers'
            shutil.copy(path, keep / path.name)
        for path in self.root.glob("*/*.log"):  # redis/redis.log, pg/pg.log
            shutil.copy(path, keep / path.name)
        shutil.rmtree(self.root, ignore_errors=True)

    def inject(self, kind: str, rng: random.Random) -> Fault:
        """One fault, undone before returning (a new worker, the API started again)."""
        fault = Fault(time.time(), kind)
        try:
            if kind == "kill_worker":
                victim: Proc = rng.choice(self.workers)
                fault.detail = f"{victim.name} (pid {victim.pid})"
                self.killed_pids.append(victim.pid)
                victim.kill9()
                self.workers.remove(victim)
                self.workers.append(self.cluster.worker(self.concurrency))
            elif kind == "kill_api":
                i = rng.randrange(len(self.apis))
                proc, url = self.apis[i]
                fault.detail = f"api{i} (:{url.rsplit(':', 1)[1]})"
                self.cluster.restart_api(proc, url)
            elif kind == "restart_redis":
                self.redis.restart()
            elif kind == "restart_postgres":
                self.pg.restart()
            else:
                raise ValueError(kind)
        except Exception as exc:  # recorded; the run goes on and shows the damage
            fault.failed = repr(exc)[:200]
        fault.recovery_s = time.time() - fault.at
        return fault

    def attempts(self) -> list[tuple[Any, ...]]:
        """Every claim, from the run's own database: (evaluation_id, attempt, worker_id,
        started_at, finished_at, outcome, error)."""
        with psycopg.connect(self.pg.url, connect_timeout=10) as conn:
            return conn.execute(
                "SELECT evaluation_id, attempt, worker_id, started_at, finished_at, outcome,"
                " error FROM attempts"
            ).fetchall()

    def killed_workers(self) -> set[str]:
        """The worker ids of the processes the chaos loop SIGKILLed."""
        with psycopg.connect(self.pg.url, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT id FROM workers WHERE pid = ANY(%s)", [self.killed_pids]
            ).fetchall()
        return {row[0] for row in rows}


def chaos_plan(rng: random.Random, each: int) -> list[str]:
    plan = [kind for kind in KINDS for _ in range(each)]
    rng.shuffle(plan)
    return plan


# -- the workload ----------------------------------------------------------------------


@dataclass
class Unit:
    """One submission: a batch of items, or a single item, to API ``api`` first."""

    items: list[int]
    batch: bool
    api: int


def plan_units(n: int, rng: random.Random, batch_max: int) -> list[Unit]:
    """About half the items in batches of 10..batch_max, the rest single; shuffled so
    batches and singles interleave, each to a random API."""
    units: list[Unit] = []
    k = 0
    while k < n // 2:
        size = min(rng.randint(min(10, batch_max), batch_max), n // 2 - k)
        units.append(Unit(list(range(k, k + size)), True, rng.randrange(2)))
        k += size
    units += [Unit([i], False, rng.randrange(2)) for i in range(k, n)]
    rng.shuffle(units)
    return units


class GaveUp(Exception):
    pass


class Workload:
    def __init__(self, dep: Deployment, args: argparse.Namespace, *, chaos: bool) -> None:
        self.dep = dep
        self.args = args
        self.chaos = chaos
        self.urls = dep.urls
        self.lock = threading.Lock()
        self.local = threading.local()
        self.singles: dict[int, str] = {}  # item -> evaluation id
        self.batches: dict[str, list[int]] = {}  # batch id -> items
        self.not_accepted: list[int] = []
        self.submit_retries = 0
        self.batch_lookups = 0
        self.originals = 0  # retries answered 200 with the evaluation already accepted
        self.inflight = 0
        self.queue: dict[str, int] = {"queued": 0, "running": 0}
        self.faults: list[Fault] = []
        self.streams: list[Stream] = []
        self.followers: list[threading.Thread] = []
        self.done = threading.Event()  # submissions finished: pacing and polling stop
        self.deadline = threading.Event()  # the drain deadline: streams stop reconnecting
        units = plan_units(args.n, random.Random(f"{args.seed}-plan"), args.batch_max)
        self.units = units
        singles = [u.items[0] for u in units if not u.batch]
        step = max(1, len(singles) // max(1, args.streams))
        self.follow = set(singles[::step][: args.streams])

    def client(self, url: str) -> httpx.Client:
        clients: dict[str, httpx.Client] = self.local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=60)
        return clients[url]

    def any_api(self, method: str, path: str, **kw: Any) -> Any:
        """A read on whichever API answers, retried through faults."""
        deadline = time.monotonic() + self.args.give_up
        for attempt in range(10**6):
            url = self.urls[attempt % 2]
            with contextlib.suppress(httpx.TransportError):
                r = self.client(url).request(method, path, **kw)
                if r.status_code == 200:
                    return r.json()
            if time.monotonic() > deadline:
                raise GaveUp(f"{method} {path}")
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise AssertionError("unreachable")

    # submissions

    def _retry(self, attempt: int, deadline: float, what: str) -> None:
        with self.lock:
            self.submit_retries += 1
        if time.monotonic() > deadline:
            raise GaveUp(what)
        time.sleep(min(2.0, 0.2 * attempt))

    def submit_single(self, k: int, api: int) -> None:
        body = {"code": f"print('hello {k}')", "labels": {"soak_item": str(k)}}
        headers = {"Idempotency-Key": f"soak-{k}"}
        deadline = time.monotonic() + self.args.give_up
        attempt = 0
        while True:
            url = self.urls[(api + attempt) % 2]  # a retry goes to the other instance
            with contextlib.suppress(httpx.TransportError):
                r = self.client(url).post("/evaluations", json=body, headers=headers)
                if r.status_code in (200, 202):  # 200: the original of a repeated key
                    if r.status_code == 200 and attempt:
                        with self.lock:
                            self.originals += 1
                    break
                if r.status_code < 500 and r.status_code != 429:
                    raise GaveUp(f"item {k}: {r.status_code} {r.text[:200]}")
            attempt += 1
            self._retry(attempt, deadline, f"item {k}")
        evaluation_id = r.json()["id"]
        with self.lock:
            self.singles[k] = evaluation_id
        if k in self.follow:
            stream = Stream(k, evaluation_id)
            # Daemon: a stream of a stuck evaluation only ends with its server.
            thread = threading.Thread(
                target=self.follow_stream, args=(stream, api + 1), daemon=True
            )
            with self.lock:
                self.streams.append(stream)
                self.followers.append(thread)
            thread.start()

    def submit_batch(self, items: list[int], api: int) -> None:
        token = uuid.uuid4().hex
        body = {
            "items": [
                {
                    "code": f"print('hello {k}')",
                    "labels": {"soak_item": str(k), "soak_batch": token},
                }
                for k in items
            ]
        }
        deadline = time.monotonic() + self.args.give_up
        attempt = 0
        while True:
            url = self.urls[(api + attempt) % 2]
            ambiguous = True  # the batch may exist: look before sending it again
            try:
                r = self.client(url).post("/batches", json=body)
                if r.status_code == 202:
                    batch_id = r.json()["id"]
                    break
                if r.status_code < 500 and r.status_code != 429:
                    raise GaveUp(f"batch of {len(items)}: {r.status_code} {r.text[:200]}")
            except httpx.ConnectError:
                ambiguous = False  # nothing reached the server
            except httpx.TransportError:
                pass
            if ambiguous:
                time.sleep(1.0)  # let a request still in flight end before looking
                with self.lock:
                    self.batch_lookups += 1
                page = self.any_api(
                    "GET", "/evaluations", params={"label": f"soak_batch:{token}", "limit": 1}
                )
                if page["items"]:
                    batch_id = page["items"][0]["batch_id"]
                    break
            attempt += 1
            self._retry(attempt, deadline, f"batch of {len(items)}")
        with self.lock:
            self.batches[batch_id] = items

    def submit(self, unit: Unit) -> None:
        try:
            if unit.batch:
                self.submit_batch(unit.items, unit.api)
            else:
                self.submit_single(unit.items[0], unit.api)
        except Exception as exc:  # GaveUp, or an answer that made no sense
            log(f"gave up submitting: {exc!r}")
            with self.lock:
                self.not_accepted += unit.items
        finally:
            with self.lock:
                self.inflight -= len(unit.items)

    # live streams

    def follow_stream(self, stream: Stream, api: int) -> None:
        while not stream.got_result and not self.deadline.is_set():
            url = self.urls[(api + stream.connections) % 2]
            stream.connections += 1
            headers = {**AUTH}
            if stream.ids:
                headers["Last-Event-ID"] = str(stream.ids[-1])
            path = f"{url}/api/v1/evaluations/{stream.evaluation_id}/events"
            with (
                contextlib.suppress(httpx.HTTPError, ValueError),
                httpx.Client(timeout=httpx.Timeout(10, read=60)) as client,
                connect_sse(client, "GET", path, headers=headers) as source,
            ):
                if source.response.status_code != 200:
                    raise ValueError(source.response.status_code)
                for sse in source.iter_sse():
                    if not sse.data:  # a keep-alive comment
                        continue
                    stream.ids.append(int(sse.id))
                    if sse.event == "result":
                        final = sse.json()
                        stream.got_result = True
                        stdout = (final.get("result") or {}).get("stdout")
                        stream.result_ok = final.get("status") == "completed" and (
                            stdout == f"hello {stream.item}\n"
                        )
                        break
            if not stream.got_result:
                self.deadline.wait(0.5)

    # the run

    def poll_queue(self) -> None:
        i = 0
        while not self.done.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = self.client(self.urls[i % 2]).get("/queue", timeout=5)
                if r.status_code == 200:
                    self.queue = r.json()
            i += 1
            time.sleep(0.5)

    def run_chaos(self, stop: threading.Event, plan: list[str]) -> None:
        rng = random.Random(f"{self.args.seed}-chaos")
        while not stop.wait(rng.uniform(self.args.chaos_min, self.args.chaos_max)):
            kind = plan.pop(0) if plan else rng.choice(KINDS)
            log(f"fault: {kind}")
            fault = self.dep.inject(kind, rng)
            self.faults.append(fault)
            note = f" FAILED {fault.failed}" if fault.failed else ""
            log(f"  {kind} {fault.detail} back after {fault.recovery_s:.1f} s{note}")

    def run(self) -> float:
        """Submit everything (under chaos if asked), drain; returns the start time."""
        with httpx.Client(base_url=f"{self.urls[0]}/api/v1", headers=AUTH, timeout=90) as c:
            warm = c.post("/evaluations", json={"code": "print('warm')"}, params={"wait": 60})
            assert warm.json()["status"] == "completed", warm.text
        poller = threading.Thread(target=self.poll_queue, daemon=True)
        poller.start()
        stop = threading.Event()
        plan = chaos_plan(random.Random(f"{self.args.seed}-plan-chaos"), self.args.each)
        chaos = threading.Thread(target=self.run_chaos, args=(stop, plan))
        start = time.time()
        if self.chaos:
            chaos.start()
        with ThreadPoolExecutor(self.args.clients) as pool:
            for n, unit in enumerate(self.units):
                while self.queue["queued"] + self.inflight >= self.args.backlog:
                    time.sleep(0.05)
                with self.lock:
                    self.inflight += len(unit.items)
                pool.submit(self.submit, unit)
                if n % 200 == 0:
                    log(f"{self.dep.name}: unit {n}/{len(self.units)}, queue {self.queue}")
        log(f"{self.dep.name}: all submitted ({time.time() - start:.0f} s)")
        if self.chaos:
            while plan and chaos.is_alive():  # every kind --each times, however small the run
                time.sleep(0.5)
            stop.set()
            chaos.join()
            log(f"{self.dep.name}: chaos over, {len(self.faults)} faults")
        self.done.set()
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(GaveUp):
                q = self.any_api("GET", "/queue")
                if q["queued"] == 0 and q["running"] == 0:
                    break
            time.sleep(1.0)
        else:
            log(f"{self.dep.name}: not drained after {self.args.drain_timeout:.0f} s")
        for thread in self.followers:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.deadline.set()  # what has not ended by now counts as ended without result
        return start

    def observed(self, start: float) -> Observed:
        """Every evaluation of the run read back, with the claims and kills behind them."""
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self.any_api("GET", "/evaluations", params=params)
            records += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        return Observed(
            n=self.args.n,
            start=start,
            singles=self.singles,
            batches=self.batches,
            not_accepted=self.not_accepted,
            submit_retries=self.submit_retries,
            batch_lookups=self.batch_lookups,
            originals=self.originals,
            faults=self.faults,
            streams=self.streams,
            records=[r for r in records if "soak_item" in r["request"]["labels"]],  # not warm-up
            attempts=self.dep.attempts(),
            killed_workers=self.dep.killed_workers(),
        )


@contextlib.contextmanager
def phase(name: str, args: argparse.Namespace) -> Iterator[Deployment]:
    log(f"{name}: starting PostgreSQL, Redis, 2 APIs, {args.workers} workers")
    with Deployment(name, args.workers, args.concurrency) as dep:
        yield dep
    log(f"{name}: torn down (logs in {LOGS / name})")


def run_phase(name: str, args: argparse.Namespace, *, chaos: bool) -> dict[str, Any]:
    with phase(name, args) as dep:
        work = Workload(dep, args, chaos=chaos)
        start = work.run()
        return account(work.observed(start))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="evaluations per run")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2, help="sandboxes per worker")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chaos-min", type=float, default=20.0, help="seconds between faults")
    p.add_argument("--chaos-max", type=float, default=40.0)
    p.add_argument("--each", type=int, default=2, help="guaranteed faults of each kind")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="a fault-free run of the same size first (default on)")  # fmt: skip
    p.add_argument("--backlog", type=int, default=300, help="queued evaluations to keep")
    p.add_argument("--batch-max", type=int, default=200)
    p.add_argument("--clients", type=int, default=8, help="concurrent submitters")
    p.add_argument("--streams", type=int, default=50, help="SSE streams followed live")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--give-up", type=float, default=180.0, help="per submission, seconds")
    p.add_argument("--markdown", type=Path, help="also write the Markdown tables here")
    args = p.parse_args()

    reports: dict[str, dict[str, Any]] = {}
    if args.baseline:
        reports["baseline"] = run_phase("baseline", args, chaos=False)
    reports["soak"] = run_phase("soak", args, chaos=True)

    summary, faults = tables(reports)
    title = (
        f"{args.n} hello-world evaluations · 2 APIs · {args.workers} workers x "
        f"{args.concurrency} · faults every {args.chaos_min:.0f}-{args.chaos_max:.0f} s "
        f"(seed {args.seed})"
    )
    print(f"\n{title}\n\n{plain(summary)}\n\n{plain(faults)}\n{WINDOW}\n")
    md = f"{title}\n\n{markdown(summary)}\n\n{markdown(faults)}\n\n{WINDOW}\n"
    print(md)
    if args.markdown:
        args.markdown.write_text(md)
    soak = reports["soak"]
    bad = {k: soak[k] for k in FAILING if soak[k]}
    short = [k for k in KINDS if soak[f"faults: {k}"] < args.each]
    if short:
        print(f"fewer than {args.each} faults of: {', '.join(short)}")
    if bad:
        print("FAILED: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
        return 1
    print("passed: nothing lost, duplicated, stuck or failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
