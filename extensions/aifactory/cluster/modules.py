"""The demo's software environments: an Lmod module tree and the venvs its modules point to.

`hub_config/cluster/modules/` is copied to /opt/aifactory/modules (the `modules.path` of the
site description), and each `hub_config/cluster/environments/<name>.txt` (pip requirements)
becomes a venv /opt/aifactory/envs/<name> made from the system Python, readable by every user.
A venv is rebuilt only when its requirements change. Each one loads `aifactory.at_start`
(fixes of distributed and ssl) at every start (START_PTH), as the shared venv does. A site
with its own module tree (an EasyBuild tree under /sw) does not use this: it names its tree
in the site description; its Pythons get the fixes in kernels through
aifactory.kernel_launcher.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from .system import ClusterError, sh, write_if_changed

MODULE_TREE = Path("/opt/aifactory/modules")
ENVS = Path("/opt/aifactory/envs")
STAMP = ".aifactory-requirements.sha256"
# Made by `aif`: a folder holding only a link to the shared venv's aifactory package.
AIFACTORY_PATH = Path(sys.prefix, "share", "aifactory", "pythonpath")
# A .pth file's lines: a folder is appended to sys.path (after the environment's own
# packages, which win), a line starting with "import" is run, at every start of its Python.
START_PTH = f"{AIFACTORY_PATH}\nimport aifactory.at_start\n"


def ensure_tree(source: Path, dest: Path = MODULE_TREE) -> None:
    """The modulefiles of `source` in `dest`, exactly (files no longer in `source` removed)."""
    wanted = {p.relative_to(source) for p in source.rglob("*") if p.is_file()}
    for rel in sorted(wanted):
        write_if_changed(dest / rel, (source / rel).read_text(), 0o644)
    for p in sorted(dest.rglob("*"), reverse=True) if dest.exists() else ():
        if p.is_file() and p.relative_to(dest) not in wanted:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    for d in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        d.chmod(0o755)


def ensure_environment(requirements: Path, envs: Path = ENVS, log=print) -> bool:
    """The venv named after `requirements`, with exactly those packages; True if (re)built."""
    venv = envs / requirements.stem
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / STAMP
    if stamp.exists() and stamp.read_text() == want and (venv / "bin" / "python").exists():
        load_at_start(venv)
        return False
    log(f"building the environment {venv} from {requirements.name} (pip, a minute or two)")
    envs.mkdir(parents=True, exist_ok=True)
    envs.chmod(0o755)
    if not (venv / "bin" / "python").exists():
        sh("/usr/bin/python3", "-m", "venv", str(venv))
    try:
        sh(str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
           "-r", str(requirements), timeout=900)
    except ClusterError as e:
        raise ClusterError(f"The environment {venv.name} could not be built from "
                           f"{requirements}: {e}") from None
    load_at_start(venv)
    stamp.write_text(want)
    for p in [venv, *venv.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return True


def load_at_start(venv: Path) -> None:
    """Every start of the venv's Python loads aifactory.at_start (from the shared venv)."""
    for site_packages in venv.glob("lib/python3.*/site-packages"):
        write_if_changed(site_packages / "aifactory-start.pth", START_PTH, 0o644)


def ensure_all(hub_config: Path, log=print) -> list[str]:
    """The demo's module tree and environments; the names of the environments (re)built."""
    cluster = hub_config / "cluster"
    if (cluster / "modules").is_dir():
        ensure_tree(cluster / "modules")
    built = []
    for requirements in sorted((cluster / "environments").glob("*.txt")):
        if ensure_environment(requirements, log=log):
            built.append(requirements.stem)
    return built
