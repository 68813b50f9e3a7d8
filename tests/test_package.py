"""The package as installed: every module imports (a renamed module leaves no caller behind),
and pure rule modules import nothing that runs commands or talks to the network."""

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import aifactory

MODULES = sorted(m.name for m in pkgutil.walk_packages(aifactory.__path__, "aifactory."))
# The layers of the README's module map, lowest first; every other module is an edge.
LAYERS = {
    "bottom": ["aifactory.slurm", "aifactory.names", "aifactory.billing"],
    "description": ["aifactory.site_description", "aifactory.checked_yaml"],
    "rules": ["aifactory.availability", "aifactory.budget", "aifactory.report",
              "aifactory.course_rules", "aifactory.spawner.status", "aifactory.spawner.request",
              "aifactory.site_check", "aifactory.site_init", "aifactory.notebook_jobs.rules",
              "aifactory.lab.rules"],
    "cache": ["aifactory.snapshot"],
    "answers": ["aifactory.allocations", "aifactory.metrics"],
}
LEVEL = {m: i for i, names in enumerate(LAYERS.values()) for m in names}
EDGE = len(LAYERS)
# Pure: computed from the answers and the description given to them.
PURE = LAYERS["rules"] + ["aifactory.names", "aifactory.billing"]


def aifactory_imports(name: str) -> set[str]:
    """The package's modules that module `name` imports, read from its source."""
    spec = importlib.util.find_spec(name)
    is_package = spec.submodule_search_locations is not None
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from . import x` names a module; `from .x import y` names one of x's names
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES}
    return found - {name}


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_imports_only_point_down(name):
    """A module uses its own layer and the ones below it, never one above."""
    level = LEVEL.get(name, EDGE)
    upward = sorted(m for m in aifactory_imports(name) if LEVEL.get(m, EDGE) > level)
    assert not upward, f"{name} imports {upward} from above it"


@pytest.mark.parametrize("name", PURE)
def test_pure_rules_bring_no_io_with_them(name):
    """Imported alone, a rule module loads no HTTP, hub or Dask library and nothing of the
    package above the rules (the description below them brings its YAML reader)."""
    probe = (f"import sys, {name}; "
             "print(sorted(m for m in sys.modules if m in ('requests', 'tornado', 'jupyterhub', "
             "'distributed', 'aifactory.spawner.slurm_spawner') "
             "or m in ('aifactory.snapshot', 'aifactory.allocations', 'aifactory.service', "
             "'aifactory.courses')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.strip() == "[]", out.stdout
