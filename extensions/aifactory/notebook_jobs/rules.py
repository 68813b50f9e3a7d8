"""Notebook jobs' pure rules: a notebook's declared parameters (papermill's `parameters`
cell), checking the values and rows a person gives against them, the job's batch script,
its cost, and the mark a stopped run's notebook gets.

A value never reaches the script: the rows go to a JSON file in the job's folder, which the
job's runner reads. The script holds only what `request.resolve` checked and names of ours.
"""

from __future__ import annotations

import ast
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

from .. import slurm
from ..billing import Billing
from ..spawner.request import RequestError, SessionRequest, sbatch_directives

NOTEBOOK_TAG = slurm.NOTEBOOK_TAG  # the --comment prefix of every notebook job
JOB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # our name of a job: its folder's name
PARAMETER_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_TEXT = 4096  # a text parameter's longest value
MAX_PARAMETERS = 100
# Seconds before the time limit at which Slurm tells the runner to stop and save; Slurm
# sends it up to a minute earlier than asked (its event resolution).
STOP_MARGIN_S = 60
TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "True or False",
              "str": "text"}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # int, float, bool, str
    default: Any


def parameters_cell(nb: Mapping) -> Mapping | None:
    for cell in nb.get("cells", []):
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "code" and isinstance(tags, list) and "parameters" in tags:
            return cell
    return None


def check_notebook(nb: Any, name: str) -> None:
    """The shape every later step relies on: cells that are objects with object metadata."""
    cells = nb.get("cells") if isinstance(nb, dict) else None
    def good(cell) -> bool:
        meta = cell.get("metadata", {}) if isinstance(cell, dict) else None
        tags = meta.get("tags", []) if isinstance(meta, dict) else None
        return isinstance(tags, list) and all(isinstance(t, str) for t in tags)
    if (not isinstance(cells, list) or not isinstance(nb.get("metadata", {}), dict)
            or not all(good(c) for c in cells)):
        raise RequestError(f"{name} is not a notebook.")


def declared_parameters(nb: Mapping) -> dict[str, Parameter]:
    """The names the notebook's `parameters` cell assigns a plain value (a number, text,
    True/False), with that value as the default and its type as the parameter's type."""
    cell = parameters_cell(nb)
    if cell is None:
        return {}
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    if not isinstance(source, str) or "\0" in source:
        raise RequestError("The notebook's parameters cell cannot be read.")
    try:
        tree = ast.parse(source)
    except (SyntaxError, MemoryError, RecursionError) as e:
        raise RequestError(f"The notebook's parameters cell is not valid Python (line "
                           f"{getattr(e, 'lineno', '?')}): {getattr(e, 'msg', e)}.") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue  # computed: not a parameter one can set from outside
        kind = type(default).__name__
        if kind in TYPE_WORDS:
            found[target.id] = Parameter(target.id, kind, default)
    return found


def _convert(p: Parameter, value: Any, where: str) -> Any:
    wrong = RequestError(f"{where}parameter '{p.name}' is {TYPE_WORDS[p.type]} (its default "
                         f"is {p.default!r}); {_shown(value)} is not.")
    if p.type == "str":
        if not isinstance(value, str):
            raise wrong
        if len(value) > MAX_TEXT or "\0" in value:
            raise RequestError(f"{where}parameter '{p.name}': text of at most {MAX_TEXT} "
                               "characters, without NUL.")
        return value
    if p.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise wrong
    if isinstance(value, bool):
        raise wrong
    if p.type == "int":
        if isinstance(value, int) and abs(value) < 2 ** 63:
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", value):
            return int(value)
        raise wrong
    # float: an int or float, or its text; never nan or inf
    try:
        value = float(value) if isinstance(value, (str, int)) else value
    except (ValueError, OverflowError):
        raise wrong from None
    if not isinstance(value, float) or not math.isfinite(value):
        raise wrong
    return float(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_row(declared: Mapping[str, Parameter], row: Any, where: str = "") -> dict:
    """One run's values, each converted to its parameter's type; unknown names refused."""
    if not isinstance(row, Mapping):
        raise RequestError(f"{where}parameters must be names with values.")
    if len(row) > MAX_PARAMETERS:
        raise RequestError(f"{where}at most {MAX_PARAMETERS} parameters.")
    checked = {}
    for name, value in row.items():
        if not isinstance(name, str) or not PARAMETER_NAME_RE.match(name):
            raise RequestError(f"{where}{_shown(name)} is not a parameter name.")
        if name not in declared:
            if not declared:
                raise RequestError("The notebook has no cell tagged 'parameters', so it takes "
                                   f"no parameter '{name}'.")
            raise RequestError(f"{where}the notebook declares no parameter '{name}'; it "
                               f"declares {', '.join(declared)}.")
        checked[name] = _convert(declared[name], value, where)
    return checked


def check_rows(declared: Mapping[str, Parameter], rows: list, max_tasks: int) -> list[dict]:
    """A table of runs (one dict of values each): one Slurm array task per row."""
    if not isinstance(rows, list) or not rows:
        raise RequestError("A table of runs needs at least one row.")
    if len(rows) > max_tasks:
        raise RequestError(f"A table of {len(rows)} rows is over this cluster's limit of "
                           f"{max_tasks} runs in one array job; split it.")
    return [check_row(declared, row, f"Row {i + 1}: ") for i, row in enumerate(rows)]


def max_tasks(config: Mapping[str, str]) -> int:
    """Slurm's MaxArraySize (task ids 0 to MaxArraySize-1; default 1001)."""
    text = str(config.get("MaxArraySize", "1001")).strip()
    return int(text) if text.isdigit() and int(text) > 0 else 1001


MIN_MINUTES = 3


def check_time_limit(request: SessionRequest) -> None:
    """Slurm warns a run up to two minutes before its end (STOP_MARGIN_S, and its own minute
    of resolution); a shorter job could be warned before it starts."""
    if request.walltime_min < MIN_MINUTES:
        raise RequestError(f"A notebook job needs a time limit of at least "
                           f"00:{MIN_MINUTES:02d}:00, so that a run stopped by its limit has "
                           "its last minute to save.")


def check_parallel(value: Any, tasks: int) -> int:
    """How many of the array's runs may run at once (Slurm's %K); 0 or none: no limit."""
    if value in (None, "", 0, "0"):
        return 0
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,5}", str(value)):
        raise RequestError(f"At once must be a whole number, not {_shown(value)}.")
    return min(int(value), tasks)


def job_name(notebook_stem: str) -> str:
    """The Slurm job name: the notebook's name in letters, digits and - only."""
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", notebook_stem).strip("-").lower()[:40]
    return f"nb-{cleaned or 'notebook'}"


def output_name(task: int, tasks: int) -> str:
    return "output.ipynb" if tasks == 1 else f"output-{task}.ipynb"


def job_script(request: SessionRequest, *, folder: str, job_id: str, name: str, tasks: int,
               parallel: int, venv: str, environment_lines: list[str]) -> str:
    """The batch script of a notebook job; `folder` is the job's own (made by the caller).
    Its runner reads the rows from the folder, so no value of a person's is in the script."""
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"not a notebook job id: {job_id!r}")
    folder_q = shlex.quote(folder)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        *sbatch_directives(request),
        f"#SBATCH --chdir={folder}",
        f"#SBATCH --output={folder}/slurm-%A_%a.log" if tasks > 1
        else f"#SBATCH --output={folder}/slurm-%j.log",
        f"#SBATCH --comment={NOTEBOOK_TAG}:{job_id}",
        "#SBATCH --export=ALL",
        f"#SBATCH --signal=B:USR1@{STOP_MARGIN_S}",
    ]
    if tasks > 1:
        lines.append(f"#SBATCH --array=0-{tasks - 1}" + (f"%{parallel}" if parallel else ""))
    lines += [
        "trap '' USR1",  # until the runner takes it: Slurm may send it early
        f"export PATH={shlex.quote(venv)}/bin:/usr/local/bin:/usr/bin:/bin",
        "umask 077",
        *environment_lines,
        'echo "notebook job $SLURM_JOB_ID (run ${SLURM_ARRAY_TASK_ID:-0}) on $SLURMD_NODENAME,'
        ' GPUs: ${CUDA_VISIBLE_DEVICES:-none}"',
        # exec: the runner is the batch shell, so Slurm's USR1 before the limit reaches it.
        f"exec {shlex.quote(venv)}/bin/python -P -m aifactory.notebook_jobs.runner {folder_q}",
    ]
    return "\n".join(lines) + "\n"


def cost(request: SessionRequest, tasks: int, billing: Billing, weights: str = "") -> float:
    """What the job costs if every run takes its whole time limit, in the site's unit."""
    return request.cost(billing, weights) * tasks


def describe_cost(request: SessionRequest, tasks: int, billing: Billing,
                  weights: str = "") -> str:
    one = request.describe_cost(billing, weights)
    if tasks == 1:
        return one
    return f"{tasks} runs × ({one}) = {billing.amount(cost(request, tasks, billing, weights))}"


def check_budget(request: SessionRequest, tasks: int, remaining: float | None,
                 billing: Billing, weights: str = "") -> None:
    """Refuse a job whose full cost the project cannot pay (`remaining` in the site's unit;
    None: the project has no limit)."""
    if remaining is None:
        return
    total = cost(request, tasks, billing, weights)
    if total and total > remaining:
        raise RequestError(f"{describe_cost(request, tasks, billing, weights)}, but project "
                           f"{request.account} has {billing.amount(max(remaining, 0))} left. "
                           "Nothing was submitted: ask for less time, fewer runs or fewer "
                           "GPUs.")


# --- a run that did not finish ----------------------------------------------------------

STOP_WORDS = {
    "timeout": "was stopped by its time limit ({limit})",
    "cancelled": "was cancelled",
    "failed": "failed",
}


PAPERMILL_MARK = "papermill-error-cell-tag"  # papermill's own cells about a failed cell


def _papermill(cell: Mapping) -> Mapping:
    return cell.get("metadata", {}).get("papermill", {}) or {}


def stopped_cell(nb: Mapping) -> tuple[int, Mapping] | None:
    """The cell a run stopped in (index, cell): the one papermill recorded as failed (an
    interrupted cell fails), else the last one it started."""
    code = [(i, c) for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"]
    for i, cell in code:
        if _papermill(cell).get("status") == "failed" or _papermill(cell).get("exception"):
            return i, cell
    started = [(i, c) for i, c in code if _papermill(c).get("start_time")]
    return started[-1] if started else None


def papermill_marked(nb: Mapping) -> bool:
    return any(PAPERMILL_MARK in c.get("metadata", {}).get("tags", []) for c in nb.get("cells", []))


def without_papermill_marks(nb: dict) -> dict:
    """The notebook without papermill's "An Exception was encountered" cells (for a run that
    was stopped: the interrupt is not the notebook's error)."""
    nb["cells"] = [c for c in nb.get("cells", [])
                   if PAPERMILL_MARK not in c.get("metadata", {}).get("tags", [])]
    return nb


def mark_stopped(nb: dict, how: str, limit: str = "") -> dict:
    """Put a first cell in a run's notebook that says how and where the run ended; the
    notebook is what was saved up to then."""
    where = stopped_cell(nb)
    text = STOP_WORDS[how].format(limit=limit or "its time limit")
    if where is None:
        said = f"**This run {text}** before it reached a cell."
    else:
        index, cell = where
        count = cell.get("execution_count")
        label = f"[{count}]" if count else f"number {index + 1}"
        said = (f"**This run {text} in cell {label}**; that cell's output is what it had "
                "printed by then, and the cells after it did not run.")
    cells = [c for c in nb.setdefault("cells", [])
             if "aifactory-stopped" not in c.get("metadata", {}).get("tags", [])]
    cells.insert(0, {"cell_type": "markdown", "metadata": {"tags": ["aifactory-stopped"]},
                     "source": said})
    if nb.get("nbformat_minor", 0) >= 5:
        cells[0]["id"] = "aifactory-stopped"
    nb["cells"] = cells
    return nb
