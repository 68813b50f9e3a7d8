"""The package as installed: every module imports (a renamed module leaves no caller behind),
and pure rule modules import nothing that runs commands or talks to the network."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import aifactory

MODULES = sorted(m.name for m in pkgutil.walk_packages(aifactory.__path__, "aifactory."))
# Pure: computed from answers given to them (aifactory.slurm's models and words only).
PURE = ["aifactory.availability", "aifactory.billing", "aifactory.budget", "aifactory.report", "aifactory.names",
        "aifactory.spawner.status"]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", PURE)
def test_pure_rules_bring_no_io_with_them(name):
    """Imported alone, a rule module loads no HTTP, hub, Dask or YAML library."""
    probe = (f"import sys, {name}; "
             "print(sorted(m for m in ('requests', 'tornado', 'jupyterhub', 'distributed', "
             "'yaml', 'aifactory.snapshot', 'aifactory.service') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.strip() == "[]", out.stdout
