"""Where each of LiteLLM's provider pass-through routes goes, and with which credentials.

`/anthropic/{path}` goes to Anthropic's API at `{path}`, `/gemini/{path}` to Google AI
Studio's, and so on: the client's path, query and body as they came, its virtual key
replaced by the provider's credential. The credential is the one of the `model_list`
deployment of that provider serving the model the request names (else any deployment
of that provider with one), else the provider's environment variable, as LiteLLM
reads them (`ANTHROPIC_API_KEY`, ...); the base URL likewise (`api_base`, else
`ANTHROPIC_API_BASE`, ..., else the provider's public one). Vertex AI's calls carry the
OAuth token of the deployment's credentials (google_credentials.py); Bedrock's are
signed with SigV4 by the deployment's (or the environment's) AWS keys, over the exact
bytes sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from trigate.config import LiteLLMParams
from trigate.errors import InvalidRequest, UpstreamError, echoed
from trigate.gateway import Gateway
from trigate.providers.bedrock import runtime_access
from trigate.router.deployments import Deployment

# A model named in a path: Gemini's and Vertex's `.../models/{model}:method`, Bedrock's
# `/model/{id}/converse`, Azure's `/deployments/{name}/...`.
_PATH_MODEL = re.compile(r"/(?:models|model|deployments)/([^/:]+)")
_VERTEX_PLACE = re.compile(r"/projects/([^/]+)/locations/([^/]+)/")
# The paths that call a model, the only ones a key that is not an admin's may use: the
# rest (files, batches, fine-tuning, a project's resources) reach the provider's account
# itself. OpenAI-style, Anthropic's and Cohere's endpoints; Gemini's and Vertex's model
# methods; Bedrock's runtime calls.
_MODEL_CALL = re.compile(
    r"^(?:/openai)?(?:/v\d+\w*)?(?:/openai)?(?:/deployments/[^/]+)?"
    r"/(?:chat/completions|completions|embeddings|responses|messages|messages/count_tokens"
    r"|chat|embed|rerank)$"
    r"|/models/[^/:]+:(?:generateContent|streamGenerateContent|embedContent|batchEmbedContents"
    r"|countTokens|predict|rawPredict|streamRawPredict)$"
    r"|^/model/[^/]+/(?:converse|converse-stream|invoke|invoke-with-response-stream)$"
)

Sign = Callable[[str, dict[str, str], bytes], dict[str, str]]


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where one pass-through request goes: its URL, the headers that carry the
    provider's credential, a signer (Bedrock's), and the deployment that lent them."""

    url: str
    credentials: dict[str, str]
    provider: str
    deployment: Deployment | None
    sign: Sign | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider route: the deployments that lend it credentials and where it goes."""

    prefixes: tuple[str, ...]
    default_base: str | None
    env: str  # LiteLLM's variable prefix: `{env}_API_KEY`, `{env}_API_BASE`
    header: str  # how the provider takes its key: "x-api-key", or a template with {key}
    # Trailing path of a deployment's `api_base` the client's own path repeats.
    base_suffix: str = ""

    def credential(self, key: str) -> dict[str, str]:
        name, _, template = self.header.partition(":")
        return {name: template.strip().format(key=key) if template else key}


PROVIDERS: dict[str, Provider] = {
    "anthropic": Provider(("anthropic",), "https://api.anthropic.com", "ANTHROPIC", "x-api-key",
                          "/v1"),
    "gemini": Provider(("gemini",), "https://generativelanguage.googleapis.com", "GEMINI",
                       "x-goog-api-key", "/v1beta"),
    "openai": Provider(("openai",), "https://api.openai.com", "OPENAI",
                       "authorization: Bearer {key}", "/v1"),
    "azure": Provider(("azure",), None, "AZURE", "api-key"),
    "cohere": Provider(("cohere", "cohere_chat"), "https://api.cohere.com", "COHERE",
                       "authorization: Bearer {key}", "/v2"),
    "mistral": Provider(("mistral",), "https://api.mistral.ai", "MISTRAL",
                        "authorization: Bearer {key}", "/v1"),
    "vllm": Provider(("hosted_vllm",), None, "HOSTED_VLLM", "authorization: Bearer {key}",
                     "/v1"),
}  # fmt: skip
VERTEX_ROUTES = ("vertex_ai", "vertex-ai")
BEDROCK = "bedrock"
ROUTES = frozenset({*PROVIDERS, *VERTEX_ROUTES, BEDROCK})


def route_prefixes(route: str) -> tuple[str, ...]:
    """The provider prefixes of the deployments a provider route's calls are made with."""
    if route in VERTEX_ROUTES:
        return ("vertex_ai",)
    if route == BEDROCK:
        return ("bedrock",)
    return PROVIDERS[route].prefixes


def calls_model(method: str, path: str) -> bool:
    """Whether the request calls a model (a POST to one of `_MODEL_CALL`'s paths)."""
    return method == "POST" and _MODEL_CALL.search(path) is not None


def requested_model(path: str, body: Any) -> str | None:
    """The model a request names: in its path, which picks the model the upstream runs,
    else in its body (`model`). A body naming another model than its path is refused: the
    key's `models` and the price would bind one model while the upstream ran the other."""
    found = _PATH_MODEL.search(path)
    in_path = unquote(found.group(1)) if found else None
    named = body.get("model") if isinstance(body, dict) else None
    in_body = named if isinstance(named, str) and named else None
    if in_path is not None and in_body is not None and in_body.removeprefix("models/") != in_path:
        raise InvalidRequest(
            f"The path names the model {echoed(in_path)!r} and the body {echoed(in_body)!r}: "
            "a pass-through request may name one model only.",
            param="model",
            code="model_mismatch",
        )
    return in_path or in_body


def serving(gateway: Gateway, prefixes: tuple[str, ...], model: str | None) -> list[Deployment]:
    """The deployments of `prefixes`, those serving `model` (by its upstream name or its
    group's) first."""
    own = [d for d in gateway.groups.all() if d.params.provider in prefixes]
    if model is None:
        return own
    named = [d for d in own if model in (d.upstream_model, d.model_group)]
    return named + [d for d in own if d not in named]


async def upstream_for(
    gateway: Gateway, route: str, path: str, query: str, model: str | None
) -> Upstream:
    """Where `route`'s request for `path` goes. `path` starts with "/"."""
    if route in VERTEX_ROUTES:
        return await _vertex(gateway, path, query, model)
    if route == BEDROCK:
        return _bedrock(gateway, path, query, model)
    provider = PROVIDERS[route]
    found = serving(gateway, provider.prefixes, model)
    lender = next((d for d in found if d.params.api_key), found[0] if found else None)
    key = (lender.params.api_key if lender else None) or os.environ.get(f"{provider.env}_API_KEY")
    base = (lender.params.api_base if lender else None) or os.environ.get(
        f"{provider.env}_API_BASE"
    )
    base = (base or provider.default_base or "").rstrip("/")
    if not base:
        raise _unconfigured(route, f"a {provider.prefixes[0]}/ deployment's api_base")
    if provider.base_suffix and base.endswith(provider.base_suffix):
        base = base.removesuffix(provider.base_suffix)
    credentials = provider.credential(key) if key else {}
    return Upstream(_url(base, path, query), credentials, provider.prefixes[0], lender)


async def _vertex(gateway: Gateway, path: str, query: str, model: str | None) -> Upstream:
    """The Vertex deployment for the project and location the path names (else any),
    its token, and its host (`api_base`, else the location's)."""
    found = serving(gateway, ("vertex_ai",), model)
    place = _VERTEX_PLACE.search(path)
    if place is not None:
        project, location = place.groups()
        found.sort(key=lambda d: (d.params.vertex_project, d.params.vertex_location)
                   != (project, location))  # fmt: skip
    lender = next((d for d in found if hasattr(d.provider, "token")), None)
    if lender is None:
        raise _unconfigured("vertex_ai", "a vertex_ai/ deployment (its project's credentials)")
    location = place.group(2) if place else lender.params.vertex_location or "us-central1"
    host = "aiplatform.googleapis.com"
    base = lender.params.api_base or (
        f"https://{host}" if location == "global" else f"https://{location}-{host}"
    )
    token = lender.provider.token  # type: ignore[attr-defined]
    credentials = dict(await token.headers())
    return Upstream(_url(base.rstrip("/"), path, query), credentials, "vertex_ai", lender)


def _bedrock(gateway: Gateway, path: str, query: str, model: str | None) -> Upstream:
    """The Bedrock deployment serving the model (a model group's name is its deployment's
    model id, as LiteLLM documents), signed with its credentials, else the environment's."""
    found = serving(gateway, ("bedrock",), model)
    lender = found[0] if found else None
    if lender is not None and model is not None and model == lender.model_group:
        upstream_model = lender.upstream_model.removeprefix("converse/").removeprefix("invoke/")
        path = path.replace(f"/model/{model}/", f"/model/{quote(upstream_model, safe='')}/", 1)
    params = lender.params if lender else LiteLLMParams(model="bedrock/pass-through")
    base, sign, credentials = runtime_access(params)
    return Upstream(_url(base, path, query), credentials, "bedrock", lender, sign)


def _url(base: str, path: str, query: str) -> str:
    return f"{base}{path}" + (f"?{query}" if query else "")


def _unconfigured(route: str, what: str) -> UpstreamError:
    return UpstreamError(
        f"The /{route} pass-through has no upstream configured: it needs {what}.",
        status=502,
        code="pass_through_unconfigured",
    )


def custom_headers(configured: Mapping[str, Any]) -> dict[str, str]:
    """A custom endpoint's `headers`, as text (`os.environ/` already resolved)."""
    return {str(name).lower(): str(value) for name, value in configured.items()}
