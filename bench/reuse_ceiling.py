"""What one container per several programs could save (issue 20, item 4), measured first.

One program, `python3 -B -c 'print(1)'`, three ways, one at a time and interleaved so
each sees the same machine: a one-shot evaluation (`POST /evaluations?wait=30`, a fresh
container from the warm pool, as every evaluation runs today); an exec in a long-lived
crun sandbox (`POST /sandboxes/{id}/exec`: the sandbox's own init forks it, no runtime
binary, no new container); and a bare process. Each is timed by the whole machine's CPU
(`/proc/stat`) over a window around it, after the server has gone quiet, so what the
server does in the background for a run (tear-down, refilling the pool) is counted.

    .venv/bin/python bench/reuse_ceiling.py [--n 60]

The exec row is a ceiling, not a design: it shares one container (and its file system
and processes) between programs, which one-shot evaluations must never do; a fork server
or per-program namespaces inside a reused container would pay some of the difference back.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import httpx

from _server import AUTH, serve, server_cpu_s
from api_throughput import machine_cpu_s

LIMITS = {"memory_mb": 256, "cpus": 1, "pids": 128, "disk_mb": 256}
CMD = ["/usr/bin/python3", "-B", "-c", "print(1)"]
QUIET_S = 0.15  # before and after each: a run's background tear-down ends well within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60)
    n = parser.parse_args().n
    with serve() as url, httpx.Client(base_url=url + "/api/v1", headers=AUTH, timeout=60) as c:
        sandbox = c.post("/sandboxes", json={"runtime": "crun", "limits": LIMITS}).json()["id"]

        def evaluation() -> None:
            r = c.post("/evaluations?wait=30", json={"code": "print(1)"})
            assert r.json()["result"]["stdout"] == "1\n", r.text

        def exec_() -> None:
            r = c.post(f"/sandboxes/{sandbox}/exec", json={"cmd": CMD})
            assert r.json()["stdout"] == "1\n", r.text

        def bare() -> None:
            assert subprocess.run(CMD, capture_output=True, check=True).stdout == b"1\n"

        ways = {
            "one-shot evaluation (?wait)": evaluation,
            "exec in a sandbox (agent)": exec_,
            "bare python3 -c": bare,
        }
        for fn in ways.values():  # the server's first runs and execs are not counted
            for _ in range(5):
                fn()
        machine: dict[str, list[float]] = {k: [] for k in ways}
        server: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(n):
            for name, fn in ways.items():
                time.sleep(QUIET_S)
                m0, s0 = machine_cpu_s(), server_cpu_s(url)[0]
                fn()
                time.sleep(QUIET_S)
                machine[name].append((machine_cpu_s() - m0) * 1000)
                server[name].append((server_cpu_s(url)[0] - s0) * 1000)
        c.delete(f"/sandboxes/{sandbox}")
    # /proc counts CPU in ticks (10 ms): one program reads as 0, 10 or 20, so the
    # figure is the mean over many; each half's mean shows how steady it is.
    half = n // 2
    base = statistics.fmean(machine["bare python3 -c"])
    print(f"{n} programs each way, interleaved; CPU per program, ms: the whole machine's over")
    print(f"a window of {2 * QUIET_S:.2f} s around it (mean; each half's), and the server's own\n")
    print(f"{'way':<30} {'machine':>8} {'halves':>13} {'x bare':>7} {'server':>7}")
    for name in ways:
        got = machine[name]
        mean = statistics.fmean(got)
        halves = f"{statistics.fmean(got[:half]):.1f} {statistics.fmean(got[half:]):.1f}"
        print(
            f"{name:<30} {mean:8.1f} {halves:>13} {mean / base:7.2f} "
            f"{statistics.fmean(server[name]):7.1f}"
        )


if __name__ == "__main__":
    main()
