"""Serving: the gateway in one process, or in several under a supervisor.

SIGINT and SIGTERM stop a worker gracefully; SIGHUP reloads its config file.

With one worker, the gateway serves in this process. With `--workers N`, this
process becomes the supervisor (`trigate.supervisor`) of N worker processes
(`trigate.worker`) sharing its listening socket. Workers build their gateway
from the environment (`TRIGATE_CONFIG`, `TRIGATE_MASTER_KEY`) rather than from
pickled objects; the parent validates the same configuration first, so a bad
file fails once, clearly.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig

from trigate.config import ConfigError, GatewayConfig, load_config
from trigate.litellm_keys import log_unhonoured
from trigate.logs import configure_logging
from trigate.serving import ConnectionLimits, listening_sockets, raise_open_file_limit, serve
from trigate.supervisor import Supervisor

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from trigate.gateway import Gateway

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
# At Python's default (700), a young collection runs every few requests and walks every
# request in flight, and full collections walk the ~80k objects start-up leaves: about 9%
# of a busy worker's time, with 0.1 s pauses. A request's objects are freed by reference
# counting, so collections find little to free; running them rarely, with start-up's
# objects frozen out of them (`freeze_startup_heap`), keeps their work and pauses small.
GC_THRESHOLDS = (10_000, 10, 10)
# Files a worker keeps for other than connections: the store, logs, encodings, pipes.
RESERVED_FILES = 64
MIN_CONNECTIONS = 16

logger = logging.getLogger("trigate")


@dataclass(frozen=True)
class Binding:
    host: str
    port: int
    workers: int


class StartupError(Exception):
    """The gateway refuses to start; the message says why."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hypercorn_config(config: GatewayConfig, binding: Binding | None = None) -> HypercornConfig:
    """Hypercorn's settings for serving `config`; `binding` where sockets are made."""
    settings = config.general_settings
    server = HypercornConfig()
    if binding is not None:
        server.bind = [f"{binding.host}:{binding.port}"]
    server.graceful_timeout = settings.graceful_timeout
    server.keep_alive_timeout = settings.keep_alive_timeout
    server.accesslog = None
    # hypercorn's 100 drops a burst of connections that arrives while the worker is busy
    # (clients see resets under load); 2048 is uvicorn's, and so LiteLLM's.
    server.backlog = 2048
    server.include_server_header = False
    server.errorlog = logging.getLogger("hypercorn.error")
    return server


def connection_limits(config: GatewayConfig, open_files: int) -> ConnectionLimits:
    """`max_connections`, lowered to what the open-file limit leaves beside the upstream
    pool, the store and the process's own files.

    When the limit cannot hold both `max_connections` clients and
    `max_upstream_connections` upstream connections, the room is shared: the upstream
    pool gets at most half of it (a stream holds one of each; idle clients hold none
    upstream), and the clients the rest. Capping only the clients would give them what
    the pool leaves: at a limit of 1,024 and the default pool of 1,000, 16. The worker
    applies the pool's share (`share_open_files`) before it builds its gateway."""
    settings = config.general_settings
    room = max(open_files - RESERVED_FILES, 2 * MIN_CONNECTIONS)
    upstream = settings.max_upstream_connections
    if upstream + settings.max_connections > room:
        upstream = min(upstream, room // 2)
    clients = min(settings.max_connections, room - upstream)
    if (clients, upstream) != (settings.max_connections, settings.max_upstream_connections):
        logger.warning(
            "the open-file limit (%d) holds %d client and %d upstream connections per "
            "worker, not max_connections=%d and max_upstream_connections=%d; raise the hard "
            "limit (ulimit -Hn) to hold more",
            open_files, clients, upstream, settings.max_connections,
            settings.max_upstream_connections,
        )  # fmt: skip
    return ConnectionLimits(
        max_connections=clients,
        first_request_timeout=settings.request_body_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
        max_upstream_connections=upstream,
    )


def share_open_files(config: GatewayConfig, open_files: int) -> ConnectionLimits:
    """The worker's connection limits under `open_files`, with the upstream pool's
    share written into `config` (the gateway sizes its pool from it)."""
    limits = connection_limits(config, open_files)
    config.general_settings.max_upstream_connections = limits.max_upstream_connections
    return limits


def serve_forever(config: GatewayConfig, binding: Binding) -> int:
    """Run until stopped by a signal; returns the exit code."""
    if not config.general_settings.master_key and not is_loopback(binding.host):
        raise StartupError(
            f"refusing to bind {binding.host}, which is not a loopback address, without a "
            "master key: set general_settings.master_key or TRIGATE_MASTER_KEY"
        )
    configure_logging(config)
    log_unhonoured(config.litellm_keys)
    sockets = listening_sockets(hypercorn_config(config, binding))
    if binding.workers == 1:
        run_worker(sockets)
        return 0
    return trio.run(Supervisor(sockets, binding.workers, config).run)


def run_worker(sockets: list[socket.socket], supervisor_pipe: int | None = None) -> None:
    """Serve in this process until SIGINT or SIGTERM (or, under a supervisor, until the
    supervisor is gone), then drain."""
    configure_logging()
    # A reload asked for while the worker starts is not its death: SIGHUP's default would
    # be. The file is read at start-up anyway; from serving on, SIGHUP reloads it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    open_files = raise_open_file_limit()
    limits: list[ConnectionLimits] = []
    app, gateway = worker_app(lambda config: limits.append(share_open_files(config, open_files)))
    configure_logging(gateway.config)
    trio.run(_serve_until_stopped, app, gateway, limits[0], sockets, supervisor_pipe)


async def _serve_until_stopped(
    app: QuartTrio,
    gateway: Gateway,
    limits: ConnectionLimits,
    sockets: list[socket.socket],
    supervisor_pipe: int | None,
) -> None:
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.open_signal_receiver(signal.SIGHUP) as hangups,
    ):

        async def stop_requested() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_first_signal, signals, nursery.cancel_scope)
                nursery.start_soon(_reload_on_hangup, hangups, gateway)
                if supervisor_pipe is not None:
                    nursery.start_soon(_pipe_closed, supervisor_pipe, nursery.cancel_scope)

        await serve(
            # What Quart's own `__call__` calls, and all it does: one call less a request
            # (some 2 thousand instructions). Read now, with its middleware in place.
            app.asgi_app,
            hypercorn_config(gateway.config),
            limits,
            sockets=sockets,
            shutdown_trigger=stop_requested,
            on_drain=gateway.begin_drain,
        )


async def _first_signal(signals: AsyncIterator[int], done: trio.CancelScope) -> None:
    async for _ in signals:
        done.cancel()
        return


async def _reload_on_hangup(hangups: AsyncIterator[int], gateway: Gateway) -> None:
    """SIGHUP reloads the config file; a bad one is logged and changes nothing."""
    async for _ in hangups:
        with contextlib.suppress(ConfigError):
            await gateway.models.reload()


async def _pipe_closed(fd: int, done: trio.CancelScope) -> None:
    """The supervisor holds the pipe's other end: end-of-file means it has died."""
    await trio.lowlevel.wait_readable(fd)
    done.cancel()


def worker_app(
    adjust: Callable[[GatewayConfig], None] | None = None,
) -> tuple[QuartTrio, Gateway]:
    """The app of one worker process, configured from the environment; `adjust` sees the
    configuration before the gateway is built from it."""
    # The app's modules are imported here, in the worker: the supervisor of `--workers
    # N` imports this module too, and without them it starts in half the time, before
    # any worker can.
    from trigate.api import create_app
    from trigate.gateway import Gateway

    config = load_config(os.environ.get("TRIGATE_CONFIG"), os.environ)
    if adjust is not None:
        adjust(config)
    master_key = config.general_settings.master_key
    if not master_key:
        raise StartupError("no master key reached the worker (TRIGATE_MASTER_KEY is unset)")
    gc.set_threshold(*GC_THRESHOLDS)
    gateway = Gateway(config, master_key, config_path=os.environ.get("TRIGATE_CONFIG"))
    app = create_app(gateway)
    app.before_serving(freeze_startup_heap)
    return app, gateway


async def freeze_startup_heap() -> None:
    """Once the gateway has started (encodings, price table, store), move everything alive
    out of the collector's sight: it lives as long as the process anyway."""
    gc.collect()
    gc.freeze()
