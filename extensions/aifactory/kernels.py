"""A user's own venv and conda environments as Jupyter kernels, without a kernel spec to write.

The session's server (`ServerApp.kernel_spec_manager_class`, set in hub_config/
jupyter_server_config.json) looks in the usual places of the user's home (~/.venvs/*,
~/.conda/envs/*, ~/miniforge3/envs/*, ...) and in the paths listed in
~/.aifactory/environments.yaml. An environment with ipykernel becomes a kernel named
"myenv (Python 3.11, venv)"; one without it, or a broken one, is listed (`aifactory
environments`, `describe_environments()`) with the reason and the command that fixes it.

- **Cheap.** Nothing is run to learn about an environment: its files tell (pyvenv.cfg's
  version, conda-meta/python-*.json, lib/python3.X/site-packages/ipykernel). The server asks on
  every kernel list; a scan is reused while the folders it read keep their modification times.
- **The user's packages win.** A kernel of a user's environment gets PYTHONPATH set to a folder
  that holds only a link to the site's `aifactory` package (made by `aif`), so the widgets and
  GPUCluster import while dask, distributed and ipywidgets come from the user's environment.
- **Site modules.** When the first `python3` on the server's PATH is not the server's own (a
  module loaded in the Lmod sidebar or by the job) and has ipykernel, the kernel
  `aifactory-modules` runs it. It is looked for on every request, so it follows the sidebar.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel

from . import checked_yaml

# Where tools put environments, relative to the home (each subfolder is one environment).
CONVENTIONAL = (".venvs", "venvs", ".virtualenvs", ".conda/envs", "miniforge3/envs",
                "miniconda3/envs", "anaconda3/envs", "mambaforge/envs")
LIST_FILE = ".aifactory/environments.yaml"
# Made by `aif`: only a link to the installed aifactory package, nothing else of the venv.
AIFACTORY_PATH = Path(sys.prefix, "share", "aifactory", "pythonpath")
MODULES_KERNEL = "aifactory-modules"
# An environment kept inside a project (~/proj/.venv) is named after the project.
GENERIC_NAMES = {".venv", "venv", "env", ".env", ".conda"}
KERNEL_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class UserEnvironment:
    name: str
    path: str
    kind: str     # "venv" or "conda"; "" where it could not be told (see `problem`)
    python: str   # "3.11"; "" when unknown
    kernel: bool  # a working python with ipykernel: shown in the launcher
    problem: str = ""
    fix: str = ""  # the one command that fixes the problem, where there is one

    @property
    def executable(self) -> str:
        return f"{self.path}/bin/python"


# --- the scan (files only) ---------------------------------------------------------------

def scan(home: str | Path) -> tuple[list[UserEnvironment], list[str]]:
    """The environments of `home` in the usual places and its list file, in that order; and
    the paths whose modification times tell whether a new scan would differ."""
    home = Path(home)
    found: list[UserEnvironment] = []
    watched = [str(home / place) for place in CONVENTIONAL]
    seen_paths: set[str] = set()

    def add(env: UserEnvironment | None) -> None:
        if env is None or os.path.realpath(env.path) in seen_paths:
            return
        seen_paths.add(os.path.realpath(env.path))
        found.append(env)
        watched.extend(_paths_to_watch(env))

    for place in CONVENTIONAL:
        folder = home / place
        try:
            with os.scandir(folder) as listing:
                entries = sorted(e.name for e in listing if _is_dir(e))
        except FileNotFoundError:
            continue
        except OSError as e:
            found.append(UserEnvironment(place, str(folder), "", "", False,
                                         f"cannot be read ({e.strerror})"))
            continue
        for name in entries:
            add(inspect(folder / name, listed=False))

    list_file = home / LIST_FILE
    watched += [str(list_file.parent), str(list_file)]
    if os.path.lexists(list_file):
        def bad_list(problem: str) -> None:
            found.append(UserEnvironment(list_file.name, str(list_file), "", "", False, problem))
        try:
            if not os.path.isfile(list_file):  # a pipe would never end the read
                raise checked_yaml.CheckedYamlError(f"{list_file}: is not a file.")
            document = checked_yaml.load(list_file, [str])
        except checked_yaml.CheckedYamlError as e:
            bad_list(str(e))
        except UnicodeDecodeError:
            bad_list(f"{list_file}: is not UTF-8 text.")
        else:
            for i, entry in enumerate(document.data):
                path = _expand(entry, home)
                watched.append(str(path))
                add(inspect(path, listed=f"listed in {list_file}, line {document.line(f'[{i}]')}"))
    return found, watched


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder (or a link to one); a link in a loop or to nowhere is none, and does not
    hide its neighbours."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _expand(entry: str, home: Path) -> Path:
    """A listed path: `~` is the home, a relative path is relative to the home."""
    if entry == "~" or entry.startswith("~/"):
        entry = str(home) + entry[1:]
    return home / entry


def inspect(path: Path, listed: str | bool = False) -> UserEnvironment | None:
    """What the files of `path` say about it; None for a folder in a usual place that is no
    environment. `listed`: where the user listed it (a missing path is then a problem)."""
    name = path.parent.name if path.name in GENERIC_NAMES and path.parent.name else path.name
    where = f" ({listed})" if isinstance(listed, str) else ""

    def broken(kind: str, python: str, problem: str, fix: str = "") -> UserEnvironment:
        return UserEnvironment(name, str(path), kind, python, False, problem + where, fix)

    if not os.path.lexists(path):
        return broken("", "", "does not exist") if listed else None
    if not os.access(path, os.R_OK | os.X_OK):
        return broken("", "", "cannot be read (permission denied)")
    if os.path.isfile(path / "pyvenv.cfg"):
        kind, python = "venv", _venv_version(path)
    elif os.path.isdir(path / "conda-meta"):
        kind, python = "conda", _conda_version(path)
    elif listed:
        return broken("", "", "is not a venv or conda environment (it has no pyvenv.cfg and "
                              "no conda-meta folder)")
    else:
        return None
    python = python or _lib_version(path)
    executable = path / "bin" / "python"
    if not os.path.exists(executable):
        if os.path.islink(executable):
            return broken(kind, python, f"its python links to {os.readlink(executable)}, which "
                          "does not exist (the Python it was made from was removed or moved); "
                          "make the environment again")
        return broken(kind, python, "has no bin/python")
    if not os.access(executable, os.X_OK):
        return broken(kind, python, "its bin/python cannot be run (permission denied)")
    if not python:
        return broken(kind, python, "its Python version could not be read (no lib/python3.X)")
    site_packages = path / "lib" / f"python{python}" / "site-packages"
    if not os.path.isdir(site_packages / "ipykernel"):
        return broken(kind, python, "has no ipykernel, so it is not a kernel",
                      _ipykernel_fix(path, kind, site_packages))
    return UserEnvironment(name, str(path), kind, python, True)


def _ipykernel_fix(path: Path, kind: str, site_packages: Path) -> str:
    python = shlex.quote(f"{path}/bin/python")
    pip = f"{python} -m pip install ipykernel"
    if kind == "conda":
        # An environment in a conda installation's envs/ folder: that conda, so that conda keeps
        # managing its packages (pip's ipykernel would bring pyzmq and tornado beside conda's).
        conda = path.parent.parent / "bin" / "conda"
        if path.parent.name == "envs" and os.access(conda, os.X_OK):
            return f"{shlex.quote(str(conda))} install -p {shlex.quote(str(path))} ipykernel"
        # Elsewhere the conda that made it is not known; its pip works where there is one.
        if not os.path.isdir(site_packages / "pip"):
            return f"conda install -p {shlex.quote(str(path))} ipykernel"
        return pip
    if not os.path.isdir(site_packages / "pip"):  # made with --without-pip
        return f"{python} -m ensurepip && {pip}"
    return pip


def _venv_version(path: Path) -> str:
    """X.Y from pyvenv.cfg (`version` from venv, `version_info` from virtualenv and uv)."""
    try:
        text = (path / "pyvenv.cfg").read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            if match := re.match(r"\s*(\d+)\.(\d+)", value):
                return f"{match[1]}.{match[2]}"
    return ""


def _conda_version(path: Path) -> str:
    """X.Y from the python package's record in conda-meta (python-3.12.1-h..._0.json)."""
    try:
        names = os.listdir(path / "conda-meta")
    except OSError:
        return ""
    for name in names:
        if match := re.fullmatch(r"python-(\d+)\.(\d+)[^-]*-.*\.json", name):
            return f"{match[1]}.{match[2]}"
    return ""


def _lib_version(path: Path) -> str:
    """X.Y from the one lib/python3.X folder, where there is exactly one."""
    try:
        versions = [m[1] for n in os.listdir(path / "lib")
                    if (m := re.fullmatch(r"python(3\.\d+)", n))]
    except OSError:
        return ""
    return versions[0] if len(versions) == 1 else ""


def _paths_to_watch(env: UserEnvironment) -> list[str]:
    """What changes when the environment changes: ipykernel installed (site-packages), its
    Python removed or made again (bin, bin/python's target), the environment itself."""
    lib = f"{env.path}/lib/python{env.python}" if env.python else f"{env.path}/lib"
    return [env.path, f"{env.path}/bin", env.executable, f"{lib}/site-packages",
            f"{env.path}/conda-meta"]


def fingerprint(paths: list[str]) -> tuple:
    """Each path's modification time (following links), None where it is not there."""
    stamps = []
    for path in paths:
        try:
            stamps.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class Scanner:
    """`scan(home)` on each call, reused while the folders and files it read are unchanged."""

    def __init__(self, home: str | Path):
        self.home = Path(home)
        self._watched: list[str] | None = None
        self._stamps: tuple = ()
        self._environments: list[UserEnvironment] = []
        self.scans = 0

    def environments(self) -> list[UserEnvironment]:
        if self._watched is None or fingerprint(self._watched) != self._stamps:
            found, watched = scan(self.home)
            # Stamps taken after the scan could miss a change made during it; taken again next
            # time, such a change only costs one more scan.
            self._environments, self._watched = found, watched
            self._stamps = fingerprint(watched)
            self.scans += 1
        return self._environments


# --- kernel specs ------------------------------------------------------------------------

def kernel_name(name: str) -> str:
    """A kernel spec name Jupyter accepts ([a-z0-9._-]) from an environment's name."""
    return "env-" + (KERNEL_NAME_UNSAFE.sub("-", name.lower()).strip("-.") or "python")


def _python_argv(executable: str, python: str) -> list[str]:
    # -P: not the notebook's folder first on sys.path (a shared folder may hold a planted
    # module); Python 3.11 has it, older ones would refuse to start with it.
    safe = ["-P"] if tuple(map(int, python.split("."))) >= (3, 11) else []
    # aifactory's launcher: ipykernel's, with aifactory.at_start's fixes made first.
    return [executable, *safe, "-m", "aifactory.kernel_launcher", "-f", "{connection_file}"]


def kernel_specs(environments: list[UserEnvironment]) -> dict[str, dict]:
    """The kernel spec (as JSON data) of each environment that is a kernel, by kernel name.
    Names and display names are made distinct where two environments share a name."""
    usable = [env for env in environments if env.kernel]
    displays = [f"{env.name} (Python {env.python}, {env.kind})" for env in usable]
    specs: dict[str, dict] = {}
    for env, display in zip(usable, displays):
        if displays.count(display) > 1:
            display = display[:-1] + f", {_tilde(str(Path(env.path).parent))})"
        name, n = kernel_name(env.name), 2
        while name in specs:
            name, n = f"{kernel_name(env.name)}-{n}", n + 1
        activated = "VIRTUAL_ENV" if env.kind == "venv" else "CONDA_PREFIX"
        specs[name] = {
            "argv": _python_argv(env.executable, env.python),
            "display_name": display,
            "language": "python",
            "env": {"PYTHONPATH": str(AIFACTORY_PATH),
                    # ${PATH}: the server's PATH when the kernel starts (jupyter_client fills it)
                    "PATH": env.path.replace("$", "$$") + "/bin:${PATH}",
                    activated: env.path},
            "metadata": {"debugger": True, "aifactory": {"environment": env.path}},
        }
    return specs


def _tilde(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


def modules_kernel(environ=os.environ,
                   own_prefix: str = sys.prefix) -> dict | None:
    """The spec of the kernel for the first python3 on PATH (a loaded module's), or None when
    that is the server's own Python or has no ipykernel."""
    found = shutil.which("python3", path=environ.get("PATH", ""))
    if not found:
        return None
    prefix = Path(found).parent.parent
    if os.path.realpath(prefix) == os.path.realpath(own_prefix):
        return None
    version = re.fullmatch(r"python(3\.\d+)", Path(os.path.realpath(found)).name)
    python = version[1] if version else _lib_version(prefix)
    if not python:
        return None
    # A module tree may put ipykernel in a module of its own, on PYTHONPATH.
    pythonpath = [p for p in environ.get("PYTHONPATH", "").split(":") if p]
    places = [str(prefix / "lib" / f"python{python}" / "site-packages"), *pythonpath]
    if not any(os.path.isdir(os.path.join(place, "ipykernel")) for place in places):
        return None
    modules = [m for m in environ.get("LOADEDMODULES", "").split(":") if m]
    where = f"modules: {', '.join(modules)}" if modules else _tilde(str(Path(found).parent))
    return {
        "argv": _python_argv(found, python),
        "display_name": f"Python {python} ({where})",
        "language": "python",
        # The rest of the server's environment (the modules' settings) is the kernel's anyway.
        "env": {"PYTHONPATH": ":".join([*pythonpath, str(AIFACTORY_PATH)])},
        "metadata": {"debugger": True},
    }


class EnvironmentKernelSpecManager(KernelSpecManager):
    """The site's kernel specs, and the user's environments and loaded modules' Python."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._scanner = Scanner(Path.home())
        self._logged: set[tuple[str, str]] = set()

    def user_specs(self) -> dict[str, dict]:
        """Kernel specs of the user's environments and the modules' Python; never raises."""
        try:
            environments = self._scanner.environments()
        except Exception:  # a scan must never take the launcher down with it
            self.log.exception("aifactory: the user's environments could not be scanned")
            environments = []
        for env in environments:
            if env.problem and (env.path, env.problem) not in self._logged:
                self._logged.add((env.path, env.problem))
                fix = f"; to fix it: {env.fix}" if env.fix else ""
                self.log.warning("aifactory: environment %s %s%s", env.path, env.problem, fix)
        specs = kernel_specs(environments)
        try:
            if modules := modules_kernel():
                specs[MODULES_KERNEL] = modules
        except Exception:
            self.log.exception("aifactory: the modules' Python could not be looked at")
        if self.allowed_kernelspecs:
            specs = {k: v for k, v in specs.items() if k in self.allowed_kernelspecs}
        return specs

    @staticmethod
    def _resource_dir() -> str:
        """The Python logos for the launcher (ipykernel's own kernel resources)."""
        from ipykernel.kernelspec import RESOURCES
        return RESOURCES

    def find_kernel_specs(self) -> dict[str, str]:
        found = super().find_kernel_specs()
        for name in self.user_specs():
            found.setdefault(name, self._resource_dir())  # installed kernel specs come first
        return found

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        try:
            return super().get_kernel_spec(kernel_name)
        except NoSuchKernel:
            spec = self.user_specs().get(kernel_name)
            if spec is None:
                raise
            return self.kernel_spec_class(resource_dir=self._resource_dir(), **spec)

    def get_all_specs(self) -> dict[str, dict]:
        result = {}
        for name, resource_dir in super().find_kernel_specs().items():
            try:
                spec = super().get_kernel_spec(name)
                result[name] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
            except NoSuchKernel:
                pass
            except Exception:
                self.log.warning("Error loading kernelspec %r", name, exc_info=True)
        for name, spec in self.user_specs().items():
            result.setdefault(name, {"resource_dir": self._resource_dir(), "spec": spec})
        return result


# --- for people: the session panel and `aifactory environments` --------------------------

def describe_environments(home: str | Path | None = None) -> list[dict]:
    """Every environment found for `home` (the user's own by default), as data: name, path,
    kind, python, kernel (bool), problem and fix ("" where there is none)."""
    found, _ = scan(Path.home() if home is None else home)
    return [asdict(env) for env in found]


def environments_text(rows: list[dict]) -> str:
    """The CLI's table: one line per environment, its problem and fix beneath it."""
    if not rows:
        places = ", ".join(f"~/{p}/*" for p in CONVENTIONAL)
        return (f"No Python environments found in {places}, nor listed in ~/{LIST_FILE}.\n"
                "An environment there with ipykernel is a kernel in JupyterLab's launcher.")
    width = max(4, *(len(r["name"]) for r in rows))
    lines = [f"{'name':{width}}  {'Python':6}  {'kernel':6}  path"]
    for r in rows:
        lines.append(f"{r['name']:{width}}  {r['python'] or '?':6}  "
                     f"{'yes' if r['kernel'] else 'no':6}  {r['path']}")
        if r["problem"]:
            lines.append(f"{'':{width}}  problem: {r['problem']}")
        if r["fix"]:
            lines.append(f"{'':{width}}  fix: {r['fix']}")
    return "\n".join(lines)
