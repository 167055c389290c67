"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`: a multipart upload sent on
to the upstream as the client sends it, never held whole (`trigate.forms.StreamedForm`),
under the request's size cap as it is read (`trigate.api.model_api.RequestBody`).

The form's text fields must come before its file (as the OpenAI SDKs and curl's `-F`
in order send them): the gateway must know the model to route before the file
starts. The answer goes back as it came, JSON or text. It is priced per second of
audio: the duration the upstream reports (`usage` of type `duration`, or
`verbose_json`'s `duration`), else the one the file's header says (WAV), else, for
SRT or VTT, its last timestamp (as LiteLLM reads it); an upstream that reports tokens
(gpt-4o-transcribe's `usage` of type `tokens`) is billed by them. A `json` or `text`
answer says no duration, so, as LiteLLM asks `verbose_json` where the client names
no format, the upstream is asked `verbose_json` for them (gpt-4o-transcribe's family,
which takes no `verbose_json`, `json`, which has its tokens) and the client given the
shape it asked for. A duration still unknown is billed 0 with `usage_source`
"unknown", never taken for a counted one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from trigate.api.envelopes import OPENAI
from trigate.api.surface import TRANSCRIPTIONS, TRANSLATIONS, OpenAIExchange, Operation
from trigate.api.validation import require_model
from trigate.audio import wav_length
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.forms import StreamedFile
from trigate.gateway import Gateway
from trigate.providers import Completion
from trigate.router.deployments import Deployment
from trigate.spend.prices import ModelPrice
from trigate.usage import Usage

# SRT's `00:01:02,500` and VTT's `00:01:02.500` (or `01:02.500`), as LiteLLM reads them.
_TIMESTAMP = re.compile(rb"(?:(\d+):)?(\d{2}):(\d{2})[.,](\d{3})")
TEXT_TYPE = "text/plain; charset=utf-8"


class TranscriptionExchange(OpenAIExchange):
    """One upload: answered with the upstream's bytes and media type, billed per second."""

    __slots__ = ("answer_headers", "asked", "upload")

    def __init__(
        self, requested: str, body: dict[str, Any], operation: Operation[Any], upload: StreamedFile
    ) -> None:
        super().__init__(requested, body, operation, False)
        self.upload = upload
        self.answer_headers: Mapping[str, str] = {"content-type": "application/json"}
        given = body.get("response_format")
        self.asked = given if isinstance(given, str) and given else "json"

    async def complete(self, deployment: Deployment) -> Completion:
        sent = _format_with_usage(self.asked, deployment)
        body = self.body if sent == self.asked else {**self.body, "response_format": sent}
        operation = self.operation
        completion = await operation.complete(operation.served_by(deployment), body)
        if sent != self.asked:
            completion = _as_asked(completion, self.asked)
        if completion.media_type:
            self.answer_headers = {"content-type": completion.media_type}
        return completion

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        if completion.raw is not None:
            return completion.raw
        text = completion.body.get("text")
        if self.asked == "text" and isinstance(text, str):  # a guardrail rewrote the text
            return _bare(text)
        return orjson.dumps(completion.body)

    def bill(self, deployment: Deployment, completion: Completion | None, usage: Usage) -> Usage:
        answer = completion.body if completion is not None else {}
        reported = answer.get("usage")
        if isinstance(reported, dict) and reported.get("type") == "tokens":
            given, made = reported.get("input_tokens"), reported.get("output_tokens")
            if isinstance(given, int) and isinstance(made, int):
                return Usage(given, made, "upstream")
        seconds = _reported_seconds(answer)
        source = "upstream"
        if seconds is None:
            subtitles = completion.raw if completion is not None else None
            seconds, source = self._counted_seconds(subtitles)
        per_second = _per_second(deployment.price) if deployment.price is not None else None
        if per_second is None:
            return usage
        return Usage(usage.prompt_tokens, 0, source, unit_cost=seconds * per_second)

    def _counted_seconds(self, answer: bytes | None) -> tuple[float, str]:
        """The longer of what the file's WAV header says and an SRT or VTT answer's last
        timestamp (a header may understate what the upstream heard); else 0, "unknown":
        the row says it was not priced."""
        counted = [wav_length(self.upload.head, self.upload.size)]
        if self.asked in ("srt", "vtt") and answer:
            counted.append(_subtitles_end(answer))
        seconds = max((s for s in counted if s is not None), default=None)
        return (0.0, "unknown") if seconds is None else (seconds, "counted")


def _format_with_usage(asked: str, deployment: Deployment) -> str:
    """The format to ask the upstream for, so that its answer says what it cost: asked
    of a deployment with a price only, and `verbose_json` only of one priced by the
    second alone (whisper's kind), lest a model that takes no `verbose_json` (an Azure
    deployment's name says nothing of its model) be refused for the gateway's asking."""
    price = deployment.price
    if asked not in ("json", "text") or price is None:
        return asked
    if price.input is not None or _named_for_tokens(deployment):
        return "json"
    return "verbose_json" if _per_second(price) is not None else asked


def _named_for_tokens(deployment: Deployment) -> bool:
    """gpt-4o-transcribe's family (`gpt-…transcribe…`), which reports its tokens in
    `json` and takes no `verbose_json`; Azure's by `model_info.base_model`."""
    for name in (deployment.upstream_model, deployment.priced_model):
        model = name.rpartition("/")[2].lower()
        if model.startswith("gpt-") and "transcribe" in model:
            return True
    return False


def _per_second(price: ModelPrice) -> float | None:
    return price.per_second if price.per_second is not None else price.per_output_second


def _as_asked(completion: Completion, asked: str) -> Completion:
    """The upstream's fuller answer in the shape the client asked for: `json`'s
    `{"text"}` (with the `usage` it reported, or its duration as OpenAI's `usage` of type
    `duration`), or the bare text; an answer with no text goes as it came."""
    text = completion.body.get("text")
    if not isinstance(text, str):
        return completion
    shaped: dict[str, Any] = {"text": text}
    reported = completion.body.get("usage")
    seconds = _reported_seconds(completion.body)
    if isinstance(reported, dict):
        shaped["usage"] = reported
    elif seconds is not None:
        shaped["usage"] = {"type": "duration", "seconds": seconds}
    if asked == "text":
        return Completion(body=shaped, raw=_bare(text), media_type=TEXT_TYPE)
    return Completion(body=shaped, media_type="application/json")


def _bare(text: str) -> bytes:
    """A `text` answer, as whisper sends it: the text and a newline."""
    return (text + "\n").encode()


def _subtitles_end(answer: bytes) -> float | None:
    """An SRT or VTT answer's last timestamp, in seconds; None where it has none."""
    ends = [
        int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000
        for hours, minutes, seconds, millis in _TIMESTAMP.findall(answer)
    ]
    return max(ends, default=None)


def _reported_seconds(answer: dict[str, Any]) -> float | None:
    usage = answer.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, int | float):
            return float(seconds)
    duration = answer.get("duration")
    return float(duration) if isinstance(duration, int | float) else None


class TranscriptionsSurface:
    """Transcriptions (`task` "transcriptions") or translations, from a streamed form."""

    envelope = OPENAI

    def __init__(self, task: str) -> None:
        self._operation = TRANSLATIONS if task == "translations" else TRANSCRIPTIONS

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> TranscriptionExchange:
        upload = body.get("file")
        if not isinstance(upload, StreamedFile):
            raise InvalidRequest(
                "`file` is required: the audio file, after the form's text fields.", param="file"
            )
        model = require_model(body)
        return TranscriptionExchange(model, body, self._operation, upload)
