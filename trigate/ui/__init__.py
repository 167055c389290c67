"""The admin web UI at `/ui`: server-rendered pages (Jinja2), htmx and Chart.js vendored
under `static/`, served by the gateway itself with nothing more to install.

The UI is a client of the admin API, never a side door: each page calls the same
routes a script calls, in process, with the signed-in user's session as its bearer
credential (`admin_client`), so the API's role checks (`trigate.roles`) decide what
the UI may show and do. Sign-in is LiteLLM's: `UI_USERNAME`/`UI_PASSWORD` for the
admin, and OpenID Connect SSO for everyone else (`signin`, `sso`).

This package never imports `trigate.api` (an import-linter contract): it reaches the
API only over ASGI, as any client does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources

from quart import Response, redirect
from quart_trio import QuartTrio

from trigate.config import ConfigError
from trigate.gateway import Gateway
from trigate.ui import keys_page, models_page, teams_page, usage_page  # noqa: F401  (routes)
from trigate.ui.sessions import SessionEpochs, Sessions
from trigate.ui.signin import (
    Passwords,
    SignInThrottle,
    email_domains,
    sso_callback,
    sso_start,
)
from trigate.ui.sso import CALLBACK_PATH, OidcClient, Provider
from trigate.ui.web import blueprint

_TYPES = {".js": "text/javascript", ".css": "text/css", ".md": "text/plain", "": "text/plain"}


def register(app: QuartTrio, gateway: Gateway, environ: Mapping[str, str] | None = None) -> None:
    """Serve the UI on `app`: `/ui/*`, and LiteLLM's SSO paths `/sso/key/generate` and
    `/sso/callback`. The session verifier joins the gateway's authenticator, first, so
    a session token is read as one before any JWT verifier sees it."""
    env = os.environ if environ is None else environ
    admin_only = _admin_only(gateway)
    passwords = Passwords.from_environ(env, gateway.master_key)
    sessions = Sessions(
        gateway.master_key,
        admin_only=admin_only,
        admin_login=(passwords.username, passwords.password),
        epochs=SessionEpochs(lambda: gateway.store, gateway.changes),
    )
    gateway.token_verifiers.insert(0, sessions)
    provider = Provider.from_environ(env)
    sso = OidcClient(provider) if provider is not None else None
    app.extensions["trigate_ui_sessions"] = sessions
    app.extensions["trigate_ui_passwords"] = passwords
    app.extensions["trigate_ui_sso"] = sso
    app.extensions["trigate_ui_throttle"] = SignInThrottle()
    app.extensions["trigate_ui_admin_only"] = admin_only
    app.extensions["trigate_ui_email_domains"] = email_domains(env)
    app.extensions["trigate_ui_new_user"] = gateway.new_user_defaults
    app.register_blueprint(blueprint)
    static = _static_files()

    @app.get("/ui")
    async def home() -> Response:
        return redirect("/ui/keys")  # type: ignore[return-value]

    @app.get("/ui/static/<name>")
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            return Response("Not found", status=404, content_type="text/plain")
        body, content_type = found
        response = Response(body, content_type=content_type)
        # The vendored files' names carry their versions; ours change with releases.
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    app.add_url_rule("/sso/key/generate", "ui_sso_start", sso_start, methods=["GET"])
    app.add_url_rule(CALLBACK_PATH, "ui_sso_callback", sso_callback, methods=["GET"])


def _admin_only(gateway: Gateway) -> bool:
    """LiteLLM's `general_settings.ui_access_mode`: `admin_only` lets only admins and
    admin viewers use the UI. Its other form (a restricted SSO group) is refused rather
    than ignored: ignoring it would open the UI to everyone."""
    mode = (gateway.config.general_settings.model_extra or {}).get("ui_access_mode")
    if mode in (None, "all", "admin_only"):
        return mode == "admin_only"
    raise ConfigError(
        f"general_settings.ui_access_mode: {mode!r} is not served; use `admin_only` or `all`"
    )


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The static files, read once: a few hundred kilobytes, served from memory."""
    folder = resources.files("trigate.ui") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        files[entry.name] = (entry.read_bytes(), _TYPES.get(suffix, "application/octet-stream"))
    return files
