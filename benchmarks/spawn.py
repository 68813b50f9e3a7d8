"""Spawn speed and slurmctld load: aifactory's spawner against stock batchspawner, one run.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/spawn.py [--rounds 5] [--burst 30]

Two temporary hubs are started beside the demo hub, on their own ports and databases, with the
same users, partition and session size (1 CPU, 2 GB on the cpu partition):

- "stock": batchspawner 1.3's SlurmSpawner as shipped (its own job script, sudo, one `squeue`
  per spawner every 0.5 s while starting); only the path to batchspawner-singleuser is set,
  because sudo resets PATH.
- "ours": aifactory's SlurmSpawner with hub_config/site.yaml (the `cpu` profile, 1 CPU, 2 GB),
  the hub as root with SQLite (how it ran before it had an account of its own).
- "ours-svc": the same spawner as the demo hub runs it now: as `aifactory-hub`, submitting
  through its sudo rule (`sudo -n -u <user> sbatch --parsable`), its database in PostgreSQL
  (a scratch database `jupyterhub_bench`, dropped afterwards). The bench users join the users
  group for this, since the sudo rule acts only as its members.

Measured: the median time from the start request to a ready server for one user (several
rounds), and for a burst of N users started at once the time until all are ready; slurmctld
RPCs from `sdiag`, reset before each measurement. Users bench01..benchN are created once
(Unix + a Slurm association in proj-climate) and kept.

The queued scenario (`--queued 30`, as at a real workshop): N users each ask for one GPU at
the same moment while only the free GPUs of gpu01 and gpu02 (8) can serve them, so most wait
in the queue for the whole window (`--queued-seconds`, 90 by default). Measured over the window:
how many got a running session, and slurmctld's RPCs, job-info ones apart. Stock batchspawner
asks `squeue -j` for every waiting session every 0.5 s; ours asks once for all of them.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from aifactory import slurm

VENV = Path(os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv"))
HUB_IP = "10.77.0.1"
HUB_ACCOUNT = "aifactory-hub"
USERS_GROUP = "aifactory-users"
BENCH_DB = "jupyterhub_bench"
DB_PASSWORD = Path("/var/lib/aifactory/secrets/hub-database-password")
SITE = Path("/etc/aifactory/hub_config/site.yaml")  # the installed copy: readable by the hub's account

COMMON = """
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://{hub_ip}:{hub_port}"
c.JupyterHub.hub_connect_ip = "{hub_ip}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.pid_file = "{workdir}/proxy.pid"
c.JupyterHub.db_url = "sqlite:///{workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers", "list:users"]}}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 300
"""

STOCK = """
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.batchspawner_singleuser_cmd = "{venv}/bin/batchspawner-singleuser"
c.Spawner.cmd = ["{venv}/bin/jupyterhub-singleuser"]
c.SlurmSpawner.req_partition = "cpu"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "2G"
c.SlurmSpawner.req_runtime = "01:00:00"
# The Jupyter packages as they come, as on a site without aifactory (aifactory.at_start)
c.SlurmSpawner.req_prologue = "export AIFACTORY_LIBRARY_FIXES=off"
c.SlurmSpawner.req_keepvars_extra = "AIFACTORY_LIBRARY_FIXES"  # past srun's --export list
"""

OURS = """
c.JupyterHub.spawner_class = "aifactory.spawner.SlurmSpawner"
c.SlurmSpawner.site_path = "{site}"
c.SlurmSpawner.venv = "{venv}"
"""
OUR_OPTIONS = {"profile": "cpu", "cpus": 1, "memory_gb": 2, "walltime": "01:00:00"}

# The queued scenario: one H100 each on the gpu partition, charged to proj-climate.
STOCK_GPU = STOCK.replace('req_partition = "cpu"', 'req_partition = "gpu"') + """
c.SlurmSpawner.req_gres = "gpu:h100:1"
c.SlurmSpawner.req_account = "proj-climate"
"""
OUR_GPU_OPTIONS = {"profile": "h100-1", "cpus": 1, "memory_gb": 2, "walltime": "01:00:00",
                   "account": "proj-climate"}


def ensure_users(count: int) -> list[str]:
    names = [f"bench{i:02d}" for i in range(1, count + 1)]
    have = {r["user"] for r in slurm.sacctmgr_list("association", "account=proj-climate",
                                                   fields=["User"])}
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        if name not in have:
            slurm.sacctmgr("add", "user", name, "Account=proj-climate")
        subprocess.run(["usermod", "-aG", USERS_GROUP, name], check=True)  # until the end
    return names


def psql_as_postgres(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, cwd="/",
                   capture_output=True)


def bench_database() -> str:
    """A fresh scratch database of the hub's PostgreSQL role; its URL."""
    psql_as_postgres("dropdb", "--if-exists", BENCH_DB)
    psql_as_postgres("createdb", "--owner=jupyterhub", BENCH_DB)
    password = DB_PASSWORD.read_text().strip()
    return f"postgresql+psycopg://jupyterhub:{password}@127.0.0.1:5432/{BENCH_DB}"


class BenchHub:
    def __init__(self, name: str, port: int, spawner_config: str, options: dict | None,
                 account: str | None = None, db_url: str = ""):
        self.name, self.port, self.options = name, port, options
        self.workdir = Path(tempfile.mkdtemp(prefix=f"aif-bench-{name}-"))
        self.token = secrets.token_hex(16)
        config = COMMON.format(port=port, hub_ip=HUB_IP, hub_port=port + 81,
                               proxy_api=port + 1, workdir=self.workdir, token=self.token)
        config += spawner_config.format(venv=VENV, site=SITE)
        if db_url:
            config += f"c.JupyterHub.db_url = {db_url!r}\n"
        (self.workdir / "jupyterhub_config.py").write_text(config)
        as_account = {}
        if account:
            pw = pwd.getpwnam(account)
            for path in (self.workdir, self.workdir / "jupyterhub_config.py"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            as_account = {"user": pw.pw_uid, "group": pw.pw_gid,
                          "extra_groups": os.getgrouplist(account, pw.pw_gid)}
        self.api = f"http://127.0.0.1:{port}/hub/api"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        env = dict(os.environ, PATH=f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        self.log = open(self.workdir / "hub.log", "wb")
        self.proc = subprocess.Popen([f"{VENV}/bin/jupyterhub", "-f", "jupyterhub_config.py"],
                                     cwd=self.workdir, env=env, stdout=self.log, stderr=self.log,
                                     **as_account)
        self._wait(lambda: self._get("/") is not None, 60, "the hub to answer")

    def _get(self, path):
        try:
            r = self.http.get(self.api + path, timeout=10)
            return r.json() if r.ok else None
        except requests.RequestException:
            return None

    def _wait(self, check, timeout, what):
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"[{self.name}] gave up waiting for {what}; see {self.workdir}/hub.log")
            time.sleep(0.25)

    def ready(self, users: list[str]) -> int:
        listing = self._get("/users?state=ready&limit=500") or []
        return sum(1 for u in listing if u["name"] in users and u["servers"].get("", {}).get("ready"))

    def start_all(self, users: list[str], wait: bool = True) -> float:
        for user in users:
            self.http.post(f"{self.api}/users", json={"usernames": [user]})
        def start(user):
            # JupyterHub answers a start request when the server is up, or after 10 s.
            r = requests.post(f"{self.api}/users/{user}/server", json=self.options or {},
                              headers=self.http.headers, timeout=60)
            if r.status_code not in (201, 202):
                raise SystemExit(f"[{self.name}] start of {user}: {r.status_code} {r.text[:200]}")

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(users)) as pool:  # all at the same moment
            list(pool.map(start, users))
        if wait:
            self._wait(lambda: self.ready(users) == len(users), 600, f"{len(users)} servers")
        return time.monotonic() - t0

    def stop_all(self, users: list[str]) -> None:
        for user in users:
            self.http.delete(f"{self.api}/users/{user}/server")
        wanted = set(users)
        self._wait(lambda: not any(j.user in wanted and j.alive
                                   for j in slurm.jobs())
                   and self.ready(users) == 0, 180, "the servers to stop")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        pidfile = self.workdir / "proxy.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 15)
            except (ValueError, ProcessLookupError):
                pass
        if os.environ.get("AIF_BENCH_KEEP"):
            print(f"[{self.name}] hub log kept in {self.workdir}/hub.log")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def job_info(rpcs: dict[str, int]) -> int:
    """RPCs that ask slurmctld about jobs (squeue -j, squeue --json, scontrol show job)."""
    return sum(v for k, v in rpcs.items() if k.startswith(("REQUEST_JOB_INFO", "REQUEST_JOB_USER_INFO")))


def measure(hub: BenchHub, users: list[str]) -> tuple[float, dict[str, int]]:
    slurm.run(["sdiag", "--reset"])
    elapsed = hub.start_all(users)
    rpcs = slurm.rpc_counts()
    hub.stop_all(users)
    return elapsed, rpcs


def measure_queued(hub: BenchHub, users: list[str], seconds: float) -> tuple[int, dict[str, int]]:
    """Start everyone at once, watch `seconds` while most wait, count RPCs; then stop all."""
    slurm.run(["sdiag", "--reset"])
    hub.start_all(users, wait=False)  # returns when every start request has been answered
    time.sleep(seconds)
    rpcs, ready = slurm.rpc_counts(), hub.ready(users)
    hub.stop_all(users)
    return ready, rpcs


def hub_makers(stock: str, options: dict) -> dict:
    return {"stock": lambda: BenchHub("stock", 8300, stock, None),
            "ours": lambda: BenchHub("ours", 8400, OURS, options),
            "ours-svc": lambda: BenchHub("ours-svc", 8700, OURS, options, account=HUB_ACCOUNT,
                                         db_url=bench_database())}


def queued(users: list[str], seconds: float) -> None:
    hubs = hub_makers(STOCK_GPU, OUR_GPU_OPTIONS)
    result = {}
    for name, make in hubs.items():  # one hub at a time: both compete for the same 8 GPUs
        hub = make()
        try:
            result[name] = measure_queued(hub, users, seconds)
        finally:
            hub.close()
    drop_bench_database()
    print(f"\nqueued: {len(users)} users ask for one H100 each at once; watched {seconds:.0f} s")
    for name, (ready, rpcs) in result.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(rpcs.items()) if v)
        print(f"  {name:8} running sessions {ready:3d}, waiting {len(users) - ready:3d}; "
              f"slurmctld RPCs {sum(rpcs.values()):6d}; job-info RPCs {job_info(rpcs)}\n"
              f"           ({kinds})")
    stock_info, stock_all = job_info(result["stock"][1]), sum(result["stock"][1].values())
    for name in ("ours", "ours-svc"):
        print(f"  {name} / stock: job-info RPCs {job_info(result[name][1]) / max(stock_info, 1):.3f}, "
              f"all RPCs {sum(result[name][1].values()) / max(stock_all, 1):.3f}")


def drop_bench_database() -> None:
    psql_as_postgres("dropdb", "--if-exists", BENCH_DB)


def leave_users_group(names: list[str]) -> None:
    """Only for the bench: afterwards the demo's users group is the demo's people again."""
    for name in names:
        subprocess.run(["gpasswd", "-d", name, USERS_GROUP], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--queued", type=int, default=0,
                        help="users for the queued scenario (0: leave it out)")
    parser.add_argument("--queued-seconds", type=float, default=90)
    parser.add_argument("--only-queued", action="store_true")
    args = parser.parse_args()
    users = ensure_users(max(args.burst, args.queued, 1))
    try:
        run(args, users)
    finally:
        leave_users_group(users)


def run(args, users: list[str]) -> None:
    if args.queued:
        queued(users[:args.queued], args.queued_seconds)
    if args.only_queued:
        return
    hubs = {name: make() for name, make in hub_makers(STOCK, OUR_OPTIONS).items()}
    try:
        single = {name: [] for name in hubs}
        for i in range(args.rounds):
            # Rotate who goes first, so none always follows another's clean-up.
            order = list(hubs)[i % len(hubs):] + list(hubs)[:i % len(hubs)]
            for name in order:
                single[name].append(measure(hubs[name], users[:1])[0])
        burst = {name: measure(hub, users[:args.burst]) for name, hub in hubs.items()}
    finally:
        for hub in hubs.values():
            hub.close()
        drop_bench_database()

    print(f"\nsingle user, {args.rounds} rounds: start request -> server ready (s)")
    for name, times in single.items():
        print(f"  {name:8} median {statistics.median(times):6.2f}  min {min(times):6.2f}  "
              f"max {max(times):6.2f}")
    for name in ("ours", "ours-svc"):
        ratio = statistics.median(single[name]) / statistics.median(single["stock"])
        print(f"  {name} / stock median: {ratio:.2f}")
    print(f"\nburst of {args.burst} users started at once")
    for name, (elapsed, rpcs) in burst.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(rpcs.items()) if v)
        print(f"  {name:8} all ready in {elapsed:6.1f} s; slurmctld RPCs {sum(rpcs.values()):6d}; "
              f"job-info RPCs {job_info(rpcs)}\n           ({kinds})")
    stock_info = job_info(burst["stock"][1])
    for name in ("ours", "ours-svc"):
        print(f"  {name} / stock: job-info RPCs {job_info(burst[name][1]) / max(stock_info, 1):.3f}, "
              f"time {burst[name][0] / burst['stock'][0]:.2f}")


if __name__ == "__main__":
    main()
