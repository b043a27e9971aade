"""Where the suite's CPU goes, per module (a pytest plugin, from pyproject's addopts).

``CRUCIBLE_TEST_CPU_LOG=FILE make pytest`` appends one JSON line per test: its module,
wall time, the CPU of the pytest process that ran it and of the children it reaped
(the servers, workers, CLI runs and containers the test started; a process killed
without being waited for, and its children, are missed).
``PYTHONPATH=tests .venv/bin/python -m support.cpu_log FILE`` sums them per module,
the costliest first. Off unless the variable is set."""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time
from collections.abc import Iterator

import pytest

LOG = os.environ.get("CRUCIBLE_TEST_CPU_LOG")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if not LOG:
        yield
        return
    start = time.monotonic(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    yield
    line = {
        "module": item.nodeid.split("::")[0],
        "wall": time.monotonic() - start[0],
        "self": _cpu(resource.RUSAGE_SELF) - start[1],
        "children": _cpu(resource.RUSAGE_CHILDREN) - start[2],
    }
    with open(LOG, "a") as log:
        log.write(json.dumps(line) + "\n")


def main(path: str) -> None:
    sums: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with open(path) as log:
        for raw in log:
            line = json.loads(raw)
            sums[line.pop("module")].update(line)
    total = collections.Counter[str]()
    for counts in sums.values():
        total.update(counts)
    print(f"{'cpu s':>8} {'self':>7} {'children':>8} {'wall s':>7}  module")
    for module, c in sorted(sums.items(), key=lambda kv: -(kv[1]["self"] + kv[1]["children"])):
        cpu = c["self"] + c["children"]
        print(f"{cpu:8.1f} {c['self']:7.1f} {c['children']:8.1f} {c['wall']:7.1f}  {module}")
    cpu = total["self"] + total["children"]
    print(f"{cpu:8.1f} {total['self']:7.1f} {total['children']:8.1f} {total['wall']:7.1f}  all")


if __name__ == "__main__":
    main(sys.argv[1])
