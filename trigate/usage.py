"""Exact usage for one request: the upstream's report when there is one, a count otherwise.

The meter watches every chunk that passes. It keeps the upstream's usage
report whenever one arrives (a reported 0 is a real 0) and, as insurance, the
completion text, so a stream that ends without a report, or is cut short by
its client, is still billed by counting with the request's encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from trigate.spend.prices import TokenCounts
from trigate.sse import plain_array, plain_payloads
from trigate.tokens import TokenCounter

# Passed-through stream events are kept as they came and read only when their text must
# be counted; past this many bytes they are read into text, which bounds what a long
# stream holds.
FRAMES_HELD = 64 * 1024


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # "upstream" when the provider reported it, "counted" when tiktoken did.
    source: str
    # Parts of the above that are priced differently, when the upstream says so.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Rerank's searches, which its upstream bills by (Cohere's `billed_units.search_units`).
    search_units: int = 0
    # What a request billed by the unit (images, characters, seconds of audio) cost,
    # reckoned by its exchange from what the upstream reported; None: priced by tokens.
    unit_cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def priced_counts(self) -> TokenCounts:
        """The counts as the price formula takes them: cache writes (Anthropic's
        `cache_creation_input_tokens`, part of our prompt count) are priced apart."""
        return TokenCounts(
            prompt_tokens=self.prompt_tokens - self.cache_write_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            search_units=self.search_units,
        )

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class UsageMeter:
    """Collects what is needed to bill one chat completion."""

    __slots__ = (
        "_carried",
        "_counter",
        "_frames",
        "_frames_size",
        "_pieces",
        "_prompt_counts",
        "_reported",
        "body",
        "model",
    )

    def __init__(
        self, counter: TokenCounter, model: str, body: dict[str, Any], carried: int = 0
    ) -> None:
        self._counter = counter
        # The upstream model, which picks the encoding; the router may change it.
        self.model = model
        self.body = body
        # Prompt tokens the upstream holds that `body` does not carry (`Exchange.carried_tokens`).
        self._carried = carried
        self._pieces: list[str] = []
        # Plain SSE events passed through unread (`observe_frames`), `_frames_size` bytes.
        self._frames: list[bytes] = []
        self._frames_size = 0
        self._reported: dict[str, Any] | None = None
        self._prompt_counts: dict[str, int] = {}

    @property
    def reported(self) -> dict[str, Any] | None:
        return self._reported

    def report(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._reported = usage

    def observe_chunk(self, chunk: dict[str, Any]) -> None:
        """Keep the text a stream chunk adds: content, reasoning and tool-call arguments
        (chat), or `text` (legacy completions)."""
        if self._frames and chunk.get("choices"):
            self._read_frames()  # first: the text is counted in the order it came
        self._observe_choices(chunk, "delta")

    def observe_frames(self, events: bytes) -> None:
        """Keep plain SSE events (`SSEDecoder.plain`) a stream passed on unread: their text
        is read only if it must be counted, which an upstream that reports usage spares."""
        self._frames.append(events)
        self._frames_size += len(events)
        if self._frames_size > FRAMES_HELD:
            self._read_frames()

    def _read_frames(self) -> None:
        """The text of the events kept, as `observe_chunk` keeps a chunk's. Each read's
        events are read as one JSON array; where that fails, one by one, and an event
        that is not a JSON object (the relay passed it unchecked) adds nothing."""
        frames, self._frames, self._frames_size = self._frames, [], 0
        for events in frames:
            try:
                chunks = orjson.loads(plain_array(events))
            except orjson.JSONDecodeError:
                chunks = [_loaded(payload) for payload in plain_payloads(events)]
            for chunk in chunks:
                if isinstance(chunk, dict):
                    self._observe_choices(chunk, "delta")

    def observe_completion(self, body: dict[str, Any]) -> None:
        self._observe_choices(body, "message")

    def _observe_choices(self, body: dict[str, Any], key: str) -> None:
        for choice in body.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            message = choice.get(key)
            if isinstance(message, dict):
                self._observe_message(message)
            text = choice.get("text")
            if isinstance(text, str) and text:
                self._pieces.append(text)

    def _observe_message(self, message: dict[str, Any]) -> None:
        for key in ("content", "reasoning_content"):
            text = message.get(key)
            if isinstance(text, str) and text:
                self._pieces.append(text)
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str) and arguments:
                self._pieces.append(arguments)

    async def prompt_tokens(self) -> int:
        """The prompt's tokens by tiktoken, counted once per encoding however often asked,
        and those the upstream holds for it."""
        if self.model not in self._prompt_counts:
            self._prompt_counts[self.model] = await self._count_prompt()
        return self._prompt_counts[self.model] + self._carried

    async def _count_prompt(self) -> int:
        messages = self.body.get("messages")
        if isinstance(messages, list):
            return await self._counter.count_prompt_async(
                self.model, messages, self.body.get("tools")
            )
        # Legacy completions' `prompt` and embeddings' `input`: text, texts or token ids.
        value = self.body.get("prompt", self.body.get("input"))
        items = value if isinstance(value, list) and not _is_token_ids(value) else [value]
        total = 0
        for item in items:
            if isinstance(item, str):
                total += await self._counter.count_text_async(self.model, item)
            elif isinstance(item, list):
                total += len(item)
        return total

    def text(self) -> str:
        """The answer's text as observed so far (a stream's, for export sinks)."""
        self._read_frames()
        return "".join(self._pieces)

    async def settle(self) -> Usage:
        """The usage to bill: the upstream's numbers, or tiktoken's where it gave none."""
        reported = self._reported or {}
        usage = upstream_usage(reported)
        if usage is not None:
            return usage
        prompt = reported.get("prompt_tokens")
        completion = reported.get("completion_tokens")
        if type(prompt) is not int:
            prompt = await self.prompt_tokens()
        if type(completion) is not int:
            self._read_frames()
            completion = await self._counter.count_text_async(self.model, "".join(self._pieces))
        return Usage(prompt, completion, "counted")


def upstream_usage(reported: dict[str, Any]) -> Usage | None:
    """The usage an upstream reported, when it reported both counts (else tiktoken
    counts what is missing: `UsageMeter.settle`)."""
    prompt = reported.get("prompt_tokens")
    completion = reported.get("completion_tokens")
    # `type(...) is int`: a JSON `true` is a Python bool, an int to isinstance, and no
    # count (PostgreSQL refuses a boolean for an INTEGER column, at every retry).
    if type(prompt) is not int or type(completion) is not int:
        return None
    searches = reported.get("search_units")
    searches = searches if type(searches) is int else 0  # `reported_count`, inline
    return Usage(prompt, completion, "upstream", *_priced_parts(reported), searches)


def _loaded(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def _priced_parts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """Cached, cache-write and reasoning tokens, from OpenAI's (and Anthropic's) details."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    reasoning = (
        completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
    )
    written = usage.get("cache_creation_input_tokens")
    # `reported_count` of each, inline: a call each cost every answer more than the test.
    return (
        cached if type(cached) is int else 0,
        written if type(written) is int else 0,
        reasoning if type(reasoning) is int else 0,
    )


def reported_count(value: Any) -> int:
    """A count an upstream reported, or 0: a bool (JSON `true`, an int to isinstance) is
    none, and would be refused as one by PostgreSQL's INTEGER columns."""
    return value if type(value) is int else 0


def _is_token_ids(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(item, int) for item in value)
