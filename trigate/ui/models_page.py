"""The Models page and the Playground.

Models: the deployments (`/model/info`) beside the router's live view of each
(`/health`: healthy or cooling down, requests in flight, smoothed latency); an admin
adds, updates and removes deployments through the model API (`/model/new`,
`/model/update`, `/model/delete`).

Playground: chat with a model the signed-in user may use (`/v1/models` lists them),
streamed through the gateway's own `/v1/chat/completions` as the user, so the chat is
admitted, limited and billed as any of the user's requests is.
"""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response, request

from trigate.ui.web import UI, blueprint, form_text, page

# What a chat from the playground may set; everything else is the gateway's default.
CHAT_FIELDS = ("model", "messages", "temperature", "max_tokens")


@blueprint.get("/models")
@page
async def models(ui: UI) -> Response:
    return await _models(ui)


@blueprint.post("/models")
@page
async def new_model(ui: UI) -> Response:
    form = await request.form
    entry = _entry(ui, form)
    if entry is not None:
        await ui.attempt(ui.api.post("/model/new", entry), "Model added.")
    return await _models(ui)


@blueprint.post("/models/<model_id>/<action>")
@page
async def model_action(ui: UI, model_id: str, action: str) -> Response:
    if action == "delete":
        await ui.attempt(ui.api.post("/model/delete", {"id": model_id}), "Model removed.")
    elif action == "update":
        entry = _entry(ui, await request.form)
        if entry is not None:
            entry["model_info"] = {**entry.get("model_info", {}), "id": model_id}
            await ui.attempt(ui.api.post("/model/update", entry), "Model updated.")
    else:
        ui.errors.append(f"No such action: {action}.")
    return await _models(ui)


def _entry(ui: UI, form: Any) -> dict[str, Any] | None:
    """A model-list entry from the form: a name, and `litellm_params` as JSON."""
    name = form_text(form, "model_name")
    try:
        params = orjson.loads(form_text(form, "litellm_params") or "{}")
    except orjson.JSONDecodeError:
        params = None
    if not isinstance(params, dict):
        ui.errors.append(
            'litellm_params must be a JSON object, such as {"model": "openai/gpt-4o"}.'
        )
        return None
    return {"model_name": name, "litellm_params": params}


async def _models(ui: UI) -> Response:
    info = await ui.api.get("/model/info")
    health = await ui.api.get("/health")
    live = {
        entry["deployment"]: entry
        for entry in health["healthy_endpoints"] + health["unhealthy_endpoints"]
    }
    rows = [{"entry": entry, "live": live.get(entry["model_info"]["id"])} for entry in info["data"]]
    return await ui.render("models.html", models=rows)


@blueprint.get("/playground")
@page
async def playground(ui: UI) -> Response:
    listed = await ui.api.get("/v1/models")
    names = sorted(model["id"] for model in listed["data"])
    return await ui.render("playground.html", models=names)


@blueprint.post("/playground/chat")
@page
async def playground_chat(ui: UI) -> Response:
    """The chat, relayed as it streams from the gateway's own chat route."""
    try:
        sent = orjson.loads(await request.get_data())
    except orjson.JSONDecodeError:
        sent = None
    if not isinstance(sent, dict):  # the page sends an object; anything else is not its
        return _refused_chat("The playground sends a chat request as a JSON object.")
    body = {name: sent[name] for name in CHAT_FIELDS if name in sent}
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    response = Response(
        ui.api.stream("/v1/chat/completions", body), content_type="text/event-stream"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused_chat(message: str) -> Response:
    """A chat the playground's route refuses before it reaches the chat route, in the
    chat route's own error shape (the page shows the message it reads there)."""
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return Response(orjson.dumps(body), status=400, content_type="application/json")
