"""Users' own environments as kernels (aifactory.kernels), from layouts made in a temporary home:
real venvs (`python -m venv --without-pip`) and hand-made conda environments."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import NoSuchKernel

from aifactory import kernels
from aifactory.kernels import EnvironmentKernelSpecManager, Scanner, kernel_specs, scan

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def venv(path: Path, ipykernel: bool = True, pip: bool = False) -> Path:
    """A real venv of this Python; ipykernel and pip as the files that tell they are there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = path / "lib" / f"python{PYTHON}" / "site-packages"
    if ipykernel:
        (site / "ipykernel").mkdir()
    if pip:
        (site / "pip").mkdir()
    return path


def conda(path: Path, version: str = "3.12.1", ipykernel: bool = True, pip: bool = True) -> Path:
    """A conda environment's layout: conda-meta records, bin/python, site-packages."""
    (path / "conda-meta").mkdir(parents=True)
    (path / "conda-meta" / "python-dateutil-2.9.0-pyhd8ed1ab_0.json").write_text("{}")
    (path / "conda-meta" / f"python-{version}-h2d5f8b0_0_cpython.json").write_text("{}")
    (path / "bin").mkdir()
    (path / "bin" / "python").symlink_to(sys.executable)
    site = path / "lib" / f"python{version.rsplit('.', 1)[0]}" / "site-packages"
    site.mkdir(parents=True)
    if ipykernel:
        (site / "ipykernel").mkdir()
    if pip:
        (site / "pip").mkdir()
    return path


def listed(home: Path, text: str | bytes) -> Path:
    (home / ".aifactory").mkdir(exist_ok=True)
    path = home / ".aifactory" / "environments.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def by_name(home: Path) -> dict:
    return {env.name: env for env in scan(home)[0]}


def test_a_venv_with_ipykernel_is_a_kernel_with_its_name_and_python_version(tmp_path):
    env = venv(tmp_path / ".venvs" / "myenv")
    [found] = scan(tmp_path)[0]
    assert (found.name, found.path, found.kind, found.python, found.kernel, found.problem) == (
        "myenv", str(env), "venv", PYTHON, True, "")
    spec = kernel_specs([found])["env-myenv"]
    assert spec["display_name"] == f"myenv (Python {PYTHON}, venv)"
    assert spec["argv"] == [f"{env}/bin/python", "-P", "-m", "aifactory.kernel_launcher",
                            "-f", "{connection_file}"]
    # aifactory from the site, nothing else of the shared venv; the env's bin first on PATH
    assert spec["env"]["PYTHONPATH"] == str(kernels.AIFACTORY_PATH)
    assert spec["env"]["PATH"] == f"{env}/bin:${{PATH}}"
    assert spec["language"] == "python"


def test_every_usual_place_is_looked_at(tmp_path):
    for place in kernels.CONVENTIONAL:
        name = place.replace("/", "_").strip(".")
        if "conda" in place or "forge" in place:
            conda(tmp_path / place / name)
        else:
            venv(tmp_path / place / name)
    found = scan(tmp_path)[0]
    assert len(found) == len(kernels.CONVENTIONAL) and all(env.kernel for env in found)
    assert {env.kind for env in found} == {"venv", "conda"}


def test_a_venv_without_ipykernel_is_listed_with_the_command_that_fixes_it(tmp_path):
    bare = venv(tmp_path / "venvs" / "bare", ipykernel=False, pip=True)
    nopip = venv(tmp_path / "venvs" / "nopip", ipykernel=False)
    envs = by_name(tmp_path)
    assert not envs["bare"].kernel and "no ipykernel" in envs["bare"].problem
    assert envs["bare"].fix == f"{bare}/bin/python -m pip install ipykernel"
    # made --without-pip: pip first
    assert envs["nopip"].fix == (f"{nopip}/bin/python -m ensurepip && "
                                 f"{nopip}/bin/python -m pip install ipykernel")
    assert kernel_specs(list(envs.values())) == {}


def test_a_conda_environment_takes_its_version_from_conda_meta(tmp_path):
    env = conda(tmp_path / "miniforge3" / "envs" / "torch")
    [found] = scan(tmp_path)[0]
    assert (found.kind, found.python, found.kernel) == ("conda", "3.12", True)
    spec = kernel_specs([found])["env-torch"]
    assert spec["display_name"] == "torch (Python 3.12, conda)"
    assert spec["env"]["CONDA_PREFIX"] == str(env)


def test_a_conda_environment_without_ipykernel_is_fixed_with_its_own_conda_or_else_pip(tmp_path):
    installed = conda(tmp_path / "miniforge3" / "envs" / "a", ipykernel=False)
    conda_exe = tmp_path / "miniforge3" / "bin" / "conda"
    conda_exe.parent.mkdir()
    conda_exe.write_text("#!/bin/sh\n")
    conda_exe.chmod(0o755)
    elsewhere = conda(tmp_path / ".conda" / "envs" / "b", ipykernel=False)
    envs = by_name(tmp_path)
    assert envs["a"].fix == f"{conda_exe} install -p {installed} ipykernel"
    assert envs["b"].fix == f"{elsewhere}/bin/python -m pip install ipykernel"


def test_a_broken_environment_is_listed_with_the_reason_and_the_others_stay_kernels(tmp_path):
    good = venv(tmp_path / ".venvs" / "good")
    broken = venv(tmp_path / ".venvs" / "broken")
    (broken / "bin" / "python").unlink()
    (broken / "bin" / "python").symlink_to("/opt/python-that-was-removed/bin/python3")
    (tmp_path / ".virtualenvs").write_text("a file where a folder is expected")
    (tmp_path / ".venvs" / "loop").symlink_to(tmp_path / ".venvs" / "loop")  # hides nothing
    envs = by_name(tmp_path)
    assert not envs["broken"].kernel
    assert "links to /opt/python-that-was-removed/bin/python3, which does not exist" in (
        envs["broken"].problem)
    assert "cannot be read" in envs[".virtualenvs"].problem
    assert list(kernel_specs(list(envs.values()))) == ["env-good"]
    assert kernel_specs([envs["good"]])["env-good"]["argv"][0] == f"{good}/bin/python"


def test_listed_environments_with_tilde_and_a_projects_venv_named_after_the_project(tmp_path):
    project = venv(tmp_path / "projects" / "climate" / ".venv")
    other = conda(tmp_path / "envs-elsewhere" / "jax")
    listed(tmp_path, f"- ~/projects/climate/.venv\n- {other}\n- ~/missing\n- ~/notes\n")
    (tmp_path / "notes").mkdir()
    envs = by_name(tmp_path)
    assert envs["climate"].path == str(project) and envs["climate"].kernel
    assert envs["jax"].kernel
    assert envs["missing"].problem == ("does not exist (listed in "
                                       f"{tmp_path}/.aifactory/environments.yaml, line 3)")
    assert "is not a venv or conda environment" in envs["notes"].problem


def test_an_environment_listed_and_found_in_a_usual_place_is_listed_once(tmp_path):
    venv(tmp_path / ".venvs" / "ml")
    listed(tmp_path, "- ~/.venvs/ml\n")
    assert [env.name for env in scan(tmp_path)[0]] == ["ml"]


@pytest.mark.parametrize("text, words", [
    ("- ~/.venvs/a\n- 5\n", "environments.yaml, line 2, [1]: 5 is not text."),
    ("~/.venvs/a\n", "the file: '~/.venvs/a' is not a list."),
    ("- [unclosed\n", "is not valid YAML at line 2"),
    (b"- \xff\xfe\n", "is not UTF-8 text."),
])
def test_a_bad_list_file_is_a_listed_problem_naming_the_file_and_line(tmp_path, text, words):
    venv(tmp_path / ".venvs" / "a")
    path = listed(tmp_path, text)
    envs = by_name(tmp_path)
    assert envs["a"].kernel  # the rest is still found
    problem = envs["environments.yaml"]
    assert problem.path == str(path) and not problem.kernel
    assert str(path) in problem.problem and words in problem.problem, problem.problem


def test_a_list_file_that_is_no_file_is_a_problem_and_not_read(tmp_path):
    os.makedirs(tmp_path / ".aifactory")
    os.mkfifo(tmp_path / ".aifactory" / "environments.yaml")  # reading would wait forever
    problem = by_name(tmp_path)["environments.yaml"].problem
    assert problem.endswith("environments.yaml: is not a file.")


def test_environments_of_the_same_name_get_distinct_kernel_and_display_names(tmp_path):
    venv(tmp_path / ".venvs" / "ml")
    venv(tmp_path / "venvs" / "ml")
    conda(tmp_path / ".conda" / "envs" / "ml")
    venv(tmp_path / ".venvs" / "My Env!")
    specs = kernel_specs(scan(tmp_path)[0])
    assert sorted(specs) == ["env-ml", "env-ml-2", "env-ml-3", "env-my-env"]
    displays = sorted(spec["display_name"] for spec in specs.values())
    assert len(set(displays)) == 4
    assert f"ml (Python {PYTHON}, venv, {tmp_path}/.venvs)" in displays
    assert "ml (Python 3.12, conda)" in displays


def test_the_scan_is_reused_until_a_folder_it_read_changes(tmp_path):
    venv(tmp_path / ".venvs" / "a")
    scanner = Scanner(tmp_path)
    assert [e.name for e in scanner.environments()] == ["a"]
    assert [e.name for e in scanner.environments()] == ["a"] and scanner.scans == 1
    b = venv(tmp_path / ".venvs" / "b", ipykernel=False)  # a new environment appears
    assert {e.name: e.kernel for e in scanner.environments()} == {"a": True, "b": False}
    assert scanner.scans == 2
    (b / "lib" / f"python{PYTHON}" / "site-packages" / "ipykernel").mkdir()  # pip install
    assert {e.name: e.kernel for e in scanner.environments()} == {"a": True, "b": True}
    listed(tmp_path, "- ~/nowhere\n")  # a list file is written
    assert "nowhere" in {e.name for e in scanner.environments()}
    assert scanner.scans == 4


@pytest.fixture
def manager(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))
    caplog.set_level(logging.WARNING, "test-kernels")
    return EnvironmentKernelSpecManager(log=logging.getLogger("test-kernels"))


def test_the_spec_manager_adds_the_users_kernels_to_the_sites_and_logs_a_problem_once(
        tmp_path, manager, caplog):
    env = venv(tmp_path / ".venvs" / "myenv")
    venv(tmp_path / ".venvs" / "bare", ipykernel=False)
    specs = manager.get_all_specs()
    assert "python3" in specs  # the shared venv's own kernel stays
    assert specs["env-myenv"]["spec"]["display_name"] == f"myenv (Python {PYTHON}, venv)"
    assert os.path.isfile(Path(specs["env-myenv"]["resource_dir"]) / "logo-64x64.png")
    assert "env-myenv" in manager.find_kernel_specs()
    spec = manager.get_kernel_spec("env-myenv")  # what a kernel start reads
    assert spec.argv[0] == f"{env}/bin/python"
    assert spec.env["PYTHONPATH"] == str(kernels.AIFACTORY_PATH)
    with pytest.raises(NoSuchKernel):
        manager.get_kernel_spec("env-bare")
    manager.get_all_specs()
    logged = [r.getMessage() for r in caplog.records if "bare" in r.getMessage()]
    assert len(logged) == 1 and "pip install ipykernel" in logged[0]


def modules_python(tmp_path: Path, ipykernel_on_pythonpath: bool = False) -> tuple[Path, dict]:
    """A module's Python: its own prefix, ipykernel in it or in another module's folder."""
    prefix = tmp_path / "apps" / "python"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python3").symlink_to(os.path.realpath(sys.executable))
    other = tmp_path / "apps" / "ipython-mod"
    site = prefix / "lib" / f"python{PYTHON}" / "site-packages"
    where = other if ipykernel_on_pythonpath else site
    (where / "ipykernel").mkdir(parents=True)
    environ = {"PATH": f"{prefix}/bin:/usr/bin:/bin", "LOADEDMODULES": "python/3:cuda/12.4",
               "PYTHONPATH": str(other) if ipykernel_on_pythonpath else ""}
    return prefix, environ


@pytest.mark.parametrize("on_pythonpath", [False, True])
def test_the_loaded_modules_python_is_a_kernel(tmp_path, on_pythonpath):
    prefix, environ = modules_python(tmp_path, on_pythonpath)
    spec = kernels.modules_kernel(environ)
    assert spec["display_name"] == f"Python {PYTHON} (modules: python/3, cuda/12.4)"
    assert spec["argv"][:2] == [f"{prefix}/bin/python3", "-P"]
    assert spec["env"]["PYTHONPATH"].split(":")[-1] == str(kernels.AIFACTORY_PATH)
    assert spec["env"]["PYTHONPATH"].split(":")[0] != ""  # never the working folder


def test_no_modules_kernel_for_the_servers_own_python_or_one_without_ipykernel(tmp_path):
    assert kernels.modules_kernel({"PATH": f"{sys.prefix}/bin:/usr/bin"}) is None
    prefix, environ = modules_python(tmp_path)
    (prefix / "lib" / f"python{PYTHON}" / "site-packages" / "ipykernel").rmdir()
    assert kernels.modules_kernel(environ) is None


def test_the_spec_manager_follows_modules_loaded_in_the_server(tmp_path, manager, monkeypatch):
    monkeypatch.setenv("PATH", f"{sys.prefix}/bin:/usr/bin:/bin")  # as the job starts it
    assert kernels.MODULES_KERNEL not in manager.get_all_specs()
    _, environ = modules_python(tmp_path)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)  # what `module load` does in the server's process
    specs = manager.get_all_specs()
    assert specs[kernels.MODULES_KERNEL]["spec"]["display_name"].startswith(f"Python {PYTHON}")


def test_describe_environments_and_the_clis_table(tmp_path):
    venv(tmp_path / ".venvs" / "good")
    bare = venv(tmp_path / ".venvs" / "bare", ipykernel=False, pip=True)
    rows = kernels.describe_environments(tmp_path)
    assert [set(r) for r in rows] == [{"name", "path", "kind", "python", "kernel", "problem",
                                       "fix"}] * 2
    assert [(r["name"], r["kernel"]) for r in rows] == [("bare", False), ("good", True)]
    text = kernels.environments_text(rows).splitlines()
    assert text[0].split() == ["name", "Python", "kernel", "path"]
    assert text[1].split() == ["bare", PYTHON, "no", str(bare)]
    assert text[3].strip() == f"fix: {bare}/bin/python -m pip install ipykernel"
    assert "No Python environments found" in kernels.environments_text([])
