"""LiteLLM's own request fields and headers: the gateway's to act on, never an upstream's.

A client written for LiteLLM's proxy sends fields that no provider's API defines
(`num_retries`, `mock_response`, `metadata`, `tags`, `caching`, ...) and headers that
only LiteLLM reads (`x-litellm-timeout`, `x-litellm-tags`, ...). Forwarded, they make an
OpenAI upstream answer 400 for an unrecognised argument. This module is the one place
that knows them: the pipeline's decode stage calls `consume` on every model route before
any surface reads the body, and it pops each one, so no translator or provider ever sees
them. Each field's fate is LiteLLM's:

- acted on: `fallbacks` (names, or objects with their own `messages`), `metadata` and
  `tags` (to the spend log), `litellm_session_id` / `litellm_trace_id` (the spend log's
  session), `num_retries` / `max_retries` and `timeout` / `request_timeout` /
  `stream_timeout` (bounding this request within its deployment's own limits),
  `guardrails` (in the body or in `metadata`: the guardrails to run besides the
  `default_on` ones, `trigate.guardrails`), the
  `mock_*` testing fields, and a client's own `api_key` / `api_base` where a deployment
  allows them (`configurable_clientside_auth_params`);
- `cache` / `caching`: the response cache's controls (`trigate.cache.controls`),
  refused with a 400 where no cache is configured and they ask for one;
- refused with a 400 naming the field when it asks for what the gateway cannot do yet:
  client credentials that no deployment allows;
- consumed without effect, since they ask nothing of an answer: `drop_params` and the
  others in `_INERT`.

On Anthropic's Messages API and OpenAI's Responses API, `metadata` is the API's own
field and goes upstream; LiteLLM's metadata there is `litellm_metadata`, as in LiteLLM.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import orjson
import trio

from trigate.cache.controls import CacheControls, read_controls
from trigate.errors import Failure, InvalidRequest, UpstreamError, UpstreamTimeout
from trigate.guardrails.config import names_in
from trigate.nesting import deeper_than
from trigate.providers import PROVIDERS
from trigate.providers.mock import MockProvider
from trigate.router.deployments import Deployment
from trigate.spend import RequestRecord

if TYPE_CHECKING:
    from trigate.api.pipeline import Call
    from trigate.api.surface import Exchange, Surface
    from trigate.auth import Caller
    from trigate.config import LiteLLMParams
    from trigate.gateway import Gateway

# What a field is read as (`_bound`).
T = TypeVar("T")

# --- the fields and headers -----------------------------------------------------------

# The body fields acted on below, whatever the route.
_ACTED = frozenset({
    "fallbacks", "litellm_metadata", "tags", "litellm_session_id", "litellm_trace_id",
    "num_retries", "max_retries", "timeout", "request_timeout", "stream_timeout",
    "mock_response", "mock_delay", "mock_timeout", "mock_testing_fallbacks",
    "mock_testing_context_fallbacks", "mock_testing_content_policy_fallbacks",
    "mock_testing_rate_limit_error", "caching", "cache", "guardrails",
})  # fmt: skip
# A client's own upstream credentials: used only where the deployment allows each.
CLIENT_CREDENTIALS = ("api_key", "api_base", "base_url", "api_version")
# LiteLLM's fields that ask nothing of the answer the gateway gives: consumed, so that
# they never reach an upstream, and otherwise without effect.
_INERT = frozenset({
    "drop_params", "additional_drop_params", "allowed_openai_params", "litellm_call_id",
    "litellm_logging_obj", "no-log", "proxy_server_request", "secret_fields",
    "disable_add_transform_inline_image_block", "merge_reasoning_content_in_choices",
    "use_litellm_proxy", "mock_tool_calls",
    # They opt out of `default_on` guardrails, which a client may not (fail closed).
    "disable_global_guardrails", "disable_global_guardrail", "opted_out_global_guardrails",
})  # fmt: skip
# On these routes `metadata` is the API's own field (as LiteLLM's LITELLM_METADATA_ROUTES
# say); elsewhere it is LiteLLM's.
_OWN_METADATA_PATHS = ("/v1/messages", "/messages", "/v1/responses", "/responses")
BODY_FIELDS = _ACTED | _INERT | frozenset(CLIENT_CREDENTIALS) | {"metadata"}

# The request headers LiteLLM reads, besides its key header (`x-litellm-api-key`, read
# with the other credentials by `trigate.auth`). None of them is forwarded upstream.
TAGS_HEADER = "x-litellm-tags"
TIMEOUT_HEADER = "x-litellm-timeout"
RETRIES_HEADER = "x-litellm-num-retries"
SESSION_HEADER = "x-litellm-session-id"
TRACE_HEADER = "x-litellm-trace-id"
HEADERS = frozenset({TAGS_HEADER, TIMEOUT_HEADER, RETRIES_HEADER, SESSION_HEADER, TRACE_HEADER})
HEADER_PREFIX = "x-litellm-"

# What a fallback object may not change: the model is its target, and the client's
# stream is already decided.
_FIXED_IN_FALLBACK = frozenset({"model", "stream"})
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
# `mock_response` values LiteLLM raises as errors rather than answers.
_MOCK_FAILURES = {
    "litellm.RateLimitError": (Failure.RATE_LIMIT, "This is a mock rate limit error."),
    "litellm.ContextWindowExceededError": (
        Failure.CONTEXT_WINDOW,
        "This is a mock context window exceeded error.",
    ),
    "litellm.InternalServerError": (Failure.SERVER, "This is a mock internal server error."),
}
_CONTENT_FILTER_PREFIX = "Exception: content_filter_policy"


def is_litellm_header(name: str) -> bool:
    """Whether a request header (lower-case) is LiteLLM's: never forwarded upstream."""
    return name.startswith(HEADER_PREFIX)


class SimulatedFailure(UpstreamError):
    """A failure a client asked for (`mock_response`, `mock_timeout`, `mock_testing_*`):
    retried and fallen back from as a real one is, but never held against a deployment,
    so that one client's test cannot cool a deployment for everyone."""

    simulated: ClassVar[bool] = True


class SimulatedTimeout(UpstreamTimeout):
    simulated: ClassVar[bool] = True


@dataclass(slots=True)
class LiteLLMRequest:
    """What one request asked of the gateway through LiteLLM's fields and headers."""

    fallbacks: list[str] | None = None
    # Fallback groups whose objects replace fields of the body (`messages`, ...).
    overrides: dict[str, dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None
    tags: list[str] | None = None
    session_id: str | None = None
    num_retries: int | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    mock_response: str | None = None
    mock_delay: float = 0.0
    mock_timeout: bool = False
    # The failure of the requested group LiteLLM's `mock_testing_*` ask for.
    mock_group_failure: Failure | None = None
    mock_rate_limit: bool = False
    credentials: dict[str, str] | None = None
    # The guardrails the request names (LiteLLM's `guardrails`, in the body or metadata).
    guardrails: list[str] = dataclasses.field(default_factory=list)
    # LiteLLM's `cache` / `caching` controls (`trigate.cache.controls`).
    cache: CacheControls | None = None

    @property
    def cacheable(self) -> bool:
        """Whether the answer may be cached and shared: not one a client mocked, or got
        with its own credentials or a fallback's own body."""
        return not (
            self.mock_response or self.mock_timeout or self.mock_group_failure
            or self.mock_rate_limit or self.credentials or self.overrides
        )  # fmt: skip

    def attempt_timeout(self, deployment: Deployment, stream: bool) -> float:
        """This request's bound on an attempt: its own, never above the deployment's."""
        own = _own_timeout(deployment.params, stream)
        asked = (self.stream_timeout or self.timeout) if stream else self.timeout
        return own if asked is None else min(asked, own)

    def group_failure(self, group: str) -> UpstreamError | None:
        """The simulated failure of the requested group (`mock_testing_fallbacks` and its
        kin), raised before any of its deployments is tried, as LiteLLM does."""
        kind = self.mock_group_failure
        if kind is None:
            return None
        return SimulatedFailure(
            f"This is a mock exception for model={group}, to trigger a fallback.", kind=kind
        )


# --- consuming a body -------------------------------------------------------------------


def consume(body: dict[str, Any], headers: Mapping[str, str], path: str) -> LiteLLMRequest | None:
    """Pop LiteLLM's fields from `body` and read LiteLLM's headers: what they ask, or None
    when the request carries none (the usual case, decided without a copy)."""
    if BODY_FIELDS.isdisjoint(body) and HEADERS.isdisjoint(headers):
        return None
    own_metadata = path.startswith(_OWN_METADATA_PATHS)
    fields = {name: body.pop(name) for name in BODY_FIELDS & body.keys() if name != "metadata"}
    if "metadata" in body and not own_metadata:
        fields["metadata"] = body.pop("metadata")
    for name in _INERT:
        fields.pop(name, None)
    if not fields and HEADERS.isdisjoint(headers):
        return None  # only the API's own `metadata`, or fields that ask nothing
    guardrails = fields.pop("guardrails", None)
    request = LiteLLMRequest()
    if "cache" in fields or "caching" in fields:
        request.cache = read_controls(fields.pop("cache", None), fields.pop("caching", None))
    _read_fallbacks(request, fields.pop("fallbacks", None))
    _read_logging(request, fields, headers)
    request.guardrails = guardrail_names(guardrails, "guardrails")
    if request.metadata is not None:
        named = request.metadata.get("guardrails")
        request.guardrails += guardrail_names(named, "metadata.guardrails")
    _read_bounds(request, fields, headers)
    _read_mocks(request, fields)
    credentials = {name: fields.pop(name) for name in CLIENT_CREDENTIALS if name in fields}
    if credentials:
        request.credentials = _credentials(credentials)
    return request


def _read_fallbacks(request: LiteLLMRequest, fallbacks: Any) -> None:
    """LiteLLM's per-request `fallbacks`: model names, or objects naming a `model` with
    fields that replace the request's for that model (its own `messages`, say)."""
    if fallbacks is None:
        return
    if not isinstance(fallbacks, list):
        raise InvalidRequest(_FALLBACKS_SHAPE, param="fallbacks")
    names: list[str] = []
    for entry in fallbacks:
        if isinstance(entry, str):
            names.append(entry)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise InvalidRequest(_FALLBACKS_SHAPE, param="fallbacks")
        model = entry["model"]
        changed = {k: v for k, v in entry.items() if k not in _FIXED_IN_FALLBACK}
        if "stream" in entry:
            raise InvalidRequest("A fallback object cannot change `stream`.", param="fallbacks")
        unknown = BODY_FIELDS & changed.keys()
        if unknown:
            raise InvalidRequest(
                f"A fallback object cannot carry LiteLLM's own fields "
                f"({', '.join(sorted(unknown))}).",
                param="fallbacks",
            )
        if deeper_than(changed):
            raise InvalidRequest("A fallback object is nested too deeply.", param="fallbacks")
        names.append(model)
        if changed:
            request.overrides = request.overrides or {}
            request.overrides.setdefault(model, changed)
    request.fallbacks = names


_FALLBACKS_SHAPE = (
    "`fallbacks` must be an array of model names, or of objects with a string `model` "
    "(and the fields to send that model instead, such as `messages`)."
)


def _read_logging(
    request: LiteLLMRequest, fields: dict[str, Any], headers: Mapping[str, str]
) -> None:
    """`metadata` (or `litellm_metadata`), `tags` (in the body, in `metadata.tags`, in
    `x-litellm-tags`) and the session id: what the spend log keeps of the request."""
    metadata: dict[str, Any] = {}
    for name in ("metadata", "litellm_metadata"):
        given = fields.pop(name, None)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise InvalidRequest(f"`{name}` must be an object.", param=name)
        metadata.update(given)
    tags = _tags(fields.pop("tags", None), "tags")
    tags += _tags(metadata.get("tags"), "metadata.tags")
    header = headers.get(TAGS_HEADER)
    if header:
        tags += [tag.strip() for tag in header.split(",") if tag.strip()]
    if metadata:
        request.metadata = metadata
    if tags:
        unique = list(dict.fromkeys(tags))
        if len(unique) > MAX_TAGS or any(len(tag) > MAX_TAG_LENGTH for tag in unique):
            raise InvalidRequest(
                f"At most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters.",
                param="tags",
            )
        request.tags = unique
    session = fields.pop("litellm_session_id", None) or headers.get(SESSION_HEADER)
    trace = fields.pop("litellm_trace_id", None) or headers.get(TRACE_HEADER)
    session = session or trace
    if session is not None:
        if not isinstance(session, str) or not session or len(session) > MAX_TAG_LENGTH:
            raise InvalidRequest(
                "`litellm_session_id` must be a non-empty string.", param="litellm_session_id"
            )
        request.session_id = session


def guardrail_names(value: Any, param: str) -> list[str]:
    """LiteLLM's `guardrails`: a list of names, or a mapping of names to their dynamic
    parameters. A name mapped to `false` asks to turn a guardrail off, which a client
    may not: it is read as naming nothing."""
    if isinstance(value, dict):
        value = [name for name, given in value.items() if given is not False]
    return names_in(value, param, lambda message: InvalidRequest(message, param=param))


def _tags(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise InvalidRequest(f"`{param}` must be an array of strings.", param="tags")
    return value


def _read_bounds(
    request: LiteLLMRequest, fields: dict[str, Any], headers: Mapping[str, str]
) -> None:
    """Retries and timeouts this request allows itself: bounds under the deployment's
    and the router's own, which they can lower and never raise."""
    request.num_retries = _bound(
        fields, headers, ("num_retries", "max_retries"), RETRIES_HEADER, _count
    )
    request.timeout = _bound(
        fields, headers, ("request_timeout", "timeout"), TIMEOUT_HEADER, _seconds
    )
    if "stream_timeout" in fields:
        request.stream_timeout = _seconds(fields.pop("stream_timeout"), "stream_timeout")


def _bound(
    fields: dict[str, Any],
    headers: Mapping[str, str],
    names: tuple[str, ...],
    header: str,
    read: Callable[[Any, str], T],
) -> T | None:
    """A bound given in the body under any of `names` (each taken out of it and read, the
    last one given counting), else in `header`; None where neither gives it."""
    value = None
    for name in names:
        if name in fields:
            value = read(fields.pop(name), name)
    if value is None and header in headers:
        value = read(_number(headers[header], header), header)
    return value


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"`{name}` must be a number.", param=name) from None


def _count(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"`{name}` must be a non-negative integer.", param=name)
    return value


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, str):
        value = _number(value, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"`{name}` must be a number of seconds.", param=name)
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"`{name}` must be a positive number of seconds.", param=name)
    return float(value)


def _read_mocks(request: LiteLLMRequest, fields: dict[str, Any]) -> None:
    mock = fields.pop("mock_response", None)
    if mock is not None:
        if not isinstance(mock, str):
            raise InvalidRequest("`mock_response` must be a string.", param="mock_response")
        request.mock_response = mock
    if "mock_delay" in fields:
        request.mock_delay = _seconds(fields.pop("mock_delay"), "mock_delay")
    request.mock_timeout = _flag(fields, "mock_timeout")
    request.mock_rate_limit = _flag(fields, "mock_testing_rate_limit_error")
    for name, kind in (
        ("mock_testing_fallbacks", Failure.SERVER),
        ("mock_testing_context_fallbacks", Failure.CONTEXT_WINDOW),
        ("mock_testing_content_policy_fallbacks", Failure.CONTENT_POLICY),
    ):
        if _flag(fields, name) and request.mock_group_failure is None:
            request.mock_group_failure = kind


def _flag(fields: dict[str, Any], name: str) -> bool:
    value = fields.pop(name, None)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` must be a boolean.", param=name)
    return value


def _credentials(given: dict[str, Any]) -> dict[str, str]:
    for name, value in given.items():
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"`{name}` must be a non-empty string.", param=name)
    if "base_url" in given:
        given.setdefault("api_base", given.pop("base_url"))
    return given


# --- client credentials -------------------------------------------------------------------


def check_credentials(credentials: dict[str, str], deployment: Deployment) -> None:
    """A client's own `api_key` / `api_base` / `api_version` go only to a deployment whose
    `configurable_clientside_auth_params` names each (LiteLLM's key); an `api_base`
    entry may be an object `{"api_base": "<regex>"}` the URL must match in full.
    Anything else is the client's 400, naming the field: a gateway that sent requests
    wherever a client said would let any key reach any host."""
    allowed = (deployment.params.model_extra or {}).get("configurable_clientside_auth_params")
    entries = allowed if isinstance(allowed, list) else []
    for name, value in credentials.items():
        if not any(_allows(entry, name, value) for entry in entries):
            raise InvalidRequest(
                f"`{name}` is not allowed in the request body: deployment "
                f"`{deployment.id}` of model group `{deployment.model_group}` does not list "
                f"it in `configurable_clientside_auth_params`.",
                param=name,
                code="clientside_credentials_not_allowed",
            )


def _allows(entry: Any, name: str, value: str) -> bool:
    if entry == name:
        return True
    if isinstance(entry, dict) and name in entry and isinstance(entry[name], str):
        try:
            return re.fullmatch(entry[name], value) is not None
        except re.error:
            return False
    return False


# --- running an attempt ----------------------------------------------------------------------


async def prepare(
    gateway: Gateway,
    surface: Surface,
    caller: Caller,
    body: dict[str, Any],
    headers: Mapping[str, str],
    request: LiteLLMRequest,
) -> Attempted:
    """Before the body is decoded: each fallback object's own request, decoded by the same
    surface from the body with the object's fields in place (a copy, since decoding may
    change what it reads). A guardrail the request names must be configured: with
    none configured no guardrail hook runs to refuse it. Cache controls that ask for a
    cache are refused where there is none (LiteLLM's `no-cache`, `no-store`, `s-maxage`
    and `caching: false` ask nothing)."""
    if request.guardrails and gateway.guardrails is None:
        raise InvalidRequest(
            f"No guardrail named {', '.join(f'`{n}`' for n in request.guardrails)} is "
            "configured; the request is refused rather than served without it.",
            param="guardrails",
        )
    controls = request.cache
    if gateway.cache is None and controls is not None and controls.asks_for_cache:
        raise InvalidRequest(
            "`cache` / `caching` ask for a response cache, which this gateway does not "
            "have (litellm_settings.cache). Only `no-cache`, `no-store`, `s-maxage` and "
            "`caching: false` are accepted.",
            param="cache" if controls.from_cache_field else "caching",
            code="unsupported_parameter",
        )
    exchanges: dict[str, Exchange] = {}
    for group, changed in (request.overrides or {}).items():
        copy = orjson.loads(orjson.dumps(body))
        copy.update(changed)
        exchanges[group] = await surface.decode(gateway, caller, copy, headers)
    return Attempted(gateway, request, exchanges)


class Attempted:
    """How the attempts of a request carrying LiteLLM fields run: bounded by the request's
    timeout, answered by a mock where it asks for one, sent with the client's credentials
    where the deployment allows them, and with a fallback object's own body on its
    model."""

    def __init__(
        self, gateway: Gateway, request: LiteLLMRequest, exchanges: dict[str, Exchange]
    ) -> None:
        self._gateway = gateway
        self.request = request
        self._exchanges = exchanges
        self._requested: Exchange | None = None
        self._rate_limited = False

    def attach(self, call: Call) -> None:
        """Give `call` what the request asked of its routing; refuse at once client
        credentials that the requested group's deployments do not all allow."""
        request = self.request
        progress = call.progress
        progress.retry_limit = request.num_retries
        progress.group_failure = request.group_failure(progress.model_group)
        if self._exchanges and call.hooks is not None:
            # The hooks (a guardrail among them) see and may rewrite one body; a fallback's
            # own would reach its model unseen by them.
            raise InvalidRequest(
                "Fallback objects with their own fields (`messages`, ...) cannot be used "
                "while request hooks are configured: the hooks see the request's own body "
                "only. Name the fallback models alone.",
                param="fallbacks",
            )
        if request.credentials:
            for deployment in self._gateway.groups.deployments(progress.model_group):
                check_credentials(request.credentials, deployment)
        self._requested = call.exchange
        call.attempted = self

    async def run(self, call: Call, deployment: Deployment) -> Any:
        """One attempt on `deployment`, as `Call.run` makes it, with what the request asked."""
        if self._exchanges:
            exchange = self._exchanges.get(call.progress.model_group, self._requested)
            assert exchange is not None, "attach sets the requested exchange"
            call.exchange = exchange
        own = _own_timeout(deployment.params, call.stream)
        timeout = self.request.attempt_timeout(deployment, call.stream)
        target = self.deployment_for(deployment)
        if timeout >= own and not self.request.mock_timeout:
            await self.before(deployment, timeout)
            return await _attempt(call, target)
        try:
            with trio.fail_after(timeout):
                await self.before(deployment, timeout)
                return await _attempt(call, target)
        except trio.TooSlowError:
            # The client's bound, not the deployment's: not held against it.
            raise SimulatedTimeout(f"The request's own timeout of {timeout:g} s ran out.") from None

    def annotated(self, record: RequestRecord) -> RequestRecord:
        """The spend-log row with what the request asked to be logged beside it."""
        request = self.request
        return dataclasses.replace(
            record,
            metadata=request.metadata,
            request_tags=request.tags,
            session_id=request.session_id,
        )

    def deployment_for(self, deployment: Deployment) -> Deployment:
        """The deployment the attempt actually calls: a mock in its place for
        `mock_response`, or one with the client's credentials."""
        request = self.request
        if request.mock_response is not None:
            return self._mocked(deployment, request.mock_response)
        if request.credentials:
            check_credentials(request.credentials, deployment)
            params = deployment.params.model_copy(update=request.credentials)
            return self._rebuilt(deployment, params)
        return deployment

    async def before(self, deployment: Deployment, waited: float) -> None:
        """The failures the request asked for, in LiteLLM's order: a mock timeout (after
        waiting its timeout), a first rate limit, a mock error; then `mock_delay`."""
        request = self.request
        if request.mock_timeout:
            await trio.sleep(waited)
            raise SimulatedTimeout("This is a mock timeout error.")
        if request.mock_rate_limit and not self._rate_limited:
            self._rate_limited = True
            raise SimulatedFailure(
                f"This is a mock exception for model={deployment.model_group}, to trigger "
                "a rate limit error.",
                kind=Failure.RATE_LIMIT,
            )
        mock = request.mock_response
        if mock is None:
            return
        if mock in _MOCK_FAILURES:
            kind, message = _MOCK_FAILURES[mock]
            raise SimulatedFailure(message, kind=kind)
        if mock.startswith(_CONTENT_FILTER_PREFIX):
            raise SimulatedFailure(mock, kind=Failure.CONTENT_POLICY)
        if request.mock_delay:
            await trio.sleep(request.mock_delay)

    def _mocked(self, deployment: Deployment, text: str) -> Deployment:
        params = deployment.params.model_copy(
            update={"mock_response": text, "mock_delay": 0.0, "mock_chunk_delay": 0.0}
        )
        provider = MockProvider(params, self._gateway.transport, self._gateway.counter)
        return _with_provider(deployment, provider)

    def _rebuilt(self, deployment: Deployment, params: LiteLLMParams) -> Deployment:
        entry = deployment.entry.model_copy(update={"litellm_params": params})
        gateway = self._gateway
        provider = PROVIDERS[params.provider](params, gateway.transport, gateway.counter)
        rebuilt = _with_provider(deployment, provider)
        rebuilt.entry = entry
        return rebuilt


def _own_timeout(params: LiteLLMParams, stream: bool) -> float:
    if stream:
        return params.stream_timeout or params.timeout
    return params.timeout


async def _attempt(call: Call, deployment: Deployment) -> Any:
    if not call.stream:
        return await call.exchange.complete(deployment)
    return await call._open(deployment)


def _with_provider(deployment: Deployment, provider: Any) -> Deployment:
    """A copy of `deployment` calling `provider`, sharing its state (load, breaker)."""
    return Deployment(
        deployment.id,
        deployment.model_group,
        deployment.entry,
        provider,
        deployment.state,
        deployment.price,
        deployment.pattern,
    )
