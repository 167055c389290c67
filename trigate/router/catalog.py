"""The deployments a worker serves, and how they change while it runs.

Two sources make the model list: the config file, and the deployments added
through the admin API (`/model/new`), which live in the store so that every
worker of every instance serves them. Either can change at run time:

- a reload (SIGHUP, `POST /config/reload`) reads the file again and validates
  all of it before anything changes; a bad file changes nothing, and its error
  is logged in one line and raised to the caller;
- another process changed the stored deployments: with Redis it says so on the
  fleet's change channel (trigate/changes.py) and each process reads them at once;
  without Redis, every `POLL_INTERVAL` seconds each process reads their version (one
  small row) and, when it changed, reads them.

Either way the new model list goes to `serve`, which swaps it into the gateway's live
state in one step: requests that already hold a deployment finish on it, deployments
that survive (by id) keep their cooldowns and load, and new requests see the new list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from trigate.config import ConfigError, GatewayConfig, ModelEntry, load_config, parse_model_entry
from trigate.errors import secrets
from trigate.litellm_keys import log_unhonoured
from trigate.router.deployments import ModelGroups
from trigate.sealing import SECRET_PARAMS, Sealer
from trigate.spend.prices import PriceTable
from trigate.store import Row, Store
from trigate.tokens import TokenCounter

logger = logging.getLogger("trigate")

# Without Redis, how often each process looks for deployments another one added, changed
# or deleted.
POLL_INTERVAL = 2.0
POLL_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A deployment from the store: its row as written (secrets sealed; an
    `os.environ/` reference stays one) and the entry it resolves to here."""

    row: Row
    entry: ModelEntry


# Takes a new model list (and the config it came with) into service.
Serve = Callable[[GatewayConfig, ModelGroups], Awaitable[None]]


class ModelCatalog:
    """The config file's deployments and the store's, kept current."""

    def __init__(
        self,
        config: GatewayConfig,
        path: str | None,
        sealer: Sealer,
        serve: Serve,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.file_config = config
        self._serve = serve
        # Seals the secrets of deployments written to the store, and opens them here.
        self.sealer = sealer
        self._path = path
        self._environ = environ if environ is not None else os.environ
        self._stored: dict[str, StoredModel] = {}
        self._version: int | None = None
        self._lock = trio.Lock()
        self._store: Store | None = None
        # The model list being served; deployments that survive a change keep its state.
        self._served: ModelGroups | None = None
        # Set when another process announced a change to the stored deployments.
        self._nudged = trio.Event()
        self._build: tuple[httpx.AsyncBaseTransport, TokenCounter, PriceTable] | None = None

    @property
    def stored(self) -> Mapping[str, StoredModel]:
        """The store's deployments, by id."""
        return self._stored

    async def start(
        self,
        store: Store,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        prices: PriceTable,
    ) -> ModelGroups:
        """The file's deployments and the store's, as they are now; the caller serves them."""
        self._store = store
        self._build = (transport, counter, prices)
        self._version, rows = await store.stored_models()
        self._stored = self._resolved(rows)
        self._served = self._groups(self.file_config, None)
        return self._served

    @property
    def prices(self) -> PriceTable:
        """The price table the deployments are priced by; it also names the models a
        wildcard deployment stands for (`/model_group/info`)."""
        assert self._build is not None, "the catalog has not started"
        return self._build[2]

    def parse(self, raw: dict[str, Any]) -> ModelEntry:
        """A deployment as the config file would hold it, resolved and validated here,
        naming only the variables the config file allows admin-added models, and built
        once as a deployment: what the admin API accepts, or the store holds, must not
        fail later, when it is served. `ConfigError` says what is wrong."""
        allowed = self.file_config.general_settings.admin_model_env_vars
        entry = parse_model_entry(raw, self._environ, allowed)
        if self._build is not None:
            transport, counter, prices = self._build
            try:
                ModelGroups.build([entry], self.file_config.router, transport, counter, prices)
            except ValueError as error:
                raise ConfigError(f"litellm_params: {error}") from None
        return entry

    def entries(self, config: GatewayConfig | None = None) -> list[ModelEntry]:
        file_entries = (config or self.file_config).model_list
        return [*file_entries, *(stored.entry for stored in self._stored.values())]

    async def reload(self) -> None:
        """Read and validate the config file again, then serve its deployments and router
        settings. On a bad file nothing changes; the `ConfigError` is logged and raised.
        `general_settings` (the server's own) take effect at the next start."""
        async with self._lock:
            try:
                config = await trio.to_thread.run_sync(load_config, self._path, self._environ)
                # Before start-up there is nothing to swap: start serves the file as read.
                groups = self._groups(config, self._served) if self._served else None
            except ConfigError as error:
                # One line, no traceback: the message names the key that is wrong.
                logger.error("config reload failed, serving the previous config: %s", error)  # noqa: TRY400
                raise
            if config.general_settings != self.file_config.general_settings:
                logger.warning("config reload: general_settings changed; they apply at restart")
            if groups is not None:
                try:
                    await self._take(config, groups)
                except ConfigError as error:  # what the server could not take (a hook)
                    logger.error("config reload failed, serving the previous config: %s", error)  # noqa: TRY400
                    raise
            self.file_config = config
            log_unhonoured(config.litellm_keys)
            logger.info("config reloaded: %d deployments", len(self.entries()))

    async def refresh(self) -> bool:
        """Serve the store's deployments again if they changed since they were read;
        True if they had."""
        assert self._store is not None, "the catalog has not started"
        async with self._lock:
            version = await self._store.models_version()
            if version == self._version:
                return False
            version, rows = await self._store.stored_models()
            self._stored = self._resolved(rows)
            self._version = version
            await self._take(self.file_config, self._groups(self.file_config, self._served))
            return True

    def nudge(self, kind: str = "", ident: str = "") -> None:
        """Another process changed the stored deployments (or may have, unheard): read
        them again now. The change channel's listener (trigate/changes.py)."""
        self._nudged.set()

    async def run(self, redis_configured: Callable[[], bool]) -> None:
        """Follow other processes' changes until cancelled: when nudged, and without
        Redis (`redis_configured()` false) by polling the store; a store no other process
        can open needs neither."""
        assert self._store is not None, "the catalog has not started"
        if not self._store.multiprocess:
            return
        failing = False
        while True:
            if redis_configured() and not failing:
                await self._nudged.wait()
            else:
                with trio.move_on_after(POLL_INTERVAL):
                    await self._nudged.wait()
            self._nudged = trio.Event()
            try:
                # A database that hangs must not hold the lock a reload waits for.
                with trio.fail_after(POLL_TIMEOUT):
                    await self.refresh()
            except Exception as error:  # any store failure: tried again a poll later
                if not failing:
                    logger.warning("reading the stored deployments failed: %r", error)
                failing = True
            else:
                failing = False

    async def _take(self, config: GatewayConfig, groups: ModelGroups) -> None:
        await self._serve(config, groups)
        self._served = groups

    def _groups(self, config: GatewayConfig, previous: ModelGroups | None) -> ModelGroups:
        assert self._build is not None, "the catalog has not started"
        entries = self.entries(config)
        for entry in entries:
            params = entry.litellm_params
            secrets.extend(getattr(params, name, None) for name in SECRET_PARAMS)
        transport, counter, prices = self._build
        return ModelGroups.build(entries, config.router, transport, counter, prices, previous)

    def _resolved(self, rows: list[Row]) -> dict[str, StoredModel]:
        """Each stored row as an entry of this process's model list. One that cannot be
        served here (an `os.environ/` variable this process lacks or may not name, a value
        written before it was checked, a row another version wrote) is left out, loudly:
        nothing in the store may stop a process from starting or serving the rest."""
        resolved = {}
        for row in rows:
            model_id = row.get("model_id")
            try:
                entry = self._servable(row)
            except Exception as error:  # any bad row: skipped, as the docstring says
                logger.error("stored deployment %s is not served: %s", model_id, error)  # noqa: TRY400
                continue
            resolved[row["model_id"]] = StoredModel(row, entry)
        return resolved

    def _servable(self, row: Row) -> ModelEntry:
        raw = {
            "model_name": row["model_name"],
            "litellm_params": self.sealer.unseal_params(row["litellm_params"]),
            "model_info": {**row["model_info"], "id": row["model_id"]},
        }
        return self.parse(raw)
