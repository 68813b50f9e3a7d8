"""A desktop in the session (jupyter-remote-desktop-proxy), and its X session that ends with it.

- **Only the user reaches the VNC server.** jupyter-remote-desktop-proxy 3.x starts
  `vncserver -rfbunixpath {unix_socket} -rfbport -1 -SecurityTypes None` on the first visit to
  /user/NAME/desktop/: no TCP port; jupyter-server-proxy makes the socket's folder with
  mkdtemp (0700, the user's own) and TigerVNC makes the socket 0600. The browser reaches it
  only through the hub's login for the user's server and the server's websocket. X clients
  need the cookie in ~/.Xauthority (the home is 0700).
- **What the desktop starts ends with the job.** XFCE starts daemons that detach (dbus-daemon,
  at-spi, xfconfd, ssh-agent, gpg-agent): their parent becomes init, outside the Slurm job's
  process tree, and proctrack/linuxproc leaves them running after the job ends. So the X
  session (bin/aifactory-desktop-session, which the extension makes the desktop's xstartup)
  runs under `main` here: a child subreaper, whose detached descendants stay its children,
  and which ends them all when the session ends or the job signals it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
XSTARTUP = Path(sys.prefix) / "bin" / "aifactory-desktop-session"  # installed by `aif`


def _jupyter_server_extension_points():
    return [{"module": "aifactory.desktop"}]


def _link_jupyter_server_extension(serverapp) -> None:
    # Linking comes before any extension loads: jupyter-server-proxy reads the desktop's
    # settings (this variable among them) when it loads.
    if XSTARTUP.exists():
        os.environ["JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP"] = str(XSTARTUP)


def _load_jupyter_server_extension(serverapp) -> None:
    """Nothing to add to the server: linking did the work."""


def children() -> list[int]:
    """This process's children, the orphans it adopted included (zombies too)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.append(int(stat.parent.name))
    return found


def end_all(grace: float = 5.0) -> None:
    """TERM every child once, KILL those left after `grace` seconds; reap them all. A child
    that ends may leave orphans, which become children here: they are signalled in turn."""
    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return  # none left
        late = time.monotonic() > deadline
        for pid in children():
            if late or pid not in signalled:
                try:
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                except ProcessLookupError:
                    pass
                signalled.add(pid)
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    """Run `argv` (the X session) as a child subreaper; when it ends, or on TERM or INT
    (Slurm's cancel), end everything it left."""
    if not argv:
        print("usage: python -m aifactory.desktop COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    # Waited for, not handled: no signal can come between two steps of the clean-up.
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    session = os.posix_spawnp(argv[0], argv, os.environ, setsigmask=(),
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))  # as subprocess does
    status = None
    while status is None:
        if signal.sigwaitinfo(watched).si_signo != signal.SIGCHLD:
            status = 143
            break
        try:  # the session, or an adopted orphan, ended
            while (ended := os.waitpid(-1, os.WNOHANG))[0]:
                if ended[0] == session:
                    code = os.waitstatus_to_exitcode(ended[1])
                    status = code if code >= 0 else 128 - code  # killed by a signal
        except ChildProcessError:  # none left; the session was one of them
            pass
    end_all()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
