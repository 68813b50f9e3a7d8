"""Course mode on the live hub and cluster: participants, the window, material, instructors."""

import pwd
import shutil
import time
from pathlib import Path

import requests
from conftest import (HUB, SERVICE, idp_entitlements, notebook_jobs, notebook_process,
                      process_env, wait_for_the_service_to_see_teaching, wait_until)

from aifactory import slurm
from aifactory.client import AllocationsError, ServiceClient



def submitted() -> int:
    return slurm.rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)


def course_view(token: str, name: str = "dl101") -> dict:
    return ServiceClient(SERVICE, token).course(name)


def state_of(token: str, user: str) -> str:
    return next(p for p in course_view(token)["participants"] if p["user"] == user)["state"]


def test_the_spawn_link_starts_a_course_session_in_the_reservation_with_the_material(hub_client):
    student = hub_client("student1")
    home = Path(pwd.getpwnam("student1").pw_dir)
    shutil.rmtree(home / "dl101", ignore_errors=True)  # as on the first day of the course
    # The home page offers the course's spawn link (JupyterHub 6's option names: opt-profile).
    home_page = student.http.get(f"{HUB}/hub/home").content.decode()
    assert 'href="/hub/spawn?opt-profile=course-dl101">Start a course session' in home_page
    # The service gives the link whole (the notebook runs on another origin than the hub).
    [course] = ServiceClient(SERVICE, student.token()).courses()["courses"]
    assert course["spawn_url"] == f"{HUB}/hub/spawn?opt-profile=course-dl101"
    r = student.http.get(course["spawn_url"], allow_redirects=False)
    assert r.status_code == 302 and "spawn-pending" in r.headers["Location"], r.status_code
    wait_until(lambda: student.server().get("ready"), 120, what="student1's course session")
    [job] = notebook_jobs("student1")
    assert (job.account, job.reservation, job.nodes, job.gpus) == (
        "course-dl101", "dl101", "gpu03", 1), job
    readme = home / "dl101" / "README.md"
    assert readme.read_text() == Path("/opt/aifactory/courses/dl101/README.md").read_text()
    assert readme.stat().st_uid == pwd.getpwnam("student1").pw_uid  # copied as the student
    # The student's own edit survives the next start.
    readme.write_text("my notes\n")
    student.stop()
    student.start(profile="course-dl101")
    assert readme.read_text() == "my notes\n"


def test_the_course_profile_keeps_its_account_and_the_course_budget_stays_in_it(hub_client):
    student, bob = hub_client("student1"), hub_client("bob")
    before = submitted()
    assert "profile sets the account" in student.form_error(profile="course-dl101",
                                                            account="proj-climate")
    assert "is the GPU budget of DL101" in student.form_error(profile="h100-1")
    assert "There is no profile 'course-dl101'" in bob.form_error(profile="course-dl101")
    form = bob.http.get(f"{HUB}/hub/spawn").content.decode()
    assert "course-dl101" not in form  # not offered to people outside the course
    assert submitted() == before


def test_before_the_window_the_form_says_when_the_course_opens(hub_client):
    student = hub_client("student3")
    opens = slurm.reservations()["ml202"].start
    form = student.http.get(f"{HUB}/hub/spawn").content.decode()
    assert "ML202: scaling out (starts next month) opens at" in form
    home_page = student.http.get(f"{HUB}/hub/home").content.decode()
    assert "opens at" in home_page and "Start a course session" not in home_page
    before = submitted()
    error = student.form_error(profile="course-ml202")
    assert "opens at" in error and "you can start a session in it then" in error
    day = time.strftime("%d", time.localtime(opens))
    assert f" {day} " in error, (opens, error)
    assert submitted() == before and notebook_jobs("student3") == []


def test_an_instructor_starts_and_stops_a_participants_session_and_nothing_else(hub_client):
    carol, student1, dave = hub_client("carol"), hub_client("student1"), hub_client("dave")
    hub_client("student2")  # stops student2's session afterwards
    token = carol.token()
    service = ServiceClient(SERVICE, token)
    view = course_view(token)
    assert {p["user"] for p in view["participants"]} == {"student1", "student2"}
    assert view["window"] == "open" and view["budget"]["account"] == "course-dl101"

    assert service.course_session("dl101", "student2", "start") in ("started", "starting")
    wait_until(lambda: state_of(token, "student2") == "running", 120,
               what="the course view to show student2 running")
    [job] = notebook_jobs("student2")
    assert (job.account, job.reservation) == ("course-dl101", "dl101")
    assert service.course_session("dl101", "student2", "stop") in ("stopped", "stopping")
    wait_until(lambda: state_of(token, "student2") == "stopped", 60,
               what="the course view to show student2 stopped")
    wait_until(lambda: not notebook_jobs("student2"), 60, what="student2's job to end")

    before = submitted()
    # Only the course's profile: carol's own hub token starts nothing for a participant.
    r = requests.post(f"{HUB}/hub/api/users/student2/server", json={"profile": "cpu"},
                      headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code in (403, 404), r.status_code
    wait_until(lambda: not notebook_jobs("student2"), 20, what="no job for student2")
    # Not another course's participants (through the service, or for another course).
    for name, user in (("dl101", "student3"), ("ml202", "student3")):
        try:
            service.course_session(name, user, "start")
            raise AssertionError(f"carol started {user}'s session in {name}")
        except AllocationsError as e:
            assert "is not a participant of DL101" in str(e) or "You do not teach ML202" in str(e)
    try:
        course_view(token, "ml202")
        raise AssertionError("carol saw ml202")
    except AllocationsError as e:
        assert "You do not teach ML202" in str(e)
    # A participant has none of the instructor's actions, nor the view.
    student_token = student1.token()
    r = requests.post(f"{HUB}/hub/api/users/student2/server", json={"profile": "course-dl101"},
                      headers={"Authorization": f"token {student_token}"}, timeout=30)
    assert r.status_code in (403, 404), r.status_code
    try:
        course_view(student_token)
        raise AssertionError("student1 saw the course view")
    except AllocationsError as e:
        assert "You do not teach DL101" in str(e)
    try:
        course_view(dave.token())
        raise AssertionError("dave saw dl101")
    except AllocationsError as e:
        assert "You do not teach DL101" in str(e)
    assert submitted() == before and notebook_jobs("student2") == []


def test_an_instructors_session_token_carries_the_course_role_and_a_students_does_not(hub_client):
    carol, student = hub_client("carol"), hub_client("student1")
    carol.start(profile="cpu")
    student.start(profile="course-dl101")
    scopes = {}
    for user in ("carol", "student1"):
        pid = notebook_process(user)
        token = process_env(pid)["JUPYTERHUB_API_TOKEN"]
        r = requests.get(f"{HUB}/hub/api/user", headers={"Authorization": f"token {token}"},
                         timeout=30)
        scopes[user] = set(r.json()["scopes"])
    # Instructors hold no right to other people's servers in the hub (the service acts).
    assert not any(s.startswith("servers!group=") for s in scopes["carol"]), scopes["carol"]
    assert "read:users:activity!group=dl101-participants" in scopes["carol"]
    assert not any("group=" in s for s in scopes["student1"]), scopes["student1"]


def test_the_course_api_refuses_bad_names_with_a_sentence(hub_client):
    token = hub_client("carol").token()
    for path, status, words in (("courses/DL101;id", 400, "is not a valid course name"),
                                ("courses/nope", 404, "There is no course 'nope'"),
                                ("courses?x=1", 400, "Unknown parameter 'x'")):
        r = requests.get(SERVICE + "api/" + path, headers={"Authorization": f"token {token}"},
                         timeout=30)
        assert r.status_code == status and words in r.json()["error"], (path, r.text)
    assert requests.get(SERVICE + "api/courses", timeout=30).status_code == 401


def test_an_instructor_cannot_stop_a_participants_own_session(hub_client):
    carol, student1 = hub_client("carol"), hub_client("student1")
    student1.start(profile="cpu")  # their own session, on their own project
    service = ServiceClient(SERVICE, carol.token())
    try:
        service.course_session("dl101", "student1", "stop")
        raise AssertionError("carol stopped student1's own session")
    except AllocationsError as e:
        assert "student1's session is not their dl101 course session" in str(e)
    r = requests.delete(f"{HUB}/hub/api/users/student1/server",
                        headers={"Authorization": f"token {carol.token()}"}, timeout=30)
    assert r.status_code in (403, 404), r.status_code
    assert student1.server().get("ready") and notebook_jobs("student1")


def test_a_removed_instructor_can_do_nothing_and_is_given_back_their_rights(hub_client):
    carol = hub_client("carol")
    hub_client("student2")  # stops student2's session afterwards, should one start
    service = ServiceClient(SERVICE, carol.token())
    wait_for_the_service_to_see_teaching(carol.token())  # its view is up to a minute old

    def instructor() -> bool:
        return "dl101-instructors" in carol.api("GET", "/user").json()["groups"]  # the latest

    def refresh() -> None:
        # carol's next refresh of her login: her own spawn refreshes it first (the course
        # profile, which she teaches but does not take, is then refused, starting nothing).
        assert carol.form_error(profile="course-dl101")

    # The IdP takes her instructor entitlement away; the hub's groups follow at her refresh.
    with idp_entitlements("carol", without=["dl101-instructors"]):
        refresh()
        assert not instructor()
        try:
            service.course_session("dl101", "student2", "start")
            raise AssertionError("a removed instructor started a session")
        except AllocationsError as e:
            assert "You do not teach DL101" in str(e)
        assert not notebook_jobs("student2")
    # Given back at the IdP: her next login has it again, and the service sees it within its
    # minute of caching who is who (later tests, notebook 05 among them, teach as carol).
    carol = hub_client("carol")
    assert instructor(), "carol's entitlement came back at the IdP but not in the hub"
    wait_for_the_service_to_see_teaching(carol.token())
