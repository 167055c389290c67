"""One worker's gateway: the state every request is served with.

Everything expensive is built once, at start-up: the token encodings, the
store, the upstream HTTP client (one connection pool per worker) and each
deployment's provider adapter. Background work (the spend writer, budget
window resets, expiry of stored responses, health probes, the poll for deployments
other processes added, and with Redis the fleet link, the key change feed and the
calls that carry limits) runs in one nursery that `stop` cancels and waits for, so
the last spend rows are flushed before the store closes.
"""

from __future__ import annotations

import functools
import logging
import math
from urllib.parse import urlsplit

import httpx
import trio

from trigate.auth import Authenticator
from trigate.clock import wall_time
from trigate.config import GatewayConfig
from trigate.errors import secrets
from trigate.fleet import Fleet
from trigate.limits import Limits
from trigate.router.catalog import ModelCatalog
from trigate.router.deployments import Deployment, ModelGroups
from trigate.router.health import run_health_checks
from trigate.router.router import Router
from trigate.sealing import Sealer
from trigate.spend import RecordSink, RequestRecord, SpendLedger
from trigate.spend.prices import PriceTable, TokenCounts, cost
from trigate.store import OWNERS, Store
from trigate.telemetry import SAMPLE_INTERVAL, Telemetry
from trigate.tokens import TokenCounter
from trigate.transport import H11Transport
from trigate.usage import Usage

logger = logging.getLogger("trigate")

# The resetter sleeps until the next window ends, but looks again at least this often,
# since other workers may create keys with earlier windows.
BUDGET_RESET_MAX_SLEEP = 60.0
# How often stored Responses API responses past their retention are deleted.
RESPONSE_EXPIRY_INTERVAL = 3600.0


@functools.cache
def _shared_counter() -> TokenCounter:
    return TokenCounter.load()


@functools.cache
def _shared_prices() -> PriceTable:
    return PriceTable.load()


async def load_token_counter() -> TokenCounter:
    """The process's token counter; the encodings are unpacked and verified only once."""
    return await trio.to_thread.run_sync(_shared_counter)


class Gateway:
    """The configuration, credentials, store and upstream clients of one worker."""

    def __init__(
        self,
        config: GatewayConfig,
        master_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        records: RecordSink | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        # The deployments served: the file's (`config_path`, re-read on reload) and the store's.
        self.models = ModelCatalog(config, config_path, Sealer.from_environ(master_key))
        self.telemetry = Telemetry(config)
        settings = config.router
        self.fleet = Fleet(
            settings.redis,
            timeout=settings.redis_timeout,
            prefix=settings.redis_key_prefix,
            on_fallback=lambda: self.telemetry.metrics.redis_fallback("shared_state"),
        )
        self.limits = Limits(self.fleet, lambda table, key: self.ledger.unflushed(table, key))
        self._master_key = master_key
        self._transport = transport
        self._observer = records
        self._counter: TokenCounter | None = None
        self._router: Router | None = None
        self._store: Store | None = None
        self._ledger: SpendLedger | None = None
        self._auth: Authenticator | None = None
        self._background: trio.CancelScope | None = None
        self._background_done = trio.Event()
        # Set once a graceful stop begins: readiness fails so balancers send no more work.
        self.draining = False
        secrets.add(master_key)
        secrets.extend(entry.litellm_params.api_key for entry in config.model_list)
        secrets.add(urlsplit(config.router.redis or "").password)

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

    @property
    def store(self) -> Store:
        assert self._store is not None, "the gateway has not started"
        return self._store

    @property
    def auth(self) -> Authenticator:
        assert self._auth is not None, "the gateway has not started"
        return self._auth

    @property
    def ledger(self) -> SpendLedger:
        assert self._ledger is not None, "the gateway has not started"
        return self._ledger

    async def start(self) -> None:
        self._counter = await load_token_counter()
        self._store = await Store.open(self.config.database_url)
        self._auth = Authenticator(
            self._master_key, self._store, self.fleet, self.limits.shared_state
        )
        self._ledger = SpendLedger(self._store)
        self._transport = self._transport or self._default_transport()
        prices = await trio.to_thread.run_sync(_shared_prices)
        self._router = await self.models.start(
            self._store, self._transport, self._counter, prices, self.fleet
        )

    async def run_background(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The worker's background tasks; run it in the app's nursery."""
        try:
            with trio.CancelScope() as self._background:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.fleet.run)
                    if self.fleet.configured:
                        await nursery.start(self.router.run_shared)
                    nursery.start_soon(self.auth.share_changes)
                    nursery.start_soon(self.limits.run)
                    nursery.start_soon(self.ledger.run)
                    nursery.start_soon(self._reset_budgets)
                    nursery.start_soon(self._expire_responses)
                    nursery.start_soon(self.models.run)
                    nursery.start_soon(self._sample_state)
                    settings = self.config.router
                    if settings.background_health_checks:
                        nursery.start_soon(
                            run_health_checks,
                            self.router,
                            settings.health_check_interval,
                            self.telemetry.probes,
                        )
                    task_status.started()
        finally:
            self._background_done.set()

    def begin_drain(self) -> None:
        self.draining = True

    async def record(self, record: RequestRecord) -> None:
        await self.ledger.write(record)
        if self._observer is not None:
            await self._observer.write(record)

    def cost(self, deployment: Deployment, usage: Usage) -> float:
        """What a request cost, at the deployment's prices (configured, else the table's)."""
        return cost(deployment.price, usage.priced_counts())

    def max_cost(self, group: str, prompt_tokens: int, output_tokens: int | None) -> float:
        """The most a request to `group` may cost: its prompt and `output_tokens` (None:
        the model's output limit) at its priciest deployment. Infinite when a priced
        deployment's output has no known limit, so a budget reserves all it has left."""
        worst = 0.0
        for deployment in self.groups.deployments(group):
            price = deployment.price
            if price is None or not price.priced:
                continue
            output = output_tokens
            if output is None:
                output = price.max_output_tokens or deployment.entry.model_info.get(
                    "max_output_tokens"
                )
            if output is None:
                if price.output:
                    return math.inf
                output = 0
            worst = max(worst, cost(price, TokenCounts(prompt_tokens, int(output))))
        return worst

    def sample_state(self) -> None:
        """Refresh the metrics that are read, not counted: deployment health, the spend log."""
        ledger = self.ledger
        self.telemetry.metrics.sample(self.groups.all(), ledger.queued, ledger.dropped)

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            if self._background is not None:
                self._background.cancel()
                await self._background_done.wait()
            await self.telemetry.stop()
            if self._transport is not None:
                await self._transport.aclose()
            if self._store is not None:
                await self._store.close()

    async def _reset_budgets(self) -> None:
        """Zero spend when budget windows end, sleeping until the next one is due."""
        while True:
            try:
                for owner in OWNERS:
                    await self.store.reset_due_budgets(owner.kind, wall_time())
                due = await self.store.next_budget_reset()
            except Exception as error:  # any store failure: retried on the next round
                logger.warning("budget window reset failed: %s", error)
                due = None
            wait = BUDGET_RESET_MAX_SLEEP if due is None else due - wall_time()
            await trio.sleep(min(max(wait, 0.0), BUDGET_RESET_MAX_SLEEP))

    async def _sample_state(self) -> None:
        """Every worker's sampled metrics stay fresh, whichever worker answers a scrape."""
        while True:
            self.sample_state()
            await trio.sleep(SAMPLE_INTERVAL)

    async def _expire_responses(self) -> None:
        """Delete stored responses past `responses_retention_days`. Reads skip them
        already; this only keeps the table from growing."""
        while True:
            try:
                await self.store.delete_expired_responses(wall_time())
            except Exception as error:  # any store failure: retried on the next round
                logger.warning("deleting expired responses failed: %s", error)
            await trio.sleep(RESPONSE_EXPIRY_INTERVAL)

    def _default_transport(self) -> httpx.AsyncBaseTransport:
        # HTTP/1.1 only, on purpose: httpcore does not reset an abandoned HTTP/2 stream, so
        # a client disconnect would leave the upstream generating (and billing) tokens.
        limit = self.config.general_settings.max_upstream_connections
        return H11Transport(
            max_connections=limit, max_response_bytes=self.config.max_upstream_response_bytes
        )
