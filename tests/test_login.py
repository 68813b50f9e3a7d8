"""The federated login's pure rules: account, groups, the site's map of sub, the ID token."""

import re
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from aifactory import checked_yaml, login
from aifactory.cluster import demo as demo_module
from aifactory.cluster import idp

PREFIX = "urn:mace:surf.nl:sram:group:aifactory-demo:aifactory:"
PATTERN = re.compile("^" + re.escape(PREFIX) + r"(?P<group>[a-z][a-z0-9_-]*)\Z")
ISSUER, CLIENT = "http://idp.localhost:8010", "aifactory-sram"


def test_entitlements_become_the_groups_the_sites_pattern_names():
    values = [PREFIX + "aifactory-users", PREFIX + "dl101-participants",
              "urn:mace:surf.nl:sram:group:other-org:aifactory:dl101-instructors",  # not ours
              PREFIX + "Bad Group", PREFIX + "x" * 40, PREFIX + "ok\n", 42]
    assert login.groups_from_entitlements(values, PATTERN) == {"aifactory-users",
                                                               "dl101-participants"}
    assert login.groups_from_entitlements(PREFIX + "solo", PATTERN) == {"solo"}
    assert login.groups_from_entitlements(None, PATTERN) == set()
    assert login.groups_from_entitlements({"a": PREFIX + "x"}, PATTERN) == set()


def test_the_account_comes_from_uid_or_the_sites_map_never_from_email():
    claims = {"sub": "ab12@sram.surf.nl", "uid": "alice", "email": "root@example.org"}
    assert login.account_name(claims, "uid", {}) == "alice"
    assert login.account_name({"sub": "cd34@myaccessid.org"}, "sub",
                              {"cd34@myaccessid.org": "bob"}) == "bob"
    # Not in the map, no uid, or a uid that is no account name: no account.
    assert login.account_name({"sub": "zz@myaccessid.org"}, "sub", {"x@y": "bob"}) is None
    assert login.account_name({"sub": "ab12@sram.surf.nl"}, "uid", {}) is None
    for bad in ("../etc", "Alice", "a b", "alice\n", "", 7, ["alice"]):
        assert login.account_name({"uid": bad}, "uid", {}) is None, bad
    assert "apply" in login.no_account_sentence("https://x/apply").lower()
    assert "https://x/apply" in login.no_account_sentence("https://x/apply")


def test_the_sites_map_of_sub_is_checked_like_every_site_file(tmp_path):
    good = tmp_path / "accounts.yaml"
    good.write_text("accounts:\n  cd34@myaccessid.org: bob\n")
    assert login.load_accounts(good) == {"cd34@myaccessid.org": "bob"}
    for text, words in (("accounts:\n  cd34@myaccessid.org: Bob Smith\n", "a Unix user name"),
                        ("accounts:\n  'no subject': bob\n", "an OpenID subject"),
                        ("people: {}\n", "accounts")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(checked_yaml.CheckedYamlError, match=words):
            login.load_accounts(bad)


@pytest.fixture(scope="module")
def keys():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.PyJWK.from_dict({**jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(),
                                                                  as_dict=True),
                               "kid": "k1", "alg": "RS256", "use": "sig"})
    return private, [jwk]


def token(private, kid="k1", **claims):
    body = {"iss": ISSUER, "aud": CLIENT, "sub": "ab12@sram.surf.nl",
            "exp": int(time.time()) + 300, "iat": int(time.time()), **claims}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": kid})


def test_an_id_token_is_accepted_only_from_the_issuer_for_this_client(keys):
    private, jwks = keys
    ok = login.check_id_token(token(private), jwks, ISSUER, CLIENT, "ab12@sram.surf.nl")
    assert ok["sub"] == "ab12@sram.surf.nl"
    cases = {
        "another client": token(private, aud="aifactory-myaccessid"),
        "another issuer": token(private, iss="http://evil.localhost"),
        "not valid": token(private, exp=int(time.time()) - 3600),
        "not one of the IdP's keys": token(private, kid="k2"),
        "another person": token(private, sub="ef56@sram.surf.nl"),
    }
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases["not valid "] = token(other)  # right kid, wrong signature
    for words, bad in cases.items():
        with pytest.raises(ValueError, match=words.strip()):
            login.check_id_token(bad, jwks, ISSUER, CLIENT, "ab12@sram.surf.nl")


def test_a_login_post_or_step_from_another_host_is_foreign():
    hub = "http://hub.localhost:8000"
    assert not login.foreign_login(hub, "hub.localhost:8000", None, None)
    assert login.foreign_login(hub, "dave.hub.localhost:8000", None, None)
    assert login.foreign_login(hub, "hub.localhost:8000", "http://dave.hub.localhost:8000",
                               "same-site")


DEMO = demo_module.load(Path(__file__).parents[1] / "hub_config/cluster/demo.yaml")


def test_the_demo_idp_knows_each_user_with_their_groups_and_keeps_subjects():
    passwords = {name: f"pw-{name}" for name in
                 [u.name for u in DEMO.users] + list(DEMO.people_without_account)}
    first = idp.people(DEMO, passwords, {})
    by_login = {p["login"]: p for p in first}
    assert set(by_login) == set(passwords) and "erin" in by_login
    assert by_login["carol"]["entitlements"] == [PREFIX + "aifactory-users",
                                                 PREFIX + "dl101-instructors"]
    assert by_login["erin"]["entitlements"] == [PREFIX + "aifactory-users"]
    assert all(p["sram_sub"].endswith("@sram.surf.nl")
               and p["myaccessid_sub"].endswith("@myaccessid.org") for p in first)
    assert all("pw-" not in str(p["password"]) for p in first)  # only a hash is kept
    # A second `up` keeps each permanent subject and, for an unchanged password, the hash.
    again = {p["login"]: p for p in idp.people(DEMO, passwords, by_login)}
    assert again == by_login
    changed = {p["login"]: p for p in idp.people(DEMO, {**passwords, "alice": "new"}, by_login)}
    assert changed["alice"]["password"] != by_login["alice"]["password"]
    assert changed["alice"]["sram_sub"] == by_login["alice"]["sram_sub"]


def test_a_person_without_an_account_cannot_also_be_a_user(tmp_path):
    text = (Path(__file__).parents[1] / "hub_config/cluster/demo.yaml").read_text()
    bad = tmp_path / "demo.yaml"
    bad.write_text(text.replace("people_without_account: [erin]",
                                "people_without_account: [erin, alice]"))
    with pytest.raises(demo_module.DemoFileError, match="has an account"):
        demo_module.load(bad)


def test_only_a_persons_account_may_be_logged_into():
    # root, nobody and service accounts are never a person's, whatever an IdP says.
    assert not login.is_persons_account("root", "root")
    assert not login.is_persons_account("nobody", "nogroup")
    assert not login.is_persons_account("no-such-user", "aifactory-users")
    assert not login.is_persons_account("root", "no-such-group")


def test_while_the_idp_is_down_a_login_lasts_only_the_grace_period():
    assert login.keeps_login_while_idp_down(1000.0, 1000.0 + 3599, 3600)
    assert not login.keeps_login_while_idp_down(1000.0, 1000.0 + 3600, 3600)
    assert not login.keeps_login_while_idp_down(None, 1000.0, 3600)  # never vouched for
