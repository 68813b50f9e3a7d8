"""Each user's Dask identity: the key and certificate their schedulers, workers and clients
present to each other (mutual TLS), in a 0700 folder of their home that only they can read.

    python -P -m aifactory.dask_tls      # made (or renewed) by every notebook session's job

A scheduler started by `GPUCluster` accepts only peers holding this user's certificate, so
another user who learns its address cannot connect, submit work or run code as the owner.
One identity per user, not per cluster: `Client("tls://...")` then works in any of the
user's kernels (and in the code the Dask sidebar inserts) through the `DASK_DISTRIBUTED__COMM__TLS__*`
variables the session sets (`environment`).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

FOLDER = "~/.aifactory/dask-tls"
RENEW_AFTER_S = 300 * 86400  # distributed's temporary certificates are valid 365 days


def paths(folder: str = FOLDER) -> tuple[Path, Path]:
    """(certificate, key) of the user whose home `~` is."""
    base = Path(os.path.expanduser(folder))
    return base / "cert.pem", base / "key.pem"


def environment(home: str) -> dict[str, str]:
    """The Dask settings that make every client of the session use the identity."""
    cert, key = paths(FOLDER.replace("~", home, 1))
    return {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(cert),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(cert),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(key)}


def private_folder(path: Path) -> None:
    """`path` and its parent as folders of this user alone (0700), or an error saying why."""
    for folder in (path.parent, path):
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
            raise PermissionError(f"{folder} is not a folder of this user's own.")
        os.chmod(folder, 0o700)


def ensure(folder: str = FOLDER, now: float | None = None) -> tuple[Path, Path]:
    """Make the identity when it is missing or old; (certificate, key)."""
    cert, key = paths(folder)
    private_folder(cert.parent)
    now = time.time() if now is None else now
    # One maker at a time (sessions and clusters starting together), so a key never lies
    # beside another run's certificate.
    with open(os.open(cert.parent / ".lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert.exists() and key.exists() and now - cert.stat().st_mtime < RENEW_AFTER_S:
            return cert, key
        from distributed.security import Security  # imports cryptography: only when needed

        made = Security.temporary()
        for path, text in ((key, made.tls_scheduler_key), (cert, made.tls_scheduler_cert)):
            new = path.with_name(path.name + ".new")
            new.unlink(missing_ok=True)
            with os.fdopen(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(text)
            new.replace(path)
    return cert, key


def security(folder: str = FOLDER):
    """A distributed `Security` for every role (scheduler, worker, client) of this user."""
    from distributed.security import Security

    cert, key = (str(p) for p in ensure(folder))
    return Security(tls_ca_file=cert, require_encryption=True,
                    tls_client_cert=cert, tls_client_key=key,
                    tls_scheduler_cert=cert, tls_scheduler_key=key,
                    tls_worker_cert=cert, tls_worker_key=key)


if __name__ == "__main__":
    try:
        print(f"Dask identity in {ensure()[0].parent}")
    except OSError as e:
        print(f"Dask identity not made: {e}", file=sys.stderr)
        sys.exit(1)
