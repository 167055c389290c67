"""The export path: which sinks a finished request goes to, and their senders.

LiteLLM's config names sinks in `litellm_settings.callbacks` (success and failure),
`success_callback` and `failure_callback`: `langfuse`, `s3`, `datadog`, `generic_api`,
a name of `callback_settings` whose `callback_type` is `generic_api`, and `otel`
(trigate.tracing's spans, sent through an outbox of this path). A key or team whose
metadata holds LiteLLM's `logging` list (`callback_name`, `callback_type`:
`success`, `failure` or `success_and_failure`, `callback_vars`) sends its requests to
its own sink instead of the config's one of that name: a team's Langfuse project.

`offer` is called by the gateway's record stage once the spend row is queued (so a
record masked for logging is masked here too); it only appends to outboxes. Each
sink's outbox sends from the gateway's background nursery (`run`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import trio

from trigate.export.datadog import Datadog
from trigate.export.generic_api import GenericAPI
from trigate.export.langfuse import Langfuse
from trigate.export.outbox import Outbox, OutboxCounters, Send
from trigate.export.s3 import S3
from trigate.litellm_keys import callback_names
from trigate.spend import RequestRecord
from trigate.tls import client_context
from trigate.transport import HTTP11Transport

logger = logging.getLogger("trigate.export")

# The sinks built from a name alone (and the environment or their settings), and LiteLLM's
# other names for the same: `langfuse_otel` (Langfuse over OTLP, which `langfuse` is here)
# and `s3_v2` (its batched S3 logger, with the same key layout).
ALIASES = {"langfuse_otel": "langfuse", "s3_v2": "s3"}
SINKS = frozenset({"langfuse", "s3", "datadog", "generic_api", *ALIASES})
# Per-key and per-team sinks kept at once: each holds a queue, so they are bounded too.
MAX_OWN_SINKS = 64
EXPORT_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


def export_client() -> httpx.AsyncClient:
    """The HTTP client sinks (and alerts) send with: trigate's own HTTP/1.1 transport,
    which costs a fraction of httpcore's per request (it does not read HTTPS_PROXY)."""
    transport = HTTP11Transport(max_connections=MAX_CONNECTIONS, ssl_context=client_context())
    return httpx.AsyncClient(transport=transport, timeout=EXPORT_TIMEOUT)


def _build(
    name: str,
    client: httpx.AsyncClient,
    settings: Mapping[str, Any],
    litellm_settings: Mapping[str, Any],
    environ: Mapping[str, str],
    redact: bool,
) -> Send[RequestRecord]:
    """The send function of sink `name`; a `ValueError` says what it lacks."""
    kind = settings.get("callback_type") or ALIASES.get(name, name)
    if kind == "langfuse":
        return Langfuse.from_settings(client, settings, environ, redact=redact).send
    if kind == "generic_api":
        return GenericAPI.from_settings(client, settings, environ, redact=redact).send
    if kind == "datadog":
        return Datadog(client, environ, redact=redact).send
    if kind == "s3":
        params = litellm_settings.get("s3_callback_params") or {}
        if not isinstance(params, Mapping):
            raise ValueError("litellm_settings.s3_callback_params must be a mapping")
        return S3(client, params, environ, redact=redact).send
    raise ValueError(f"{name!r} is not a sink trigate sends to")


def is_sink(name: str, callback_settings: Mapping[str, Any]) -> bool:
    """Whether `name` in a callbacks list is one of this path's sinks."""
    if name in SINKS:
        return True
    entry = callback_settings.get(name)
    return isinstance(entry, Mapping) and entry.get("callback_type") == "generic_api"


class Exports:
    """The sinks of one gateway (see the module's docstring)."""

    def __init__(
        self,
        litellm_settings: Mapping[str, Any],
        callback_settings: Mapping[str, Any],
        counters: OutboxCounters,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._settings = litellm_settings
        self._environ = environ
        self._counters = counters
        self._redact = litellm_settings.get("turn_off_message_logging") is True
        self._client = export_client()
        self._success: list[Outbox[RequestRecord]] = []
        self._failure: list[Outbox[RequestRecord]] = []
        self._outboxes: list[Outbox[Any]] = []
        self._own: dict[tuple[str, str, tuple[tuple[str, str], ...]], Outbox[RequestRecord]] = {}
        self._nursery: trio.Nursery | None = None
        built: dict[str, Outbox[RequestRecord]] = {}
        for setting, success, failure in (
            ("callbacks", True, True),
            ("success_callback", True, False),
            ("failure_callback", False, True),
        ):
            for given in callback_names(litellm_settings.get(setting)):
                if not isinstance(given, str) or not is_sink(given, callback_settings):
                    continue
                name = ALIASES.get(given, given)
                outbox = built.get(name)
                if outbox is None:
                    entry = callback_settings.get(name)
                    settings = entry if isinstance(entry, Mapping) else {}
                    try:
                        send = _build(
                            name, self._client, settings, litellm_settings, environ, self._redact
                        )
                    except ValueError as error:
                        raise ValueError(f"callback {name}: {error}") from None
                    outbox = built[name] = self.adopt(Outbox(name, send, counters))
                if success and outbox not in self._success:
                    self._success.append(outbox)
                if failure and outbox not in self._failure:
                    self._failure.append(outbox)

    @property
    def configured(self) -> bool:
        """Whether the config names any sink (the record stage then fills the details
        sinks read)."""
        return bool(self._success or self._failure)

    def adopt(self, outbox: Outbox[Any]) -> Outbox[Any]:
        """Run `outbox` with the others (the tracer's spans join so)."""
        self._outboxes.append(outbox)
        if self._nursery is not None:
            self._nursery.start_soon(outbox.run)
        return outbox

    def offer(self, record: RequestRecord) -> None:
        """Hand a finished request to its sinks; never waits."""
        outboxes = self._success if record.status < 400 else self._failure
        details = record.details
        own = details.logging if details is not None else None
        if not own:
            for outbox in outboxes:
                outbox.offer(record)
            return
        replaced = set()
        for entry in own:
            sink = self._own_outbox(entry, record.status < 400)
            if sink is not None:
                sink.offer(record)
                replaced.add(
                    ALIASES.get(str(entry.get("callback_name")), entry.get("callback_name"))
                )
        for outbox in outboxes:
            if outbox.name not in replaced:
                outbox.offer(record)

    def _own_outbox(self, entry: Mapping[str, Any], success: bool) -> Outbox[RequestRecord] | None:
        """A key's or team's sink for `entry` of its `logging` list, made on first use."""
        given = entry.get("callback_name")
        kind = str(entry.get("callback_type") or "success_and_failure")
        if not isinstance(given, str) or given not in SINKS:
            return None
        name = ALIASES.get(given, given)
        if kind != "success_and_failure" and (kind == "success") != success:
            return None
        variables = entry.get("callback_vars") or {}
        if not isinstance(variables, Mapping):
            return None
        resolved = {str(k): self._resolve(v) for k, v in variables.items()}
        cache_key = (name, kind, tuple(sorted(resolved.items())))
        outbox = self._own.get(cache_key)
        if outbox is not None:
            return outbox
        if len(self._own) >= MAX_OWN_SINKS:
            self._counters.dropped(name, 1)
            return None
        try:
            send = _build(name, self._client, resolved, self._settings, self._environ, self._redact)
        except ValueError as error:
            logger.warning("a key's or team's logging callback %s is not usable: %s", name, error)
            return None
        outbox = self._own[cache_key] = self.adopt(Outbox(name, send, self._counters))
        return outbox

    def _resolve(self, value: Any) -> str:
        """LiteLLM's `os.environ/NAME` in callback_vars, read from the environment."""
        text = str(value)
        if text.startswith("os.environ/"):
            return self._environ.get(text.removeprefix("os.environ/"), "")
        return text

    @property
    def outboxes(self) -> Sequence[Outbox[Any]]:
        return self._outboxes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every outbox's sender, until cancelled; each flushes once, bounded, as it stops."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for outbox in self._outboxes:
                    nursery.start_soon(outbox.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._client.aclose()
