"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API.

The anthropic SDK and Claude Code speak this format. A request is translated to
a chat completion and takes the one pipeline (auth, limits, routing,
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

from trigate.api.anthropic_format import AnthropicFrames, to_chat_request, to_message
from trigate.api.envelopes import ANTHROPIC
from trigate.api.jsonio import parse_json_object
from trigate.api.model_api import Reply, Route
from trigate.api.pipeline import counted_model
from trigate.api.surface import Operation, TranslatedExchange
from trigate.api.validation import (
    check_stream_fields,
    check_tool_fields,
    require_messages,
    require_model,
)
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.providers import NativeMessages
from trigate.relay import FrameEncoder
from trigate.router.deployments import Deployment
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


class MessagesSurface:
    """`POST /v1/messages`: errors in Anthropic's envelope, with the gateway's status."""

    envelope = ANTHROPIC

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> MessagesExchange:
        model = validate(body)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise InvalidRequest(
                "`max_tokens` is required and must be an integer.", param="max_tokens"
            )
        chat, untranslatable = _chat_request(body)
        return MessagesExchange(model, body, chat, native_messages(headers), untranslatable)


class MessagesExchange(TranslatedExchange):
    """A Messages request: sent as it came to a native deployment, else as a chat."""

    def __init__(
        self,
        model: str,
        original: dict[str, Any],
        chat: dict[str, Any],
        native: Operation[NativeMessages],
        untranslatable: InvalidRequest | None,
    ) -> None:
        super().__init__(model, chat, native, untranslatable)
        self._original = original

    def native_body(self, deployment: Deployment) -> dict[str, Any]:
        return self._original

    @property
    def keyed_request(self) -> dict[str, Any] | None:
        """The client's own request, for the response cache's key while a deployment that
        speaks Messages may be sent it: the translation lacks some of it (`top_k`, an
        image by file, a tool result's `is_error`, server tools' blocks). None once a hook
        rewrote the translation (`translate_only`): every deployment is sent that alone."""
        return self._original if self._native_allowed else None

    def render(self, completion: dict[str, Any]) -> bytes:
        return orjson.dumps(to_message(completion, self.requested))

    def frames(self, native: bool) -> FrameEncoder:
        return AnthropicFrames(self.requested)


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


class CountTokens:
    """`POST /v1/messages/count_tokens`: an estimate by the gateway's tiktoken encodings.
    Claude models use a tokenizer of their own, which Anthropic does not publish, so
    their real count differs. It runs the pipeline's first stages (authenticate, decode,
    resolve, model access) and answers without an upstream."""

    envelope = ANTHROPIC

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def route(self) -> Route:
        return Route(self.serve, self.envelope)

    async def serve(
        self, caller: Caller, headers: Mapping[str, str], raw: bytes | bytearray
    ) -> Reply:
        body = parse_json_object(raw)
        upstream_model = counted_model(self._gateway, caller, validate(body))
        chat = to_chat_request(body)
        check_tool_fields(chat)
        meter = UsageMeter(self._gateway.counter, upstream_model, chat)
        return Reply(orjson.dumps({"input_tokens": await meter.prompt_tokens()}))


def validate(body: dict[str, Any]) -> str:
    """What the gateway itself needs of a request (a count request has no `max_tokens`);
    the rest is the upstream's to judge."""
    model = require_model(body)
    require_messages(body)
    check_stream_fields(body)
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
