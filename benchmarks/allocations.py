"""Widgets reading the allocations service against widgets asking Slurm themselves, one run.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/allocations.py [--clients 200] [--seconds 60]

Each simulated widget client refreshes every 5 s (first refresh at a random moment of the
first 5 s), the way a notebook `Dashboard` does:

- "service": GET budgets, jobs and gpus from /services/allocations/api/ with its own
  JupyterHub token (40 tokens per demo user; the service checks each with the hub);
- "direct" (the baseline): the three slurmctld commands a widget without the service needs:
  `squeue --json`, `sshare`, `sinfo --json`.

The service runs with a small crowd first (a tenth of the clients) to show that its slurmctld
load does not grow with the number of clients. Measured per mode: requests (or commands) done,
client-side latency p50/p95, slurmctld RPCs from `sdiag` (reset before each mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import aiohttp
import requests

from hub_login import HUB, log_in, ssl_context, xsrf

from aifactory import slurm

NO_ACCOUNT = {"erin"}  # the IdP knows her, this site does not (demo.yaml)

SERVICE = "https://allocations--service.hub.localhost:8443/services/allocations/api/"
PASSWORDS = "/var/lib/aifactory/demo-passwords.json"
REFRESH_S = 5


def tokens(count: int) -> list[str]:
    """`count` API tokens, spread over the demo users (log in, then ask the hub for tokens)."""
    passwords = json.load(open(PASSWORDS))
    users = sorted(u for u in passwords if u not in NO_ACCOUNT)
    result = []
    for i, user in enumerate(users):
        http = log_in(user, passwords[user])
        share = count // len(users) + (i < count % len(users))
        for _ in range(share):
            r = http.post(f"{HUB}/hub/api/users/{user}/tokens",
                          headers={"X-XSRFToken": xsrf(http)},
                          json={"note": "allocations benchmark", "expires_in": 3600})
            r.raise_for_status()
            result.append(r.json()["token"])
    return result


async def service_client(session, token, until, latencies, failures):
    await asyncio.sleep(random.uniform(0, REFRESH_S))
    headers = {"Authorization": f"token {token}"}
    while time.monotonic() < until:
        began = time.monotonic()
        for path in ("budgets", "jobs", "gpus"):
            t = time.monotonic()
            try:
                async with session.get(SERVICE + path, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.monotonic() - t)
            failures[0] += not ok
        await asyncio.sleep(max(0.0, REFRESH_S - (time.monotonic() - began)))


async def direct_client(token, until, latencies, failures):
    await asyncio.sleep(random.uniform(0, REFRESH_S))
    while time.monotonic() < until:
        began = time.monotonic()
        for argv in (["squeue", "--json"], ["sshare", "--noheader", "--parsable2", "--all",
                                            f"--format={slurm.SSHARE_FIELDS}"],
                     ["sinfo", "--json"]):
            t = time.monotonic()
            try:
                await slurm.run_async(argv, timeout=60)
                ok = True
            except slurm.SlurmError:
                ok = False
            latencies.append(time.monotonic() - t)
            failures[0] += not ok
        await asyncio.sleep(max(0.0, REFRESH_S - (time.monotonic() - began)))


async def run_mode(mode: str, client_tokens: list[str], seconds: float) -> dict:
    latencies: list[float] = []
    failures = [0]
    slurm.run(["sdiag", "--reset"])
    until = time.monotonic() + seconds
    started = time.monotonic()
    if mode == "service":
        connector = aiohttp.TCPConnector(limit=0, ssl=ssl_context())
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(*(service_client(session, t, until, latencies, failures)
                                   for t in client_tokens))
    else:
        await asyncio.gather(*(direct_client(t, until, latencies, failures)
                               for t in client_tokens))
    elapsed = time.monotonic() - started
    rpcs = sum(slurm.rpc_counts().values())
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    return {"mode": mode, "clients": len(client_tokens), "requests": len(latencies),
            "failed": failures[0], "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000,
            "rpcs": rpcs, "rpcs_per_min": rpcs / elapsed * 60, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if requests.get(SERVICE + "health", timeout=10).status_code != 200:
        raise SystemExit("the allocations service does not answer; run ./aif cluster up")
    all_tokens = tokens(args.clients)
    few = all_tokens[:max(1, args.clients // 10)]

    results = []
    for mode, crowd in (("service", few), ("service", all_tokens), ("direct", all_tokens)):
        print(f"{mode}: {len(crowd)} clients for {args.seconds:.0f} s ...", flush=True)
        results.append(asyncio.run(run_mode(mode, crowd, args.seconds)))

    print(f"\n{'mode':8} {'clients':>7} {'requests':>9} {'failed':>6} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'RPCs':>7} {'RPCs/min':>9}")
    for r in results:
        print(f"{r['mode']:8} {r['clients']:>7} {r['requests']:>9} {r['failed']:>6} "
              f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['rpcs']:>7} {r['rpcs_per_min']:>9.1f}")
    small, service, direct = results
    print(f"\nservice RPCs, {service['clients']} vs {small['clients']} clients: "
          f"{service['rpcs'] / max(small['rpcs'], 1):.2f}x (flat means it does not grow)")
    print(f"slurmctld RPCs, service / direct at {service['clients']} clients: "
          f"{service['rpcs'] / max(direct['rpcs'], 1):.4f}")
    print(f"p95 latency, service / direct: {service['p95_ms'] / max(direct['p95_ms'], 1e-9):.4f}")
    print(f"refreshes done, service / direct: {service['requests'] / max(direct['requests'], 1):.2f}")


if __name__ == "__main__":
    main()
