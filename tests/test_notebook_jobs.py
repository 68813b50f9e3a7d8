"""Notebook jobs' pure rules: a notebook's parameters, the checks of values and tables, the
batch script, the cost, the mark of a stopped run, and the list's states from Slurm's rows
and the runs' own records."""

import json
from pathlib import Path

import pytest

from aifactory import site_description
from aifactory.billing import Billing
from aifactory.notebook_jobs import jobs, rules
from aifactory.spawner.request import RequestError, resolve

HUB_CONFIG = Path(__file__).resolve().parents[1] / "hub_config"


def notebook(parameters: str | None, *more: str) -> dict:
    cells = []
    if parameters is not None:
        cells.append({"cell_type": "code", "source": parameters, "outputs": [],
                      "metadata": {"tags": ["parameters"]}, "execution_count": None})
    cells += [{"cell_type": "code", "source": s, "outputs": [], "metadata": {},
               "execution_count": None} for s in more]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


NB = notebook("lr = 0.001\nepochs: int = 3\nname = 'baseline'\nshuffle = True\n"
              "steps = -2\nimport math\nscale = math.pi\nnothing = None", "print(lr)")


def test_declared_parameters_are_the_plain_assignments_with_their_types():
    declared = rules.declared_parameters(NB)
    assert {n: (p.type, p.default) for n, p in declared.items()} == {
        "lr": ("float", 0.001), "epochs": ("int", 3), "name": ("str", "baseline"),
        "shuffle": ("bool", True), "steps": ("int", -2)}


def test_a_notebook_without_a_parameters_cell_declares_none():
    assert rules.declared_parameters(notebook(None, "x = 1")) == {}
    with pytest.raises(RequestError, match="no cell tagged 'parameters'.*'x'"):
        rules.check_row({}, {"x": 1})


def test_a_parameters_cell_that_is_not_python_is_refused_with_its_line():
    with pytest.raises(RequestError, match="not valid Python \\(line 2\\)"):
        rules.declared_parameters(notebook("a = 1\nb = (", "x"))


@pytest.mark.parametrize("given, expected", [
    ({"lr": "0.5"}, {"lr": 0.5}),
    ({"lr": 1}, {"lr": 1.0}),
    ({"epochs": "10"}, {"epochs": 10}),
    ({"epochs": 7}, {"epochs": 7}),
    ({"shuffle": "false"}, {"shuffle": False}),
    ({"shuffle": True}, {"shuffle": True}),
    ({"name": "run 1; $(rm -rf ~)"}, {"name": "run 1; $(rm -rf ~)"}),  # data, never shell
    ({}, {}),
])
def test_values_become_their_parameters_types(given, expected):
    out = rules.check_row(rules.declared_parameters(NB), given)
    assert out == expected and [type(v) for v in out.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize("given, words", [
    ({"learning_rate": 1}, "declares no parameter 'learning_rate'; it declares lr, epochs"),
    ({"epochs": "ten"}, "parameter 'epochs' is a whole number .*'ten' is not"),
    ({"epochs": 2.5}, "parameter 'epochs' is a whole number"),
    ({"epochs": True}, "parameter 'epochs' is a whole number"),
    ({"lr": "fast"}, "parameter 'lr' is a number"),
    ({"lr": "nan"}, "parameter 'lr' is a number"),
    ({"shuffle": "yes"}, "parameter 'shuffle' is True or False"),
    ({"name": 3}, "parameter 'name' is text"),
    ({"name": "x" * 5000}, "at most 4096 characters"),
    ({"scale": 2}, "declares no parameter 'scale'"),  # computed defaults are not parameters
    ({"__class__": 1}, "declares no parameter '__class__'"),
    ({"a-b": 1}, "is not a parameter name"),
])
def test_bad_values_are_refused_with_a_sentence(given, words):
    with pytest.raises(RequestError, match=words):
        rules.check_row(rules.declared_parameters(NB), given)


def test_a_table_is_checked_row_by_row_and_against_slurms_array_limit():
    declared = rules.declared_parameters(NB)
    assert rules.check_rows(declared, [{"lr": "0.1"}, {"lr": 0.2}], 1001) == [{"lr": 0.1},
                                                                              {"lr": 0.2}]
    with pytest.raises(RequestError, match="Row 2: parameter 'epochs'"):
        rules.check_rows(declared, [{"epochs": 1}, {"epochs": "x"}], 1001)
    with pytest.raises(RequestError, match="table of 10000 rows is over this cluster's limit "
                                           "of 1001 runs"):
        rules.check_rows(declared, [{"lr": 0.1}] * 10000, 1001)
    with pytest.raises(RequestError, match="at least one row"):
        rules.check_rows(declared, [], 1001)


def test_max_tasks_is_slurms_max_array_size():
    assert rules.max_tasks({"MaxArraySize": "1001"}) == 1001
    assert rules.max_tasks({"MaxArraySize": "40"}) == 40
    assert rules.max_tasks({}) == 1001


def test_at_once_is_a_whole_number_no_larger_than_the_table():
    assert rules.check_parallel(None, 5) == 0
    assert rules.check_parallel("2", 5) == 2
    assert rules.check_parallel(9, 5) == 5
    with pytest.raises(RequestError, match="whole number"):
        rules.check_parallel("1;", 5)


@pytest.fixture(scope="module")
def site():
    return site_description.load(HUB_CONFIG / "site.yaml")


def request_for(site, **fields):
    return resolve(site, fields, user="alice", accounts=["proj-climate"],
                   default_account="proj-climate", reservations={})


def test_the_script_holds_only_checked_values_and_no_parameter(site):
    request = request_for(site, profile="h100-1")
    script = rules.job_script(request, folder="/home/alice/aifactory-jobs/train-1", job_id="train-1",
                              name="nb-train", tasks=3, parallel=2, venv="/opt/aifactory/venv",
                              environment_lines=[])
    assert "#SBATCH --array=0-2%2" in script
    assert "#SBATCH --comment=aifactory-notebook:train-1" in script
    assert f"#SBATCH --gres=gpu:h100:{request.gpus}" in script
    assert f"#SBATCH --time={request.walltime}" in script
    assert "#SBATCH --output=/home/alice/aifactory-jobs/train-1/slurm-%A_%a.log" in script
    assert "#SBATCH --signal=B:USR1@60" in script
    assert script.rstrip().endswith("exec /opt/aifactory/venv/bin/python -P -m "
                                    "aifactory.notebook_jobs.runner /home/alice/aifactory-jobs/train-1")
    one = rules.job_script(request, folder="/f", job_id="a-1", name="nb-a", tasks=1, parallel=0,
                           venv="/v", environment_lines=[])
    assert "--array" not in one and "#SBATCH --output=/f/slurm-%j.log" in one
    with pytest.raises(ValueError):
        rules.job_script(request, folder="/f", job_id="a;b", name="nb-a", tasks=1, parallel=0,
                         venv="/v", environment_lines=[])


def test_job_names_keep_letters_digits_and_dashes():
    assert rules.job_name("Train model (v2)") == "nb-train-model-v2"
    assert rules.job_name("$(x)") == "nb-x"
    assert rules.job_name("ü") == "nb-notebook"


def test_the_cost_is_every_run_for_its_whole_time_and_the_budget_refuses_more(site):
    request = request_for(site, profile="h100-1", walltime="02:00:00")
    gpu = Billing()
    assert rules.cost(request, 3, gpu) == pytest.approx(request.gpus * 2 * 3)
    assert rules.describe_cost(request, 3, gpu).startswith("3 runs × (")
    rules.check_budget(request, 3, request.gpus * 6.0, gpu)
    with pytest.raises(RequestError, match=r"= 6.00 GPU-hours, but project proj-climate has 5.00 GPU-hours left. Nothing was submitted"):
        rules.check_budget(request, 3, 5.0, gpu)
    rules.check_budget(request, 1000, None, gpu)  # no limit on the project


def executed(statuses: list[tuple[str | None, bool]]) -> dict:
    nb = notebook(None, *[f"cell {i}" for i in range(len(statuses))])
    for i, (cell, (status, started)) in enumerate(zip(nb["cells"], statuses)):
        cell["metadata"]["papermill"] = {"status": status, "exception": status == "failed",
                                         "start_time": "2026-12-04T21:00:00" if started else None}
        cell["execution_count"] = i + 1 if started else None
    return nb


def test_a_stopped_run_says_how_and_in_which_cell():
    # papermill records an interrupted cell as failed
    nb = rules.mark_stopped(executed([("completed", True), ("failed", True), ("pending", False)]),
                            "timeout", "00:02:00")
    assert nb["cells"][0]["source"].startswith(
        "**This run was stopped by its time limit (00:02:00) in cell [2]**")
    # stopped from outside: papermill left every cell "completed"; the last started one it is
    nb = rules.mark_stopped(executed([("completed", True), ("completed", True),
                                      ("completed", False)]), "cancelled")
    assert nb["cells"][0]["source"].startswith("**This run was cancelled in cell [2]**")
    nb = rules.mark_stopped(executed([("pending", False)]), "timeout", "00:01:00")
    assert "before it reached a cell" in nb["cells"][0]["source"]


def test_papermills_error_cells_go_when_the_run_was_stopped():
    nb = executed([("failed", True)])
    nb["cells"].insert(0, {"cell_type": "markdown", "source": "An Exception was encountered",
                           "metadata": {"tags": [rules.PAPERMILL_MARK]}})
    assert rules.papermill_marked(nb)
    assert not rules.papermill_marked(rules.without_papermill_marks(nb))


def write_job(tmp_path: Path, job_id: str, slurm_id: str, rows: list, runs: dict) -> Path:
    folder = tmp_path / jobs.FOLDER / job_id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"id": job_id, "slurm_job_id": slurm_id,
                                                 "rows": rows, "created": 1.0}))
    for task, state in runs.items():
        (folder / f"run-{task}.json").write_text(json.dumps({"state": state}))
    return folder


def test_an_arrays_runs_take_their_state_from_slurm_then_from_their_own_record(tmp_path):
    folder = write_job(tmp_path, "grid-1", "100", [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}],
                       {0: "completed"})
    (folder / "output-0.ipynb").write_text("{}")
    active = [  # squeue's rows: task 1 running, the array's rest (task 2) not split off yet
        {"job_id": "101", "array_job_id": "100", "array_task_id": 1, "state": "RUNNING"},
        {"job_id": "100", "array_job_id": "100", "array_task_id": None, "state": "PENDING",
         "reason_text": "waiting for a free GPU"},
        {"job_id": "7", "array_job_id": None, "array_task_id": None, "state": "RUNNING"}]
    (record,) = [r for _, r in jobs.records(tmp_path)]
    out = jobs.summary(folder, record, active, [])
    assert [r["state"] for r in out["runs"]] == ["COMPLETED", "RUNNING", "PENDING"]
    assert out["runs"][0]["output"].endswith("output-0.ipynb") and out["runs"][1]["output"] is None
    assert out["state"] == "RUNNING" and out["active"]


def test_a_finished_job_takes_accountings_state_when_it_left_no_record(tmp_path):
    folder = write_job(tmp_path, "one-1", "200", [{}], {})
    (record,) = [r for _, r in jobs.records(tmp_path)]
    recent = [{"job_id": "200", "array_job_id": None, "array_task_id": None, "state": "FAILED",
               "end_time": "2026-12-04T21:00:00+00:00"}]
    assert jobs.summary(folder, record, [], recent)["state"] == "FAILED"
    # a job of the same id that ended before this one was made is another, older job
    record["created"] = 1_900_000_000.0
    assert jobs.summary(folder, record, [], recent, as_of=1_900_000_100.0)["state"] == "ENDED"
    folder2 = write_job(tmp_path, "one-2", "201", [{}], {0: "timeout"})
    record2 = next(r for _, r in jobs.records(tmp_path) if r["id"] == "one-2")
    assert jobs.summary(folder2, record2, [], [])["runs"][0]["state"] == "TIMEOUT"


def test_folders_that_are_not_ours_are_not_listed(tmp_path):
    write_job(tmp_path, "ok-1", "300", [{}], {})
    (tmp_path / jobs.FOLDER / "Bad Name").mkdir()
    (tmp_path / jobs.FOLDER / "no-record").mkdir()
    assert [r["id"] for _, r in jobs.records(tmp_path)] == ["ok-1"]


def test_a_jobs_state_is_completed_only_when_every_run_is():
    assert jobs.overall(["COMPLETED", "COMPLETED"]) == "COMPLETED"
    assert jobs.overall(["COMPLETED", "OUT_OF_MEMORY"]) == "OUT_OF_MEMORY"
    assert jobs.overall(["COMPLETED", "NODE_FAIL", "COMPLETED"]) == "NODE_FAIL"
    assert jobs.overall(["FAILED", "PENDING"]) == "PENDING"
    assert jobs.overall(["COMPLETED", "SUSPENDED"]) == "SUSPENDED"
    assert jobs.overall(["TIMEOUT", "RUNNING", "PENDING"]) == "RUNNING"


def test_a_time_limit_under_three_minutes_is_refused(site):
    rules.check_time_limit(request_for(site, profile="cpu", walltime="00:03:00"))
    with pytest.raises(RequestError, match="at least 00:03:00"):
        rules.check_time_limit(request_for(site, profile="cpu", walltime="00:02:00"))


@pytest.mark.parametrize("given", [{"epochs": 10 ** 400}, {"lr": 10 ** 400}, {"lr": [1]}])
def test_numbers_out_of_range_are_refused_not_crashed(given):
    with pytest.raises(RequestError, match="is (a whole number|a number)"):
        rules.check_row(rules.declared_parameters(NB), given)


@pytest.mark.parametrize("source", ["x = {[1]: 2}\ny = 1", "y = 1\nz = (" + "(" * 300 + ")" * 300 + ")"])
def test_odd_parameters_cells_give_what_they_can_or_a_sentence(source):
    try:
        declared = rules.declared_parameters(notebook(source, "x"))
    except RequestError:
        return
    assert "y" in declared


@pytest.mark.parametrize("nb", [{"cells": [1]}, {"cells": [{"metadata": None}]},
                                {"cells": "x"}, [], {"cells": [], "metadata": 3}])
def test_what_is_not_a_notebook_is_refused(nb):
    with pytest.raises(RequestError, match="is not a notebook"):
        rules.check_notebook(nb, "x.ipynb")


def test_marking_twice_keeps_one_mark():
    nb = executed([("failed", True)])
    nb["nbformat_minor"] = 5
    rules.mark_stopped(rules.mark_stopped(nb, "timeout", "00:03:00"), "cancelled")
    marks = [c for c in nb["cells"] if "aifactory-stopped" in c["metadata"].get("tags", [])]
    assert len(marks) == 1 and "was cancelled" in marks[0]["source"]


def test_the_script_ignores_slurms_early_warning_until_the_runner_takes_it(site):
    script = rules.job_script(request_for(site, profile="cpu"), folder="/f", job_id="a-1",
                              name="nb-a", tasks=1, parallel=0, venv="/v", environment_lines=[])
    body = script.splitlines()
    first = next(i for i, line in enumerate(body) if not line.startswith("#"))
    assert body[first] == "trap '' USR1" and body[-1].startswith("exec ")


def test_a_fifo_or_a_huge_file_is_not_read_as_a_notebook(tmp_path):
    import os
    fifo = tmp_path / "x.ipynb"
    os.mkfifo(fifo)
    with pytest.raises(RequestError, match="is not a file"):
        jobs.read_notebook(fifo, tmp_path)
    big = tmp_path / "big.ipynb"
    big.write_bytes(b" " * (jobs.MAX_NOTEBOOK_BYTES + 1))
    with pytest.raises(RequestError, match="larger than"):
        jobs.read_notebook(big, tmp_path)


def test_a_run_newer_than_slurms_answer_is_what_its_record_says(tmp_path):
    folder = write_job(tmp_path, "new-1", "400", [{}, {}], {})
    (folder / "run-0.json").write_text(json.dumps({"state": "running", "started": 50.0}))
    (record,) = [r for _, r in jobs.records(tmp_path)]
    record["created"] = 40.0
    runs = jobs.summary(folder, record, [], [], as_of=30.0)["runs"]
    assert [r["state"] for r in runs] == ["RUNNING", "PENDING"]
    runs = jobs.summary(folder, record, [], [], as_of=60.0)["runs"]  # gone from the queue
    assert [r["state"] for r in runs] == ["ENDED", "ENDED"]


def test_a_run_that_started_after_slurms_answer_is_running_beside_waiting_ones(tmp_path):
    folder = write_job(tmp_path, "arr-1", "500", [{}, {}, {}], {0: "completed"})
    (folder / "run-1.json").write_text(json.dumps({"state": "running", "started": 50.0}))
    (record,) = [r for _, r in jobs.records(tmp_path)]
    active = [{"job_id": "500", "array_job_id": "500", "array_task_id": None,
               "state": "PENDING"}]
    runs = jobs.summary(folder, record, active, [], as_of=45.0)["runs"]
    assert [r["state"] for r in runs] == ["COMPLETED", "RUNNING", "PENDING"]


def test_cells_whose_tags_are_not_a_list_of_text_are_refused():
    with pytest.raises(RequestError, match="is not a notebook"):
        rules.check_notebook({"cells": [{"metadata": {"tags": None}}]}, "x.ipynb")
