"""Open tabs refreshing on an interval, and what they cost slurmctld (shared by the
benchmarks that watch something from many tabs: notebook_jobs.py, status_bars.py)."""

from __future__ import annotations

import json
import statistics
import threading
import time

from aifactory import slurm


def rpcs() -> int:
    return sum(slurm.rpc_counts().values())


def watch(refreshes, tabs: int, seconds: float, every_s: float) -> tuple[int, list[float]]:
    """`tabs` tabs, tab i calling `refreshes[i % len(refreshes)]()` every `every_s` (their
    starts spread over one interval) for `seconds`; returns (refreshes done, latencies)."""
    latencies, lock = [], threading.Lock()
    until = time.monotonic() + seconds

    def tab(i: int):
        time.sleep(every_s * i / tabs)
        refresh = refreshes[i % len(refreshes)]
        while time.monotonic() < until:
            began = time.monotonic()
            refresh()
            with lock:
                latencies.append(time.monotonic() - began)
            time.sleep(max(0.0, every_s - (time.monotonic() - began)))

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(tabs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), latencies


def measure(name: str, refreshes, tabs: int, seconds: float, every_s: float) -> dict:
    """One mode: sdiag reset, the tabs watching, slurmctld's RPCs and the answer times."""
    slurm.run(["sdiag", "--reset"])
    before = rpcs()
    done, latencies = watch(refreshes, tabs, seconds, every_s)
    used = rpcs() - before
    latencies.sort()
    row = {"mode": name, "tabs": tabs, "refreshes": done, "slurmctld_rpcs": used,
           "p50_ms": round(1000 * statistics.median(latencies), 1),
           "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)}
    print(json.dumps(row), flush=True)
    return row
