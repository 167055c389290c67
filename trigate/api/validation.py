"""What the gateway itself reads of a request, checked before anything acts on it.

Only the fields the gateway decides on or walks are validated here (the model, the
messages, streaming, the shapes of tools); every other field is the upstream's to judge.
A field that fails is the client's 400, naming the field. How deep fields nest is
checked where the body is decoded (`trigate.api.jsonio`), for every field alike.
"""

from __future__ import annotations

from typing import Any

from trigate.errors import InvalidRequest


def require_model(body: dict[str, Any]) -> str:
    """The model group a request names; every proxied API needs one."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    return model


def require_messages(body: dict[str, Any]) -> None:
    """A non-empty list of message objects, in OpenAI's and Anthropic's APIs alike."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "`messages` is required and must be a non-empty array.", param="messages"
        )
    for message in messages:  # a loop, not `all` of a generator: no function made
        if not isinstance(message, dict):
            raise InvalidRequest("Every entry of `messages` must be an object.", param="messages")


def check_tool_fields(body: dict[str, Any]) -> None:
    """`tools` and `tool_choice` in the shapes OpenAI's API defines, as far as the gateway
    reads them (to count tokens, to translate): a list of objects whose `function`, when
    present, is an object with object `parameters`; a string or an object with a string
    `type`. Anything else every upstream would refuse too."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise InvalidRequest("`tools` must be an array of objects.", param="tools")
        for tool in tools:
            _check_function(tool.get("function"))
    choice = body.get("tool_choice")
    if choice is None or isinstance(choice, str):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type", ""), str):
        raise InvalidRequest(
            "`tool_choice` must be a string or an object with a string `type`.",
            param="tool_choice",
        )
    if "function" in choice and not isinstance(choice["function"], dict):
        raise InvalidRequest("`tool_choice.function` must be an object.", param="tool_choice")


def _check_function(function: Any) -> None:
    if function is None:
        return
    if not isinstance(function, dict):
        raise InvalidRequest("A tool's `function` must be an object.", param="tools")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest(
            "A function's `parameters` must be a JSON schema object.", param="tools"
        )


def check_stream_fields(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
