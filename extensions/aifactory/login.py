"""The hub's login: the site's OpenID Connect provider (SRAM, MyAccessID), or Unix passwords
(PAM) for a site without one; either accepted only on the hub's own host and origin.

With users' servers on subdomains (JupyterHub's subdomain_host), the hub still answers on every
host, so `http://dave.<hub host>/hub/login` shows the real login page on dave's origin. A login
there would set alice's hub cookie where dave's pages run, and they could read her hub pages.
And a page of dave's could post his own name and password to the hub's login (login forgery:
alice would then work in dave's session); browsers name the page's origin in such a post.
"""

from urllib.parse import urlparse

from jupyterhub.auth import PAMAuthenticator
from tornado import web

DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int]:
    parsed = urlparse(f"{scheme}://{netloc}")
    return (parsed.hostname or "").lower(), parsed.port or DEFAULT_PORTS.get(scheme, 0)


def foreign_login(hub_url: str, host: str, origin: str | None, fetch_site: str | None) -> bool:
    """True when a login post did not come from the hub's own page on the hub's own host."""
    if not hub_url:
        return False
    hub = urlparse(hub_url)
    mine = _host_port(hub.netloc, hub.scheme)
    if _host_port(host, hub.scheme) != mine:
        return True
    if origin is not None:  # browsers send it with every post; other clients may not
        sent = urlparse(origin)
        if sent.scheme != hub.scheme or _host_port(sent.netloc, sent.scheme) != mine:
            return True
    return fetch_site not in (None, "same-origin", "none")


class HubHostPAMAuthenticator(PAMAuthenticator):
    """PAMAuthenticator that refuses a login sent to, or posted from, another origin."""

    def authenticate(self, handler, data):
        hub_url = handler.settings.get("subdomain_host", "")
        headers = handler.request.headers
        if foreign_login(hub_url, handler.request.host, headers.get("Origin"),
                         headers.get("Sec-Fetch-Site")):
            self.log.warning("Refused a login on %s from %s", handler.request.host,
                             headers.get("Origin"))
            raise web.HTTPError(403, f"Log in at {hub_url}/hub/login: this address is not "
                                     "the hub's own.")
        return super().authenticate(handler, data)


# --- Federated login (OpenID Connect) -------------------------------------------------------
#
# Who a person is comes from the IdP; which Unix account they work as comes from this site:
# the `uid` claim (SRAM's, meant for backend logins) or the site's map of `sub` to account
# (MyAccessID has no Unix name; the site's provisioning writes the map). Never from e-mail or
# a name the person chose. Entitlements become hub groups through the site's pattern.

import pwd  # noqa: E402
import re  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from . import checked_yaml, names  # noqa: E402

# An OpenID subject as the federations write it: "<hex or text>@<scope>".
SUB_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}@[a-z0-9.-]{1,128}\Z")
ACCOUNTS_SCHEMA = {"accounts": ("mapping", (str, SUB_RE, "an OpenID subject (sub)"),
                                (str, names.USER_RE, "a Unix user name"))}
# People's accounts: Debian's UID_MIN to UID_MAX (below and above: system accounts and
# nobody), and in the site's Unix group of people (the service accounts of this machine,
# slurm among them, have uids in that range too).
PERSON_UIDS = range(1000, 60001)
IDP_DOWN = ("The identity provider does not answer, so nobody can log in right now; try "
            "again in a few minutes. If you are logged in already, you keep working.")


def load_accounts(path: str | Path) -> dict[str, str]:
    """The site's map of OpenID `sub` to Unix account, checked like every site file."""
    doc = checked_yaml.load(path, ACCOUNTS_SCHEMA)
    return dict(doc.data["accounts"] or {})


def groups_from_entitlements(entitlements, pattern: re.Pattern) -> set[str]:
    """The hub groups that the entitlements name through the site's pattern (its `group`);
    values that do not match, or name no valid group, give nothing."""
    if isinstance(entitlements, str):
        entitlements = [entitlements]
    if not isinstance(entitlements, list):
        return set()
    groups = set()
    for value in entitlements:
        match = pattern.match(value) if isinstance(value, str) else None
        if match and names.GROUP_RE.match(match.group("group")):
            groups.add(match.group("group"))
    return groups


def account_name(claims: dict, username_claim: str, accounts: dict[str, str]) -> str | None:
    """The Unix account the claims name at this site: `uid` (or the configured claim), else
    the site's map of `sub`; None when neither names a well-formed account."""
    if username_claim != "sub":
        name = claims.get(username_claim)
    else:
        name = accounts.get(claims.get("sub") or "")
    return name if isinstance(name, str) and names.USER_RE.match(name) else None


def no_account_sentence(apply_url: str) -> str:
    where = f" Apply for one at {apply_url}" if apply_url else " Ask the site's support for one"
    return ("You have no account at this site, so you cannot log in here yet."
            f"{where}; then log in again with the same identity.")


def is_persons_account(name: str, people_group: str) -> bool:
    """Whether `name` is an existing Unix account of a person at this site."""
    import grp
    try:
        entry = pwd.getpwnam(name)
        group = grp.getgrnam(people_group)
    except KeyError:
        return False
    return entry.pw_uid in PERSON_UIDS and (name in group.gr_mem or entry.pw_gid == group.gr_gid)


def keeps_login_while_idp_down(last_refresh: float | None, now: float, grace_s: float) -> bool:
    """While the IdP does not answer, a login stays for `grace_s` after its last successful
    refresh, no longer: a person whose rights went at the IdP loses them within that time."""
    return last_refresh is not None and now - last_refresh < grace_s


def check_id_token(id_token: str, keys, issuer: str, client_id: str, sub: str) -> dict:
    """The ID token's claims, after checking its signature (the IdP's keys), issuer,
    audience (this hub's client), expiry, and that it names the same person as the userinfo
    answer; raises ValueError saying which check failed."""
    import jwt  # PyJWT, with OAuthenticator

    try:
        header = jwt.get_unverified_header(id_token)
        key = next((k for k in keys if k.key_id == header.get("kid")), None)
        if key is None:
            raise ValueError("its key is not one of the IdP's keys")
        claims = jwt.decode(id_token, key.key, algorithms=["RS256"], audience=client_id,
                            issuer=issuer, options={"require": ["iss", "aud", "exp", "sub"]},
                            leeway=30)
    except jwt.InvalidAudienceError:
        raise ValueError(f"it was issued to another client, not {client_id}") from None
    except jwt.InvalidIssuerError:
        raise ValueError(f"it was issued by another issuer, not {issuer}") from None
    except jwt.PyJWTError as e:
        raise ValueError(f"it is not valid ({e})") from None
    if claims.get("sub") != sub:
        raise ValueError("it names another person than the userinfo answer")
    return claims


try:
    from oauthenticator.generic import GenericOAuthenticator
    from oauthenticator.oauth2 import (STATE_COOKIE_NAME, OAuthCallbackHandler,
                                       OAuthLoginHandler, OAuthLogoutHandler)
except ImportError:  # a site with PAM only need not install OAuthenticator
    GenericOAuthenticator = None


if GenericOAuthenticator is not None:
    from tornado.httpclient import HTTPClientError
    from traitlets import Bool, Integer, Unicode

    class _OnHubHost:
        """The login start and the callback answer on the hub's own host only: on a user's
        subdomain they would set the hub's cookies where that user's pages run."""

        def prepare(self):
            hub_url = self.settings.get("subdomain_host", "")
            if foreign_login(hub_url, self.request.host, None, None):
                self.log.warning("Refused an OpenID login step on %s", self.request.host)
                raise web.HTTPError(403, f"Log in at {hub_url}/hub/login: this address is "
                                         "not the hub's own.")
            return super().prepare()

        # The login's state cookie (it holds the state and the PKCE verifier): a __Host- one
        # over https, which a page on a user's subdomain cannot toss onto the hub's domain to
        # finish its own login in someone else's browser (login forgery).
        def _state_cookie_name(self) -> str:
            https = self.settings.get("subdomain_host", "").startswith("https://")
            return f"__Host-{STATE_COOKIE_NAME}" if https else STATE_COOKIE_NAME

        def set_state_cookie(self, state_cookie_value):
            self._set_cookie(self._state_cookie_name(), state_cookie_value, expires_days=1,
                             httponly=True)

        def get_state_cookie(self):
            if getattr(self, "_state_cookie", None) is None:
                name = self._state_cookie_name()
                self._state_cookie = (self.get_secure_cookie(name) or b"").decode(
                    "utf8", "replace")
                self.clear_cookie(name, path="/" if name.startswith("__Host-") else None)
            return self._state_cookie

    class HubHostLoginHandler(_OnHubHost, OAuthLoginHandler):
        """Sends the browser to the IdP, or says in words that it does not answer."""

        async def get(self):
            if not await self.authenticator.idp_answers():
                raise web.HTTPError(503, IDP_DOWN)
            return super().get()

    class HubHostCallbackHandler(_OnHubHost, OAuthCallbackHandler):
        pass

    class IdPLogoutHandler(OAuthLogoutHandler):
        """Logout ends the session at the IdP too (RP-initiated logout, with the ID token)."""

        async def get(self):
            user = self.current_user
            state = await user.get_auth_state() if user else None
            self._id_token = (state or {}).get("id_token")
            self.clear_cookie(f"__Host-{STATE_COOKIE_NAME}", path="/")
            await super().get()

        async def render_logout_page(self):
            url = self.authenticator.end_session_url
            if not url:
                return await super().render_logout_page()
            params = {"client_id": self.authenticator.client_id,
                      "post_logout_redirect_uri": self.authenticator.post_logout_url}
            if self._id_token:
                params["id_token_hint"] = self._id_token
            self.redirect(f"{url}?{urlencode(params)}")

    class FederatedAuthenticator(GenericOAuthenticator):
        """GenericOAuthenticator for a research federation's OpenID provider."""

        login_handler = HubHostLoginHandler
        callback_handler = HubHostCallbackHandler
        logout_handler = IdPLogoutHandler

        issuer = Unicode(help="The IdP's issuer (the `iss` of its ID tokens).").tag(config=True)
        jwks_url = Unicode(help="Where the IdP publishes its signing keys.").tag(config=True)
        end_session_url = Unicode(
            help="The IdP's end_session_endpoint: logout ends the IdP's session too.",
        ).tag(config=True)
        post_logout_url = Unicode(
            help="Where the IdP sends the person after logout (registered with the IdP).",
        ).tag(config=True)
        people_group = Unicode(
            "aifactory-users",
            help="The Unix group of people's accounts: the account a login names must be in "
                 "it (the entitlements then decide who may log in).",
        ).tag(config=True)
        idp_outage_grace_seconds = Integer(
            3600,
            help="While the IdP does not answer, a login stays this long after its last "
                 "successful refresh, then its holder must log in again.",
        ).tag(config=True)
        accounts_file = Unicode(
            help="YAML map of OpenID `sub` to Unix account (`accounts: {SUB: NAME}`), written "
                 "by the site's provisioning; used when username_claim is 'sub'.",
        ).tag(config=True)
        entitlement_pattern = Unicode(
            r"^urn:mace:surf\.nl:sram:group:[a-z0-9-]+:[a-z0-9-]+:(?P<group>[a-z][a-z0-9_-]*)\Z",
            help="Regular expression over each entitlement; its `group` names the hub group.",
        ).tag(config=True)
        entitlements_claim = Unicode("eduperson_entitlement",
                                     help="The claim holding the entitlements.").tag(config=True)
        apply_url = Unicode(
            help="Where a person without an account at this site applies for one.",
        ).tag(config=True)

        manage_groups = Bool(
            True, help="Hub groups follow the entitlements (at each login and refresh).",
        ).tag(config=True)

        def get_user_groups(self, auth_state: dict) -> set[str]:
            info = auth_state.get(self.user_auth_state_key) or {}
            return groups_from_entitlements(info.get(self.entitlements_claim),
                                            re.compile(self.entitlement_pattern))

        def user_info_to_username(self, user_info):
            accounts = load_accounts(self.accounts_file) if self.username_claim == "sub" else {}
            name = account_name(user_info, self.username_claim, accounts)
            if name is None or not is_persons_account(name, self.people_group):
                self.log.warning("No account at this site for %s (%s)", user_info.get("sub"),
                                 self.username_claim)
                raise web.HTTPError(403, no_account_sentence(self.apply_url)) from None
            return name

        async def token_to_user(self, token_info):
            user_info = await super().token_to_user(token_info)
            if self.jwks_url:
                if "id_token" not in token_info:
                    self.log.warning("Refused a login: the IdP's answer had no ID token")
                    raise web.HTTPError(403, "The identity provider's answer could not be "
                                             "checked; nobody was logged in.")
                try:
                    keys = await self._keys()
                except (OSError, HTTPClientError):
                    raise web.HTTPError(503, IDP_DOWN) from None
                try:
                    check_id_token(token_info["id_token"], keys,
                                   self.issuer, self.client_id, user_info.get("sub"))
                except ValueError as e:
                    self.log.warning("Refused an ID token: %s", e)
                    raise web.HTTPError(403, "The identity provider's answer could not be "
                                             "checked; nobody was logged in.") from None
            return user_info

        _jwks: tuple[float, list] = (0.0, [])
        async def idp_answers(self) -> bool:
            """Whether the IdP answers now (its keys, fetched afresh: one small request)."""
            try:
                await self._keys(fresh=True)
                return True
            except (OSError, HTTPClientError, ValueError):
                return False

        async def _keys(self, fresh: bool = False):
            import jwt
            fetched, keys = self._jwks
            if fresh or time.monotonic() - fetched > 300 or not keys:
                answer = await self.httpfetch(self.jwks_url, method="GET", request_timeout=5)
                keys = list(jwt.PyJWKSet.from_dict(answer).keys)
                self._jwks = (time.monotonic(), keys)
            return keys

        async def get_token_info(self, handler, params):
            try:
                return await super().get_token_info(handler, params)
            except OSError:
                if params.get("grant_type") == "refresh_token":
                    raise
                raise web.HTTPError(503, IDP_DOWN) from None
            except HTTPClientError as e:
                if e.code == 599 and params.get("grant_type") != "refresh_token":
                    raise web.HTTPError(503, IDP_DOWN) from None
                # A reused or foreign code, or a refresh token the IdP no longer knows.
                detail = getattr(e.response, "body", b"") or b""
                self.log.warning("The IdP refused a token request (%s): %s", e.code,
                                 detail[:300].decode("utf-8", "replace"))
                if params.get("grant_type") == "refresh_token":
                    raise
                raise web.HTTPError(403, "The identity provider refused this login; "
                                         "nobody was logged in. Log in again.") from None

        def build_auth_state_dict(self, token_info, user_info):
            state = super().build_auth_state_dict(token_info, user_info)
            state["refreshed_at"] = time.time()  # the IdP vouched for this person then
            return state

        async def refresh_user(self, user, handler=None, **kwargs):
            try:
                return await super().refresh_user(user, handler, **kwargs)
            except (HTTPClientError, OSError) as e:
                # Only "no answer" counts as down: a certificate that fails is not an outage.
                if isinstance(e, ssl.SSLError) or (isinstance(e, HTTPClientError)
                                                   and e.code != 599):
                    raise
                state = await user.get_auth_state() or {}
                if keeps_login_while_idp_down(state.get("refreshed_at"), time.time(),
                                              self.idp_outage_grace_seconds):
                    self.log.warning("The IdP did not answer a refresh for %s; keeping their "
                                     "login as it was", user.name)
                    return True
                self.log.warning("The IdP has not answered for %s for longer than %d s: "
                                 "they must log in again", user.name,
                                 self.idp_outage_grace_seconds)
                return False
