"""The JupyterLab extension's server side, pure and in one process: what the status bar and
the side panel show, from the allocations service's answers; the session server's feed asks
the service once for every tab; why a session ended."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
from pathlib import Path

import pytest

from aifactory import site_install, slurm
from aifactory.client import AllocationsError
from aifactory.lab import handlers, rules

NOW = 1_800_000_000.0


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()


def row(job_id, state="RUNNING", account="proj-climate", end=None, **extra):
    return {"job_id": job_id, "name": "x", "state": state, "account": account,
            "end_time": iso(end) if end else None, "partition": "gpu", "gpus": 1,
            "gpu_type": "h100", "reservation": None, "kind": "batch job", **extra}


JOBS = {"as_of": iso(NOW - 3), "warnings": [], "recent": [],
        "active": [row("7", end=NOW + 3900), row("8"), row("9", state="PENDING"),
                   row("10", state="PENDING")]}
BUDGETS = {"as_of": iso(NOW - 10), "warnings": [],
           "projects": [{"account": "proj-climate", "unit": "GPU-hours", "remaining": 812.25,
                         "granted": 1000.0, "role": "member"},
                        {"account": "proj-other", "unit": "GPU-hours", "remaining": 5.0,
                         "granted": 10.0, "role": "member"}]}
GPUS = {"as_of": iso(NOW - 5), "warnings": [],
        "partitions": [{"partition": "gpu", "gpu_type": "h100", "total": 12, "free": 3, "down": 0}]}


def test_the_status_is_the_sessions_clock_its_projects_budget_and_the_other_jobs():
    status = rules.status("7", JOBS, BUDGETS, GPUS, NOW)
    assert status["text"] == ("1 h 05 min left · proj-climate: 812.2 GPU-hours left · "
                              "jobs: 1 running, 2 waiting")
    assert status["session"]["time_left_s"] == 3900
    assert status["budget"]["remaining"] == 812.25
    assert [j["job_id"] for j in status["jobs"]] == ["8", "9", "10"]
    assert status["as_of"] == iso(NOW - 10)  # the oldest of the answers
    assert status["unreachable"] is None


def test_a_project_without_a_limit_and_a_session_the_service_does_not_list_yet():
    budgets = {**BUDGETS, "projects": [{**BUDGETS["projects"][0], "remaining": None}]}
    assert "proj-climate: no limit left" in rules.status("7", JOBS, budgets, GPUS, NOW)["text"]
    early = rules.status("99", JOBS, BUDGETS, GPUS, NOW)
    assert early["session"] is None and early["budget"] is None
    assert early["text"] == "jobs: 2 running, 2 waiting"


def test_a_part_slurm_did_not_renew_says_scheduler_unreachable_beside_the_last_numbers():
    warning = ("squeue: scheduler unreachable (no answer in 30 s) (squeue); showing numbers "
               "from ... (40 s ago)")
    status = rules.status("7", {**JOBS, "warnings": [warning]}, BUDGETS, GPUS, NOW)
    assert status["unreachable"] == warning and status["session"] is not None
    gone = rules.unreachable("scheduler unreachable: the allocations service is unreachable", NOW)
    assert gone["text"] == "scheduler unreachable" and gone["session"] is None


@pytest.mark.parametrize("seconds, words", [(0, "0 s"), (59, "59 s"), (60, "1 min"),
                                            (3599, "59 min"), (3600, "1 h 00 min"),
                                            (90061, "25 h 01 min"), (-5, "0 s")])
def test_durations_in_words(seconds, words):
    assert rules.duration(seconds) == words


WORDS_JS = Path(rules.__file__).parent / "src/words.js"


def in_node(expression: str):
    """`expression` evaluated by node with the browser's words.js imported as `w`."""
    script = (f"import * as w from {json.dumps(WORDS_JS.as_uri())};\n"
              f"console.log(JSON.stringify({expression}));")
    done = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_browser_writes_durations_as_python_does():
    cases = [0, 59, 60, 3599, 3600, 3900, 90061, -5, 12.7 * 60]
    assert in_node(f"{cases}.map(w.duration)") == [rules.duration(c) for c in cases]


@pytest.mark.parametrize("before, state, news", [
    ("PENDING", "RUNNING", ["info", "Notebook job j has started."]),
    ("RUNNING", "COMPLETED", ["success", "Notebook job j has completed."]),
    ("PENDING", "COMPLETED", ["success", "Notebook job j has completed."]),
    ("RUNNING", "OUT_OF_MEMORY", ["error", "Notebook job j ended: out of memory."]),
    ("RUNNING", "ENDED", None),  # between the queue and accounting: not news yet
    ("RUNNING", "SUSPENDED", None),
    ("RUNNING", "REQUEUED", None),
    ("COMPLETED", "COMPLETED", None),
])
def test_which_notebook_job_changes_are_news(before, state, news):
    answer = in_node(f"w.notebookJobNews('j', {json.dumps(before)}, {json.dumps(state)})")
    assert (None if answer is None else [answer["kind"], answer["text"]]) == news


@pytest.mark.parametrize("state, end, words", [
    ("CANCELLED", NOW + 3600, "was cancelled"),
    ("TIMEOUT", NOW, "reached its time limit"),
    ("PREEMPTED", NOW + 3600, "was preempted"),
    (None, NOW + 30, "reached its time limit"),  # 22.05 says only COMPLETING; at its end
    (None, NOW + 3600, "was stopped"),
    (None, None, "was stopped"),
])
def test_why_the_session_ended(state, end, words):
    ending = rules.ending("7", state, end, NOW)
    assert ending["text"].startswith(f"This session (Slurm job 7) {words}; its server has stopped.")


class FakeService:
    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def _answer(self, answer):
        self.calls += 1
        if self.fail:
            raise AllocationsError("the allocations service is unreachable")
        return answer

    def jobs(self):
        return self._answer(JOBS)

    def budgets(self):
        return self._answer(BUDGETS)

    def gpus(self):
        return self._answer(GPUS)


def test_many_tabs_asking_at_once_share_one_fetch_and_the_clock_moves_in_between():
    service = FakeService()
    feed = handlers.Feed(client=service, job_id="7", max_age=60)

    async def ask():
        return await asyncio.gather(*(feed.status() for _ in range(20)))
    answers = asyncio.run(ask())
    assert service.calls == 3  # jobs, budgets, gpus: once for all twenty
    assert len({json.dumps(a, sort_keys=True) for a in answers}) <= 2
    assert all(a["ending"] is None for a in answers)


def test_an_unreachable_service_is_a_sentence_not_an_error():
    feed = handlers.Feed(client=FakeService(fail=True), job_id="7")
    status = asyncio.run(feed.status())
    assert status["text"] == "scheduler unreachable"
    assert status["unreachable"] == ("scheduler unreachable: the allocations service is "
                                     "unreachable")


def test_the_ending_is_told_once_slurm_signals(monkeypatch):
    monkeypatch.setattr(handlers, "job_state", lambda job_id: "CANCELLED")
    feed = handlers.Feed(client=FakeService(), job_id="7")

    async def run():
        waiting = asyncio.ensure_future(asyncio.wait_for(feed.ended.wait(), 5))
        await feed.status()
        await feed.learn_ending()
        await waiting
        return await feed.status()
    status = asyncio.run(run())
    assert status["ending"]["state"] == "CANCELLED"
    assert "was cancelled" in status["ending"]["text"]


def test_the_extensions_sources_are_in_the_package():
    package = Path(site_install.__file__).parent / "lab"
    for name in site_install.LAB_SOURCES:
        assert (package / name).is_file(), name
    lock = json.loads((package / "package-lock.json").read_text())
    meta = json.loads((package / "package.json").read_text())
    assert lock["packages"][""]["dependencies"] == meta["dependencies"]
    assert meta["jupyterlab"]["outputDir"] == "build/aifactory-jupyterlab"


def test_a_completing_or_suspended_job_neither_runs_nor_waits():
    jobs = {**JOBS, "active": [row("7", end=NOW + 60), row("8", state="COMPLETING"),
                               row("9", state="SUSPENDED")]}
    assert rules.status("7", jobs, BUDGETS, GPUS, NOW)["counts"] == {"running": 0, "waiting": 0}


class PartlyDown(FakeService):
    def budgets(self):
        if self.calls >= 3:
            raise AllocationsError("the allocations service answered 502")
        return super().budgets()


def test_a_part_that_fails_keeps_its_last_answer_and_the_clock_runs_on():
    feed = handlers.Feed(client=PartlyDown(), job_id="7", max_age=0)
    first = asyncio.run(feed.status())
    later = asyncio.run(feed.status())
    assert later["session"]["job_id"] == "7" and later["budget"] == first["budget"]
    assert later["unreachable"] == "scheduler unreachable: the allocations service answered 502"
    assert later["warnings"][0] == later["unreachable"]


def test_the_ending_state_is_squeues_else_accountings_a_moment_later(monkeypatch):
    asked = []
    monkeypatch.setattr(slurm, "job", lambda job_id, timeout: asked.append(("squeue", timeout))
                        or JobState("CANCELLED"))
    assert handlers.job_state("7") == "CANCELLED" and asked == [("squeue", handlers.ASK_S)]
    # Slurm 22.05: COMPLETING in the queue; accounting hears of the end a moment later.
    answers = iter([[], [PastState("7", "CANCELLED")]])
    monkeypatch.setattr(slurm, "job", lambda job_id, timeout: JobState("COMPLETING"))
    monkeypatch.setattr(slurm, "accounting_jobs",
                        lambda job_ids, timeout: asked.append(("sacct", timeout)) or next(answers))
    monkeypatch.setattr(handlers.time, "sleep", lambda s: None)
    assert handlers.job_state("7") == "CANCELLED"
    assert asked[1:] == [("sacct", handlers.ASK_S)] * 2

    def unreachable(*a, **k):
        raise slurm.SlurmUnreachable("squeue: scheduler unreachable (no answer in 2 s)")
    monkeypatch.setattr(slurm, "job", unreachable)
    assert handlers.job_state("7") is None
    assert handlers.job_state("") is None


class JobState:
    def __init__(self, state):
        self.state = state


class PastState:
    def __init__(self, job_id, state):
        self.job_id, self.state = job_id, state


class FakeApp:
    """What watch_for_end uses of a Jupyter server: its loop and log."""

    def __init__(self):
        self.callbacks = []
        self.io_loop = self
        import logging
        self.log = logging.getLogger("test")

    def add_callback_from_signal(self, callback, *args):
        self.callbacks.append((callback, args))


@pytest.mark.parametrize("learning", ["works", "fails"])
def test_slurms_term_tells_the_tabs_first_then_stops_the_server_as_before(monkeypatch, learning):
    stops = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda sig, frame: stops.append(sig))
    try:
        feed = handlers.Feed(client=FakeService(), job_id="7")
        if learning == "works":
            monkeypatch.setattr(handlers, "job_state", lambda job_id: "TIMEOUT")
        else:
            async def broken():
                raise RuntimeError("boom")
            monkeypatch.setattr(feed, "learn_ending", broken)
        monkeypatch.setattr(handlers, "FAREWELL_S", 0)
        app = FakeApp()
        handlers.watch_for_end(app, feed)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        # a second TERM goes straight to the server's own handler
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert stops == [signal.SIGTERM]
        [(callback, args)] = app.callbacks
        asyncio.run(callback(*args))
        assert stops == [signal.SIGTERM, signal.SIGTERM]
        if learning == "works":
            assert "reached its time limit" in feed.ending["text"] and feed.ended.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_extension_is_not_built_again_from_the_same_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(site_install, "_only_roots", lambda path: None)
    source = Path(site_install.__file__).parent / "lab"
    core = tmp_path / "staging"
    core.mkdir()
    (core / "package.json").write_text('{"version": "4.6.6"}')
    target = tmp_path / "labextensions/aifactory-jupyterlab"
    built = []

    def fake_run(argv, **kwargs):
        built.append(Path(argv[0]).name if "build-labextension" not in " ".join(argv)
                     else "build")
        if "build-labextension" in " ".join(argv):
            out = Path(kwargs["cwd"]) / "build/aifactory-jupyterlab/static"
            out.mkdir(parents=True)
            (out / "remoteEntry.js").write_text("// built")
            (out.parent / "package.json").write_text("{}")
        return subprocess.CompletedProcess(argv, 0, "v20.0.0\n", "")
    monkeypatch.setattr(site_install.subprocess, "run", fake_run)
    monkeypatch.setattr(site_install.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert site_install._lab_extension(target, source, core) is True
    assert (target / "static/remoteEntry.js").read_text() == "// built"
    assert built == ["node", "npm", "build"]
    assert site_install._lab_extension(target, source, core) is False  # same: nothing run
    assert built == ["node", "npm", "build", "node"]
    (core / "package.json").write_text('{"version": "4.6.7"}')  # JupyterLab upgraded
    assert site_install._lab_extension(target, source, core) is True


def test_no_npm_is_a_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(site_install.shutil, "which", lambda name: None)
    with pytest.raises(site_install.InstallError, match="needs Node.js and npm"):
        site_install._lab_extension(tmp_path / "t", tmp_path, tmp_path)
