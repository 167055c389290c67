"""Every path the gateway serves, in one table.

The model routes are served by `ModelAPI` on raw ASGI, in front of Quart: each is a
surface on the one pipeline (`trigate.api.pipeline`), and a new surface is one line
here. Every other route needs Quart's request objects and URL map, and is registered
on the Quart app by the module named below its paths (`register(app, gateway)`);
`tests/test_routes.py` checks that every path Quart serves is named here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from quart_trio import QuartTrio

from trigate.api import (
    budgets,
    cache_admin,
    customers,
    discovery,
    files,
    guardrails,
    health,
    keys,
    mcp_admin,
    metrics,
    model_admin,
    models,
    organizations,
    responses,
    spend,
    teams,
    users,
)
from trigate.api.chat import ChatSurface
from trigate.api.completions import CompletionsSurface
from trigate.api.embeddings import EmbeddingsSurface
from trigate.api.images import ImageEditsSurface, ImagesSurface
from trigate.api.mcp_responses import MCPResponses
from trigate.api.messages import CountTokens, MessagesSurface
from trigate.api.model_api import Route
from trigate.api.moderations import ModerationsSurface
from trigate.api.pipeline import Pipeline
from trigate.api.realtime import RealtimeRoute
from trigate.api.rerank import RerankSurface
from trigate.api.responses import CompactSurface, InputTokens, ResponsesSurface
from trigate.api.speech import SpeechSurface
from trigate.api.transcriptions import TranscriptionsSurface
from trigate.gateway import Gateway
from trigate.ui import register as register_ui


def model_routes(pipeline: Pipeline, gateway: Gateway) -> dict[str, Route]:
    """The model API's routes: POST only. OpenAI's paths are served with and without
    `/v1`, as LiteLLM serves them."""
    chat = pipeline.route(ChatSurface())
    completions = pipeline.route(CompletionsSurface())
    embeddings = pipeline.route(EmbeddingsSurface())
    # MCP tools (`"type": "mcp"`) run by the gateway around the Responses surface.
    responses_ = MCPResponses(pipeline.route(ResponsesSurface()), gateway).route()
    images = pipeline.route(ImagesSurface())
    image_edits = pipeline.form_route(ImageEditsSurface())
    moderations = pipeline.route(ModerationsSurface())
    speech = pipeline.route(SpeechSurface())
    transcriptions = pipeline.upload_route(TranscriptionsSurface("transcriptions"))
    translations = pipeline.upload_route(TranscriptionsSurface("translations"))
    return {
        "/v1/chat/completions": chat,
        "/chat/completions": chat,
        "/v1/completions": completions,
        "/completions": completions,
        "/v1/embeddings": embeddings,
        "/embeddings": embeddings,
        "/v1/responses": responses_,
        "/responses": responses_,
        "/v1/responses/compact": (compact := pipeline.route(CompactSurface())),
        "/responses/compact": compact,
        "/v1/responses/input_tokens": (input_tokens := InputTokens(gateway).route()),
        "/responses/input_tokens": input_tokens,
        "/v1/images/generations": images,
        "/images/generations": images,
        "/v1/images/edits": image_edits,
        "/images/edits": image_edits,
        "/v1/moderations": moderations,
        "/moderations": moderations,
        "/v1/audio/speech": speech,
        "/audio/speech": speech,
        "/v1/audio/transcriptions": transcriptions,
        "/audio/transcriptions": transcriptions,
        "/v1/audio/translations": translations,
        "/audio/translations": translations,
        "/v1/messages": pipeline.route(MessagesSurface()),
        # LiteLLM's rerank, Cohere's shape (and Cohere's own v2 path).
        "/v1/rerank": (rerank := pipeline.route(RerankSurface())),
        "/rerank": rerank,
        "/v2/rerank": rerank,
        "/v1/messages/count_tokens": CountTokens(gateway).route(),
    }


def websocket_routes(gateway: Gateway) -> dict[str, Any]:
    """The WebSocket routes, served in front of Quart as the model routes are: OpenAI's
    Realtime API, with and without `/v1`."""
    realtime = RealtimeRoute(gateway)
    return {"/v1/realtime": realtime, "/realtime": realtime}


# Quart's routes, by the module that registers them.
QUART_ROUTES: tuple[Callable[[QuartTrio, Gateway], None], ...] = (
    # GET /v1/models, /models
    models.register,
    # /model/info, /v1/model/info, /model_group/info, /model/new, /model/update,
    # PATCH /model/{id}/update, /model/delete, /config/reload
    model_admin.register,
    # /health, /health/liveliness, /health/liveness, /health/readiness,
    # /health/readiness/details
    health.register,
    # /key/generate, /key/update, /key/delete, /key/info, /key/list, /key/regenerate,
    # /key/block, /key/unblock
    keys.register,
    # /team/new, /team/update, /team/delete, /team/info, /team/list,
    # /team/member_add, /team/member_delete, /team/member_update
    teams.register,
    # /user/new, /user/update, /user/delete, /user/info, /user/list
    users.register,
    # /spend/logs, /global/spend/report
    spend.register,
    # GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items,
    # POST /v1/responses/{id}/cancel
    responses.register,
    # GET /metrics
    metrics.register,
    # POST and GET /v1/files, GET /v1/files/{id}, GET /v1/files/{id}/content,
    # DELETE /v1/files/{id}; POST and GET /v1/batches, GET /v1/batches/{id},
    # POST /v1/batches/{id}/cancel (each also without /v1)
    files.register,
    # /organization/new, /organization/update, /organization/delete, /organization/list,
    # /organization/info, /organization/member_add, /organization/member_delete
    organizations.register,
    # /customer/new, /customer/info, /customer/update, /customer/delete, /customer/list,
    # /customer/block, /customer/unblock, and LiteLLM's older names of each:
    # /end_user/new, /end_user/info, /end_user/update, /end_user/delete, /end_user/list,
    # /end_user/block, /end_user/unblock
    customers.register,
    # /budget/new, /budget/update, /budget/info, /budget/list, /budget/settings,
    # /budget/delete
    budgets.register,
    # GET /guardrails/list, /v2/guardrails/list
    guardrails.register,
    # GET /cache/ping, POST /cache/delete, POST /cache/flushall
    cache_admin.register,
    # GET, POST and PUT /v1/mcp/server, GET and DELETE /v1/mcp/server/{id}
    # (the MCP endpoint itself, /mcp and /mcp/{server}, is trigate.api.mcp_endpoint,
    # in front of the app)
    mcp_admin.register,
    # The web UI (path parameters as {id}): GET /ui, /ui/static/{id}, /ui/login,
    # /ui/keys, /ui/teams, /ui/users, /ui/usage, /ui/logs, /ui/logs/{id}, /ui/models,
    # /ui/playground; POST /ui/login, /ui/logout, /ui/keys, /ui/keys/{id}/{id},
    # /ui/teams, /ui/teams/{id}/{id}, /ui/users, /ui/users/{id}/update, /ui/models,
    # /ui/models/{id}/{id}, /ui/playground/chat; LiteLLM's SSO paths
    # GET /sso/key/generate, /sso/callback
    register_ui,
    # GET /routes
    functools.partial(
        discovery.register, model_paths=lambda gateway: model_routes(Pipeline(gateway), gateway)
    ),
)
