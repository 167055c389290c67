"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`: a multipart upload sent on
to the upstream as the client sends it, never held whole (`trigate.forms.StreamedForm`),
under the request's size cap as it is read (`trigate.api.model_api.RequestBody`).

The form's text fields must come before its file (as the OpenAI SDKs and curl's `-F`
in order send them): the gateway must know the model to route before the file
starts. The answer goes back as it came, JSON or text. It is priced per second of
audio: the duration the upstream reports (`usage` of type `duration`, or
`verbose_json`'s `duration`), else the one the file's header says (WAV); an upstream
that reports tokens (gpt-4o-transcribe's `usage` of type `tokens`) is billed by them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from trigate.api.envelopes import OPENAI
from trigate.api.surface import TRANSCRIPTIONS, TRANSLATIONS, OpenAIExchange, Operation
from trigate.api.validation import require_model
from trigate.audio import wav_seconds
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.forms import StreamedFile
from trigate.gateway import Gateway
from trigate.providers import Completion
from trigate.router.deployments import Deployment
from trigate.usage import Usage


class TranscriptionExchange(OpenAIExchange):
    """One upload: answered with the upstream's bytes and media type, billed per second."""

    __slots__ = ("answer_headers", "upload")

    def __init__(
        self, requested: str, body: dict[str, Any], operation: Operation[Any], upload: StreamedFile
    ) -> None:
        super().__init__(requested, body, operation, False)
        self.upload = upload
        self.answer_headers: Mapping[str, str] = {"content-type": "application/json"}

    async def complete(self, deployment: Deployment) -> Completion:
        completion = await super().complete(deployment)
        if completion.media_type:
            self.answer_headers = {"content-type": completion.media_type}
        return completion

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        return completion.raw or orjson.dumps(completion.body)

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
            seconds, source = wav_seconds(self.upload.head, self.upload.size), "counted"
        price = deployment.price
        per_second = None
        if price is not None:
            per_second = (
                price.per_second if price.per_second is not None else price.per_output_second
            )
        if per_second is None:
            return usage
        return Usage(usage.prompt_tokens, 0, source, unit_cost=seconds * per_second)


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
