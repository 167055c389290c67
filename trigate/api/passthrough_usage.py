"""The usage a passed-through answer reports, read from its bytes as they go by.

A pass-through answer goes to the client as it came, so its usage is read beside it:
a JSON answer is kept (up to a bound) and read once it ended; an SSE stream's events
are decoded as they pass, each read for usage. Every provider's format says its usage
in its own words, recognised here by their shape, each turned into OpenAI's by the
provider adapter's own function: Anthropic's messages (`message_start` and the
cumulative `message_delta`), Gemini's and Vertex's `usageMetadata` and Vertex's
embedding `statistics`, OpenAI's chat, Responses (`response.completed`) and
embeddings, Bedrock's converse (whole, and converse-stream's `metadata` frame)
and invoke (the model's own answer, or the invocation metrics of its stream), and
Cohere's `billed_units`. An answer whose usage
cannot be read is billed as unknown, and its spend row says so.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from trigate.errors import UpstreamError
from trigate.guardrails.text import event_text
from trigate.providers import anthropic, bedrock, cohere, gemini
from trigate.providers.bedrock import EVENT_STREAM
from trigate.providers.eventstream import EventStreamDecoder
from trigate.providers.openai import chat_usage
from trigate.sse import SSEDecoder

# A JSON answer larger than this is passed on, but not kept to be read.
KEPT_BYTES = 16 * 1024 * 1024


class UsageReader:
    """Reads one answer's usage as its bytes pass: `feed` each piece, then `usage`."""

    def __init__(self, content_type: str) -> None:
        self._stream = "text/event-stream" in content_type
        self._decoder = SSEDecoder() if self._stream else None
        # Bedrock's streams (`converse-stream`, `invoke-with-response-stream`) are binary
        # event-stream frames.
        self._frames = EventStreamDecoder() if EVENT_STREAM in content_type else None
        self._kept = bytearray()
        self._overflowed = False
        self._anthropic: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        # The response's id, where its format names one (for the spend row).
        self.response_id: str | None = None
        # The text an SSE stream's events added, as the provider sent it: what a stream
        # cut short (a block, a client gone) is billed at least (`streamed`). A stream
        # fed as bytes keeps them, to be read only if it is (reading each event's text as
        # it passes would cost every stream, most of which end whole).
        self._texts: list[str] = []
        self._unread = bytearray()
        self._text_decoder = SSEDecoder()

    def feed(self, piece: bytes) -> None:
        if self._frames is not None:
            if not self._overflowed:
                self._feed_frames(piece)
            return
        if self._decoder is not None:
            self._unread += piece
            if len(self._unread) > KEPT_BYTES:
                self._read_texts()
            for event in self._decoder.feed(piece):
                self._read(_loaded(event.data))
            return
        if self._overflowed or len(self._kept) + len(piece) > KEPT_BYTES:
            self._overflowed = True
            return
        self._kept += piece

    def _feed_frames(self, piece: bytes) -> None:
        """A frame's JSON: converse-stream's `metadata` event names its usage; an invoke
        stream's chunks carry the model's own events, base64-encoded, the last with
        Bedrock's `amazon-bedrock-invocationMetrics`. A corrupt frame ends the reading
        (the client gets the bytes all the same)."""
        assert self._frames is not None
        try:
            for frame in self._frames.feed(piece):
                data = _loaded(frame.payload)
                if frame.headers.get(":event-type") == "metadata" and isinstance(data, dict):
                    self._usage = bedrock.to_usage(data.get("usage")) or self._usage
                elif isinstance(data, dict) and isinstance(data.get("bytes"), str):
                    self._read_invoke_chunk(data["bytes"])
        except UpstreamError:
            self._overflowed = True

    def _read_invoke_chunk(self, encoded: str) -> None:
        try:
            chunk = _loaded(base64.b64decode(encoded))
        except ValueError:
            return
        metrics = chunk.get("amazon-bedrock-invocationMetrics") if isinstance(chunk, dict) else None
        if isinstance(metrics, dict):
            usage = {"inputTokens": metrics.get("inputTokenCount"),
                     "outputTokens": metrics.get("outputTokenCount")}  # fmt: skip
            self._usage = bedrock.to_usage(usage) or self._usage
        else:
            self._read(chunk)

    def usage(self) -> dict[str, Any] | None:
        """The answer's usage in OpenAI's shape (with `search_units`), or None: unknown."""
        if self._frames is not None:
            return None if self._overflowed else self._usage
        if self._decoder is not None:
            for event in self._decoder.flush():
                self._read(_loaded(event.data))
        elif self._kept and not self._overflowed:
            data = _loaded(bytes(self._kept))
            # Vertex's streamGenerateContent without `alt=sse`: one JSON array of answers.
            for item in data if isinstance(data, list) else [data]:
                self._read(item)
        return self._usage

    def read_event(self, data: Any) -> None:
        """An SSE event's data, already decoded by whoever relays the stream (a watched
        pass-through stream's codec), in place of `feed`ing its bytes."""
        if isinstance(data, dict):
            self._texts.append(event_text(data))
        self._read(data)

    @property
    def streamed(self) -> list[str]:
        """The text the stream's events added so far, as the provider sent it."""
        self._read_texts()
        return self._texts

    def _read_texts(self) -> None:
        """The text of the events kept as bytes (those decoded, a partial one held)."""
        if self._unread:
            for event in self._text_decoder.feed(bytes(self._unread)):
                data = _loaded(event.data)
                if isinstance(data, dict):
                    self._texts.append(event_text(data))
            self._unread.clear()

    def _read(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if self.response_id is None and isinstance(data.get("id"), str):
            self.response_id = data["id"]
        found = self._usage_of(data)
        if found is not None:
            self._usage = found

    def _usage_of(self, data: dict[str, Any]) -> dict[str, Any] | None:
        kind = data.get("type")
        if kind == "message_start":  # Anthropic's stream: counts so far, then deltas
            message = data.get("message")
            return self._anthropic_counts((message or {}).get("usage"))
        if kind == "message_delta":
            return self._anthropic_counts(data.get("usage"))
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response")
            return _responses((response or {}).get("usage"))
        if kind == "message-end":  # Cohere's stream
            return cohere.openai_usage((data.get("delta") or {}).get("usage"))
        if "usageMetadata" in data:
            return gemini.openai_usage(data["usageMetadata"])
        if isinstance(data.get("predictions"), list):
            return _vertex_embeddings(data["predictions"])
        usage = data.get("usage")
        if isinstance(usage, dict):
            return self._usage_in(usage, data)
        meta = data.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("billed_units"), dict):
            return _billed(meta["billed_units"])  # Cohere's embed and rerank
        return None

    def _usage_in(self, usage: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | None:
        if "prompt_tokens" in usage:  # OpenAI's chat, completions, embeddings
            return {"completion_tokens": 0, **usage}
        if "inputTokens" in usage:  # Bedrock's converse
            return bedrock.to_usage(usage)
        if "billed_units" in usage or "tokens" in usage:  # Cohere's chat
            return cohere.openai_usage(usage)
        if "total_tokens" in usage and "input_tokens" in usage:  # OpenAI's Responses
            return _responses(usage)
        if "input_tokens" in usage or "output_tokens" in usage:  # Anthropic's message
            if data.get("type") == "message":
                self._anthropic = {}
            return self._anthropic_counts(usage)
        return None

    def _anthropic_counts(self, usage: Any) -> dict[str, Any] | None:
        if not isinstance(usage, dict):
            return None
        self._anthropic.update({k: v for k, v in usage.items() if v is not None})
        return anthropic.openai_usage(self._anthropic)


def gemini_embedded_texts(path: str, body: Any) -> list[str] | None:
    """The texts a Gemini API `embedContent` / `batchEmbedContents` request embeds: Gemini
    reports no usage for them, so the gateway counts them, as its gemini/ adapter does."""
    if not path.endswith((":embedContent", ":batchEmbedContents")) or not isinstance(body, dict):
        return None
    batch = body.get("requests")
    requests: list[Any] = batch if isinstance(batch, list) else [body]
    texts: list[str] = []
    for request in requests:
        content = request.get("content") if isinstance(request, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        texts.extend(
            part["text"]
            for part in (parts if isinstance(parts, list) else ())
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return texts


def _responses(usage: Any) -> dict[str, Any] | None:
    return chat_usage(usage) if isinstance(usage, dict) else None


def _vertex_embeddings(predictions: list[Any]) -> dict[str, Any] | None:
    total = 0
    for prediction in predictions:
        statistics = ((prediction or {}).get("embeddings") or {}).get("statistics")
        count = statistics.get("token_count") if isinstance(statistics, dict) else None
        if not isinstance(count, int | float):
            return None
        total += int(count)
    return {"prompt_tokens": total, "completion_tokens": 0, "total_tokens": total}


def _billed(billed: dict[str, Any]) -> dict[str, Any]:
    tokens = billed.get("input_tokens")
    prompt = int(tokens) if isinstance(tokens, int | float) else 0
    searches = billed.get("search_units")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": 0,
        "total_tokens": prompt,
        "search_units": int(searches) if isinstance(searches, int | float) else 0,
    }


def _loaded(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


# The end of an SSE event: a blank line.
_EVENT_END = re.compile(rb"\r?\n\r?\n")
# Held back waiting for an event's end, at most: past it the stream passes unfiltered.
_MAX_HELD = 1024 * 1024


class UsageChunkDropper:
    """Takes out of an OpenAI stream the usage-only chunk (`choices: []`) that
    `stream_options.include_usage` adds, for a client that did not ask for it: the
    gateway asked, to bill the call, and the client gets the stream it asked for, as
    LiteLLM's pass-through (which does not ask) gives it. Events pass whole, as each
    ends; `feed` each piece, then `end`."""

    def __init__(self) -> None:
        self._held = b""
        self._passing = False

    def feed(self, piece: bytes) -> bytes:
        buffer = self._held + piece if self._held else piece
        if self._passing:
            self._held = b""
            return buffer
        passed, start = [], 0
        for found in _EVENT_END.finditer(buffer):
            event = buffer[start : found.end()]
            if not _usage_only(event):
                passed.append(event)
            start = found.end()
        self._held = buffer[start:]
        if len(self._held) > _MAX_HELD:
            self._passing = True
            passed.append(self._held)
            self._held = b""
        return b"".join(passed)

    def end(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _usage_only(event: bytes) -> bool:
    if b'"usage"' not in event or b"[]" not in event:
        return False
    data = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    chunk = _loaded(data)
    return isinstance(chunk, dict) and chunk.get("choices") == [] and bool(chunk.get("usage"))
