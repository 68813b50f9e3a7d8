"""Course mode without a cluster: the site's courses, the instructor's view, the material copy."""

import asyncio
import datetime as dt
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import NOW, past, snapshot

from aifactory import allocations, course_rules, courses, material, report, slurm
from aifactory import site_description as site_module
from aifactory.allocations import AccessError, Viewer

SITE_FILE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"
SITE = site_module.load(SITE_FILE)
DL101 = SITE.course("dl101")
OPEN = {r.name: r for r in slurm.parse_reservations_text(  # as scontrol prints it
    "ReservationName=dl101 StartTime=2026-11-20T09:00:00 EndTime=2026-11-22T15:30:00 "
    "Nodes=gpu03 Users=(null) Accounts=course-dl101 State=ACTIVE\n")}


def test_a_course_fills_in_its_profile_and_hides_it_from_others():
    profile = SITE.profile("course-dl101")
    assert (profile.course, profile.slurm["account"], profile.slurm["reservation"]) == (
        "dl101", "course-dl101", "dl101")
    assert {"account", "reservation", "partition"} <= profile.fixed
    assert "course-dl101" not in [p.slug for p in SITE.profiles_for(["aifactory-users"])]
    assert "course-dl101" in [p.slug for p in SITE.profiles_for(["dl101-participants"])]
    assert "course-ml202" not in [p.slug for p in SITE.profiles_for(["dl101-participants"])]
    assert DL101.spawn_url() == "/hub/spawn?opt-profile=course-dl101"  # JupyterHub 6's option names


@pytest.mark.parametrize("change, message", [
    ("profile: course-dl101\n    material", "profile 'course-nope' is not in 'profiles'"),
    ("participants: dl101-participants", "participants and instructors must be different"),
    ("material: /opt/aifactory/courses/dl101", "material must be an absolute folder"),
    ("reservation: dl101\n", "its profile course-dl101 sets another reservation"),
])
def test_a_wrong_course_is_refused_with_a_sentence(tmp_path, change, message):
    text = SITE_FILE.read_text()
    replacement = {
        "profile: course-dl101\n    material": "profile: course-nope\n    material",
        "participants: dl101-participants": "participants: dl101-instructors",
        "material: /opt/aifactory/courses/dl101": "material: ../../etc; rm -rf /",
        "reservation: dl101\n": "reservation: dl101\n",
    }[change]
    if change == "reservation: dl101\n":  # the profile names another reservation
        text = text.replace('walltime: "02:00:00"}\n    limits: {gpus: 1, cpus: 8, memory_gb: 60, '
                            'walltime: "03:00:00"}\n\n  - display_name: "ML202',
                            'walltime: "02:00:00", reservation: other}\n    limits: {gpus: 1, '
                            'cpus: 8, memory_gb: 60, walltime: "03:00:00"}\n\n  - display_name: "ML202')
    else:
        text = text.replace(change, replacement, 1)
    bad = tmp_path / "site.yaml"
    bad.write_text(text)
    with pytest.raises(site_module.SiteError, match=message.replace("(", r"\(")):
        site_module.load(bad)


def test_the_window_says_when_a_course_opens_and_how_long_it_has_left():
    now = dt.datetime(2026, 11, 22, 12, 0).timestamp()
    assert course_rules.window(DL101, OPEN, now)["state"] == "open"
    assert course_rules.window(DL101, OPEN, now)["time_left_s"] == 3.5 * 3600
    later = {"dl101": replace(OPEN["dl101"], start=dt.datetime(2026, 11, 25, 9).timestamp())}
    w = course_rules.window(DL101, later, now)
    assert (w["state"], w["text"]) == ("not yet", "DL101: deep learning on GPUs opens at Wed 25 "
                                       "Nov 2026 09:00 (in 3 days); you can start a session in it then.")
    assert course_rules.window(DL101, {}, now)["state"] == "closed"


def test_only_an_instructor_may_start_a_course_session_for_a_participant():
    instructor, participant = ["dl101-instructors"], ["dl101-participants"]
    assert course_rules.may_start_for(SITE, instructor, participant, "course-dl101")
    assert not course_rules.may_start_for(SITE, instructor, participant, "h100-4")  # not the course's
    assert not course_rules.may_start_for(SITE, instructor, ["ml202-participants"], "course-ml202")
    assert not course_rules.may_start_for(SITE, participant, participant, "course-dl101")
    roles = {r["name"]: r for r in course_rules.hub_roles(SITE)}
    assert roles["instructor-dl101"]["groups"] == ["dl101-instructors"]
    assert all(s.endswith("!group=dl101-participants") for s in roles["instructor-dl101"]["scopes"])
    # No right over other people's servers in the hub: the service acts after its checks.
    assert not any(s.startswith("servers") for s in roles["instructor-dl101"]["scopes"])
    assert {"servers!group=dl101-participants", "groups!group=dl101-instructors"} <= set(
        course_rules.service_scopes(SITE))


def session(job_id, user, state, reason="None", nodes=""):
    return slurm.Job(job_id, f"jupyterhub-{user}", user, "course-dl101", "gpu", state, reason,
                     nodes, "gres:gpu:h100:1", "dl101", 1, 120, int(NOW) - 60,
                     int(NOW) + 3600 if state == "PENDING" else int(NOW) - 30, 0, 0,
                     "aifactory-session:course-dl101")


def test_the_instructors_view_of_each_participant():
    history = [replace(past("7", "course-dl101", 1, NOW - 7200, NOW - 3600, user="student4"),
                       comment="aifactory-session:course-dl101")]
    snap = snapshot(reservations=OPEN, history=history, queue={
        "11": session("11", "student1", "RUNNING", nodes="gpu03"),
        "12": session("12", "student2", "PENDING", reason="Resources")})
    hub = {"student1": {"servers": {"": {"ready": True}}, "last_activity": "2026-11-22T10:58:00Z"},
           "student2": {"servers": {"": {"ready": False, "pending": "spawn"}}},
           "student3": {"servers": {"": {"stopped": True, "user_options": None}}},
           "student4": {"servers": {}},
           "student5": {"servers": {"": {"stopped": True,
                                         "user_options": {"profile": "course-dl101"}}}}}
    carol = Viewer("carol", groups=frozenset({"dl101-instructors"}))
    view = allocations.course(carol, snap, DL101, ["student1", "student2", "student3", "student4",
                                                   "student5"], hub, now=NOW)
    rows = {p["user"]: p for p in view["participants"]}
    assert {u: p["state"] for u, p in rows.items()} == {
        "student1": "running", "student2": "pending", "student3": "not started",
        "student4": "stopped", "student5": "stopped"}
    assert rows["student1"]["node"] == "gpu03"
    assert rows["student1"]["used_gpu_h"] == round(400 / 3600, 4)  # RawUsage: GPU-seconds
    assert rows["student2"]["reason"] == "Resources"
    assert "pending: " in report.session_words(rows["student2"])
    assert view["counts"] == {"running": 1, "pending": 1, "not started": 1, "stopped": 2}
    assert view["budget"]["account"] == "course-dl101" and view["budget"]["granted_gpu_h"] == 100
    assert view["spawn_url"] == "/hub/spawn?opt-profile=course-dl101"
    assert report.ago("2026-11-22T10:58:00Z", NOW) == "62 min ago"
    # Another course's instructor and the participants themselves see nothing of it.
    for viewer in (Viewer("dave", groups=frozenset({"ml202-instructors"})),
                   Viewer("student1", groups=frozenset({"dl101-participants"}))):
        with pytest.raises(AccessError, match="You do not teach DL101"):
            allocations.course(viewer, snap, DL101, ["student1"], hub, now=NOW)
    listed = allocations.courses_list(Viewer("student1", groups=frozenset({"dl101-participants"})),
                                      snap, SITE.courses, now=NOW)["courses"]
    assert [(c["name"], c["role"], c["window"]) for c in listed] == [("dl101", "participant", "open")]


def test_material_arrives_and_a_participants_edits_are_kept(tmp_path):
    source, home = tmp_path / "material", tmp_path / "home" / "dl101"
    (source / "data").mkdir(parents=True)
    (source / "01.ipynb").write_text("v1")
    (source / "02.ipynb").write_text("v1")
    (source / "data" / "x.csv").write_text("1,2")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref")
    done = material.sync(source, home)
    assert sorted(done["copied"]) == ["01.ipynb", "02.ipynb", "data/x.csv"]
    assert not (home / ".git").exists()
    (home / "01.ipynb").write_text("my answers")           # the participant edits one
    (home / "data" / "x.csv").unlink()                      # and deletes another
    (source / "01.ipynb").write_text("v2")                  # the instructor changes both
    (source / "02.ipynb").write_text("v2")
    done = material.sync(source, home)
    assert (home / "01.ipynb").read_text() == "my answers"  # kept
    assert (home / "02.ipynb").read_text() == "v2"          # untouched by them: updated
    assert (home / "data" / "x.csv").read_text() == "1,2"   # deleted: back
    assert (done["kept"], done["updated"], done["copied"]) == (["01.ipynb"], ["02.ipynb"],
                                                               ["data/x.csv"])
    assert json.loads((home / material.MANIFEST).read_text())["02.ipynb"]
    assert material.sync(source, home) == {"copied": [], "updated": [], "kept": ["01.ipynb"]}


def test_git_material_is_cloned_for_everyone_to_read_and_fetched_again_later(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "01.ipynb").write_text("v1")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    monkeypatch.setattr(courses, "GIT_CACHE", tmp_path / "cache")
    course = replace(DL101, material=f"file://{repo}", material_ref="main")
    assert course.material_is_git
    folder = Path(asyncio.run(courses.material_folder(course)))
    assert (folder / "01.ipynb").read_text() == "v1" and not (folder / ".git").is_symlink()
    assert oct((folder / "01.ipynb").stat().st_mode & 0o777) == "0o644"
    (repo / "01.ipynb").write_text("v2")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    asyncio.run(courses.material_folder(course))  # within a minute: not fetched again
    assert (folder / "01.ipynb").read_text() == "v1"
    monkeypatch.setattr(courses, "GIT_MAX_AGE", 0)
    asyncio.run(courses.material_folder(course))
    assert (folder / "01.ipynb").read_text() == "v2"
    broken = replace(course, material="file:///nonexistent/repo", name="gone")
    with pytest.raises(RuntimeError, match="could not be fetched"):
        asyncio.run(courses.material_folder(broken))
