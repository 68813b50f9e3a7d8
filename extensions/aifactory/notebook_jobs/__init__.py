"""Notebooks as Slurm batch jobs and job arrays: `rules` (pure: parameters, checks, the
script, the mark of a stopped run), `jobs` (the person's side, in their session's server or a
login-node terminal: submit, preview, list, stop), `runner` (inside the job: one run with
papermill)."""
