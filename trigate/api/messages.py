"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API.

The anthropic SDK and Claude Code speak this format. A request is translated to
a chat completion and takes the same path as one (auth, limits, routing,
spend); only its answer, its stream events and its errors are rendered in
Anthropic's shapes, so the SDK raises its own exception classes. A deployment
that speaks the Messages API itself (`anthropic/`) is sent the client's body as
it came and its answer or events are relayed as they came, so nothing Claude
adds (thinking signatures, server tools, new fields) is lost on the way. Such a
request is checked only for what the gateway itself reads (`model`, `messages` as
a list, `stream`, `max_tokens` for budgets): a body that only Anthropic can read
(a beta's new roles or blocks) fails its translation for the other deployments
alone. The client's `anthropic-version` and `anthropic-beta` go with its body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from trigate.api.anthropic_format import AnthropicFrames, error_body, to_chat_request, to_message
from trigate.api.calls import (
    CHAT,
    Operation,
    ProxiedCall,
    Surface,
    check_access,
    check_nesting,
    check_stream_fields,
    check_tool_fields,
    require_messages,
    require_model,
)
from trigate.api.context import current_request
from trigate.api.jsonio import parse_json_object
from trigate.api.model_api import Incoming, Reply, Route
from trigate.errors import GatewayError, InvalidRequest
from trigate.gateway import Gateway
from trigate.providers import NativeMessages
from trigate.usage import UsageMeter

# The fields of a body that could not be translated that the gateway still reads: to
# count the prompt, to reserve a budget, to stream.
ACCOUNTED_FIELDS = ("model", "messages", "max_tokens", "stream")


def native_messages(headers: Mapping[str, str]) -> Operation[NativeMessages]:
    """Served by a provider that speaks the Messages API itself (`anthropic/`), with the
    client's `anthropic-*` headers, which say which version and betas its body is in."""
    anthropic = {name: value for name, value in headers.items() if name.startswith("anthropic-")}
    return Operation(
        "messages",
        lambda abilities: abilities.messages,
        lambda provider, body: provider.messages(body, anthropic),
        lambda provider, body: provider.open_messages_stream(body, anthropic),
    )


def routes(gateway: Gateway) -> dict[str, Route]:
    """Both answer errors in Anthropic's envelope, with the gateway's status and headers."""

    async def messages(incoming: Incoming) -> Reply:
        return await _messages(gateway, incoming)

    async def count_tokens(incoming: Incoming) -> Reply:
        return await _count_tokens(gateway, incoming)

    return {
        "/v1/messages": Route(messages, _anthropic_error),
        "/v1/messages/count_tokens": Route(count_tokens, _anthropic_error),
    }


def _anthropic_error(error: GatewayError) -> bytes:
    return orjson.dumps(error_body(error))


async def _messages(gateway: Gateway, incoming: Incoming) -> Reply:
    caller = await gateway.auth.authenticate(incoming.headers)
    body = parse_json_object(incoming.take_body())
    model = validate(body)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise InvalidRequest("`max_tokens` is required and must be an integer.", param="max_tokens")
    chat, untranslatable = _chat_request(body)
    surface = Surface(
        answer=lambda completion: orjson.dumps(to_message(completion, model)),
        frames=lambda native: AnthropicFrames(model),
        body=lambda deployment: body,
        native=native_messages(incoming.headers),
        untranslatable=untranslatable,
    )
    call = ProxiedCall(gateway, current_request.get(), caller, model, chat, None, CHAT, surface)
    await call.admit()
    return await (call.stream() if chat.get("stream") else call.complete())


def _chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], InvalidRequest | None]:
    """The request as a chat completion, and None; or, when it cannot be one, the fields
    the gateway accounts by and why it cannot: an `anthropic/` deployment may still take
    it as it is, so that is no 400 until a deployment that needs the translation is
    chosen."""
    try:
        chat = to_chat_request(body)
        check_tool_fields(chat)
    except InvalidRequest as failure:
        return {key: body[key] for key in ACCOUNTED_FIELDS if key in body}, failure
    return chat, None


async def _count_tokens(gateway: Gateway, incoming: Incoming) -> Reply:
    """An estimate by the gateway's tiktoken encodings: Claude models use a tokenizer of
    their own, which Anthropic does not publish, so their real count differs."""
    caller = await gateway.auth.authenticate(incoming.headers)
    body = parse_json_object(incoming.take_body())
    model = validate(body)
    group = caller.model_group(model)
    if not caller.is_master:
        check_access(caller, model, group)
    upstream_model = gateway.groups.deployments(group)[0].upstream_model
    chat = to_chat_request(body)
    check_tool_fields(chat)
    meter = UsageMeter(gateway.counter, upstream_model, chat)
    return Reply(orjson.dumps({"input_tokens": await meter.prompt_tokens()}))


def validate(body: dict[str, Any]) -> str:
    """What the gateway itself needs of a request (a count request has no `max_tokens`);
    the rest is the upstream's to judge."""
    model = require_model(body)
    require_messages(body)
    check_stream_fields(body)
    check_nesting(body)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array of objects.", param="tools")
    choice = body.get("tool_choice")
    if choice is not None and not (
        isinstance(choice, dict) and isinstance(choice.get("type"), str)
    ):
        raise InvalidRequest(
            "`tool_choice` must be an object with a string `type`.", param="tool_choice"
        )
    return model
