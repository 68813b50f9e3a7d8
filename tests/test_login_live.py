"""Login through the demo's OpenID provider (a real oidc-provider), as at an AI factory.

Who gets in, what their entitlements give them and when that changes, and what a forged or
replayed login step does: checked against the live hub and IdP, as the people themselves.
"""

import json
import os
import re
import subprocess
import time
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import pytest
import requests
from conftest import (CLI, HUB, HUB_DB_PASSWORD, IDP, REPO, SERVICE, HubClient, aifactory, hub_db,
                      idp_entitlements, idp_login, log_in_browser, notebook_jobs,
                      wait_for_the_service_to_see_teaching, wait_until)

from aifactory.cluster import idp
from aifactory import login as login_module
from aifactory.login import IDP_DOWN, no_account_sentence

HUB_LOG = "/var/log/aifactory/jupyterhub.log"


def hub_users() -> set[str]:
    return {name for (name,) in hub_db("SELECT name FROM users")}


def hub_log_since(mark: int) -> str:
    with open(HUB_LOG, "rb") as f:
        f.seek(mark)
        return f.read().decode("utf-8", "replace")


def log_mark() -> int:
    with open(HUB_LOG, "rb") as f:
        return f.seek(0, 2)


def logged_in(client: HubClient) -> bool:
    return client.api("GET", "/user").status_code == 200


def test_a_wrong_password_at_the_idp_logs_nobody_in(live_cluster, passwords):
    alice = HubClient("alice")
    r = alice.login(passwords["alice"] + "x")
    assert r.status_code == 401 and "Wrong username or password." in r.text
    assert urlparse(r.url).netloc == urlparse(IDP).netloc  # the hub never got a callback
    assert not logged_in(alice)
    assert alice.login(passwords["alice"]).status_code == 302 and logged_in(alice)


def test_a_person_without_an_account_here_gets_the_sentence_and_nothing_else(
        live_cluster, passwords):
    users_before = hub_users()
    erin = HubClient("erin")
    r = erin.login(passwords["erin"])
    assert r.status_code == 403
    assert no_account_sentence(f"{HUB}/hub/apply") in r.text.replace("&#39;", "'")
    assert not logged_in(erin)
    assert hub_users() == users_before, "the hub made a user for someone without an account"
    assert "erin" not in hub_users()


def test_without_the_login_entitlement_an_account_holder_is_refused(live_cluster, passwords):
    with idp_entitlements("bob", without=["aifactory-users"]):
        bob = HubClient("bob")
        assert bob.login(passwords["bob"]).status_code == 403
        assert not logged_in(bob)
    assert HubClient("bob").login(passwords["bob"]).status_code == 302


def test_a_login_outlives_its_access_token_through_the_refresh_token(live_cluster, passwords):
    bob = HubClient("bob")
    assert bob.login(passwords["bob"]).status_code == 302
    mark = log_mark()
    # The IdP's access tokens last ACCESS_TOKEN_SECONDS, and it accepts them for its clock
    # tolerance (oidc-provider: 15 s) beyond.
    time.sleep(idp.ACCESS_TOKEN_SECONDS + 15 + 2)
    # A spawn refreshes the login first (refresh_pre_spawn), with the IdP's refresh token.
    bob.start()
    bob.stop()  # the hub's API, with the browser's cookie
    assert logged_in(bob)
    log = hub_log_since(mark)
    assert "Refreshing oauth access token for bob" in log
    assert "Requiring fresh login" not in log and "stale auth" not in log


def test_entitlements_are_the_hub_groups_and_a_removed_one_goes_at_the_next_refresh(
        hub_client, passwords):
    student = hub_client("student1")
    hub_client("student2")  # a participant at the hub from their own login's entitlements
    carol = hub_client("carol")
    groups = lambda c: set(c.api("GET", "/user").json()["groups"])  # noqa: E731
    assert groups(student) == {"aifactory-users", "dl101-participants"}
    assert groups(carol) == {"aifactory-users", "dl101-instructors"}
    # An instructor's act through the service (stopping a participant's session; student2
    # has none), which asks the hub for the instructor's groups afresh.
    stop_student2 = lambda: requests.delete(  # noqa: E731
        f"{SERVICE}api/courses/dl101/sessions/student2",
        headers={"Authorization": f"token {carol.token()}"})
    assert stop_student2().status_code != 403

    with idp_entitlements("student1", without=["dl101-participants"]), \
            idp_entitlements("carol", without=["dl101-instructors"]):
        # The spawn refreshes the login first (refresh_pre_spawn): the course profile is gone.
        error = student.form_error(profile="course-dl101")
        assert error, "the course profile was still offered after the entitlement went"
        assert "dl101-participants" not in groups(student)
        assert not student.server()
        # carol's next refresh (her login is older than auth_refresh_age, or she spawns)
        # takes her instructor rights: the service asks the hub afresh.
        assert carol.form_error(profile="course-dl101")  # not hers: refused after the refresh
        assert "dl101-instructors" not in groups(carol)
        refused = stop_student2()
        assert refused.status_code == 403 and "You do not teach" in refused.text
    # Given back at the IdP: their next logins have them again (later tests teach as carol).
    hub_client("student1")
    wait_for_the_service_to_see_teaching(hub_client("carol").token())


def test_forged_and_replayed_callbacks_log_nobody_in_and_the_log_says_why(
        live_cluster, passwords):
    mark = log_mark()
    # A callback with a state that is not the one this browser's login started with.
    mallory = HubClient("alice")
    mallory.http.get(f"{HUB}/hub/oauth_login?next=", allow_redirects=False)
    r = mallory.http.get(f"{HUB}/hub/oauth_callback?code=abc&state=forged",
                         allow_redirects=False)
    assert r.status_code == 400 and not logged_in(mallory)

    # A real code, used once by alice's browser, replayed by another.
    alice = HubClient("alice")
    start = alice.http.get(f"{HUB}/hub/oauth_login?next=", allow_redirects=False)
    callback = idp_login(alice.http, start, "alice", passwords["alice"])
    assert callback.status_code == 302 and logged_in(alice)
    code_url = callback.request.url
    assert "code=" in code_url
    replay = HubClient("alice")
    # The replayer also started a login (so that it has a state cookie), then sends the
    # stolen callback with its own state: the code was spent.
    own = replay.http.get(f"{HUB}/hub/oauth_login?next=", allow_redirects=False)
    own_state = parse_qs(urlparse(own.headers["Location"]).query)["state"][0]
    stolen = parse_qs(urlparse(code_url).query)
    r = replay.http.get(f"{HUB}/hub/oauth_callback?" + urlencode(
        {"code": stolen["code"][0], "state": own_state}), allow_redirects=False)
    assert r.status_code == 403 and not logged_in(replay)

    # A code the IdP issued to its other client (the MyAccessID-like one), sent to this hub.
    other = requests.Session()
    start = other.get(f"{IDP}/auth?" + urlencode({
        "client_id": idp.client_id("myaccessid"), "response_type": "code", "scope": "openid",
        "redirect_uri": f"{HUB}/hub/oauth_callback", "state": "x" * 16}),
        allow_redirects=False)
    foreign = idp_login(other, start, "alice", passwords["alice"])
    foreign_code = parse_qs(urlparse(foreign.request.url).query)["code"][0]
    thief = HubClient("alice")
    own = thief.http.get(f"{HUB}/hub/oauth_login?next=", allow_redirects=False)
    own_state = parse_qs(urlparse(own.headers["Location"]).query)["state"][0]
    r = thief.http.get(f"{HUB}/hub/oauth_callback?" + urlencode(
        {"code": foreign_code, "state": own_state}), allow_redirects=False)
    assert r.status_code == 403 and not logged_in(thief)

    log = hub_log_since(mark)
    assert "OAuth state mismatch" in log
    refusals = re.findall(r"The IdP refused a token request \(400\): (.*)", log)
    assert len(refusals) >= 2 and all("invalid_grant" in line for line in refusals), refusals


def test_a_login_state_tossed_from_a_users_subdomain_finishes_nobodys_login(
        live_cluster, passwords):
    """dave starts a login and stops before the callback; a page of his tosses his state
    cookie onto the hub's domain in alice's browser and sends her to his callback: that would
    log her browser in as dave (login forgery). The state cookie is a __Host- one: no."""
    dave = HubClient("dave")
    start = dave.http.get(f"{HUB}/hub/oauth_login?next=", allow_redirects=False)
    [state_cookie] = [c for c in dave.http.cookies if "oauthenticator-state" in c.name]
    assert state_cookie.name == "__Host-oauthenticator-state"
    to_callback = idp_login(dave.http, start, "dave", passwords["dave"], follow=False)
    code_url = urljoin(to_callback.url, to_callback.headers["Location"])
    assert "code=" in code_url
    alice_browser = HubClient("alice")
    # What a page on dave's origin can set for the hub's domain: not a __Host- cookie (a
    # browser refuses one with a Domain; test_browser.py tries it in Chromium), so this.
    alice_browser.http.cookies.set("oauthenticator-state", state_cookie.value,
                                   domain=".hub.localhost", path="/hub/")
    r = alice_browser.http.get(code_url, allow_redirects=False)
    assert r.status_code in (400, 403) and not logged_in(alice_browser)


def test_the_login_steps_are_refused_on_a_users_subdomain(live_cluster, passwords):
    dave_host = HUB.replace("://hub.", "://dave.hub.")
    alice = HubClient("alice")
    r = alice.login(passwords["alice"], hub=dave_host)
    assert r.status_code == 403 and "this address is not the hub's own" in r.text.replace("&#39;", "'")
    r = alice.http.get(f"{dave_host}/hub/oauth_callback?code=x&state=y", allow_redirects=False)
    assert r.status_code == 403
    assert not [c for c in alice.http.cookies if c.name.startswith("jupyterhub-hub-login")]


def test_logout_ends_the_session_at_the_idp_too(live_cluster, passwords):
    alice = HubClient("alice")
    assert alice.login(passwords["alice"]).status_code == 302
    r = alice.http.get(f"{HUB}/hub/logout", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{IDP}/session/end?")
    assert "id_token_hint=" in r.headers["Location"]
    end = alice.http.get(r.headers["Location"])
    form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', end.text, re.S)
    assert form, end.text[:400]
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2)))
    done = alice.http.post(urljoin(end.url, form.group(1)), data={**fields, "logout": "yes"})
    assert done.url.startswith(f"{HUB}/hub/login"), done.url
    assert not logged_in(alice)
    # The IdP asks for the password again: its own session is over.
    start = alice.http.get(f"{HUB}/hub/oauth_login?next=")
    assert start.url.startswith(f"{IDP}/interaction/") and 'name="password"' in start.text


LOGIN_SECRETS = [
    HUB_DB_PASSWORD,                                # the hub's database (auth_state, tokens)
    "/var/lib/aifactory/secrets/proxy-auth-token",  # the proxy's routes
    "/var/lib/aifactory/secrets/allocations-api-token",
    "/var/lib/aifactory/hub-secrets/crypt-key",     # the key of auth_state
    "/var/lib/aifactory/hub-secrets/aifactory-sram.secret",
    "/var/lib/aifactory/idp/people.json",           # password hashes
    "/var/lib/aifactory/idp/config.json",           # the clients' secrets
    "/var/lib/aifactory/idp/keys/jwks.json",        # the IdP's signing key
    "/var/lib/aifactory/ca/ca.key",                 # the demo CA's key
    "/etc/aifactory/tls/hub.key", "/etc/aifactory/tls/idp.key",
    "/etc/aifactory/accounts-by-sub.yaml",
    # The hub's and the proxy's copies (their accounts' groups only).
    "/etc/aifactory/hub/crypt-key", "/etc/aifactory/hub/aifactory-sram.secret",
    "/etc/aifactory/hub/hub-database-password", "/etc/aifactory/proxy/public.key",
    "/var/lib/aifactory/hub/internal-ssl/notebooks-ca/notebooks-ca.key",
]


def test_dave_cannot_open_the_hubs_database(live_cluster):
    """The hub's PostgreSQL role takes a password over TCP and only the OS user of its name
    over the socket; dave has no role at all."""
    attempts = {("-h", "127.0.0.1", "-U", "jupyterhub"): "no password supplied",
                ("-h", "/run/postgresql", "-U", "jupyterhub"): "Peer authentication failed",
                ("-h", "/run/postgresql", "-U", "dave"): 'role "dave" does not exist'}
    for how, refusal in attempts.items():
        r = subprocess.run(["runuser", "-u", "dave", "--", "psql", "-w", *how, "-d", "jupyterhub",
                            "-c", "SELECT name FROM users"], capture_output=True, text=True,
                           cwd="/tmp")
        assert r.returncode != 0 and refusal in r.stderr, (how, r.stderr)
    assert "alice" in {name for (name,) in hub_db("SELECT name FROM users")}


def test_dave_reads_none_of_the_logins_secrets(live_cluster):
    for path in LOGIN_SECRETS:
        r = subprocess.run(["runuser", "-u", "dave", "--", "cat", path], capture_output=True,
                           text=True, cwd="/tmp")
        assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.stderr)
        assert os.path.exists(path), path  # refused because it is kept from him, not missing


@pytest.mark.slow
def test_while_the_idp_is_down_people_keep_working_and_a_login_gets_a_sentence(
        hub_client, passwords):
    alice = hub_client("alice")
    alice.start(profile="cpu")
    bob = hub_client("bob")
    assert idp.stop()
    try:
        # A new login: words, not a traceback or the browser's connection error.
        r = HubClient("carol").http.get(f"{HUB}/hub/oauth_login?next=")
        assert r.status_code == 503 and IDP_DOWN in r.text.replace("&#39;", "'")
        # alice keeps working in her session.
        assert alice.http.get(f"{HUB}/user/alice/lab").status_code == 200
        assert logged_in(alice)
        # bob's spawn refreshes his login first; the IdP does not answer, so he keeps what he
        # had: the form, not the login, refuses a course that is not his.
        assert "course" in bob.form_error(profile="course-dl101").lower()
        assert logged_in(bob)
    finally:
        assert aifactory("cluster", "up").returncode == 0
    wait_until(lambda: HubClient("bob").login(passwords["bob"]).status_code == 302, 30,
               what="a login once the IdP is back")


@pytest.mark.slow
def test_with_the_myaccessid_shaped_client_the_sites_map_names_the_account(
        page, passwords, hub_client):
    """MyAccessID gives only an opaque sub: the hub finds the account in the map that the
    site's provisioning writes, and the person logs in and starts a session in Chromium."""
    hub_client("bob")  # stops bob's session afterwards
    env = dict(os.environ, AIFACTORY_HUB_CONFIG=str(REPO / "hub_config"),
               AIFACTORY_OIDC_CLIENT="myaccessid")
    up = subprocess.run([str(CLI), "cluster", "up"], env=env, capture_output=True, text=True,
                        timeout=600)
    assert up.returncode == 0, up.stderr
    try:
        assert "restarting jupyterhub" in up.stdout
        accounts = login_module.load_accounts("/etc/aifactory/accounts-by-sub.yaml")
        page.goto(f"{HUB}/hub/login")
        assert "Sign in with MyAccessID (demo)" in page.content()
        log_in_browser(page, "bob", passwords["bob"])
        page.wait_for_url("**/hub/spawn**")
        page.check("#aif-profile-cpu")
        page.click("#spawn_form button[type=submit]")
        page.wait_for_url("**/user/bob/lab**", timeout=120_000)
        [job] = notebook_jobs("bob")
        assert job.user == "bob"
        # The hub's name for her came from the map, not from a claim she could choose.
        page.goto(f"{HUB}/hub/api/user")
        assert json.loads(page.text_content("body"))["name"] == "bob"
        assert [sub for sub, name in accounts.items() if name == "bob"][0].endswith(
            "@myaccessid.org")
    finally:
        back = aifactory("cluster", "up")
        assert back.returncode == 0, back.stderr
