"""Hooks the tests load by dotted path (`hook_examples.<name>`), as a user's config names
its own: `litellm_settings.callbacks: ["hook_examples.refuse_secrets"]`."""

from __future__ import annotations

from typing import Any

import trio

from trigate.hooks import END_STREAM, BaseHook, HookedRequest, Refused
from trigate.usage import Usage


class RefuseSecrets(BaseHook):
    """A guardrail: a request whose last message says "secret" is blocked."""

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        messages = request.body.get("messages") or []
        if messages and "secret" in str(messages[-1].get("content")):
            raise Refused("Blocked by the secrets guardrail.", code="guardrail_blocked")
        return None


class CannedAnswer(BaseHook):
    """A cache that always hits."""

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        return {
            "id": "chatcmpl-cached",
            "object": "chat.completion",
            "created": 1,
            "model": request.model_group,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "From the cache."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
        }


class Shout(BaseHook):
    """Rewrites every streamed chunk's text in capitals."""

    async def on_chunk(self, request: HookedRequest, chunk: Any) -> Any:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                delta["content"] = delta["content"].upper()
        return chunk


class StopAtStop(BaseHook):
    """Ends the stream at the first chunk that says STOP."""

    async def on_chunk(self, request: HookedRequest, chunk: Any) -> Any:
        for choice in chunk.get("choices") or ():
            if "STOP" in str((choice.get("delta") or {}).get("content")):
                return END_STREAM
        return chunk


class BrokenOnChunk(BaseHook):
    """A hook with a bug: it fails on the second chunk."""

    def __init__(self) -> None:
        self.seen = 0

    async def on_chunk(self, request: HookedRequest, chunk: Any) -> Any:
        self.seen += 1
        if self.seen == 2:
            raise RuntimeError("a bug in the hook")
        return chunk


class RefuseLongAnswers(BaseHook):
    """Refuses an answer of more than 1 completion token; sees the final usage."""

    def __init__(self) -> None:
        self.usages: list[Usage] = []

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> None:
        self.usages.append(usage)
        if usage.completion_tokens > 1:
            raise Refused("The answer is too long for this key.", status=403)


class LiteLLMStyle:
    """A LiteLLM `CustomLogger`'s proxy hooks, with LiteLLM's signatures."""

    def __init__(self) -> None:
        self.call_types: list[str] = []
        self.seen_key_alias: list[str | None] = []
        self.answers: list[Any] = []

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any] | str | None:
        self.call_types.append(call_type)
        self.seen_key_alias.append(user_api_key_dict.key_alias)
        if "forbidden" in str(data.get("messages")):
            raise _HTTPException(status_code=403, detail={"error": "forbidden topic"})
        if "canned" in str(data.get("messages")):
            return "A canned reply."
        data["metadata"] = {"tagged": "by-hook"}
        return data

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> None:
        self.answers.append(response)


class SeesMessages(BaseHook):
    """Keeps the messages each request showed it before routing."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        self.seen.append(list(request.body.get("messages") or ()))
        return None


class _HTTPException(Exception):
    """FastAPI's HTTPException, as LiteLLM's examples raise it."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


refuse_secrets = RefuseSecrets()
canned_answer = CannedAnswer()
shout = Shout()
stop_at_stop = StopAtStop()
refuse_long_answers = RefuseLongAnswers()
broken_on_chunk = BrokenOnChunk()
litellm_style = LiteLLMStyle()
sees_messages = SeesMessages()


class BrokenAfterAnswer(BaseHook):
    """A bug in `after_answer`: the stream it runs on must still be recorded."""

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> None:
        raise RuntimeError("bug in after_answer")


class LiteLLMBuggyPre:
    """A bug in a LiteLLM pre-call hook: a logged 500, never the client's 400."""

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        return data["no_such_key"]


class LiteLLMRedact:
    """LiteLLM's documented PII-masking pattern: rewrite `data["messages"]` in place."""

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        for message in data.get("messages") or []:
            if isinstance(message.get("content"), str):
                message["content"] = message["content"].replace("4111-1111-1111-1111", "[card]")
        return data


class LiteLLMRejectString:
    """LiteLLM's rejection by string: the assistant's reply, or an embedding's refusal."""

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        return "Blocked by policy."


class SlowGuardrail(BaseHook):
    """A guardrail that calls a slow moderation service. `entered` counts the requests
    that reached it, so a test can leave while one is checked."""

    entered = 0

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        SlowGuardrail.entered += 1
        await trio.sleep(2)
        return None


broken_after_answer = BrokenAfterAnswer()
litellm_buggy_pre = LiteLLMBuggyPre()
litellm_redact = LiteLLMRedact()


class LiteLLMRewrite:
    """A LiteLLM success hook that changes the answer as LiteLLM's own guardrails do: in
    place when the request's messages say "in place", else by returning a copy."""

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> Any:
        if "in place" in str(data.get("messages")):
            response["choices"][0]["message"]["content"] = "rewritten in place"
            return None
        copy = {**response, "choices": [dict(response["choices"][0])]}
        copy["choices"][0]["message"] = {"role": "assistant", "content": "rewritten copy"}
        return copy


litellm_rewrite = LiteLLMRewrite()
litellm_reject_string = LiteLLMRejectString()
slow_guardrail = SlowGuardrail()


class RenumberAnswers(BaseHook):
    """Gives each answer an id of its own, and says it changed the answer."""

    def __init__(self) -> None:
        self.given = 0

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> bool:
        self.given += 1
        answer["id"] = f"chatcmpl-renumbered-{self.given}"
        return True


renumber_answers = RenumberAnswers()


class SurchargeUsage(BaseHook):
    """Adds a surcharge of 1,000 prompt tokens to every answer's usage, in place."""

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> None:
        usage.prompt_tokens += 1000


surcharge_usage = SurchargeUsage()
