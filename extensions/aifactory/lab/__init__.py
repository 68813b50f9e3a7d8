"""aifactory's JupyterLab extension: the session's clock, budget and jobs always in view.

- `src/` and `style/` run in the person's browser (JupyterLab 4). The install builds them with
  npm (`aifactory site install`, from `package-lock.json`) into the shared venv's
  `share/jupyter/labextensions/aifactory-jupyterlab`: a prebuilt extension, nothing is built or
  downloaded when a session starts.
- `handlers.py` runs in the person's session server, as the person: one endpoint that relays
  the allocations service's shared answers (never a Slurm command per tab).
- `rules.py` is pure: the status, warnings and end-of-session sentences from those answers.
"""
