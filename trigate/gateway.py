"""One worker's gateway: the state every request is served with.

Everything expensive is built once, at start-up: the token encodings, the
upstream HTTP client (one connection pool per worker) and each deployment's
provider adapter. `start` and `stop` bracket the worker's life.
"""

from __future__ import annotations

import functools

import httpx
import trio

from trigate.auth import Authenticator
from trigate.config import GatewayConfig
from trigate.errors import secrets
from trigate.router.deployments import ModelGroups
from trigate.router.health import run_health_checks
from trigate.router.router import Router
from trigate.spend import LogRecordSink, RecordSink
from trigate.tokens import TokenCounter


@functools.cache
def _shared_counter() -> TokenCounter:
    return TokenCounter.load()


async def load_token_counter() -> TokenCounter:
    """The process's token counter; the encodings are unpacked and verified only once."""
    return await trio.to_thread.run_sync(_shared_counter)


class Gateway:
    """The configuration, credentials and upstream clients of one worker."""

    def __init__(
        self,
        config: GatewayConfig,
        master_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        records: RecordSink | None = None,
    ) -> None:
        self.config = config
        self.auth = Authenticator(master_key)
        self.records = records or LogRecordSink()
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._counter: TokenCounter | None = None
        self._router: Router | None = None
        secrets.add(master_key)
        secrets.extend(entry.litellm_params.api_key for entry in config.model_list)

    @property
    def counter(self) -> TokenCounter:
        assert self._counter is not None, "the gateway has not started"
        return self._counter

    @property
    def router(self) -> Router:
        assert self._router is not None, "the gateway has not started"
        return self._router

    @property
    def groups(self) -> ModelGroups:
        return self.router.groups

    async def start(self) -> None:
        self._counter = await load_token_counter()
        self._http = httpx.AsyncClient(transport=self._transport or self._default_transport())
        groups = ModelGroups.build(self.config, self._http, self._counter)
        self._router = Router(groups, self.config.router)

    def start_background_tasks(self, nursery: trio.Nursery) -> None:
        settings = self.config.router
        if settings.background_health_checks:
            nursery.start_soon(run_health_checks, self.router, settings.health_check_interval)

    async def stop(self) -> None:
        if self._http is not None:
            with trio.CancelScope(shield=True):
                await self._http.aclose()

    def _default_transport(self) -> httpx.AsyncBaseTransport:
        limit = self.config.general_settings.max_upstream_connections
        # Never HTTP/2: httpcore does not reset an abandoned stream, so a client
        # disconnect would leave the upstream generating (and billing) tokens.
        return httpx.AsyncHTTPTransport(
            http2=False,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        )
