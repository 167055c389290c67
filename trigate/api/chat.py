"""`POST /v1/chat/completions`: authenticate, validate, route, proxy, account.

Only what the gateway decides on is validated (`model`, `messages`,
`stream`); every other field goes to the upstream untouched. A stream is
opened and its first chunk awaited *before* the response starts, so an
upstream that fails or stalls early still yields a real HTTP error status.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.context import RequestContext, current_request
from trigate.api.responses import json_body, raw_json_response
from trigate.auth import Caller
from trigate.errors import GatewayError, InvalidRequest, UpstreamTimeout, secrets
from trigate.gateway import Gateway
from trigate.providers import ChunkStream
from trigate.relay import StreamOutcome, StreamRelay
from trigate.router import Deployment
from trigate.spend import RequestRecord
from trigate.usage import Usage, UsageMeter

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
RECORD_TIMEOUT = 10.0
# nginx's status for a request its client abandoned; it never reaches a client.
CLIENT_CLOSED = 499


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions() -> Response:
        caller = gateway.auth.authenticate(request.headers)
        body = await json_body()
        model = _validate(body)
        deployment = gateway.groups.pick(model)
        call = ChatCall(gateway, current_request.get(), caller, deployment, body)
        if body.get("stream"):
            return await call.stream()
        return await call.complete()


def _validate(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "`messages` is required and must be a non-empty array.", param="messages"
        )
    if not all(isinstance(message, dict) for message in messages):
        raise InvalidRequest("Every entry of `messages` must be an object.", param="messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
    return model


class ChatCall:
    """One chat completion on one deployment, from upstream call to spend record."""

    def __init__(
        self,
        gateway: Gateway,
        context: RequestContext,
        caller: Caller,
        deployment: Deployment,
        body: dict[str, Any],
    ) -> None:
        self.gateway = gateway
        self.context = context
        self.caller = caller
        self.deployment = deployment
        self.body = body
        self.meter = UsageMeter(gateway.counter, deployment.upstream_model, body)
        self.ttft: float | None = None

    async def complete(self) -> Response:
        status, error, usage, cancelled = 500, None, None, False
        try:
            completion = await self._upstream(self.deployment.provider.complete(self.body))
            self.meter.report(completion.usage)
            if completion.usage is None:
                self.meter.observe_completion(completion.body)
            usage = await self.meter.settle()
            status = 200
            if completion.raw is not None and completion.usage is not None:
                return raw_json_response(completion.raw)
            return raw_json_response(orjson.dumps({**completion.body, "usage": usage.to_openai()}))
        except GatewayError as failure:
            status, error = failure.status, failure
            raise
        except trio.Cancelled:
            status, cancelled = CLIENT_CLOSED, True
            raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT):
                await self._record(status, error, usage, cancelled=cancelled)

    async def stream(self) -> Response:
        try:
            stream = await self._upstream(self.deployment.provider.open_stream(self.body))
            relay = await self._first_chunk(stream)
        except BaseException as failure:
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT):
                error = failure if isinstance(failure, GatewayError) else None
                cancelled = isinstance(failure, trio.Cancelled)
                status = error.status if error else CLIENT_CLOSED if cancelled else 500
                await self._record(status, error, None, cancelled=cancelled)
            raise
        self.context.relay = relay
        return Response(relay, status=200, headers=SSE_HEADERS)

    async def _first_chunk(self, stream: ChunkStream) -> StreamRelay:
        """Wait for the first chunk under the deployment's time-to-first-token deadline."""
        chunks = aiter(stream)
        params = self.deployment.entry.litellm_params
        deadline = params.stream_timeout or params.timeout
        try:
            with trio.fail_after(deadline):
                first = await anext(chunks, None)
        except BaseException as failure:
            with trio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]
                await stream.aclose()
            if isinstance(failure, trio.TooSlowError):
                raise UpstreamTimeout(
                    f"The upstream sent no first token within {deadline:g} s."
                ) from None
            raise
        self.ttft = self.context.elapsed()
        self.context.upstream_wait = self.ttft
        options = self.body.get("stream_options") or {}
        return StreamRelay(
            stream,
            chunks,
            first,
            self.meter,
            include_usage=options.get("include_usage") is True,
            on_finish=self._finish_stream,
        )

    async def _upstream(self, call: Any) -> Any:
        """Await an upstream call, counting the wait as the upstream's, not ours."""
        started = trio.current_time()
        try:
            return await call
        finally:
            self.context.upstream_wait = trio.current_time() - started

    async def _finish_stream(self, outcome: StreamOutcome) -> None:
        usage = await self.meter.settle()
        status = 200
        if outcome.error:
            status = outcome.error.status
        elif outcome.cancelled_by_client:
            status = CLIENT_CLOSED
        await self._record(status, outcome.error, usage, cancelled=outcome.cancelled_by_client)

    async def _record(
        self,
        status: int,
        error: GatewayError | None,
        usage: Usage | None,
        *,
        cancelled: bool,
    ) -> None:
        if usage is None and cancelled:
            # The upstream had the prompt; bill it even though no answer arrived.
            usage = Usage(await self._prompt_tokens(), 0, "counted")
        await self.gateway.records.write(
            RequestRecord(
                request_id=self.context.request_id,
                key_identity=self.caller.identity,
                model_group=self.deployment.model_group,
                deployment=self.deployment.id,
                status=status,
                stream=bool(self.body.get("stream")),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                usage_source=usage.source if usage else "none",
                latency_ms=round(self.context.elapsed() * 1000, 3),
                ttft_ms=round(self.ttft * 1000, 3) if self.ttft is not None else None,
                cancelled_by_client=cancelled,
                error=secrets.redact(error.message) if error else None,
            )
        )

    async def _prompt_tokens(self) -> int:
        messages = self.body.get("messages")
        return await self.gateway.counter.count_prompt_async(
            self.deployment.upstream_model,
            messages if isinstance(messages, list) else [],
            self.body.get("tools"),
        )
