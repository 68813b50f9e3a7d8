"""An IPython kernel with aifactory.at_start's fixes made before the person's code runs.

Runs as the person, in their own environment's Python or a loaded module's (the kernels of
aifactory.kernels), where the shared venv's aifactory package alone is on PYTHONPATH. Those
Pythons have no aifactory-start.pth of ours, and without the fixes a plain
`Client("tls://...")` in the notebook can hang for ever.

    python -P -m aifactory.kernel_launcher -f CONNECTION_FILE
"""

import runpy

from . import at_start  # noqa: F401  (it acts on import)

if __name__ == "__main__":
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
