"""One `POST /evaluations?wait=30` at a time: this tree against another, interleaved.

Two `crucible serve` processes (crun, warm pool on, defaults), this tree and ``--base``
(a ``src`` directory of another commit, from ``git archive REV src``, put first on the
server's PYTHONPATH), take turns request by request, so both see the same machine, with
a pause between requests (an idle server, the warm pool refilled). Printed per server:
round-trip p50/p90 and the server's own CPU per evaluation (utime+stime from /proc over
the request and its background tear-down).

    .venv/bin/python bench/wait_latency.py --base /tmp/base/src [--n 200]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import httpx

from _server import AUTH, percentile, serve, server_cpu_s

HELLO = {"code": "print(1)"}
PAUSE_S = 0.12  # before a request: the previous one's tear-down and refill are done
AFTER_S = 0.08  # after it: its tear-down is counted in its CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, metavar="SRC")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        urls = {
            "base": stack.enter_context(serve(PYTHONPATH=args.base)),
            "this tree": stack.enter_context(serve()),
        }
        clients = {
            name: stack.enter_context(
                httpx.Client(base_url=url + "/api/v1", headers=AUTH, timeout=60)
            )
            for name, url in urls.items()
        }
        for client in clients.values():  # first runs are not counted
            for _ in range(5):
                client.post("/evaluations?wait=30", json=HELLO).raise_for_status()
        ms: dict[str, list[float]] = {name: [] for name in urls}
        cpu: dict[str, float] = dict.fromkeys(urls, 0.0)
        for _ in range(args.n):
            for name, client in clients.items():
                time.sleep(PAUSE_S)
                cpu0 = server_cpu_s(urls[name])[0]
                t = time.perf_counter()
                r = client.post("/evaluations?wait=30", json=HELLO)
                ms[name].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200 and r.json()["result"]["stdout"] == "1\n", r.text
                time.sleep(AFTER_S)
                cpu[name] += server_cpu_s(urls[name])[0] - cpu0
    print(f"{args.n} ?wait requests per server, one at a time, interleaved\n")
    print(f"{'server':<10} {'p50 ms':>7} {'p90 ms':>7} {'server CPU/eval ms':>19}")
    for name in urls:
        print(
            f"{name:<10} {statistics.median(ms[name]):7.1f} {percentile(ms[name], 90):7.1f} "
            f"{cpu[name] / args.n * 1000:19.1f}"
        )


if __name__ == "__main__":
    main()
