"""Budget arithmetic, access rules and the words shown, from recorded Slurm output (no cluster)."""

import datetime as dt

import pytest
from conftest import DATA, DAY, NOW, past, snapshot

from aifactory import allocations, report, slurm
from aifactory.allocations import AccessError, Viewer
from aifactory.billing import Billing
from aifactory.budget import period_end, project_budget
from aifactory.widgets import bar_colour

def test_period_end_follows_slurms_reset_period():
    assert dt.datetime.fromtimestamp(period_end("QUARTERLY", NOW)) == dt.datetime(2027, 1, 1)
    march = dt.datetime(2026, 3, 31, 23).timestamp()
    assert dt.datetime.fromtimestamp(period_end("QUARTERLY", march)) == dt.datetime(2026, 4, 1)
    assert dt.datetime.fromtimestamp(period_end("MONTHLY", NOW)) == dt.datetime(2026, 12, 1)
    assert dt.datetime.fromtimestamp(period_end("YEARLY", NOW)) == dt.datetime(2027, 1, 1)
    # 2026-11-22 is a Sunday; Slurm resets weekly on Sunday 00:00, so the next one is a week on.
    assert dt.datetime.fromtimestamp(period_end("WEEKLY", NOW)) == dt.datetime(2026, 11, 29)
    assert period_end("NONE", NOW) is None


def test_budget_numbers_granted_used_held_remaining_and_the_burn_rate():
    budget = slurm.Budget("proj-x", granted_min=100 * 60, used_min=30 * 60, held_min=10 * 60)
    history = [
        past("1", "proj-x", 4, NOW - 2 * DAY, NOW - 2 * DAY + 3 * 3600),   # 12 GPU-h in window
        past("2", "proj-x", 2, NOW - 8 * DAY, NOW - 6 * DAY),              # 1 day of 2 inside: 48
        past("3", "proj-x", 1, NOW - 3600, 0, state="RUNNING"),            # running: 1 so far
        past("4", "other", 8, NOW - DAY, NOW),                             # another project
    ]
    p = project_budget(budget, history, "QUARTERLY", NOW)
    assert (p["granted_gpu_h"], p["used_gpu_h"], p["held_gpu_h"], p["remaining_gpu_h"]) == (
        100, 30, 10, 60)
    assert p["percent_used"] == 40.0
    assert p["burn_per_day_gpu_h"] == round((12 + 48 + 1) / 7, 4)
    # 60 left at ~8.7 a day runs out in about a week, well before the period ends.
    exhausted = dt.datetime.fromisoformat(p["exhaustion_date"]).timestamp()
    assert exhausted == pytest.approx(NOW + 60 / (61 / 7) * DAY, abs=60)
    assert p["unused_at_period_end_gpu_h"] == 0
    assert p["period_end"].startswith("2027-01-01")


def test_a_slow_project_keeps_budget_unused_and_does_not_run_out_this_period():
    budget = slurm.Budget("proj-x", granted_min=100 * 60, used_min=0, held_min=0)
    p = project_budget(budget, [past("1", "proj-x", 1, NOW - DAY, NOW - DAY + 7 * 3600)],
                                   "QUARTERLY", NOW)
    assert p["burn_per_day_gpu_h"] == 1.0
    assert p["exhaustion_date"] is None
    days_left = (period_end("QUARTERLY", NOW) - NOW) / DAY
    assert p["unused_at_period_end_gpu_h"] == pytest.approx(100 - days_left, abs=0.01)


def test_a_spent_budget_is_exhausted_now_and_an_unlimited_one_never():
    spent = project_budget(slurm.Budget("a", 60, 50, 20), [], "QUARTERLY", NOW)
    assert spent["remaining_gpu_h"] < 0 and spent["exhaustion_date"] is not None
    unlimited = project_budget(slurm.Budget("b", None, 50, 0), [], "QUARTERLY", NOW)
    assert unlimited["granted_gpu_h"] is None and unlimited["percent_used"] is None
    assert report.project_rows(unlimited)[0][2] == "no limit"


def test_members_see_totals_coordinators_and_admins_see_each_member():
    snap = snapshot()
    student = allocations.budgets(Viewer("student1"), snap, now=NOW)
    assert [p["account"] for p in student["projects"]] == ["course-dl101"]
    assert "users" not in student["projects"][0]  # not another student's usage
    carol = allocations.budgets(Viewer("carol"), snap, now=NOW)["projects"][0]
    assert carol["role"] == "coordinator"
    assert {u["user"] for u in carol["users"]} == {"carol", "student1", "student2"}
    admin = allocations.budgets(Viewer("root", admin=True), snap, now=NOW)
    assert {p["account"] for p in admin["projects"]} == {"course-dl101", "proj-climate", "proj-tiny"}
    # A hub group named in the site description makes its members coordinators too.
    lead = allocations.budgets(Viewer("dave", groups=frozenset({"climate-leads"})), snap,
                               {"proj-climate": ("climate-leads",)}, now=NOW)["projects"]
    assert [(p["account"], p["role"]) for p in lead] == [("proj-climate", "coordinator")]


def test_other_projects_are_forbidden_and_unknown_ones_not_found():
    snap = snapshot()
    with pytest.raises(AccessError) as e:
        allocations.budgets(Viewer("alice"), snap, account="proj-tiny")
    assert e.value.status == 403
    with pytest.raises(AccessError) as e:
        allocations.budgets(Viewer("alice"), snap, account="proj-nope")
    assert e.value.status == 404


def _job(job_id, user, state="RUNNING", **kw):
    return slurm.Job(job_id, "train", user, "proj-climate", "gpu", state, kw.pop("reason", "None"),
                     "gpu01" if state == "RUNNING" else "", **kw)


def test_jobs_are_each_users_own():
    snap = snapshot(queue={"7": _job("7", "alice", gres="gres:gpu:h100:2", gpus=2,
                                     start_time=int(NOW - 600), end_time=int(NOW + 3000),
                                     comment="aifactory-session:h100-1"),
                           "8": _job("8", "bob", "PENDING", reason="AssocGrpGRESMinutes",
                                     gres="gres:gpu:h100:4", gpus=4)})
    mine = allocations.jobs(Viewer("alice"), snap, now=NOW)
    assert [j["job_id"] for j in mine["active"]] == ["7"]
    row = mine["active"][0]
    assert (row["kind"], row["elapsed_s"], row["time_left_s"], row["gpu_h_so_far"]) == (
        "notebook session", 600, 3000, round(2 * 600 / 3600, 4))
    bobs = allocations.jobs(Viewer("bob"), snap, now=NOW)["active"][0]
    assert bobs["reason_text"] == "your project's GPU budget is used up"
    for ask in (lambda: allocations.jobs(Viewer("alice"), snap, user="bob"),
                lambda: allocations.job(Viewer("alice"), snap, "8")):
        with pytest.raises(AccessError):
            ask()
    assert allocations.jobs(Viewer("root", admin=True), snap, user="bob")["active"][0]["job_id"] == "8"


def test_recent_jobs_carry_efficiency():
    job = slurm.PastJob("9", "fit", "alice", "proj-climate", "gpu", "TIMEOUT", 2, 4,
                        int(NOW - 3600), int(NOW), 3600, 60, cpu_time_s=7200.0)
    [row] = allocations.jobs(Viewer("alice"), snapshot(history=[job]), now=NOW)["recent"]
    assert (row["state_text"], row["gpu_h"], row["cpu_efficiency_percent"],
            row["walltime_used_percent"]) == ("reached its time limit", 2.0, 50.0, 100.0)


def test_answers_say_their_age_source_and_what_slurm_did_not_renew():
    snap = snapshot()
    snap.errors["shares"] = "scheduler unreachable (slurmctld does not answer)"
    answer = allocations.budgets(Viewer("alice"), snap, now=NOW)
    assert answer["age_s"] == 3.0 and "slurmctld (sshare)" in answer["source"]
    assert answer["warnings"][0].startswith("scheduler unreachable")
    assert "3 s ago" in answer["warnings"][0]


def test_bar_colours_change_at_75_90_and_100_percent():
    assert [bar_colour(p) for p in (10, 74.9, 75, 89.9, 90, 99.9, 100, 130)] == [
        "#2e7d32", "#2e7d32", "#f9a825", "#f9a825", "#ef6c00", "#ef6c00", "#c62828", "#c62828"]


def test_sacct_records_become_past_jobs_with_gpus_and_cpu_time():
    job = slurm.parse_sacct_json((DATA / "sacct-22.05.json").read_text())[0]
    assert job.gpus == 2 and job.cpus == 1 and job.elapsed_s == 15 and job.state == "CANCELLED"


class CountingClient:
    """Answers like the service; counts how often it is asked (for the refresh thread)."""

    def __init__(self):
        self.calls = 0

    def gpus(self):
        self.calls += 1
        return {"as_of": None, "age_s": None, "source": [], "warnings": [],
                "partitions": [{"partition": "gpu", "gpu_type": "h100", "total": 12,
                                "free": self.calls, "down": 0}], "nodes_down": []}


def test_panels_refresh_in_the_background_and_stop_when_closed():
    import time

    from aifactory.widgets import ClusterPanel
    client = CountingClient()
    panel = ClusterPanel(client, refresh_s=1)
    time.sleep(3.5)
    assert client.calls >= 3  # the first answer, then every second, without being asked
    bundle = panel._repr_mimebundle_()  # what an exported notebook keeps
    assert "h100: " in bundle["text/plain"] and "aif-gpus" in bundle["text/html"]
    panel.close()
    stopped_at = client.calls
    time.sleep(2.5)
    assert client.calls == stopped_at
    assert f'class="aif-free">{stopped_at}</td>' in panel.html()  # the newest answer is shown


def test_a_node_reserved_by_a_reservation_the_viewer_cannot_see_is_not_free_for_them():
    """With PrivateData=reservations a user sees no reservation of others, only the node's
    RESERVED flag: its GPUs are held for someone else, not free."""
    from aifactory import slurm
    from aifactory.availability import gpu_availability, held_nodes

    nodes = [slurm.Node("gpu01", "IDLE", "", ("gpu",), "gpu:h100:4", "gpu:h100:0"),
             slurm.Node("gpu03", "IDLE", "", ("gpu",), "gpu:h100:4", "gpu:h100:0", ("RESERVED",))]
    held = held_nodes({}, set(), nodes=nodes)
    assert held == {"gpu03"}
    [row] = gpu_availability(nodes, held)
    assert (row.free, row.total) == (4, 8)


def test_a_plain_member_asking_slurm_directly_is_told_where_the_project_totals_are():
    """As bob on a login node with PrivateData=usage, sshare shows his own share of
    proj-climate but not the project's line: its totals are not made up from his share."""
    shares = [slurm.Budget("proj-climate", None, 90.0, 0, user="bob"),
              slurm.Budget("proj-tiny", 60, 50.0, 0), slurm.Budget("proj-tiny", None, 50.0, 0, user="bob")]
    snap = snapshot(shares=shares, coordinators={"proj-tiny": ["bob"]})
    bob = Viewer("bob")
    answer = allocations.budgets(bob, snap, billing=Billing())
    assert [p["account"] for p in answer["projects"]] == ["proj-tiny"]
    assert any("totals of project proj-climate only to its coordinators" in w
               for w in answer["warnings"])
    with pytest.raises(AccessError, match="PrivateData=usage"):
        allocations.budgets(bob, snap, account="proj-climate", billing=Billing())
    # A project that is gone (no share of his either) is not a hidden one.
    gone = snapshot(shares=shares[1:], coordinators={"proj-tiny": ["bob"]})
    assert allocations.budgets(bob, gone, billing=Billing())["warnings"] == []
