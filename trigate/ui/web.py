"""What every UI page shares: the blueprint, the signed-in check, CSRF, rendering.

A page handler is wrapped by `page`: without a valid session it redirects to the
sign-in page; a POST must carry the session's CSRF token; the handler gets a `UI`
with the session and an `AdminClient` acting as the signed-in user. An admin call the
API refuses (`ApiRefused`) is shown on the page with the API's own message.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec
from urllib.parse import quote

import orjson
from quart import Blueprint, Response, current_app, redirect, render_template, request

from trigate.ui.admin_client import AdminClient, ApiRefused
from trigate.ui.sessions import COOKIE, Session, Sessions, check_csrf

P = ParamSpec("P")

blueprint = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

# The navigation, in order: (path, title).
PAGES = (
    ("/ui/keys", "Keys"),
    ("/ui/teams", "Teams"),
    ("/ui/users", "Users"),
    ("/ui/usage", "Usage"),
    ("/ui/logs", "Logs"),
    ("/ui/models", "Models"),
    ("/ui/playground", "Playground"),
)
# Roles that may change nothing through the admin API; their pages hide the forms.
READ_ONLY_ROLES = frozenset({"proxy_admin_viewer", "internal_user_viewer"})
ADMIN_ROLES = frozenset({"proxy_admin"})
# Who may use the UI under LiteLLM's `ui_access_mode: admin_only`.
ADMIN_VIEWERS = frozenset({"proxy_admin", "proxy_admin_viewer"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


@dataclass(slots=True)
class UI:
    """One page request: who is signed in, and the admin API as them."""

    session: Session
    api: AdminClient
    role: str | None = None
    notices: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES

    @property
    def may_write(self) -> bool:
        return self.role not in READ_ONLY_ROLES

    async def render(self, template: str, status: int = 200, **context: Any) -> Response:
        body = await render_template(
            f"ui/{template}",
            ui=self,
            pages=PAGES,
            path=request.path,
            csrf=self.session.csrf,
            **context,
        )
        return page_response(body, status)

    async def attempt(self, action: Awaitable[Any], done: str) -> Any:
        """Run an admin call for a form: its success as a notice, its refusal as an
        error on the page (with the API's message)."""
        try:
            result = await action
        except ApiRefused as refused:
            self.errors.append(refused.message)
            return None
        self.notices.append(done)
        return result


def page_response(body: str, status: int = 200) -> Response:
    """A page never cached (it may hold a new key's secret once) nor framed."""
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self' https: http:"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def sessions() -> Sessions:
    found: Sessions = current_app.extensions["trigate_ui_sessions"]
    return found


def page(
    handler: Callable[Concatenate[UI, P], Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """A signed-in page: see the module's docstring."""

    @functools.wraps(handler)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> Response:
        session = sessions().read(request.cookies.get(COOKIE))
        if session is None or not await sessions().is_current(session):
            return _to_sign_in()
        if request.method != "GET":
            sent = request.headers.get("X-CSRF-Token")
            if request.mimetype in FORM_TYPES:
                sent = (await request.form).get("csrf_token") or sent
            check_csrf(session, sent)
        ui = UI(session, AdminClient(current_app.asgi_app, session.token))
        try:
            ui.role = await _role(ui)
        except ApiRefused as gone:
            if gone.status == 403:  # `ui_access_mode: admin_only` refuses its session
                return await ui.render("refused.html", 403, refused=gone)
            if gone.status != 401:
                raise
            return _to_sign_in()  # its user was deleted since it signed in
        if current_app.extensions["trigate_ui_admin_only"] and ui.role not in ADMIN_VIEWERS:
            closed = ApiRefused(403, "This UI is open to admins only (ui_access_mode).")
            return await ui.render("refused.html", 403, refused=closed)
        try:
            return await handler(ui, *args, **kwargs)
        except ApiRefused as refused:
            return await ui.render("refused.html", refused.status, refused=refused)

    return wrapped


def _to_sign_in() -> Response:
    """Off to the sign-in page, back here afterwards; an unusable cookie is dropped."""
    target = request.full_path if request.method == "GET" else "/ui"
    response: Response = redirect(f"/ui/login?next={quote(target.rstrip('?'))}")  # type: ignore[assignment]
    response.delete_cookie(COOKIE, path="/")
    return response


async def _role(ui: UI) -> str | None:
    """The signed-in user's role, as the admin API reports it (`/user/info`)."""
    if ui.session.is_admin_login:
        return "proxy_admin"
    info = await ui.api.get("/user/info", user_id=ui.session.user_id)
    role = info.get("user_info", {}).get("user_role")
    return role if isinstance(role, str) else None


# The limit fields the create and update forms send, as the admin API names them.
LIMIT_FIELDS = ("max_budget", "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests")


def limits_from_form(ui: UI, form: Any) -> dict[str, Any] | None:
    """The models, limits and metadata a key's, team's or user's form sets; None (with
    the error shown) for metadata that is not a JSON object. Numbers go as typed: the
    API checks them and says what is wrong."""
    body: dict[str, Any] = {}
    if (models := form_list(form, "models")) is not None:
        body["models"] = models
    for name in LIMIT_FIELDS:
        if (value := form_text(form, name)) is not None:
            body[name] = value
    if (metadata := form_text(form, "metadata")) is not None:
        try:
            parsed = orjson.loads(metadata)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            ui.errors.append('Metadata must be a JSON object, such as {"env": "prod"}.')
            return None
        body["metadata"] = parsed
    return body


def form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def form_float(form: Any, name: str) -> float | None:
    value = form_text(form, name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def form_int(form: Any, name: str) -> int | None:
    value = form_text(form, name)
    return int(value) if value is not None and value.isdigit() else None


def form_list(form: Any, name: str) -> list[str] | None:
    """A comma-separated field as a list; None when empty."""
    value = form_text(form, name)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]
