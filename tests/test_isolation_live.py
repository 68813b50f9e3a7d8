"""One tenant cannot reach another (issue 11), tried as an attacker would: dave, a member of
the login group with a Slurm account of his own (course-ml202), against alice's work on the
live cluster. Each test also checks that alice still reaches her own."""

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

from conftest import (HUB, VENV_PYTHON, as_user, cli, driver, lines, notebook_jobs,
                      notebook_process, process_env, submit, tagged, wait_until)

from aifactory import dask_tls, slurm
from aifactory.cluster.unprivileged import SERVICE_USER
from aifactory.dask import TLS_OFF_WORDS

ATTACKER = "dave"

# A client that connects to a scheduler and asks who runs it, or says how it was refused.
CONNECT = """
import json, sys, traceback
from distributed import Client
from aifactory import dask_tls

def who():
    import getpass
    return getpass.getuser()

address, result = sys.argv[1], {}
tries = {"tls_without_identity": (address, {}),
         "tcp_on_the_same_port": (address.replace("tls://", "tcp://"), {}),
         "tls_with_own_identity": (address, {"security": dask_tls.security()})}
for name, (to, kwargs) in tries.items():
    try:
        with Client(to, timeout=8, **kwargs) as client:
            result[name] = client.run_on_scheduler(who)
    except Exception as e:  # where, for a failure's message
        last = traceback.extract_tb(e.__traceback__)[-1]
        result[name] = f"refused: {type(e).__name__} ({last.filename}:{last.lineno})"
print(json.dumps(result))
"""


def connect_as(user: str, address: str) -> dict:
    out = as_user(user, "env", "-i", f"HOME=/home/{user}", "PATH=/opt/aifactory/venv/bin:/usr/bin:/bin",
                  VENV_PYTHON, "-c", CONNECT, address)
    return json.loads(out.strip().splitlines()[-1])


@contextlib.contextmanager
def alices_cluster():
    """alice's GPUCluster with one worker job, in a driver as her kernel would run it; what
    the driver printed (its address and tag)."""
    proc = driver("alice", "hold", "1")
    try:
        out = lines(proc, 1)
        yield out
    finally:  # the kernel dies; its watcher cancels the worker job
        subprocess.run(["pkill", "-KILL", "-u", "alice", "-f", "hold 1$"])
        proc.wait(30)
    wait_until(lambda: not tagged(out["tag"]), 90, what="the killed kernel's jobs to go")


def test_a_foreign_dask_client_is_refused_while_the_owner_connects(live_cluster):
    with alices_cluster() as out:
        address = out["address"]
        assert address.startswith("tls://") and TLS_OFF_WORDS not in out["printed"]
        wait_until(lambda: any(j.running for j in tagged(out["tag"])), 60,
                   what="alice's worker job to run")
        stolen = connect_as(ATTACKER, address)
        assert all(v.startswith("refused") for v in stolen.values()), stolen
        mine = connect_as("alice", address)
        assert mine["tls_with_own_identity"] == "alice"  # her identity, from any process
        assert mine["tcp_on_the_same_port"].startswith("refused")


# A notebook cell that never imports aifactory: a plain Client through the session's Dask
# settings (TLS with the person's identity), then TCP to the TLS port, then TLS again (the
# sequence that hung in Client(...) for ever before aifactory.at_start).
PLAIN_CELL = """
import json, sys
from distributed import Client

def who():
    import getpass
    return getpass.getuser()

result = {"fixed_from_the_start": "aifactory.at_start" in sys.modules,
          "imported_aifactory": sorted(m for m in sys.modules
                                       if m.startswith("aifactory") and m not in
                                       ("aifactory", "aifactory.at_start", "aifactory.ssl_fix"))}
for name, to in (("tls", ADDRESS), ("tcp", ADDRESS.replace("tls://", "tcp://")),
                 ("tls_again", ADDRESS)):
    try:
        with Client(to, timeout=8) as client:
            result[name] = client.run_on_scheduler(who)
    except Exception as e:
        result[name] = "refused: " + type(e).__name__
print(json.dumps(result))
"""

# Runs one cell in a kernel of the shared venv's own kernel spec (a session's default), as
# the user, with the session's Dask settings, and prints what the cell printed.
IN_A_KERNEL = """
import sys
from jupyter_client.manager import start_new_kernel
manager, client = start_new_kernel(kernel_name="python3")
printed = []
try:
    client.execute_interactive(sys.argv[1], timeout=120, output_hook=lambda msg:
                               printed.append(msg["content"].get("text", "")))
finally:
    client.stop_channels()
    manager.shutdown_kernel(now=True)
print("".join(printed))
"""


def plain_client_in_a_kernel(user: str, address: str) -> dict:
    as_user(user, "env", f"HOME=/home/{user}", VENV_PYTHON, "-P", "-m", "aifactory.dask_tls")
    settings = dask_tls.environment(f"/home/{user}")
    out = as_user(user, "env", "-i", f"HOME=/home/{user}", "PATH=/opt/aifactory/venv/bin:/usr/bin:/bin",
                  *(f"{k}={v}" for k, v in settings.items()), VENV_PYTHON, "-P", "-c", IN_A_KERNEL,
                  f"ADDRESS = {address!r}\n" + PLAIN_CELL)
    return json.loads(out.strip().splitlines()[-1])


def test_a_plain_client_in_a_kernel_is_refused_or_admitted_at_once_never_hangs(live_cluster):
    with alices_cluster() as out:
        address = out["address"]
        assert address.startswith("tls://")
        stolen = plain_client_in_a_kernel(ATTACKER, address)
        assert stolen["fixed_from_the_start"] and stolen["imported_aifactory"] == [], stolen
        assert all(stolen[k].startswith("refused") for k in ("tls", "tcp", "tls_again")), stolen
        mine = plain_client_in_a_kernel("alice", address)
        assert (mine["tls"], mine["tls_again"]) == ("alice", "alice"), mine
        assert mine["tcp"].startswith("refused"), mine


def test_dask_credentials_are_their_owners_alone(live_cluster):
    as_user("alice", "env", "HOME=/home/alice", VENV_PYTHON, "-P", "-m", "aifactory.dask_tls")
    folder = "/home/alice/.aifactory/dask-tls"
    for path, mode in ((os.path.dirname(folder), 0o700), (folder, 0o700),
                       (f"{folder}/key.pem", 0o600), (f"{folder}/cert.pem", 0o600)):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
    read = subprocess.run(["runuser", "-u", ATTACKER, "--", "cat", f"{folder}/key.pem"],
                          capture_output=True, text=True)
    assert read.returncode != 0 and "Permission denied" in read.stderr


def test_slurm_shows_the_other_user_nothing_of_alices(live_cluster):
    job = submit("alice", "--partition=cpu", "--time=5", script="sleep 120")
    try:
        wait_until(lambda: (j := slurm.job(job)) and j.alive, 10, what="alice's job")
        queue = as_user(ATTACKER, "squeue", "--all", "--noheader", "--format=%i %u")
        assert job not in queue and "alice" not in queue
        history = as_user(ATTACKER, "sacct", "--allusers", "--noheader", "--parsable2",
                          "--starttime=now-7days", "--format=JobID,User,Account")
        assert "alice" not in history and "proj-climate" not in history
        shares = as_user(ATTACKER, "sshare", "--all", "--noheader", "--parsable2")
        assert "proj-climate" not in shares and "alice" not in shares
        assert "course-ml202" in shares  # his own project, still
        assocs = as_user(ATTACKER, "sacctmgr", "--noheader", "--parsable2", "show", "assoc",
                         "format=account,user")
        assert "proj-climate" not in assocs and "alice" not in assocs
        reservations = as_user(ATTACKER, "scontrol", "show", "reservation")
        assert "dl101" not in reservations  # not his course
        # alice sees hers, from Slurm and through the CLI.
        assert job in as_user("alice", "squeue", "--noheader", "--format=%i")
        assert job in cli("alice", "jobs")
        assert "proj-climate" in cli("alice", "budget")  # she coordinates it
        # bob, a plain member, learns from Slurm only his own share; the CLI says where the
        # project's totals are (the service, in a hub session).
        member = subprocess.run(["runuser", "-u", "bob", "--", "/opt/aifactory/venv/bin/aifactory",
                                 "budget", "proj-climate"], capture_output=True, text=True, cwd="/tmp")
        assert member.returncode != 0
        assert "totals of project proj-climate only to its coordinators" in member.stderr
    finally:
        slurm.cancel(job)


def test_the_clusters_secrets_are_root_only(live_cluster):
    secrets = ["/var/lib/aifactory/demo-passwords.json", "/var/lib/aifactory/db-password",
               "/etc/slurm/slurmdbd.conf", "/var/lib/aifactory/hub/jupyterhub_cookie_secret"]
    for path in secrets:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        read = subprocess.run(["runuser", "-u", ATTACKER, "--", "cat", path],
                              capture_output=True, text=True)
        assert read.returncode != 0 and "Permission denied" in read.stderr, path


def test_homes_are_private(live_cluster):
    for user in ("alice", ATTACKER):
        assert stat.S_IMODE(os.stat(f"/home/{user}").st_mode) == 0o700, user
    listing = subprocess.run(["runuser", "-u", ATTACKER, "--", "ls", "/home/alice"],
                             capture_output=True, text=True)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr


def test_a_session_keeps_its_log_scratch_and_dask_identity_private(hub_client):
    alice = hub_client("alice")
    alice.start(profile="cpu")
    [job] = notebook_jobs("alice")
    log = f"/home/alice/.jupyterhub-slurm-{job.job_id}.log"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    env = process_env(notebook_process("alice"))
    scratch = env["DASK_TEMPORARY_DIRECTORY"]
    assert scratch.startswith(f"/tmp/aifactory-{job.job_id}.")
    info = os.stat(scratch)
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, os.stat("/home/alice").st_uid)
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == "/home/alice/.aifactory/dask-tls/key.pem"
    # The hub's log names sessions' nodes and ports: not for other users.
    assert stat.S_IMODE(os.stat("/var/log/aifactory/jupyterhub.log").st_mode) & 0o007 == 0
    read = subprocess.run(["runuser", "-u", ATTACKER, "--", "cat",
                           "/var/log/aifactory/jupyterhub.log"], capture_output=True, text=True)
    assert read.returncode != 0
    alice.stop()
    wait_until(lambda: not os.path.exists(scratch), 30, what="the session's scratch to go")


def sbatch_as(user: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", "--output=/dev/null",
                           *args, "--wrap", "sleep 60"], capture_output=True, text=True, cwd="/tmp")


def test_slurm_itself_holds_a_course_account_to_its_sessions(live_cluster):
    course = ("--account=course-dl101", "--partition=gpu")
    outside = sbatch_as("student1", *course, "--gres=gpu:h100:4", "--time=08:00:00")
    assert outside.returncode != 0
    assert "course-dl101 is a course account; its jobs run only in reservation dl101" in outside.stderr
    inside = [("--gres=gpu:h100:4", "--time=60", "use at most 1 GPUs (this one asks for 4)"),
              ("--gres=gpu:h100:1", "--time=08:00:00", "run at most 180 minutes"),
              ("--gres=gpu:h100:1", "--time=60", "--cpus-per-task=16", "use at most 8 CPUs"),
              ("--gres=gpu:h100:1", "--time=60", "--mem=200G", "use at most 61440 MB"),
              ("--gres=gpu:h100:1", "--time=60", "--partition=cpu", "run only in partition gpu")]
    for *args, words in inside:
        refused = sbatch_as("student1", *course, "--reservation=dl101", *args)
        assert refused.returncode != 0 and words in refused.stderr, (args, refused.stderr)
    # A job like a course session is taken; once in, it cannot be moved or grown.
    taken = sbatch_as("student1", *course, "--reservation=dl101", "--gres=gpu:h100:1",
                      "--time=60", "--cpus-per-task=4", "--mem=30G", "--hold")
    assert taken.returncode == 0, taken.stderr
    job = taken.stdout.strip().split(";")[0]
    try:
        moved = subprocess.run(["runuser", "-u", "student1", "--", "scontrol", "update",
                                f"jobid={job}", "reservation="], capture_output=True, text=True)
        assert moved.returncode != 0
        assert slurm.job(job).reservation == "dl101"
    finally:
        slurm.cancel(job)
    # Other accounts are not held to it; nor are a participant's jobs without GPUs (their
    # CPU notebooks), which cost a GPU-hour budget nothing.
    for user, args in (("alice", ("--account=proj-climate", "--partition=gpu",
                                  "--gres=gpu:h100:4", "--time=08:00:00")),
                       ("student1", ("--account=course-dl101", "--partition=cpu", "--time=60"))):
        free = sbatch_as(user, *args, "--hold")
        assert free.returncode == 0, (user, free.stderr)
        slurm.cancel(free.stdout.strip().split(";")[0])


def test_a_spawn_link_with_resources_shows_the_form_with_the_cost_instead_of_starting(hub_client):
    alice = hub_client("alice")
    before = slurm.rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)
    link = f"{HUB}/hub/spawn?opt-profile=h100-1&opt-gpus=2&opt-walltime=08:00:00&opt-account=proj-climate"
    r = alice.http.get(link, allow_redirects=False)
    assert r.status_code == 200, r.status_code  # the form, not a redirect to a pending page
    page = r.content.decode()
    assert "This link asks for a session: check its settings" in page and 'id="aif-cost"' in page
    # A bad link says what is wrong, on the form too.
    bad = alice.http.get(f"{HUB}/hub/spawn?opt-profile=h100-1&opt-gpus=99", allow_redirects=False)
    assert bad.status_code == 200 and "GPUs" in bad.content.decode()
    assert slurm.rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0) == before
    assert not alice.server() and not notebook_jobs("alice")


def test_the_hub_never_acts_on_another_users_job_id(hub_client):
    """A session state holding someone else's job id (a restored or edited database) is
    neither routed to nor cancelled."""
    victim = submit("alice", "--partition=cpu", "--time=5", script="sleep 300")
    try:
        wait_until(lambda: (j := slurm.job(victim)) and j.alive, 10, what="alice's job")
        out = subprocess.run([VENV_PYTHON, "-c", CANCEL_AS_HUB, victim], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        assert answer["status"] == "NOTFOUND"  # alice's job is not dave's session
        assert slurm.job(victim).alive  # and stop() did not cancel it
    finally:
        slurm.cancel(victim)


# The spawner as the hub runs it (root), for dave, with alice's job id in its state.
CANCEL_AS_HUB = """
import asyncio, json, sys
from aifactory.spawner import SlurmSpawner

class User:
    name = "dave"
    url = "/user/dave/"
    def __getattr__(self, name):
        return None

async def main(job_id):
    spawner = SlurmSpawner(user=User(), site_path="/etc/aifactory/hub_config/site.yaml")
    spawner.load_state({"job_id": job_id})
    status = await spawner.query_job_status(max_age=0)
    await spawner.stop(now=True)
    print(json.dumps({"status": status.name}))

asyncio.run(main(sys.argv[1]))
"""


# A listener of dave's on a compute node: answers 200 and keeps the headers it was sent.
LISTENER = """
import http.server, json, sys
class Keep(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps(dict(self.headers.items())) + "\\n")
        self.send_response(200); self.end_headers(); self.wfile.write(b"dave was here")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Keep).serve_forever()
"""


def on_node_as(node: str, user: str, *command: str, **kwargs):
    """`command` as `user` in `node`'s network namespace, in a process group of its own."""
    return subprocess.Popen(["ip", "netns", "exec", node, "runuser", "-u", user, "--", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def end(proc: subprocess.Popen) -> None:
    """The process and what it started (runuser's child outlives a kill of runuser)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def session_port(user: str, job_id: str) -> int:
    log = open("/var/log/aifactory/jupyterhub.log").read()
    found = re.findall(rf"Notebook job {job_id} running at [^:]+:(\d+)", log)
    assert found, f"no route for job {job_id} in the hub's log"
    return int(found[-1])


def test_the_route_goes_to_a_port_the_session_already_holds(hub_client):
    alice = hub_client("alice")
    alice.start(profile="cpu")
    [job] = notebook_jobs("alice")
    port = session_port("alice", job.job_id)
    # When the hub learnt the port, alice's server held it: nobody can bind it now ...
    squat = on_node_as(job.nodes, ATTACKER, VENV_PYTHON, "-c", LISTENER, str(port), "/dev/null")
    try:
        assert squat.wait(20) != 0 and "Address already in use" in squat.stderr.read()
    finally:
        end(squat)
    # ... and what listens there is alice's server (the hub reaches her, through the proxy).
    listeners = subprocess.run(["ip", "netns", "exec", job.nodes, "ss", "-Hltnp",
                                f"sport = :{port}"], capture_output=True, text=True).stdout
    pid = int(re.search(r"pid=(\d+)", listeners).group(1))
    assert os.stat(f"/proc/{pid}").st_uid == os.stat("/home/alice").st_uid
    assert alice.http.get(f"{HUB}/user/alice/lab", timeout=30).status_code == 200


def test_the_sessions_proxy_reaches_no_other_users_port_and_hands_on_no_credentials(hub_client):
    alice = hub_client("alice")
    alice.start(profile="cpu")
    [job] = notebook_jobs("alice")
    theirs, mine = 18999, 18998
    seen = {port: f"/tmp/saw-headers-{port}.jsonl" for port in (theirs, mine)}
    for path in seen.values():
        if os.path.exists(path):
            os.remove(path)
    listeners = [on_node_as(job.nodes, ATTACKER, VENV_PYTHON, "-c", LISTENER, str(theirs),
                            seen[theirs]),
                 on_node_as(job.nodes, "alice", VENV_PYTHON, "-c", LISTENER, str(mine), seen[mine])]
    try:
        def answer(port):  # a list: a Response of 403 is falsy
            r = alice.http.get(f"{HUB}/user/alice/proxy/{port}/status", timeout=30)
            return [r] if r.status_code != 502 else []  # 502: not listening yet
        # alice opens an old link to "her" dashboard, whose port dave's listener now holds.
        [refused] = wait_until(lambda: answer(theirs), 30, what="dave's listener")
        assert refused.status_code == 403 and "belongs to another user" in refused.text
        assert not os.path.exists(seen[theirs])  # nothing reached dave
        # Her own listener is reached, without the hub's or Jupyter's credentials.
        [ok] = wait_until(lambda: answer(mine), 30, what="alice's listener")
        assert ok.status_code == 200 and ok.text == "dave was here"
        assert alice.http.cookies  # her browser sent her cookies to the hub ...
        sent = {k.lower(): v for line in open(seen[mine]) for k, v in json.loads(line).items()}
        assert "authorization" not in sent and "x-xsrftoken" not in sent  # ... none came through
        assert "jupyterhub-" not in sent.get("cookie", "") and "_xsrf" not in sent.get("cookie", "")
    finally:
        for listener in listeners:
            end(listener)


# dave's TLS listener with his own session's certificate (valid, from the same CA as alice's):
# it counts the connections it is offered and keeps the requests that reach it.
TLS_LISTENER = """
import http.server, json, ssl, sys
port, seen, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
class Keep(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(seen, "a") as f:
            f.write(json.dumps({"path": self.path, **dict(self.headers.items())}) + "\\n")
        self.send_response(200); self.end_headers(); self.wfile.write(b"dave was here")
    def log_message(self, *args):
        pass
class Server(http.server.HTTPServer):
    def get_request(self):
        sock, address = self.socket.accept()
        with open(seen + ".connections", "a") as f:
            f.write("connection\\n")
        return context.wrap_socket(sock, server_side=True), address
Server(("", port), Keep).serve_forever()
"""


def test_a_port_taken_after_alices_server_died_gets_none_of_her_requests(hub_client):
    alice, dave = hub_client("alice"), hub_client(ATTACKER)
    alice.start(profile="cpu")
    dave.start(profile="cpu")
    [job], [daves_job] = notebook_jobs("alice"), notebook_jobs(ATTACKER)
    assert daves_job.nodes == job.nodes, "both sessions should share the cpu node"
    port = session_port("alice", job.job_id)
    status = f"{HUB}/user/alice/lab"  # through the hub's login on her origin, as a browser
    assert alice.http.get(status, timeout=30).status_code == 200
    daves = process_env(notebook_process(ATTACKER))
    seen = f"/tmp/saw-alices-requests-{port}.jsonl"
    for path in (seen, seen + ".connections"):
        if os.path.exists(path):
            os.remove(path)
    # alice's server dies; before the hub's next poll dave takes its port, with his own
    # session's certificate, which the proxy's CA signed too.
    os.kill(notebook_process("alice"), signal.SIGKILL)
    squat = on_node_as(job.nodes, ATTACKER, VENV_PYTHON, "-c", TLS_LISTENER, str(port), seen,
                       daves["JUPYTERHUB_SSL_CERTFILE"], daves["JUPYTERHUB_SSL_KEYFILE"])
    try:
        wait_until(lambda: listening_user(job.nodes, port) == ATTACKER, 20,
                   what="dave's listener on alice's port")
        answers = [alice.http.get(status, timeout=30) for _ in range(3)]
        # The proxy came to dave's port (the route was still there) and left at the handshake:
        # his certificate names dave's origin, not alice's.
        assert os.path.exists(seen + ".connections"), "the proxy never tried the port"
        assert not os.path.exists(seen), f"dave received alice's requests: {open(seen).read()}"
        assert all("dave was here" not in a.text for a in answers)
    finally:
        end(squat)


def listening_user(node: str, port: int) -> str | None:
    out = subprocess.run(["ip", "netns", "exec", node, "ss", "-Hltnp", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    found = re.search(r"pid=(\d+)", out)
    if not found:
        return None
    try:
        uid = os.stat(f"/proc/{found.group(1)}").st_uid
    except FileNotFoundError:  # alice's killed server, seen by ss as it went
        return None
    return next((u for u in ("alice", ATTACKER) if os.stat(f"/home/{u}").st_uid == uid), "?")


# A TLS client of dave's on the node, without a certificate the server trusts.
TLS_CLIENT = """
import socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
if len(sys.argv) > 3:
    context.load_cert_chain(sys.argv[3], sys.argv[4])
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /api/status HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            print("answered:", tls.recv(200)[:40])
except (OSError, ssl.SSLError) as e:
    print("refused:", type(e).__name__)
"""


def batch_shell(job_id: str) -> int:
    """The pid of the job's batch script (bash running slurmd's copy, slurm_script)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if proc.name.isdigit() and b"slurm_script" in cmdline and \
                    process_env(int(proc.name)).get("SLURM_JOB_ID") == job_id:
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no batch shell of job {job_id}")


def test_alices_session_certificate_and_server_are_hers_and_the_proxys_alone(hub_client):
    alice, dave = hub_client("alice"), hub_client(ATTACKER)
    alice.start(profile="cpu")
    dave.start(profile="cpu")
    [job] = notebook_jobs("alice")
    env = process_env(notebook_process("alice"))
    alice_uid = os.stat("/home/alice").st_uid
    for variable in ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE"):
        path = env[variable]
        info = os.stat(path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (alice_uid, 0o600), path
        refused = subprocess.run(["runuser", "-u", ATTACKER, "--", "cat", path],
                                 capture_output=True, text=True)
        assert refused.returncode != 0 and "BEGIN" not in refused.stdout
    # The job's environment carried it, not its script (which Slurm's operators, the
    # allocations service among them, can read back); its variables end in the job's shell.
    def script_as(user: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", user, "--", "scontrol", "write", "batch_script",
                               job.job_id, "-"], capture_output=True, text=True)
    own = script_as("alice")
    assert "JUPYTERHUB_SSL_KEYFILE" in own.stdout and "BEGIN" not in own.stdout, own
    operator = script_as(SERVICE_USER)
    assert "JUPYTERHUB_SSL_KEYFILE" in operator.stdout and "BEGIN" not in operator.stdout
    refused = script_as(ATTACKER)  # scontrol says so, and exits 0 on 22.05
    assert "#!/bin/bash" not in refused.stdout and "failed" in refused.stderr, refused
    assert not [k for k in env if k.startswith("AIFACTORY_SESSION_")], sorted(env)
    job_shell = batch_shell(job.job_id)
    assert "PRIVATE KEY-----" in process_env(job_shell).get("AIFACTORY_SESSION_KEY", "")
    peek = subprocess.run(["runuser", "-u", ATTACKER, "--", "cat", f"/proc/{job_shell}/environ"],
                          capture_output=True)
    assert peek.returncode != 0 and b"BEGIN" not in peek.stdout
    # The hub keeps no copy of the session's key, and the CAs' keys are out of dave's reach.
    internal = Path("/var/lib/aifactory/hub/internal-ssl")
    assert not list(internal.glob("user-alice*/*.key"))
    ca_keys = list(internal.glob("*-ca/*.key"))
    assert {k.parent.name for k in ca_keys} >= {"notebooks-ca", "proxy-client-ca", "hub-ca"}
    for key in ca_keys:
        read = subprocess.run(["runuser", "-u", ATTACKER, "--", "cat", key], capture_output=True)
        assert read.returncode != 0 and not read.stdout, key
    # dave on alice's node reaches her server's port, but not her server: with no certificate,
    # or with his own session's, the handshake fails before any request is read.
    port = session_port("alice", job.job_id)
    daves = process_env(notebook_process(ATTACKER))
    for extra in ((), (daves["JUPYTERHUB_SSL_CERTFILE"], daves["JUPYTERHUB_SSL_KEYFILE"])):
        tried = on_node_as(job.nodes, ATTACKER, VENV_PYTHON, "-c", TLS_CLIENT, job.nodes,
                           str(port), *extra)
        out, _ = tried.communicate(timeout=30)
        assert out.startswith("refused:"), out
    assert alice.http.get(f"{HUB}/user/alice/lab", timeout=30).status_code == 200
