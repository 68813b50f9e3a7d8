"""A session's state from its job (aifactory.spawner.status), on recorded squeue answers:
`24.11-testbed/jobs-cli-squeue.json` (our 24.11 bed: one job pending on Resources, one
running, one held by a spent budget, one waiting for its begin time) and a 25.11 job from
slurmrestd (see data/recorded/SOURCES.md). No cluster, no hub."""

from dataclasses import replace

from conftest import DATA

from aifactory import slurm
from aifactory.spawner.status import (ENDED, PENDING, RUNNING, SUBMITTED, UNKNOWN,
                                      session_status)

NOW = 1_700_000_000


def recorded(path: str) -> dict[str, slurm.Job]:
    return {j.job_id: j for j in slurm.parse_jobs_json((DATA / "recorded" / path).read_text())}


BED = recorded("24.11-testbed/jobs-cli-squeue.json")


def test_a_queued_session_says_why_where_in_the_queue_and_keeps_waiting():
    s = session_status(BED["1"], BED, NOW, "h100")
    assert s.state == PENDING and not s.give_up and not s.settled
    assert s.message.startswith("Waiting in the queue: ") and "(Slurm: Resources)" in s.message
    assert "position 1 in gpu" in s.message


def test_slurms_estimated_start_is_shown_only_while_it_lies_ahead():
    later = replace(BED["1"], start_time=NOW + 3600)
    assert "Slurm's estimated start" in session_status(later, BED, NOW).message
    assert "estimated start" not in session_status(later, BED, NOW + 7200).message


def test_a_spent_budget_gives_up_at_once_with_the_reason():
    s = session_status(BED["3"], BED, NOW)
    assert s.give_up and s.settled and s.state == PENDING
    assert s.message.startswith("Your session cannot start: ")
    assert s.message.endswith("(Slurm: AssocGrpGRESMinutes).")


def test_a_later_begin_time_is_waited_for():
    assert not session_status(BED["4"], BED, NOW).give_up
    job = next(iter(recorded("25.11/jobs-slurmrestd-gpus-pending.json").values()))
    s = session_status(job, {job.job_id: job}, NOW)
    assert s.state == PENDING and "(Slurm: BeginTime)" in s.message and not s.give_up


def test_a_running_job_ends_the_wait_and_names_its_node():
    s = session_status(BED["2"], BED, NOW)
    assert (s.state, s.settled, s.give_up) == (RUNNING, True, False)
    assert s.message == "Running on prb01; waiting for JupyterLab to start."


def test_a_job_gone_or_ended_gives_up_and_an_unanswered_question_waits():
    for job in (None, replace(BED["2"], state="CANCELLED")):
        s = session_status(job, BED, NOW)
        assert (s.state, s.give_up) == (ENDED, True)
        assert s.message == "The session's job ended before it started."
    s = session_status(None, None, NOW)  # Slurm did not answer: never dropped
    assert (s.state, s.give_up, s.settled) == (UNKNOWN, False, False)
    assert s.message == "Scheduler unreachable; still waiting for the job."


def test_before_the_job_exists_the_page_says_it_is_being_submitted():
    assert (SUBMITTED.state, SUBMITTED.settled) == ("submitting", False)
    assert SUBMITTED.message == "Submitting the job."
