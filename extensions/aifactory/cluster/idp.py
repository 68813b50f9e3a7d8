"""The demo's OpenID Connect provider (bring-up, root): installed, configured and started.

It is panva's `oidc-provider` (npm, OpenID Certified) running hub_config/idp/idp.mjs as the
system user aifactory-idp on the loopback. It knows every demo user with their demo password,
and the demo's people without an account here; each person's entitlements are their demo
groups as SRAM writes them (AARC-G002 URNs). It has two clients, shaped like SRAM and
MyAccessID; the hub uses one (AIFACTORY_OIDC_CLIENT). `up` also writes, as a site's
provisioning would, the map of MyAccessID-like `sub` to Unix account that the hub reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
from pathlib import Path

import yaml

from .demo import Demo
from . import tls
from .services import Service
from .system import ETC_DIR, LOG_DIR, RUN_DIR, STATE_DIR, ClusterError, ensure_system_user, secret, \
    sh, wait_for, write_if_changed

IDP_USER = "aifactory-idp"
INSTALL_DIR = Path("/opt/aifactory/idp")
# root's, readable by the IdP: what `up` writes (config, people). The IdP's own keys live in
# keys/, its alone; root never writes where the IdP can swap a file for a link.
IDP_STATE = STATE_DIR / "idp"
IDP_KEYS = IDP_STATE / "keys"
IDP_HOST, HOST, PORT = "idp.localhost", "127.0.0.1", 8010
ISSUER = f"https://{IDP_HOST}:{PORT}"
ACCESS_TOKEN_SECONDS = 20  # short, so that the hub's refresh really uses the refresh token
# The demo's SRAM collaboration: entitlements urn:mace:surf.nl:sram:group:<org>:<co>:<group>.
ENTITLEMENT_PREFIX = "urn:mace:surf.nl:sram:group:aifactory-demo:aifactory:"
CLIENT_SHAPES = {"sram": "aifactory (SRAM-like)", "myaccessid": "aifactory (MyAccessID-like)"}
HUB_SECRETS = STATE_DIR / "hub-secrets"  # root only: the hub's client secrets, crypt key
ACCOUNTS_FILE = ETC_DIR / "accounts-by-sub.yaml"
PASSWORDS = STATE_DIR / "demo-passwords.json"

IDP = Service("oidc-provider", RUN_DIR / "idp.pid", "the demo's OpenID Connect provider")


def client_shape() -> str:
    """Which of the IdP's clients the hub is (AIFACTORY_OIDC_CLIENT when `up` runs)."""
    shape = os.environ.get("AIFACTORY_OIDC_CLIENT", "sram")
    if shape not in CLIENT_SHAPES:
        raise ClusterError(f"AIFACTORY_OIDC_CLIENT must be one of {', '.join(CLIENT_SHAPES)}, "
                           f"not {shape!r}.")
    return shape


def client_id(shape: str) -> str:
    return f"aifactory-{shape}"


def entitlements(demo: Demo, user: str) -> list[str]:
    groups = [demo.login_group] + sorted(g for g, members in demo.groups.items()
                                         if user in members)
    return [ENTITLEMENT_PREFIX + g for g in groups]


def _hash_password(password: str) -> dict:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=16384, r=8, p=1, dklen=32)
    return {"salt": salt.hex(), "hash": digest.hex()}


def _same_password(record: dict, password: str) -> bool:
    try:
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(record["salt"]),
                                n=16384, r=8, p=1, dklen=32)
    except (KeyError, ValueError, TypeError):
        return False
    return secrets.compare_digest(digest.hex(), record.get("hash", ""))


def people(demo: Demo, passwords: dict[str, str], old: dict[str, dict]) -> list[dict]:
    """The IdP's people: each demo user, and those without an account here. Subjects and
    password hashes are kept from the last `up` (a `sub` is permanent)."""
    result = []
    for login in [u.name for u in demo.users] + list(demo.people_without_account):
        before = old.get(login, {})
        password = before.get("password", {})
        if not _same_password(password, passwords[login]):
            password = _hash_password(passwords[login])
        has_account = login not in demo.people_without_account
        result.append({
            "login": login, "password": password,
            "sram_sub": before.get("sram_sub") or f"{secrets.token_hex(20)}@sram.surf.nl",
            "myaccessid_sub": (before.get("myaccessid_sub")
                               or f"{secrets.token_hex(20)}@myaccessid.org"),
            "uid": login, "email": f"{login}@example.org",
            "entitlements": (entitlements(demo, login) if has_account
                             else [ENTITLEMENT_PREFIX + demo.login_group])})
    return result


def _secret(name: str) -> str:
    return secret(HUB_SECRETS / name)


def hub_env(public_url: str) -> dict[str, str]:
    """What the hub needs to log people in through the demo IdP (its secrets stay in files)."""
    _secret("crypt-key")
    return {"AIFACTORY_LOGIN": "oidc", "AIFACTORY_OIDC_ISSUER": ISSUER,
            "AIFACTORY_OIDC_CLIENT": client_shape(),
            "AIFACTORY_OIDC_SECRETS": str(HUB_SECRETS),
            "AIFACTORY_OIDC_ACCOUNTS": str(ACCOUNTS_FILE),
            "AIFACTORY_OIDC_ENTITLEMENT_PREFIX": ENTITLEMENT_PREFIX}


def _write_for_idp(path: Path, text: str) -> bool:
    """A file of root's that the IdP's group may read (in root's own folder)."""
    changed = write_if_changed(path, text + "\n", 0o640)
    os.chown(path, 0, pwd.getpwnam(IDP_USER).pw_gid)
    return changed


def ensure_user() -> None:
    ensure_system_user(IDP_USER)


def _install(hub_config: Path) -> bool:
    """The IdP's code and its npm packages, exactly as the lockfile says."""
    source = hub_config / "idp"
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in ("package.json", "package-lock.json", "idp.mjs"):
        changed |= write_if_changed(INSTALL_DIR / name, (source / name).read_text(), 0o644)
    stamp = INSTALL_DIR / "node_modules" / ".aifactory-lock"
    lock = (source / "package-lock.json").read_text()
    if not stamp.exists() or stamp.read_text() != lock:
        sh("npm", "ci", "--omit=dev", "--no-fund", "--no-audit", "--prefix", str(INSTALL_DIR),
           timeout=300)
        stamp.write_text(lock)
        return True
    return changed


def ensure(demo: Demo, hub_config: Path, public_url: str, cert, log=print) -> bool:
    """Install, configure and start the IdP; True when it installed its npm packages."""
    ensure_user()
    installed = _install(hub_config)
    IDP_STATE.mkdir(parents=True, exist_ok=True)
    shutil.chown(IDP_STATE, "root", IDP_USER)
    os.chmod(IDP_STATE, 0o750)
    IDP_KEYS.mkdir(exist_ok=True)
    shutil.chown(IDP_KEYS, IDP_USER, IDP_USER)
    os.chmod(IDP_KEYS, 0o700)
    for moved in ("jwks.json", "cookie-keys.json"):  # kept in keys/ since
        (IDP_STATE / moved).unlink(missing_ok=True)

    passwords = json.loads(PASSWORDS.read_text())
    for login in demo.people_without_account:
        passwords.setdefault(login, secrets.token_urlsafe(9))
    write_if_changed(PASSWORDS, json.dumps(passwords, indent=1, sort_keys=True) + "\n", 0o600)
    try:
        old = {p["login"]: p for p in json.loads((IDP_STATE / "people.json").read_text())["people"]}
    except (OSError, ValueError, KeyError):
        old = {}
    table = people(demo, passwords, old)
    changed = _write_for_idp(IDP_STATE / "people.json", json.dumps({"people": table}, indent=1))
    clients = [{"shape": shape, "client_id": client_id(shape),
                "client_secret": _secret(f"{client_id(shape)}.secret"), "client_name": name,
                "redirect_uris": [f"{public_url}/hub/oauth_callback"],
                "post_logout_redirect_uris": [f"{public_url}/hub/login"]}
               for shape, name in CLIENT_SHAPES.items()]
    config = {"issuer": ISSUER, "host": HOST, "port": PORT, "keys_dir": str(IDP_KEYS),
              "tls": {"cert": str(cert.cert), "key": str(cert.key)},
              "access_token_seconds": ACCESS_TOKEN_SECONDS, "clients": clients}
    changed |= _write_for_idp(IDP_STATE / "config.json", json.dumps(config, indent=1))
    # The site's provisioning: which Unix account each MyAccessID-like subject works as.
    write_if_changed(ACCOUNTS_FILE, "# Written by `aifactory cluster up`, as a site's account "
                     "provisioning would: OpenID sub -> Unix account.\n" + yaml.safe_dump(
                         {"accounts": {p["myaccessid_sub"]: p["login"] for p in table
                                       if p["login"] not in demo.people_without_account}}),
                     0o600)

    if IDP.running() and (installed or changed or cert.made):
        IDP.stop()
    if not IDP.running():
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_file = LOG_DIR / "idp.log"
        log_file.touch(mode=0o640)
        shutil.chown(log_file, IDP_USER, "adm")
        sh("start-stop-daemon", "--start", "--background", "--make-pidfile",
           "--pidfile", str(IDP.pidfile), "--chuid", IDP_USER, "--chdir", str(INSTALL_DIR),
           "--output", str(log_file), "--exec", shutil.which("node") or "/usr/bin/node",
           "--", str(INSTALL_DIR / "idp.mjs"), str(IDP_STATE))
        wait_for(lambda: IDP.running() and tls.answers(
                 f"{ISSUER}/.well-known/openid-configuration"), "the demo's OpenID provider",
                 timeout=30)
    return installed


def stop() -> bool:
    return IDP.stop()


__all__ = ["ensure", "stop", "hub_env", "IDP", "ClusterError"]
