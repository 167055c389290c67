"""The Teams and Users pages: members and their roles; budgets and their reset.

Every change goes through the admin API's own routes (`/team/*`, `/user/*`), so a
team's admin may manage its team's members here and nothing else, as through the API.
"""

from __future__ import annotations

from quart import Response, request

from trigate.ui.admin_client import ApiRefused
from trigate.ui.web import UI, blueprint, form_text, limits_from_form, page


@blueprint.get("/teams")
@page
async def teams(ui: UI) -> Response:
    return await _teams(ui)


@blueprint.post("/teams")
@page
async def new_team(ui: UI) -> Response:
    form = await request.form
    limits = limits_from_form(ui, form)
    if limits is not None:
        body = {"team_alias": form_text(form, "team_alias"), **limits}
        if team_id := form_text(form, "team_id"):
            body["team_id"] = team_id
        await ui.attempt(ui.api.post("/team/new", body), "Team created.")
    return await _teams(ui)


@blueprint.post("/teams/<team_id>/<action>")
@page
async def team_action(ui: UI, team_id: str, action: str) -> Response:
    form = await request.form
    if action == "update":
        if (limits := limits_from_form(ui, form)) is not None:
            await ui.attempt(
                ui.api.post("/team/update", {"team_id": team_id, **limits}), "Team updated."
            )
    elif action == "member_add":
        member = {"user_id": form_text(form, "user_id"), "role": form_text(form, "role") or "user"}
        await ui.attempt(ui.api.post("/team/member_add", {"team_id": team_id, "member": member}),
                         "Member added.")  # fmt: skip
    elif action == "member_update":
        body = {"team_id": team_id, "user_id": form_text(form, "user_id"),
                "role": form_text(form, "role")}  # fmt: skip
        await ui.attempt(ui.api.post("/team/member_update", body), "Member updated.")
    elif action == "member_delete":
        body = {"team_id": team_id, "user_id": form_text(form, "user_id")}
        await ui.attempt(ui.api.post("/team/member_delete", body), "Member removed.")
    elif action == "delete":
        await ui.attempt(ui.api.post("/team/delete", {"team_ids": [team_id]}), "Team deleted.")
    else:
        ui.errors.append(f"No such action: {action}.")
    return await _teams(ui)


async def _teams(ui: UI) -> Response:
    rows = await ui.api.get("/team/list")
    return await ui.render("teams.html", teams=rows)


@blueprint.get("/users")
@page
async def users(ui: UI) -> Response:
    return await _users(ui)


@blueprint.post("/users")
@page
async def new_user(ui: UI) -> Response:
    form = await request.form
    limits = limits_from_form(ui, form)
    if limits is not None:
        body = {"user_id": form_text(form, "user_id"), "user_email": form_text(form, "user_email"),
                "user_role": form_text(form, "user_role"), **limits}  # fmt: skip
        given = {k: v for k, v in body.items() if v is not None}
        await ui.attempt(ui.api.post("/user/new", given), "User created.")
    return await _users(ui)


@blueprint.post("/users/<user_id>/update")
@page
async def update_user(ui: UI, user_id: str) -> Response:
    form = await request.form
    limits = limits_from_form(ui, form)
    if limits is not None:
        body = {"user_id": user_id, **limits}
        if role := form_text(form, "user_role"):
            body["user_role"] = role
        await ui.attempt(ui.api.post("/user/update", body), "User updated.")
    return await _users(ui)


async def _users(ui: UI) -> Response:
    """Every user for a reader of all (`/user/list`); one's own otherwise."""
    try:
        listed = await ui.api.get("/user/list")
        rows = listed["users"]
    except ApiRefused as refused:
        if refused.status != 403 or ui.session.user_id is None:
            raise
        rows = [(await ui.api.get("/user/info", user_id=ui.session.user_id))["user_info"]]
    return await ui.render("users.html", users=rows, roles=ROLE_NAMES)


ROLE_NAMES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")
