"""LiteLLM's pass-through routes: a provider's own API through the gateway, with a virtual key.

`/anthropic/{path}`, `/gemini/{path}`, `/vertex_ai/{path}` (and `/vertex-ai/`),
`/openai/{path}`, `/azure/{path}`, `/bedrock/{path}`, `/cohere/{path}`,
`/mistral/{path}` and `/vllm/{path}` (passthrough_targets.py), and the custom ones of
`general_settings.pass_through_endpoints` (`path`, `target`, `headers`,
`forward_headers`, `auth`, `include_subpath`), for every method.

The client sends its virtual key as its provider's SDK sends the provider's own:
`x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini), `Authorization`
(the rest), or LiteLLM's `x-litellm-api-key`. The key is checked as on the unified
routes: its `models` (the model named in the body or the path), its, its team's and its
user's rate limits and budgets. The key never goes on: the provider's credential
replaces it. The body and the answer pass unchanged, the answer streamed as it comes,
unless hooks or guardrails apply to the call (passthrough_guard.py): they read it in the
provider's own API, and may refuse it or mask it. The client's departure cancels the
call and closes the upstream connection.

Each call is one spend row, with its model and the usage its answer reports
(passthrough_usage.py), priced as the unified routes price it; an answer whose usage
cannot be read is recorded with `usage_source` "unknown" and costs what admission
reserved for it, never nothing. OpenAI's chat streams are asked for their usage.
Only the paths that call a model are open to every key: the rest act on the
provider's account (its files, batches, fine-tuning), and need an admin.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from trigate.api.model_api import ClientLeft, error_reply, read_request_body, send_reply
from trigate.api.passthrough_call import DEFAULT_TIMEOUT, PassCall
from trigate.api.passthrough_targets import ROUTES, custom_headers
from trigate.errors import GatewayError, InvalidRequest, RequestTimeout
from trigate.gateway import Gateway
from trigate.serving import DEPARTURE_EXTENSION

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope

logger = logging.getLogger("trigate")


@dataclass(frozen=True, slots=True)
class CustomEndpoint:
    """One of `general_settings.pass_through_endpoints`."""

    path: str
    target: str
    headers: dict[str, str]
    forward_headers: bool
    auth: bool
    include_subpath: bool

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> CustomEndpoint:
        path, target = entry.get("path"), entry.get("target")
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(target, str):
            raise ValueError("each pass_through_endpoints entry needs a `path` (/...) and `target`")
        headers = entry.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise TypeError(f"pass_through_endpoints {path}: `headers` must be a mapping")
        return cls(
            path.rstrip("/") or "/",
            target.rstrip("/"),
            custom_headers(headers),
            entry.get("forward_headers") is True,
            entry.get("auth") is True,
            entry.get("include_subpath") is True,
        )

    def matches(self, path: str) -> str | None:
        """The subpath `path` adds to this endpoint's, or None if it is not this one's."""
        if path == self.path:
            return ""
        if self.include_subpath and path.startswith(self.path + "/"):
            return path[len(self.path) :]
        return None


class PassThrough:
    """ASGI app serving the pass-through routes, and passing every other request to `app`."""

    def __init__(
        self,
        app: ASGIFramework,
        gateway: Gateway,
        *,
        max_body_bytes: int,
        body_timeout: float,
    ) -> None:
        self._app = app
        self._gateway = gateway
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout
        settings = gateway.config.general_settings
        extra = settings.model_extra or {}
        self._custom = [
            CustomEndpoint.of(entry) for entry in extra.get("pass_through_endpoints") or ()
        ]
        unauthenticated = [endpoint.path for endpoint in self._custom if not endpoint.auth]
        if unauthenticated:
            logger.warning(
                "pass_through_endpoints without `auth: true` are open to anyone who reaches "
                "the gateway, with their configured headers: %s",
                ", ".join(unauthenticated),
            )
        timeout = extra.get("pass_through_request_timeout")
        self._timeout = float(timeout) if isinstance(timeout, int | float) else DEFAULT_TIMEOUT

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            found = self._match(scope["path"])
            if found is not None:
                await self._serve(scope, receive, send, *found)
                return
        await self._app(scope, receive, send)

    def _match(self, path: str) -> tuple[str | None, CustomEndpoint | None, str] | None:
        """(provider route, custom endpoint, upstream path) for a pass-through path. No
        path reaches here with a `.` or `..` segment (`RequestScope` refuses them), so
        none climbs out of a custom target's own path."""
        for endpoint in self._custom:
            subpath = endpoint.matches(path)
            if subpath is not None:
                return None, endpoint, subpath
        route, slash, rest = path[1:].partition("/")
        if route in ROUTES and slash:
            return route, None, "/" + rest
        return None

    async def _serve(
        self,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        route: str | None,
        custom: CustomEndpoint | None,
        path: str,
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        raw = _raw_subpath(scope, path)
        query = scope.get("query_string", b"").decode("latin-1")
        call = PassCall(self._gateway, scope["method"], route, custom, raw or path, headers, query)
        envelope = call.envelope
        call.timeout = self._timeout
        try:
            if raw is None:
                raise InvalidRequest(
                    "A pass-through route's prefix may not be percent-encoded.",
                    code="encoded_route_prefix",
                )
            if custom is None or custom.auth:
                await call.authenticate()
            with trio.fail_after(self._body_timeout):
                body = await read_request_body(headers, receive, self._max_body_bytes)
        except ClientLeft:
            return
        except trio.TooSlowError:
            failure = RequestTimeout(
                f"The request body did not arrive within {self._body_timeout:g} s."
            )
            await send_reply(send, error_reply(failure, envelope))
            return
        except GatewayError as error:
            await send_reply(send, error_reply(error, envelope))
            return
        with trio.CancelScope() as request:
            # The client's departure cancels the call: heard from the server where it can
            # tell (trigate.serving), else from the ASGI disconnect.
            extensions: dict[str, Any] = scope.get("extensions") or {}
            on_departure = extensions.get(DEPARTURE_EXTENSION)
            if on_departure is not None:
                on_departure(functools.partial(_cancel, request))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, request)
                await call.run(bytes(body), send)
                nursery.cancel_scope.cancel()


def _raw_subpath(scope: HTTPScope, path: str) -> str | None:
    """The client's own encoding of `path`, the decoded path after the route's prefix
    (Bedrock's model ids hold `:`, which SigV4 signs as sent): the raw path after that
    prefix, which must be spelled out in it as it is. An encoded prefix (`/%6fpenai/`)
    would put the cut elsewhere in the raw path (None: refused)."""
    decoded = scope["path"]
    raw = (scope.get("raw_path") or decoded.encode()).decode("latin-1")
    if raw == decoded:
        return path
    prefix = decoded[: len(decoded) - len(path)]
    subpath = raw[len(prefix) :]
    if not raw.startswith(prefix) or (subpath and not subpath.startswith("/")):
        return None
    return subpath


async def _cancel(scope: trio.CancelScope) -> None:
    scope.cancel()


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
