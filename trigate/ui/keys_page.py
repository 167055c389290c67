"""The Keys page: list, filter and search; create; update, block, regenerate, delete.

A new or regenerated key's secret is in the answer to the form that made it, once:
the page is sent `no-store`, and no later page can show it (the store holds only its
hash)."""

from __future__ import annotations

from typing import Any

from quart import Response, request

from trigate.ui.web import UI, blueprint, form_text, limits_from_form, page


@blueprint.get("/keys")
@page
async def keys(ui: UI) -> Response:
    return await _render(ui)


@blueprint.post("/keys")
@page
async def create_key(ui: UI) -> Response:
    form = await request.form
    body = limits_from_form(ui, form)
    if body is None:
        return await _render(ui)
    for name in ("key_alias", "team_id", "user_id", "duration"):
        if value := form_text(form, name):
            body[name] = value
    created = await ui.attempt(ui.api.post("/key/generate", body), "Key created.")
    return await _render(ui, secret=created)


@blueprint.post("/keys/<token>/<action>")
@page
async def key_action(ui: UI, token: str, action: str) -> Response:
    secret = None
    if action == "block":
        await ui.attempt(ui.api.post("/key/block", {"key": token}), "Key blocked.")
    elif action == "unblock":
        await ui.attempt(ui.api.post("/key/unblock", {"key": token}), "Key unblocked.")
    elif action == "delete":
        await ui.attempt(ui.api.post("/key/delete", {"keys": [token]}), "Key deleted.")
    elif action == "regenerate":
        secret = await ui.attempt(
            ui.api.post("/key/regenerate", {"key": token}),
            "Key regenerated: the old one no longer works.",
        )
    elif action == "update":
        form = await request.form
        body = limits_from_form(ui, form)
        if body is not None:
            if alias := form_text(form, "key_alias"):
                body["key_alias"] = alias
            await ui.attempt(ui.api.post("/key/update", {"key": token, **body}), "Key updated.")
    else:
        ui.errors.append(f"No such action: {action}.")
    return await _render(ui, secret=secret)


async def _render(ui: UI, secret: dict[str, Any] | None = None) -> Response:
    query = (request.args.get("q") or "").strip().lower()
    team = request.args.get("team_id") or None
    user = request.args.get("user_id") or None
    listed = await ui.api.get("/key/list", return_full_object="true", team_id=team, user_id=user)
    rows = [row for row in listed["keys"] if _matches(row, query)]
    rows.sort(key=lambda row: row.get("created_at") or "", reverse=True)
    return await ui.render(
        "keys.html", keys=rows, secret=secret, q=query, team_id=team or "", user_id=user or ""
    )


def _matches(row: dict[str, Any], query: str) -> bool:
    if not query:
        return True
    fields = (row.get("key_alias"), row.get("key_name"), row.get("token"), row.get("user_id"),
              row.get("team_id"), " ".join(row.get("models") or []))  # fmt: skip
    return any(query in str(value).lower() for value in fields if value)
