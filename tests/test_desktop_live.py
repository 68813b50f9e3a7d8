"""A desktop in the session: from the JupyterLab launcher, through the hub, on the job's node,
as the user, with the job's GPUs; nobody else reaches it; nothing of it outlives the job.

bob (a GPU session) is the desktop's user; dave, with a job of his own on the same node and
his own hub login, tries to reach it. The screenshot is tests/artifacts/desktop.png.
"""

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import requests
import websocket
from conftest import (ARTIFACTS, DEMO_CA, VENV_PYTHON, log_in_browser, notebook_jobs,
                      notebook_process, process_env, user_url, wait_until)

from aifactory import slurm

USER, ATTACKER = "bob", "dave"
DESKTOP_PROGRAMS = ("xfce4-session", "xfwm4", "xfce4-panel", "xfdesktop", "Thunar",
                    "xfce4-terminal")
# Distinct colours on the desktop's canvas (every 7th pixel): a blank screen has a handful,
# XFCE's panel and icons on black some hundreds, with its wallpaper thousands.
COLOURS = """() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return 0;
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < px.length; i += 28) seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
  return seen.size;
}"""

# What dave tries from his own job on the node: the VNC socket and its folder, the X
# display (its socket file and the abstract one of the node's namespace, without the
# user's cookie), and the VNC and X ports on the node's loopback.
PROBE = """
import json, os, socket, struct, sys
vnc, display = sys.argv[1], int(sys.argv[2])

def attempt(family, address, x11=False):
    s = socket.socket(family)
    s.settimeout(10)
    try:
        s.connect(address)
        if x11:  # a connection setup without authorization; the reply's first byte: 1 = in
            s.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, 0, 0))
            return "X accepted" if s.recv(8)[:1] == b"\\x01" else "X refused"
        return "open: %r" % s.recv(12)
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

try:
    listing = "listed: %s" % os.listdir(os.path.dirname(vnc))
except OSError as e:
    listing = type(e).__name__
x11 = "/tmp/.X11-unix/X%d" % display
print(json.dumps({
    "vnc socket": attempt(socket.AF_UNIX, vnc),
    "vnc folder": listing,
    "x11 socket": attempt(socket.AF_UNIX, x11, x11=True),
    "x11 abstract": attempt(socket.AF_UNIX, "\\0" + x11, x11=True),
    "vnc port": attempt(socket.AF_INET, ("127.0.0.1", 5900 + display)),
    "x11 port": attempt(socket.AF_INET, ("127.0.0.1", 6000 + display), x11=True),
}))
"""




def processes(uid: int) -> dict[int, list[str]]:
    """{pid: argv} of the processes whose real uid is `uid` (zombies too)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        real = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        if int(real) == uid:
            found[int(proc.name)] = argv if argv != [""] else [f"[{proc.name}]"]
    return found


def named(procs: dict[int, list[str]], name: str) -> list[int]:
    return [pid for pid, argv in procs.items() if os.path.basename(argv[0]) == name]


def net_namespace(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def websocket_first_bytes(url: str, token: str):
    """What a websocket to `url` with `token` first receives, or the HTTP status refusing it."""
    try:
        ws = websocket.create_connection(url, header=[f"Authorization: token {token}"],
                                         timeout=60, sslopt={"ca_certs": str(DEMO_CA)})
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    try:
        return ws.recv()
    finally:
        ws.close()


def test_a_desktop_from_the_launcher_on_the_sessions_node_for_the_user_alone(
        page, passwords, hub_client):
    uid = pwd.getpwnam(USER).pw_uid
    before = set(processes(uid))  # anything of bob's another test left is not this test's
    bob = hub_client(USER)
    bob.start(profile="h100-1")
    [job] = notebook_jobs(USER)
    server_env = process_env(notebook_process(USER, job.job_id))
    assert server_env.get("CUDA_VISIBLE_DEVICES"), "the session got no GPU"

    # In the browser: JupyterLab's launcher has a Desktop; it opens noVNC through the hub.
    log_in_browser(page, USER, passwords[USER])
    page.wait_for_url(lambda url: "/hub/login" not in url, timeout=60_000)
    page.goto(f"{user_url(USER)}lab?reset")
    tile = page.locator(".jp-LauncherCard", has_text="Desktop")
    tile.wait_for(timeout=60_000)
    started = time.monotonic()
    with page.context.expect_page() as opened:
        tile.click()
    desktop = opened.value
    try:
        desktop.wait_for_function(
            "document.getElementById('status').textContent === 'Connected'", timeout=90_000)
        desktop.wait_for_function(f"({COLOURS})() > 1000", polling=1000, timeout=90_000)
        shown_after = time.monotonic() - started
        assert desktop.url == f"{user_url(USER)}desktop/"
        (ARTIFACTS / "desktop.json").write_text(json.dumps(
            {"seconds_to_desktop": round(shown_after, 1), "colours": desktop.evaluate(COLOURS)}))
        # bob opens a terminal from the dock (its second icon, at the bottom's middle).
        screen = desktop.locator("#screen canvas").bounding_box()
        icon = (screen["x"] + screen["width"] / 2 - 73, screen["y"] + screen["height"] - 25)
        desktop.mouse.move(*icon)
        desktop.wait_for_timeout(500)  # the panel reacts to a press after the pointer came
        desktop.mouse.click(*icon, delay=200)
        wait_until(lambda: named(processes(uid), "xfce4-terminal"), 30,
                   what="a terminal opened in the desktop")
        desktop.wait_for_timeout(1500)  # drawn, for the screenshot
    finally:
        desktop.screenshot(path=ARTIFACTS / "desktop.png")

    # On the node: the VNC server and the desktop run as bob, in the node's network namespace,
    # and what runs in the desktop (the terminal bob opened too) has the session's GPUs.
    node_net = os.stat(f"/var/run/netns/{job.nodes}").st_ino
    mine = processes(uid)
    [xvnc] = named(mine, "Xtigervnc")
    for name in DESKTOP_PROGRAMS:
        assert named(mine, name), f"no {name} of bob's"
        for pid in named(mine, name):
            assert net_namespace(pid) == node_net, f"{name} is not on {job.nodes}"
            env = process_env(pid)
            assert env.get("CUDA_VISIBLE_DEVICES") == server_env["CUDA_VISIBLE_DEVICES"], name
            assert env.get("SLURM_JOB_ID") == job.job_id, name
    assert net_namespace(xvnc) == node_net
    # The VNC server listens on a socket of bob's alone, and on no TCP port.
    argv = mine[xvnc]
    vnc_socket = Path(argv[argv.index("-rfbunixpath") + 1])
    display = int(argv[1].lstrip(":"))
    for path, mode in ((vnc_socket, 0o600), (vnc_socket.parent, 0o700)):
        info = path.lstat()
        assert (info.st_uid, info.st_mode & 0o777) == (uid, mode), path
    listening = subprocess.run(["ip", "netns", "exec", job.nodes, "ss", "-Hltnp"],
                               capture_output=True, text=True, check=True).stdout
    assert f"pid={xvnc}," not in listening

    # dave, from a job of his own on the same node, reaches neither the VNC server nor X.
    probe = slurm.run(["srun", "--quiet", "--partition=gpu", f"--nodelist={job.nodes}",
                       "--account=course-ml202", "--time=2", "--job-name=desktop-probe",
                       VENV_PYTHON, "-P", "-c", PROBE, str(vnc_socket), str(display)],
                      user=ATTACKER, timeout=120)
    tried = json.loads(probe.strip().splitlines()[-1])
    (ARTIFACTS / "desktop-attack.json").write_text(json.dumps(tried, indent=1))
    assert tried == {"vnc socket": "PermissionError", "vnc folder": "PermissionError",
                     "x11 socket": "X refused", "x11 abstract": "X refused",
                     "vnc port": "ConnectionRefusedError",
                     "x11 port": "ConnectionRefusedError"}, tried

    # Through the hub: bob's token reaches his desktop's websocket (the RFB greeting); dave's
    # hub login and dave's token reach neither the page nor the websocket.
    ws_url = user_url(USER).replace("https://", "wss://", 1) + "desktop-websockify/"
    greeting = websocket_first_bytes(ws_url, bob.token())
    assert isinstance(greeting, bytes) and greeting.startswith(b"RFB "), greeting
    dave = hub_client(ATTACKER)
    page_as_dave = dave.http.get(f"{user_url(USER)}desktop/", timeout=60)
    assert page_as_dave.status_code == 403 and "Remote Desktop" not in page_as_dave.text
    token = dave.token()
    with_token = requests.get(f"{user_url(USER)}desktop/", allow_redirects=False, timeout=60,
                              headers={"Authorization": f"token {token}"})
    assert with_token.status_code == 403
    assert websocket_first_bytes(ws_url, token) == 403

    # The session ends: nothing of the desktop (nor of anything else of bob's) stays behind.
    detached = named(mine, "dbus-daemon") + named(mine, "xfconfd")
    assert detached, "the desktop started no bus: nothing to check the end with"
    bob.stop()
    wait_until(lambda: not notebook_jobs(USER), 60, what="bob's job to end")
    wait_until(lambda: not set(processes(uid)) - before, 30, what="bob's processes to end")
