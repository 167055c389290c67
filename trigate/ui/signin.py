"""Signing in and out: the password admin, and OpenID Connect SSO.

The password sign-in is LiteLLM's: `UI_USERNAME` (default `admin`) and `UI_PASSWORD`
(default: the master key); it acts as the master key does. An SSO user signs in as
its own user, made on its first sign-in with the default role (or the role its
token's role claim names), and joined to the teams its teams claim names that exist;
there is no cap on how many. Who may sign in: an email in LiteLLM's
`ALLOWED_EMAIL_DOMAINS` when set, and an admin or admin viewer only under
`ui_access_mode: admin_only`. A new user gets LiteLLM's
`litellm_settings.default_internal_user_params` (trigate/new_users.py), and without them
no model outside a team (LiteLLM's `no-default-models`) until an admin grants some: any
account of a public provider (Google's) may sign in, and must not get the gateway's
models with it.
Both leave a session cookie (`trigate.ui.sessions`): HttpOnly, SameSite=Lax, Secure
over HTTPS, expiring with the session.

The sign-in form is protected from cross-site posts by a double-submit token (a
cookie and a hidden field that must match), since no session exists yet.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
from quart import Response, current_app, redirect, render_template, request

from trigate.roles import Role
from trigate.ui.admin_client import AdminClient, ApiRefused
from trigate.ui.sessions import COOKIE, Session, check_csrf
from trigate.ui.sso import CALLBACK_PATH, Attempt, Identity, OidcClient, SsoFailed
from trigate.ui.web import ADMIN_VIEWERS, blueprint, page_response, sessions

LOGIN_COOKIE = "trigate_ui_login"
SSO_COOKIE = "trigate_ui_sso"
# The redirect to the provider and back must happen within this.
SSO_SECONDS = 600
# A user made by SSO: LiteLLM's most restricted UI role unless a claim names another.
DEFAULT_SSO_ROLE = Role.INTERNAL_USER_VIEWER.value


@dataclass(frozen=True, slots=True)
class Passwords:
    """LiteLLM's UI login: `UI_USERNAME` (default `admin`), `UI_PASSWORD` (default the
    master key)."""

    username: str
    password: str

    @classmethod
    def from_environ(cls, env: Mapping[str, str], master_key: str) -> Passwords:
        return cls(env.get("UI_USERNAME") or "admin", env.get("UI_PASSWORD") or master_key)

    def check(self, username: str, password: str) -> bool:
        # Both compared, in constant time, whatever the first says.
        name_ok = hmac.compare_digest(username.encode(), self.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return name_ok and password_ok


class SignInThrottle:
    """Guessing the password is slowed: after `MAX_FAILURES` failed sign-ins from one
    address within `WINDOW_SECONDS`, that address's next ones are refused (429) until
    the window has passed. Per worker process: a fleet of N workers allows N times as
    many guesses, still far too few to matter against a master key."""

    MAX_FAILURES = 10
    WINDOW_SECONDS = 300.0
    # Addresses remembered at most; the oldest are forgotten first.
    MAX_ADDRESSES = 10_000

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def refused(self, address: str) -> bool:
        return len(self._recent(address)) >= self.MAX_FAILURES

    def failed(self, address: str) -> None:
        if len(self._failures) >= self.MAX_ADDRESSES and address not in self._failures:
            self._failures.pop(next(iter(self._failures)))
        self._failures[address] = [*self._recent(address), self._clock()]

    def _recent(self, address: str) -> list[float]:
        since = self._clock() - self.WINDOW_SECONDS
        return [moment for moment in self._failures.get(address, []) if moment > since]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of the UI only, never another site."""
    if not target or not target.startswith("/ui") or target.startswith("//"):
        return "/ui/keys"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/ui/keys"


def served_over_https() -> bool:
    """Cookies are `Secure` over HTTPS: this request's, or `PROXY_BASE_URL`'s when TLS
    ends at a proxy in front."""
    return request.scheme == "https" or os.environ.get("PROXY_BASE_URL", "").startswith("https:")


def set_session_cookie(response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        session.token,
        max_age=sessions().seconds,
        httponly=True,
        samesite="Lax",
        secure=served_over_https(),
        path="/",
    )


async def _login_page(error: str | None = None, status: int = 200) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    body = await render_template(
        "ui/login.html",
        error=error,
        login_csrf=token,
        next_path=safe_next(request.args.get("next")),
        sso=current_app.extensions["trigate_ui_sso"] is not None,
    )
    response = page_response(body, status)
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=served_over_https(),
        path="/ui/login",
    )  # fmt: skip
    return response


@blueprint.get("/login")
async def login_form() -> Response:
    return await _login_page()


@blueprint.post("/login")
async def login() -> Response:
    form = await request.form
    expected = request.cookies.get(LOGIN_COOKIE)
    sent = form.get("csrf_token")
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        return await _login_page("The sign-in form expired; try again.", 403)
    passwords: Passwords = current_app.extensions["trigate_ui_passwords"]
    throttle: SignInThrottle = current_app.extensions["trigate_ui_throttle"]
    address = request.remote_addr or "unknown"
    if throttle.refused(address):
        return await _login_page("Too many failed sign-ins: try again in a few minutes.", 429)
    if not passwords.check(form.get("username", ""), form.get("password", "")):
        throttle.failed(address)
        return await _login_page("Wrong username or password.", 401)
    response: Response = redirect(safe_next(form.get("next")), 303)  # type: ignore[assignment]
    set_session_cookie(response, await sessions().start(None))
    return response


@blueprint.post("/logout")
async def logout() -> Response:
    session = sessions().read(request.cookies.get(COOKIE))
    if session is not None:
        form = await request.form
        check_csrf(session, form.get("csrf_token") or request.headers.get("X-CSRF-Token"))
        # Every session of its user ends, in every browser, not only this cookie.
        await sessions().end(session)
    response: Response = redirect("/ui/login", 303)  # type: ignore[assignment]
    response.delete_cookie(COOKIE, path="/")
    return response


# --- SSO -------------------------------------------------------------------------------


def _redirect_uri() -> str:
    """LiteLLM's: `PROXY_BASE_URL` + `/sso/callback`, or this request's own host."""
    base = os.environ.get("PROXY_BASE_URL") or request.host_url
    return base.rstrip("/") + CALLBACK_PATH


def _oidc() -> OidcClient:
    client: OidcClient | None = current_app.extensions["trigate_ui_sso"]
    if client is None:
        raise SsoFailed("SSO is not configured: set GENERIC_CLIENT_ID and its companions.")
    return client


async def sso_start() -> Response:
    """`/sso/key/generate` (LiteLLM's path): off to the provider."""
    attempt = Attempt.new(safe_next(request.args.get("next")))
    url = await _oidc().authorization_url(attempt, _redirect_uri())
    response: Response = redirect(url, 302)  # type: ignore[assignment]
    signed = sessions().sign_value(orjson.dumps(_attempt_dict(attempt)), SSO_SECONDS)
    response.set_cookie(
        SSO_COOKIE, signed, max_age=SSO_SECONDS, httponly=True, samesite="Lax",
        secure=served_over_https(), path=CALLBACK_PATH,
    )  # fmt: skip
    return response


def _attempt_dict(attempt: Attempt) -> dict[str, str]:
    return {
        "state": attempt.state,
        "nonce": attempt.nonce,
        "verifier": attempt.verifier,
        "next_path": attempt.next_path,
    }


async def sso_callback() -> Response:
    """`/sso/callback`: check the state, exchange the code, sign the user in."""
    raw = sessions().unsign_value(request.cookies.get(SSO_COOKIE))
    if raw is None:
        return await _login_page("The sign-in took too long or came from elsewhere.", 400)
    fields = orjson.loads(raw)
    attempt = Attempt(fields["state"], fields["nonce"], fields["verifier"], fields["next_path"])
    state = request.args.get("state", "")
    if not hmac.compare_digest(state.encode(), attempt.state.encode()):
        return await _login_page("The sign-in's state did not match; try again.", 400)
    code = request.args.get("code")
    if not code:
        error = request.args.get("error_description") or request.args.get("error") or "no code"
        return await _login_page(f"The identity provider refused: {error}", 400)
    try:
        identity = await _oidc().identity(attempt, code, _redirect_uri())
        check_email_domain(identity, current_app.extensions["trigate_ui_email_domains"])
        await provision(identity)
    except (SsoFailed, ApiRefused) as failure:
        return await _login_page(f"Single sign-on failed: {failure}", 401)
    response: Response = redirect(attempt.next_path, 303)  # type: ignore[assignment]
    response.delete_cookie(SSO_COOKIE, path=CALLBACK_PATH)
    set_session_cookie(response, await sessions().start(identity.user_id))
    return response


def email_domains(env: Mapping[str, str]) -> frozenset[str]:
    """LiteLLM's `ALLOWED_EMAIL_DOMAINS` (`example.com,example.org`); empty: any."""
    listed = env.get("ALLOWED_EMAIL_DOMAINS", "").split(",")
    return frozenset(d.strip().lstrip("@").lower() for d in listed if d.strip())


def check_email_domain(identity: Identity, domains: frozenset[str]) -> None:
    """Refuse an SSO sign-in whose email is outside `ALLOWED_EMAIL_DOMAINS` (or that
    has no email) before anything is made for it."""
    if not domains:
        return
    _, at, domain = (identity.email or "").rpartition("@")
    if not at or domain.lower() not in domains:
        raise SsoFailed("this account's email is not in a domain allowed to sign in")


def _admitted(role: str | None) -> None:
    """`ui_access_mode: admin_only`: only an admin or admin viewer signs in (and is
    made), whatever its session could otherwise reach."""
    if current_app.extensions["trigate_ui_admin_only"] and role not in ADMIN_VIEWERS:
        raise SsoFailed("this UI is open to admins only (ui_access_mode)")


async def provision(identity: Identity) -> None:
    """Make the user on its first sign-in, and bring its role and teams in line with its
    claims, through the admin API as the gateway's own admin (the user, not yet signed
    in, could not)."""
    system = AdminClient(current_app.asgi_app, (await sessions().start(None)).token)
    role = identity.role if identity.role in _ROLE_NAMES else None
    try:
        info = await system.get("/user/info", user_id=identity.user_id)
    except ApiRefused as refused:
        if refused.status != 404:
            raise
        defaults: dict[str, Any] = current_app.extensions["trigate_ui_new_user"]
        new_role = role or defaults.get("user_role") or DEFAULT_SSO_ROLE
        _admitted(new_role)
        await system.post(
            "/user/new",
            {
                **defaults,
                "user_id": identity.user_id,
                "user_email": identity.email,
                "user_role": new_role,
                # Its sessions are its credential; a key no one is shown is not made.
                "auto_create_key": False,
            },
        )
        info = {"teams": []}
    else:
        stored_role = info.get("user_info", {}).get("user_role")
        _admitted(role or stored_role)
        if role is not None and role != stored_role:
            await system.post("/user/update", {"user_id": identity.user_id, "user_role": role})
    joined = {team["team_id"] for team in info.get("teams", [])}
    for team_id in identity.teams:
        if team_id in joined:
            continue
        try:
            await system.post(
                "/team/member_add",
                {"team_id": team_id, "member": {"user_id": identity.user_id, "role": "user"}},
            )
        except ApiRefused as refused:
            if refused.status != 404:  # a team the claim names that does not exist here
                raise


_ROLE_NAMES = frozenset(role.value for role in Role)
