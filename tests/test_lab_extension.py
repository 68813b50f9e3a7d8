"""The JupyterLab extension's server side, pure and in one process: what the status bar and
the side panel show, from the allocations service's answers; the session server's feed asks
the service once for every tab; why a session ended."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from aifactory import site_install
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


def test_duration_in_the_browser_is_written_as_in_python():
    source = (Path(rules.__file__).parent / "src/index.js").read_text()
    assert "Same words as aifactory.lab.rules.duration" in source
    assert "`${hours} h ${String(minutes % 60).padStart(2, '0')} min`" in source


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
