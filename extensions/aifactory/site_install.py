"""`aifactory site install`: what a session needs of the shared environment besides the
package itself (root, on the login node, once after each `pip install` of aifactory).

pip installs code; these are the environment's own settings that make a session an aifactory
session: the Jupyter server config that loads `aifactory.session` (without it a session never
reports its port and its spawn waits until the timeout), the kernel spec manager, the Dask
sidebar's GPU cluster, JupyterLab's settings and aifactory's JupyterLab extension (built here with npm from its
lockfile, `aifactory.lab`), the desktop's X session, the `.pth` that gives
every Python of the environment aifactory's fixes from its start, and the folder that lets
kernels of people's own environments import aifactory alone. All at the environment's own
paths (`--venv`, by default the one this command runs from), so a site's prefix is as good as
the demo's `/opt/aifactory/venv`. Safe to run again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FILES = Path(__file__).resolve().parent / "site_files"
# Where X's socket folders belong (root's, 1777), as systemd-tmpfiles makes them.
X_FOLDERS = (Path("/tmp/.X11-unix"), Path("/tmp/.ICE-unix"))


class InstallError(RuntimeError):
    """One sentence for the operator; nothing after the failing step was written."""


@dataclass(frozen=True)
class Placed:
    source: str  # a file of site_files/
    target: str  # relative to the environment's prefix
    mode: int = 0o644


PLACED = (
    Placed("jupyter_server_config.json", "etc/jupyter/jupyter_server_config.json"),
    Placed("jupyter_server_config_desktop.json",
           "etc/jupyter/jupyter_server_config.d/aifactory-desktop.json"),
    Placed("dask.yaml", "etc/dask/aifactory.yaml"),
    Placed("jupyterlab-overrides.json", "share/jupyter/lab/settings/overrides.json"),
    Placed("desktop-xstartup", "bin/aifactory-desktop-session", 0o755),
)
# Written by older installs where they are no longer read.
STALE = ("etc/jupyter/jupyter_server_config.d/aifactory.json",)
LAB_EXTENSION = "share/jupyter/labextensions/aifactory-jupyterlab"
LAB_SOURCES = ("package.json", "package-lock.json", "src/index.js", "src/words.js",
               "style/index.css")


def install(venv: Path, cli_link: Path | None = None, x_folders=X_FOLDERS) -> list[str]:
    """Put everything in place under `venv`; returns what changed, one line each."""
    venv = Path(venv).absolute()
    if not (venv / "pyvenv.cfg").exists() and not (venv / "bin/python").exists():
        raise InstallError(f"{venv} is not a Python environment (no pyvenv.cfg, no bin/python).")
    _only_roots(venv)
    changed = []
    for placed in PLACED:
        if _place(venv / placed.target, (FILES / placed.source).read_bytes(), placed.mode):
            changed.append(placed.target)
    for old in STALE:
        if (venv / old).exists():
            (venv / old).unlink()
            changed.append(f"removed {old}")
    purelib, package, jupyterlab = _asked(venv)
    if _place(purelib / "aifactory-start.pth", b"import aifactory.at_start\n", 0o644):
        changed.append(str((purelib / "aifactory-start.pth").relative_to(venv)))
    if _link(venv / "share/aifactory/pythonpath/aifactory", package):
        changed.append("share/aifactory/pythonpath/aifactory")
    if cli_link is not None and _link(Path(cli_link), venv / "bin/aifactory"):
        changed.append(str(cli_link))
    for folder in x_folders:
        _x_folder(folder)
    # Last: it needs npm and the registry, and everything above is in place whatever it says.
    if _lab_extension(venv / LAB_EXTENSION, package / "lab", jupyterlab / "staging"):
        changed.append(LAB_EXTENSION)
    return changed


def _only_roots(venv: Path) -> None:
    """Root runs the environment's Python and writes into it: nobody else may be able to
    change it (its folder or one above it), or that is root for them. A sticky folder (/tmp)
    keeps others from replacing what is root's in it."""
    if os.geteuid() != 0:
        return  # then it writes only what this account may anyway
    for folder in [venv, *venv.parents]:
        st = folder.stat()
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid != 0 or (writable and not st.st_mode & stat.S_ISVTX):
            raise InstallError(f"{folder} is not root's alone (owner uid {st.st_uid}, mode "
                               f"{stat.S_IMODE(st.st_mode):o}): a shared environment that "
                               "others can change would run their code as root here.")


_ASK = ("import os, sysconfig, aifactory, jupyterlab; print(sysconfig.get_paths()['purelib']); "
        "print(os.path.dirname(os.path.realpath(aifactory.__file__))); "
        "print(os.path.dirname(os.path.realpath(jupyterlab.__file__)))")


def _asked(venv: Path) -> tuple[Path, Path, Path]:
    """The environment's own site-packages, its aifactory and its jupyterlab packages, as its
    Python says."""
    asked = subprocess.run([str(venv / "bin/python"), "-P", "-c", _ASK], capture_output=True,
                           text=True, cwd="/", timeout=120)
    if asked.returncode != 0:
        raise InstallError(f"{venv}/bin/python cannot import aifactory and JupyterLab: install "
                           f"them there first (pip install aifactory). "
                           f"{asked.stderr.strip()[-200:]}")
    purelib, package, jupyterlab = asked.stdout.split("\n")[:3]
    return Path(purelib), Path(package), Path(jupyterlab)


def _lab_extension(target: Path, source: Path, core: Path) -> bool:
    """Build the JupyterLab extension from its sources and lockfile (npm ci, then
    @jupyterlab/builder against this environment's JupyterLab) unless the one in place was
    built from the same sources, JupyterLab and Node.js; the build happens in a private
    temporary folder. Root runs the builder and JupyterLab's webpack config: both folders must
    be root's alone, as the environment is."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise InstallError("Building the JupyterLab extension needs Node.js and npm "
                           "(Debian: apt install nodejs npm).")
    _only_roots(source)
    _only_roots(core)
    digest = hashlib.sha256()
    for name in LAB_SOURCES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes())
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                  timeout=60).stdout
    digest.update((core / "package.json").read_bytes() + node_version.encode())
    stamp = target / ".aifactory-source"
    if stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return False
    with tempfile.TemporaryDirectory(prefix="aifactory-lab-") as tmp:
        build = Path(tmp)
        for name in LAB_SOURCES:
            (build / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, build / name)
        steps = ([npm, "ci", "--no-fund", "--no-audit", "--ignore-scripts"],
                 [node, "node_modules/@jupyterlab/builder/lib/build-labextension.js",
                  "--core-path", str(core), "."])
        for step in steps:
            done = subprocess.run(step, cwd=build, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise InstallError(f"Building the JupyterLab extension failed at "
                                   f"`{' '.join(Path(a).name for a in step[:2])}`: "
                                   f"{(done.stderr or done.stdout).strip()[-300:]}")
        built = build / "build/aifactory-jupyterlab"
        (built / ".aifactory-source").write_text(digest.hexdigest())
        for path in [built, *built.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        fresh = target.with_name(target.name + ".aifactory-new")
        shutil.rmtree(fresh, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built, fresh)
    shutil.rmtree(target, ignore_errors=True)
    fresh.replace(target)
    return True


def _place(path: Path, content: bytes, mode: int) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    same = path.is_file() and not path.is_symlink() and path.read_bytes() == content
    if not same:
        tmp = path.with_name(path.name + ".aifactory-new")
        tmp.unlink(missing_ok=True)
        tmp.write_bytes(content)
        tmp.replace(path)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        path.chmod(mode)
        return True
    return not same


def _link(path: Path, target: Path) -> bool:
    if path.is_symlink() and Path(os.readlink(path)) == target:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".aifactory-new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(path)
    return True


def _x_folder(folder: Path) -> None:
    """Root's, 1777; never through a link a user planted first (chmod would make its target
    1777): once it is root's own folder, /tmp's sticky bit keeps users from swapping it."""
    try:
        folder.mkdir()
    except FileExistsError:
        pass
    st = folder.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise InstallError(f"{folder} is a link or not root's (someone made it first): remove "
                           "it, then run again.")
    folder.chmod(0o1777)
