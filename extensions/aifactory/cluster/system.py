"""Small root-side helpers for bringing the local cluster up: commands, files, pid files."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

STATE_DIR = Path("/var/lib/aifactory")
RUN_DIR = Path("/run/aifactory")
ETC_DIR = Path("/etc/aifactory")
LOG_DIR = Path("/var/log/aifactory")


class ClusterError(RuntimeError):
    """Bring-up could not go on; the message is one sentence for the operator."""


def sh(*argv: str, input: str | None = None, check: bool = True, timeout: float = 600,
       env: dict | None = None, user: str | None = None,
       cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a system command (argv, no shell), as root or as the system account `user`. On
    failure: ClusterError with its last line."""
    as_user = {}
    if user:
        as_user = as_account(user)
        env = ACCOUNT_ENV if env is None else env
        if input is None:
            as_user["stdin"] = subprocess.DEVNULL
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd, **as_user)
    except FileNotFoundError:
        raise ClusterError(f"{argv[0]} is not installed.") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(argv[:3])} did not finish in {timeout:.0f} s.") from None
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}")
        raise ClusterError(f"{' '.join(argv[:3])} failed: {last.splitlines()[-1]}")
    return proc


def ensure_system_user(name: str) -> None:
    """A system account with no home and no login shell, made if missing."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        sh("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", "/usr/sbin/nologin", name)


ACCOUNT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
READ_LIMIT = 1 << 20  # a certificate, a key, a token: never more


def as_account(user: str) -> dict:
    """Popen arguments that run a command as the system account `user` (the caller is root),
    in a session of its own: a process of that account must not reach root's terminal
    (TIOCSTI) or, through /proc, root's environment (the caller passes a small one)."""
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid,
            "extra_groups": os.getgrouplist(user, pw.pw_gid), "start_new_session": True}


def read_as(user: str, path: Path) -> str:
    """A file read with `user`'s rights, not root's: from a folder that account owns, root
    must not follow a link it planted (to /etc/shadow, into another service's files), nor
    hang on a pipe or fill its memory from /dev/zero."""
    try:
        got = subprocess.run(["head", "-c", str(READ_LIMIT + 1), "--", str(path)],
                             capture_output=True, timeout=30, cwd="/", stdin=subprocess.DEVNULL,
                             env=ACCOUNT_ENV, **as_account(user))
        text = got.stdout.decode()
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{path} did not read in 30 s as {user} (not a plain file?)") from None
    except UnicodeDecodeError:
        raise ClusterError(f"{path}, read as {user}, is not text.") from None
    if got.returncode != 0:
        raise ClusterError(f"{path} is not readable as {user}: {got.stderr.decode().strip()}")
    if len(got.stdout) > READ_LIMIT:
        raise ClusterError(f"{path}, read as {user}, is larger than a certificate can be.")
    return text


def hand_over(folder: Path, user: str) -> None:
    """A folder root left (an older install's, from before `user` ran it) becomes `user`'s,
    with all in it. Only while the folder itself is still root's: the account cannot write
    inside it then, so it cannot have swapped anything in there for a link. Deepest first,
    the folder last, so a stop half-way leaves it root's and this runs again."""
    pw = pwd.getpwnam(user)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.is_symlink() or folder.lstat().st_uid != 0:
        return
    for top, dirs, files in os.walk(folder, topdown=False):  # links are not followed
        for name in dirs + files:
            os.chown(Path(top, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    os.chown(folder, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def secret(path: Path) -> str:
    """A random token kept in `path` (0600, root's), made on first use with its folder
    (0700) if that is missing; letters and digits only, so it goes into any config file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        write_if_changed(path, secrets.token_hex(32), 0o600)
    return path.read_text().strip()


def write_if_changed(path: Path, text: str, mode: int = 0o644, owner: str | None = None) -> bool:
    """Write `text` to `path` when it differs; returns True when the file changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    changed = not path.exists() or path.read_text() != text
    if changed:
        # Made with its mode and owner before a byte is written: a secret is never readable
        # by others, not even for a moment (an umask can only take rights away).
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
        with os.fdopen(fd, "w") as f:
            if owner:
                shutil.chown(tmp, owner, owner)
            os.chmod(tmp, mode)
            f.write(text)
        tmp.replace(path)
    os.chmod(path, mode)
    if owner:
        shutil.chown(path, owner, owner)
    return changed


def read_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process is alive, else None."""
    try:
        pid = int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie or a recycled pid of another program does not count.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return None
    try:  # a process of the other test bed (another root) is not ours either
        if os.readlink(f"/proc/{pid}/root") != os.readlink("/proc/self/root"):
            return None
    except OSError:
        pass
    return pid


def stop_pid(pidfile: Path, name: str, timeout: float = 20,
             stop_signal: int = signal.SIGTERM) -> bool:
    """Signal the process named in `pidfile` (SIGTERM), wait, then SIGKILL. True if one was
    running."""
    pid = read_pid(pidfile)
    if pid is None:
        return False
    os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(pidfile) is None or not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True


def wait_for(check, what: str, timeout: float = 30, interval: float = 0.3):
    """Call `check` until it returns something true; ClusterError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not come up within {timeout:.0f} s.")
        time.sleep(interval)


def installed_debs(names: list[str]) -> set[str]:
    proc = sh("dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *names, check=False)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}


def ensure_debs(names: list[str]) -> list[str]:
    """apt-get install what is missing of `names`; returns what was installed."""
    missing = [n for n in names if n not in installed_debs(names)]
    if not missing:
        return []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh("apt-get", "update", "-qq", env=env)
    proc = sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
              env=env, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        raise ClusterError(f"apt-get could not install {', '.join(missing)}: "
                           f"{last[0] if last else 'no message'}")
    return missing
