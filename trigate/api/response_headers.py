"""The gateway's own response headers, trigate's `x-trigate-*` and LiteLLM's `x-litellm-*`,
built in this one place for every response (`RequestScope` adds them as it starts one).

LiteLLM's set keeps LiteLLM's names and formats (its proxy's `get_custom_headers` and its
router's retry and fallback headers), so clients and scripts that read them carry over:
the call id, the model id, group and API base, the response cost, the attempted retries
and fallbacks with the retries allowed and the timeout applied, the key's spend, limits
and what is left of them, the durations, the version. A value the gateway does not have
(a stream's cost, before it has run) is left out, as LiteLLM leaves out an empty one.

Every response pays for these, so what depends only on a deployment (its ids, its API
base) is encoded once per deployment and kept.

`build_parts` tells apart the gateway's own fields (`own`: constant names, values it
formats itself from its ids and numbers, or a deployment's, checked once as prepared)
from those carrying a value from outside (`outside`: the client's `x-request-id` and
model name, a hook's or the rate limiter's headers, a key's limits as stored). The lean
HTTP/1.1 server checks the latter as h11 would with every answer, and not the former
(`trigate.http1.CheckedTail`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from trigate import __version__
from trigate.cache import CACHE_KEY_HEADER, CACHE_STATE_HEADER
from trigate.transport import field_names

if TYPE_CHECKING:
    from trigate.api.context import RequestContext
    from trigate.api.pipeline import Call
    from trigate.cache import Ticket
    from trigate.router.deployments import Deployment
    from trigate.router.router import RouteProgress

Headers = list[tuple[bytes, bytes]]

# How much of a client's model name goes back in the model-group headers.
MAX_ECHOED_MODEL_LENGTH = 256
# Past this many deployments (wildcards make them per name), the prepared headers start over.
MAX_PREPARED = 4096
_VERSION = (b"x-litellm-version", __version__.encode())
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Small counts (retries, fallbacks), encoded once.
_COUNTS = [str(n).encode() for n in range(16)]


class _Prepared:
    """A deployment's headers, and its own timeouts (whole, streamed) as LiteLLM shows them;
    `checked` when all of them pass h11's checks (its ids and API base come from config)."""

    __slots__ = ("checked", "entry", "headers", "stream_timeout", "timeout")

    def __init__(self, deployment: Deployment) -> None:
        self.entry: object = deployment.entry
        encoded = deployment.id.encode()
        self.headers = [(b"x-trigate-deployment", encoded), (b"x-litellm-model-id", encoded)]
        base = _public_base(deployment.params.api_base)
        if base:
            self.headers.append((b"x-litellm-model-api-base", base.encode()))
        params = deployment.params
        self.timeout = (b"x-litellm-timeout", str(params.timeout).encode())
        own = params.stream_timeout or params.timeout
        self.stream_timeout = (b"x-litellm-timeout", str(own).encode())
        every = [*self.headers, self.timeout, self.stream_timeout]
        self.checked = field_names(every) is not None


# Per deployment id: what was prepared for it.
_by_deployment: dict[str, _Prepared] = {}
# Per model group: LiteLLM's names for the key's remaining requests and tokens in it.
_remaining_names: dict[str, tuple[bytes, bytes] | None] = {}


def build(context: RequestContext) -> Headers:
    """The headers every response of the request gets."""
    outside, own = build_parts(context)
    return [*outside, *own]


def build_parts(context: RequestContext) -> tuple[Headers, Headers]:
    """The headers every response of the request gets: those carrying a value from
    outside the gateway, and its own (never a framing field), which need no check."""
    request_id = context.request_id.encode()  # hex of random bytes
    echoed = context.client_request_id
    outside: Headers = []
    own: Headers = [
        (b"x-trigate-request-id", request_id),
        (b"x-litellm-call-id", request_id),
        _VERSION,
    ]
    if echoed is not None:
        outside.append((b"x-request-id", echoed.encode("latin-1")))
    else:
        own.append((b"x-request-id", request_id))
    # A loop, not a comprehension: in Python 3.11 that is a function made and called.
    for name, value in context.headers.items():
        outside.append((name.encode(), value.encode()))
    wait = context.upstream_wait
    if wait is not None:
        overhead = f"{max(context.elapsed() - wait, 0.0) * 1000:.3f}".encode()
        own += [
            (b"x-trigate-overhead-ms", overhead),
            (b"x-litellm-overhead-duration-ms", overhead),
            (b"x-litellm-response-duration-ms", f"{wait * 1000:.3f}".encode()),
        ]
    route = context.route
    if route is not None:
        _route_headers(route, outside, own)
    call = context.call
    if call is not None:
        _call_headers(call, route, outside, own)
    return outside, own


def _route_headers(route: RouteProgress, outside: Headers, own: Headers) -> None:
    group = route.model_group[:MAX_ECHOED_MODEL_LENGTH]
    # The client chose this name: a control character would make h11 refuse the response.
    if group.isprintable():
        encoded = group.encode()
        outside += [(b"x-trigate-model-group", encoded), (b"x-litellm-model-group", encoded)]
    deployment = route.deployment
    if deployment is not None:
        prepared = _prepared(deployment)
        (own if prepared.checked else outside).extend(prepared.headers)
    retries = _count(route.retries)
    fallbacks = _count(route.fallbacks)
    own += [
        (b"x-trigate-attempted-retries", retries),
        (b"x-litellm-attempted-retries", retries),
        (b"x-trigate-attempted-fallbacks", fallbacks),
        (b"x-litellm-attempted-fallbacks", fallbacks),
    ]


def _count(n: int) -> bytes:
    return _COUNTS[n] if n < len(_COUNTS) else str(n).encode()


def _prepared(deployment: Deployment) -> _Prepared:
    """A deployment's headers, encoded once for as long as its entry lasts."""
    prepared = _by_deployment.get(deployment.id)
    if prepared is not None and prepared.entry is deployment.entry:
        return prepared
    if len(_by_deployment) >= MAX_PREPARED:
        _by_deployment.clear()
    prepared = _by_deployment[deployment.id] = _Prepared(deployment)
    return prepared


def _public_base(api_base: str | None) -> str | None:
    """The API base as LiteLLM shows it, without its query; without any credentials in
    its authority either, which LiteLLM would show."""
    if not api_base:
        return None
    parts = urlsplit(api_base)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _call_headers(call: Call, route: RouteProgress | None, outside: Headers, own: Headers) -> None:
    """What depends on the call: the retries and timeout it was allowed, its cost, and the
    key's spend and limits."""
    attempted = call.attempted
    request = attempted.request if attempted is not None else None
    retries = call.gateway.router.settings.num_retries
    if request is not None and request.num_retries is not None:
        retries = min(retries, request.num_retries)
    own.append((b"x-litellm-max-retries", _count(retries)))
    deployment = route.deployment if route is not None else None
    if deployment is not None:
        if request is None:
            prepared = _prepared(deployment)
            timeout = prepared.stream_timeout if call.stream else prepared.timeout
            (own if prepared.checked else outside).append(timeout)
        else:
            seconds = request.attempt_timeout(deployment, call.stream)
            _number(b"x-litellm-timeout", seconds, outside, own)
    cost = call.cost
    if cost is not None:
        _number(b"x-litellm-response-cost", cost, outside, own)
    ticket = call.cache_ticket
    if ticket is not None:
        _cache_headers(ticket, outside, own)
    key = call.caller.key
    spend = float(key.get("spend") or 0.0) if key is not None else 0.0
    _number(b"x-litellm-key-spend", spend + (cost or 0.0), outside, own)
    if key is None:
        return
    for column, name in (
        ("max_budget", b"x-litellm-key-max-budget"),
        ("tpm_limit", b"x-litellm-key-tpm-limit"),
        ("rpm_limit", b"x-litellm-key-rpm-limit"),
    ):
        value = key.get(column)
        if value is not None:
            outside.append((name, str(value).encode()))  # as stored, whatever it is
    if route is not None:
        _remaining(call, key, route.model_group, outside)


def _cache_headers(ticket: Ticket, outside: Headers, own: Headers) -> None:
    """What the response cache did: LiteLLM's key, the gateway's own field when it is
    the digest alone (hex), checked as a value from outside after a namespace (the
    config's or the client's); and whether it was a hit, once the lookup knows."""
    (outside if ticket.namespaced else own).append((CACHE_KEY_HEADER, ticket.key.encode()))
    if ticket.state is not None:
        own.append((CACHE_STATE_HEADER, ticket.state))


def _number(name: bytes, value: float, outside: Headers, own: Headers) -> None:
    """A number as LiteLLM shows it (`str`). That of a float or an int has no space or
    control character, so it is one of the gateway's own fields; anything else that
    came here (a subclass, a Decimal) is checked as a value from outside."""
    kind = type(value)
    (own if kind is float or kind is int else outside).append((name, str(value).encode()))


def _remaining(call: Call, key: dict[str, object], group: str, headers: Headers) -> None:
    """LiteLLM's `x-litellm-key-remaining-requests-<group>` and `-tokens-<group>`: what
    is left of the key's own rpm and tpm this minute, once this request is counted (the
    rate limiter's `x-ratelimit-remaining-*`, which are the key's when it has limits)."""
    limits = call.context.headers
    requests = limits.get("x-ratelimit-remaining-requests")
    tokens = limits.get("x-ratelimit-remaining-tokens")
    if (requests is None or key.get("rpm_limit") is None) and (
        tokens is None or key.get("tpm_limit") is None
    ):
        return
    names = _remaining_names[group] if group in _remaining_names else _names_for(group)
    if names is None:
        return
    if requests is not None and key.get("rpm_limit") is not None:
        headers.append((names[0], requests.encode()))
    if tokens is not None and key.get("tpm_limit") is not None:
        headers.append((names[1], tokens.encode()))


def _names_for(group: str) -> tuple[bytes, bytes] | None:
    """LiteLLM's header names for a group: `/` and `:` become `-` (h11 refuses them);
    a group whose name cannot be a header name still has no such header."""
    safe = group.replace("/", "-").replace(":", "-")
    names = None
    if _TOKEN.fullmatch(safe) and len(safe) <= MAX_ECHOED_MODEL_LENGTH:
        names = (
            f"x-litellm-key-remaining-requests-{safe}".encode(),
            f"x-litellm-key-remaining-tokens-{safe}".encode(),
        )
    if len(_remaining_names) >= MAX_PREPARED:
        _remaining_names.clear()
    _remaining_names[group] = names
    return names
