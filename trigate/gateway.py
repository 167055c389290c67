"""One worker's gateway: the state every request is served with.

Everything expensive is built once, at start-up: the token encodings, the
store, the upstream HTTP client (one connection pool per worker) and each
deployment's provider adapter. Background work (the spend writer, budget
window resets, expiry of stored responses, health probes, following other
processes' model changes, and with Redis the fleet link, the change feed, the
router's sync and the calls that carry limits) runs in one nursery that `stop`
cancels and waits for, so the last spend rows are flushed before the store closes.

What a reload may change is one frozen `LiveState`: the config file as last read,
the model list, the router over it (routing strategy, retries, fallbacks...), the
Redis link its `router_settings` name, and the hooks. A reload (SIGHUP,
`POST /config/reload`) or another process's model change builds a new one and swaps
it in with one assignment; a request that reads `gateway.live` once at its start
reads all of it from the state it started with. A reload that changes the Redis
settings connects the new link first, swaps, and keeps the old one open until the
requests it admitted have settled through it.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from prometheus_client import CollectorRegistry

from trigate.alerts.hub import Alerts
from trigate.alerts.settings import AlertSettings
from trigate.auth import Authenticator, TokenVerifier
from trigate.cache import ResponseCache, cache_settings
from trigate.changes import Changes
from trigate.clock import wall_time
from trigate.config import ConfigError, GatewayConfig
from trigate.end_users import EndUsers
from trigate.errors import GatewayError, secrets
from trigate.export.exports import Exports
from trigate.fleet import Fleet
from trigate.guardrails.hook import GuardrailHook
from trigate.guardrails.registry import guardrail_set
from trigate.guardrails.runner import GuardrailSet
from trigate.hooks import Hooks, load_hooks
from trigate.jwt_auth import JwtVerifier
from trigate.limits import LEASE_TTL, FleetLimits, Limits
from trigate.mcp_gateway.catalog import MCPCatalog
from trigate.new_users import new_user_defaults
from trigate.proxy_budget import PROXY_BUDGET_USER, fallback_row, proxy_budget
from trigate.proxy_budget import install as install_proxy_budget
from trigate.router.catalog import ModelCatalog
from trigate.router.deployments import Deployment, ModelGroups
from trigate.router.fleet_sync import FleetSync
from trigate.router.health import run_health_checks
from trigate.router.router import Router
from trigate.router_settings import RouterSettings
from trigate.sealing import Sealer
from trigate.spend import RecordSink, RequestRecord, SpendLedger
from trigate.spend.prices import PriceTable, TokenCounts, cost
from trigate.store import CUSTOMERS, MCP_SERVERS, MODELS, OWNERS, Row, Store
from trigate.telemetry import SAMPLE_INTERVAL, Telemetry
from trigate.tls import client_context
from trigate.tokens import TokenCounter
from trigate.transport import HTTP11Transport
from trigate.usage import Usage

logger = logging.getLogger("trigate")

# The resetter sleeps until the next window ends, but looks again at least this often,
# since other workers may create keys with earlier windows.
BUDGET_RESET_MAX_SLEEP = 60.0
# How often stored Responses API responses past their retention are deleted.
RESPONSE_EXPIRY_INTERVAL = 3600.0
# The output a budget reserves for a request to a priced model whose output limit is
# unknown (neither the request's `max_tokens` nor the model's `max_output_tokens`): a
# long answer's worth. Such a request can cost more than it reserved; the README says so.
UNKNOWN_OUTPUT_ALLOWANCE = 8192


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _export_settings(config: GatewayConfig) -> tuple[Any, ...]:
    """What the logging callbacks and alerts are built from."""
    litellm = config.litellm_settings
    general = config.general_settings.model_extra or {}
    return (
        *(litellm.get(name) for name in ("callbacks", "success_callback", "failure_callback")),
        litellm.get("s3_callback_params"),
        litellm.get("turn_off_message_logging"),
        (config.model_extra or {}).get("callback_settings"),
        *(general.get(name) for name in ("alerting", "alert_types", "alerting_threshold")),
        general.get("alert_to_webhook_url"),
    )


# What the hooks were loaded from before any were: differs from every config's.
_NOTHING_LOADED = object()


@functools.cache
def _process_counter() -> TokenCounter:
    return TokenCounter.load()


@functools.cache
def _process_prices() -> PriceTable:
    return PriceTable.load()


def response_cache(config: GatewayConfig, registry: CollectorRegistry) -> ResponseCache | None:
    """The cache `litellm_settings.cache` and `cache_params` ask for (trigate.cache)."""
    router = config.router
    settings = cache_settings(config.litellm_settings, router.redis, router.redis_timeout)
    if settings is None:
        return None
    secrets.add(urlsplit(settings.redis_url or "").password)
    return ResponseCache(settings, registry, router.redis_key_prefix)


async def load_token_counter() -> TokenCounter:
    """The process's token counter; the encodings are unpacked and verified only once."""
    return await trio.to_thread.run_sync(_process_counter)


@dataclass(frozen=True, slots=True)
class LiveState:
    """Everything a reload may change, swapped as one (see the module's docstring)."""

    # The config file as last (re)loaded. Its `general_settings` are the server's own
    # and apply at the next start.
    config: GatewayConfig
    # The deployments served: the file's and the store's, by model group.
    groups: ModelGroups
    # Routes over `groups` under `config.router`.
    router: Router
    # The Redis link `config.router` names (one that is not configured without Redis).
    fleet: Fleet
    # The request hooks `litellm_settings.callbacks` names; None without any, so that a
    # request asks only `hooks is None`.
    hooks: Hooks | None = None

    @property
    def settings(self) -> RouterSettings:
        """`router_settings` (with LiteLLM's keys from `litellm_settings`)."""
        return self.config.router


@dataclass(slots=True, eq=False)
class _Link:
    """One Redis link and this worker's parts of it: limits, the router's sync."""

    fleet: Fleet
    limits: FleetLimits
    sync: FleetSync
    # The link's background tasks: the connection and limit calls (`scope`), and what
    # only the live link does, the router's sync and the change feed (`duties`).
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    duties: trio.CancelScope = field(default_factory=trio.CancelScope)
    nursery: trio.Nursery | None = None


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
        # The config read at start-up: the server's settings come from it.
        self._config = config
        # LiteLLM's global proxy budget (`litellm_settings.max_budget`); None without one.
        try:
            self.proxy_budget = proxy_budget(config.litellm_settings)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self._proxy_budget_fallback = fallback_row(self.proxy_budget)
        # What a user SSO sign-in or a JWT's `user_id_upsert` makes starts with.
        self.new_user_defaults = new_user_defaults(config.litellm_settings)
        # The deployments served: the file's (`config_path`, re-read on reload) and the store's.
        sealer = Sealer.from_environ(master_key)
        self.models = ModelCatalog(config, config_path, sealer, self._serve)
        # The MCP servers served (trigate.mcp_gateway): the file's and the store's.
        self.mcp = MCPCatalog(config.mcp, sealer, config.mcp_limits)
        self.telemetry = Telemetry(config)
        # The logging callbacks (sinks) finished requests are exported to.
        try:
            self.exports = Exports(
                config.litellm_settings,
                _mapping((config.model_extra or {}).get("callback_settings")),
                self.telemetry.metrics.callbacks,
            )
        except ValueError as error:
            raise ConfigError(f"litellm_settings callbacks: {error}") from None
        if self.telemetry.tracing is not None:
            self.exports.adopt(self.telemetry.tracing.outbox)
        self.alerts = self._alerts_for(config)
        self.telemetry.alerts = self.alerts
        # The hooks and guardrails of the file as read: one that cannot load stops the
        # start here.
        self._hooks_named: object = _NOTHING_LOADED
        # The configured guardrails (`/guardrails/list` reads them); None without any.
        self.guardrails: GuardrailSet | None = None
        self._hooks: Hooks | None = None
        self._hooks = self._hooks_of(config)
        # The response cache `litellm_settings.cache` switches on; None without one, so
        # that a request asks only `cache is None`. Its settings apply at start-up.
        self.cache = response_cache(config, self.telemetry.metrics.registry)
        # Admin changes, told to every process of the fleet (and heard from them).
        self.changes = Changes(Limits.budget_keys)
        self.changes.listen((MODELS,), self.models.nudge, self.models.nudge)
        self.changes.listen((MCP_SERVERS,), self.mcp.nudge, self.mcp.nudge)
        fleet = self._fleet_for(config.router)
        self.limits = Limits(fleet, lambda kind, key: self.ledger.unflushed(kind, key))
        self._link = _Link(fleet, self.limits.fleet_limits, FleetSync(fleet))
        self._live: LiveState | None = None
        self._master_key = master_key
        self._transport = transport
        self._observer = records
        self._counter: TokenCounter | None = None
        self._store: Store | None = None
        self._ledger: SpendLedger | None = None
        self._auth: Authenticator | None = None
        # Verifiers of bearer tokens that are not keys (the UI's sessions, JWTs), given
        # to the authenticator when it is made at start.
        self.token_verifiers: list[TokenVerifier] = []
        self._end_users: EndUsers | None = None
        self._background: trio.CancelScope | None = None
        self._background_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Set once a graceful stop begins: readiness fails so balancers send no more work.
        self.draining = False
        secrets.add(master_key)
        secrets.extend(entry.litellm_params.api_key for entry in config.model_list)

    @property
    def live(self) -> LiveState:
        """The state to serve a request with: read it once, at the request's start."""
        assert self._live is not None, "the gateway has not started"
        return self._live

    # The live state's parts, each as it is now.

    @property
    def config(self) -> GatewayConfig:
        return self._live.config if self._live is not None else self._config

    @property
    def groups(self) -> ModelGroups:
        return self.live.groups

    @property
    def router(self) -> Router:
        return self.live.router

    @property
    def fleet(self) -> Fleet:
        return self._link.fleet

    @property
    def counter(self) -> TokenCounter:
        assert self._counter is not None, "the gateway has not started"
        return self._counter

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The upstream transport deployments share (a request's own deployment, too)."""
        assert self._transport is not None, "the gateway has not started"
        return self._transport

    @property
    def store(self) -> Store:
        assert self._store is not None, "the gateway has not started"
        return self._store

    @property
    def master_key(self) -> str:
        """The master key: the UI derives its session key from it, and takes it as the
        admin's password when `UI_PASSWORD` is unset (LiteLLM's default)."""
        return self._master_key

    @property
    def auth(self) -> Authenticator:
        assert self._auth is not None, "the gateway has not started"
        return self._auth

    @property
    def end_users(self) -> EndUsers:
        assert self._end_users is not None, "the gateway has not started"
        return self._end_users

    @property
    def ledger(self) -> SpendLedger:
        assert self._ledger is not None, "the gateway has not started"
        return self._ledger

    async def start(self) -> None:
        self._counter = await load_token_counter()
        self._store = await Store.open(self._config.database_url)
        self._auth = Authenticator(self._master_key, self._store, self.changes)
        self._auth.verifiers = self.token_verifiers
        if self._config.general_settings.enable_jwt_auth and not any(
            isinstance(verifier, JwtVerifier) for verifier in self.token_verifiers
        ):
            jwt_settings = self._config.general_settings.litellm_jwtauth
            self.token_verifiers.append(
                JwtVerifier(jwt_settings, self._store, self.new_user_defaults)
            )
        # Every admin write reaches the caches, here and (with Redis) fleet-wide.
        self._store.watch(self._written)
        self._end_users = EndUsers(self._auth, self._store)
        self._store.watch(self._end_users.written)
        self.changes.listen((CUSTOMERS.kind,), self._end_users.written, self._end_users.resync)
        if self.proxy_budget is not None:
            await install_proxy_budget(self._store, self.proxy_budget)
        proxy_users = (PROXY_BUDGET_USER,) if self.proxy_budget is not None else ()
        self._ledger = SpendLedger(self._store, also_users=proxy_users)
        self._transport = self._transport or self._default_transport()
        prices = await trio.to_thread.run_sync(_process_prices)
        groups = await self.models.start(self._store, self._transport, self._counter, prices)
        config = self.models.file_config
        router = Router(groups, config.router, self._link.sync)
        self._live = LiveState(config, groups, router, self._link.fleet, self._hooks_of(config))

    async def run_background(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The worker's background tasks; run it in the app's nursery."""
        try:
            with trio.CancelScope() as self._background:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._run_link, self._link)
                    await self._take_up(self._link)
                    if self.cache is not None:
                        await nursery.start(self.cache.run)
                    nursery.start_soon(self.ledger.run)
                    if isinstance(self._transport, HTTP11Transport):
                        await nursery.start(self._transport.read_deadlines.run)
                    await nursery.start(self.exports.run)
                    if self.alerts is not None:
                        self.ledger.on_failure = self.alerts.store_failed
                        await nursery.start(self.alerts.run, self.store)
                    nursery.start_soon(self._reset_budgets)
                    nursery.start_soon(self._expire_responses)
                    nursery.start_soon(self.models.run, lambda: self.fleet.configured)
                    nursery.start_soon(self._sample_state)
                    nursery.start_soon(
                        run_health_checks, lambda: self.live.router, self.telemetry.probes
                    )
                    task_status.started()
        finally:
            self._background_done.set()

    async def _serve(self, config: GatewayConfig, groups: ModelGroups) -> None:
        """Serve `groups` under `config` from now on: the catalog's reloads and refreshes
        come here. A changed Redis link is connected before the swap."""
        if self._live is None:
            return  # not started: `start` serves what the catalog has then
        self._warn_if_proxy_budget_changed(config)
        self._warn_if_exports_changed(config)
        self._warn_if_cache_changed(config)
        hooks = self._hooks_of(config)
        self.mcp.reload(config.mcp, config.mcp_limits)
        link = self._link
        if not link.fleet.serves(config.router):
            link = _Link(
                fleet := self._fleet_for(config.router), self.limits.link(fleet), FleetSync(fleet)
            )
            if self._nursery is not None:
                await self._nursery.start(self._run_link, link)
        router = Router(groups, config.router, link.sync)
        previous = self._swap(LiveState(config, groups, router, link.fleet, hooks), link)
        if previous is not None:
            previous.duties.cancel()
            if self._nursery is not None:
                await self._take_up(link)
                self._nursery.start_soon(self._retire, previous)

    def _hooks_of(self, config: GatewayConfig) -> Hooks | None:
        """The hooks `config` names: those loaded already while it names the same ones,
        else loaded anew. One that cannot load is a `ConfigError` before anything is
        swapped: a reload that names a guardrail the gateway cannot run must not serve
        without it."""
        callbacks = config.litellm_settings.get("callbacks")
        named = (callbacks, config.guardrails)
        if named != self._hooks_named:
            deployments = {e.model_name: e.litellm_params for e in reversed(config.model_list)}
            try:
                guardrails = guardrail_set(config.guardrails, self.telemetry.metrics, deployments)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            # Guardrails first: no hook (a cache) may answer a request they would block.
            first = [GuardrailHook(guardrails)] if guardrails is not None else []
            try:
                self._hooks = load_hooks(callbacks, first)
            except ValueError as error:
                raise ConfigError(f"litellm_settings.callbacks: {error}") from None
            self.guardrails = guardrails
            self._hooks_named = named
        return self._hooks

    def _swap(self, live: LiveState, link: _Link) -> _Link | None:
        """The one step: new requests see `live`, and admit through its link. Returns the
        link it replaced, if any."""
        self._live = live
        if link is self._link:
            return None
        previous, self._link = self._link, link
        self.limits.follow(link.limits)
        return previous

    def _fleet_for(self, settings: RouterSettings) -> Fleet:
        secrets.add(urlsplit(settings.redis or "").password)
        return Fleet.from_settings(settings, self._redis_lost)

    def _redis_lost(self) -> None:
        self.telemetry.metrics.redis_fallback("shared_state")
        if self.alerts is not None:
            self.alerts.redis_lost()

    def _alerts_for(self, config: GatewayConfig) -> Alerts | None:
        """The alerts `general_settings.alerting` asks for; None without any."""
        try:
            settings = AlertSettings.read(config.general_settings.model_extra or {}, os.environ)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not settings.on:
            return None
        metrics = self.telemetry.metrics
        return Alerts(
            settings,
            lambda: self.fleet,
            metrics.callbacks,
            lambda kind, ident: self.store.get(kind, ident),
            lambda kind, ident: self.ledger.unflushed(kind, ident),
            self._group_members,
            metrics.alert_counted,
        )

    def _group_members(self, group: str) -> list[Deployment]:
        try:
            return list(self.groups.deployments(group))
        except GatewayError:
            return []

    async def _run_link(self, link: _Link, *, task_status: trio.TaskStatus[None]) -> None:
        """A link's connection (reached, or found unreachable, before this returns) and
        its limit calls, until it is retired."""
        with link.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(link.fleet.run)
                nursery.start_soon(self.limits.run, link.limits)
                # Open for the link's duties until it is retired, whatever else ends.
                nursery.start_soon(trio.sleep_forever)
                link.nursery = nursery
                task_status.started()

    async def _take_up(self, link: _Link) -> None:
        """The live link's duties: the change feed, and the router's sync (its first sync
        done before this returns)."""
        assert link.nursery is not None
        await link.nursery.start(self._link_duties, link)

    async def _link_duties(self, link: _Link, *, task_status: trio.TaskStatus[None]) -> None:
        with link.duties:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.changes.run, link.fleet)
                if link.fleet.configured:
                    await nursery.start(link.sync.run, lambda: self.live.groups.all())
                task_status.started()

    async def _retire(self, link: _Link) -> None:
        """Close a replaced link once the requests it admitted have settled through it
        (bounded: their leases expire in Redis after `LEASE_TTL` anyway)."""
        with trio.move_on_after(LEASE_TTL):
            await link.limits.settled()
        link.scope.cancel()

    def _written(self, kind: str, key: str) -> None:
        """The store wrote a row: drop it from caches here, and tell the fleet."""
        if kind == MODELS:
            self.changes.announce(kind, key)
        elif kind == MCP_SERVERS:
            self.mcp.nudge()
            self.changes.announce(kind, key)
        else:
            self.auth.forget(kind, key)

    def begin_drain(self) -> None:
        self.draining = True

    async def record(self, record: RequestRecord) -> None:
        """Queue the record's spend-log row; without a record sink (tests attach one),
        this reaches no checkpoint (`records_at_once`)."""
        await self.ledger.write(record)
        self.exports.offer(record)
        if self.alerts is not None:
            self.alerts.record(record)
        if self._observer is not None:
            await self._observer.write(record)

    @property
    def records_at_once(self) -> bool:
        """Whether `record` finishes without a checkpoint: the ledger only queues a row,
        and no record sink is attached whose write is awaited."""
        return self._observer is None

    @property
    def prices(self) -> PriceTable:
        """The price table, loaded (in a thread) by `start`: what a request that names a
        model no deployment serves (a pass-through's) is priced by."""
        return _process_prices()

    def cost(self, deployment: Deployment, usage: Usage) -> float:
        """What a request cost, at the deployment's prices (configured, else the table's);
        a request billed by the unit was priced by its exchange."""
        if usage.unit_cost is not None:
            return usage.unit_cost
        return cost(deployment.price, usage.priced_counts())

    def _warn_if_proxy_budget_changed(self, config: GatewayConfig) -> None:
        """The proxy budget is the start-up's (its user is made then): a reload that
        changes it is told so, never ignored in silence."""
        try:
            changed = proxy_budget(config.litellm_settings) != self.proxy_budget
        except ValueError:
            changed = True
        if changed:
            logger.warning(
                "config reload: litellm_settings.max_budget or budget_duration changed; "
                "the proxy budget changes at restart"
            )

    def _warn_if_exports_changed(self, config: GatewayConfig) -> None:
        """Logging callbacks and alerts are the start-up's: a reload that changes them is
        told so, never ignored in silence."""
        if _export_settings(config) != _export_settings(self._config):
            logger.warning(
                "config reload: logging callbacks or alerting changed; they change at restart"
            )

    def _warn_if_cache_changed(self, config: GatewayConfig) -> None:
        """The response cache is the start-up's (its entries and calls in flight live
        on): a reload that changes its settings is told so, never ignored in silence."""
        router = config.router
        current = self.cache.settings if self.cache is not None else None
        try:
            wanted = cache_settings(config.litellm_settings, router.redis, router.redis_timeout)
            changed = wanted != current
        except ConfigError:
            changed = True
        if changed:
            logger.warning(
                "config reload: litellm_settings.cache or cache_params changed; the "
                "response cache changes at restart"
            )

    async def proxy_budget_row(self) -> Row | None:
        """The proxy budget's user (cached as a key's user is), or None without one. Its
        user deleted by an admin, the config's budget still binds (fail closed), counted
        from the spend this worker still knows of."""
        if self.proxy_budget is None:
            return None
        row = await self.auth.row("users", PROXY_BUDGET_USER)
        return row if row is not None else self._proxy_budget_fallback

    def max_cost(self, group: str, prompt_tokens: int, output_tokens: int | None) -> float:
        """The most a request to `group` may cost: its prompt and `output_tokens` (None:
        the model's output limit) at its priciest deployment. A priced deployment whose
        output has no known limit is reserved `UNKNOWN_OUTPUT_ALLOWANCE` tokens of
        output: reserving all a budget has left would refuse every other request made
        while this one runs."""
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
                output = UNKNOWN_OUTPUT_ALLOWANCE if price.output else 0
            worst = max(worst, cost(price, TokenCounts(prompt_tokens, int(output))))
        return worst

    def sample_state(self) -> None:
        """Refresh the metrics that are read, not counted: deployment health, the spend log."""
        ledger = self.ledger
        metrics = self.telemetry.metrics
        metrics.sample(self.groups.all(), ledger.queued, ledger.dropped, ledger.refused)

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            if self._background is not None:
                self._background.cancel()
                await self._background_done.wait()
            await self.telemetry.stop()
            if self._transport is not None:
                await self._transport.aclose()
            if self.guardrails is not None:  # their services' idle connections
                await self.guardrails.aclose()
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
        return HTTP11Transport(
            max_connections=limit,
            ssl_context=client_context(),
            max_response_bytes=self.config.max_upstream_response_bytes,
        )
