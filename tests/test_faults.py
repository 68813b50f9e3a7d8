"""The scheduler going away must not cost anyone their session."""

import time

from conftest import HUB, alerts_firing, notebook_jobs, wait_until

from aifactory import slurm
from aifactory.cluster import services


def test_session_survives_slurmctld_going_away_and_operators_are_alerted(hub_client):
    alice = hub_client("alice")
    alice.start()
    [job] = notebook_jobs("alice")
    bob = hub_client("bob")
    services.SLURMCTLD.stop()
    try:
        assert not slurm.ping()
        # The form's view of the nodes is at most 10 s old (VIEW.availability); older, the
        # form asks Slurm. Wait that out: a test just before may have filled the view.
        time.sleep(11)
        # Someone else opens the spawn page meanwhile: words, not a traceback.
        form = bob.http.get(f"{HUB}/hub/spawn")
        assert form.status_code == 200 and 'id="aif-unreachable"' in form.text
        assert "Scheduler unreachable" in form.text
        assert "scheduler is unreachable right now" in bob.form_error(profile="h100-1")
        # The hub polls every server every 30 s; a poll must read "unknown", not "gone".
        time.sleep(70)
        assert alice.server().get("ready"), "the hub dropped the session while Slurm was away"
        assert alice.http.get(f"{HUB}/user/alice/lab").status_code == 200
        # Prometheus: its rule waits 30 s, scrapes and evaluations come every 10 s.
        alert = wait_until(lambda: alerts_firing("SlurmUnreachable"), 60,
                           what="the SlurmUnreachable alert to fire")
        assert [a["labels"]["daemon"] for a in alert] == ["slurmctld"]
    finally:
        services.start_slurmctld()
    wait_until(lambda: (j := slurm.job(job.job_id)) and j.state == "RUNNING", 30,
               what="slurmctld to report the session's job again")
    assert alice.server().get("ready")
    wait_until(lambda: not alerts_firing("SlurmUnreachable"), 60, what="the alert to end")
    alice.stop()
    wait_until(lambda: not notebook_jobs("alice"), 60, what="the job to be cancelled")
