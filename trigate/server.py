"""Serving: hypercorn's Trio worker running the gateway, one or more processes.

Hypercorn spawns its workers, and each imports the app by path, so the
configuration reaches them through the environment (`TRIGATE_CONFIG`,
`TRIGATE_MASTER_KEY`) rather than through pickled objects. The parent
validates the same configuration first, so a bad file fails once, clearly.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.run import run
from hypercorn.trio.run import worker_serve
from hypercorn.utils import load_application
from quart_trio import QuartTrio

from trigate.api import create_app
from trigate.config import GatewayConfig, load_config
from trigate.gateway import Gateway

APP_PATH = "trigate.server:worker_app()"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
# At Python's default (700), a young collection runs every few requests and walks every
# request in flight, and full collections walk the ~80k objects start-up leaves: about 9%
# of a busy worker's time, with 0.1 s pauses. A request's objects are freed by reference
# counting, so collections find little to free; running them rarely, with start-up's
# objects frozen out of them (`freeze_startup_heap`), keeps their work and pauses small.
GC_THRESHOLDS = (10_000, 10, 10)


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


def hypercorn_config(config: GatewayConfig, binding: Binding) -> HypercornConfig:
    settings = config.general_settings
    server = HypercornConfig()
    server.bind = [f"{binding.host}:{binding.port}"]
    server.worker_class = "trio"
    server.workers = binding.workers
    server.application_path = APP_PATH
    server.graceful_timeout = settings.graceful_timeout
    server.keep_alive_timeout = settings.keep_alive_timeout
    server.accesslog = None
    # hypercorn's 100 drops a burst of connections that arrives while the worker is busy
    # (clients see resets under load); 2048 is uvicorn's, and so LiteLLM's.
    server.backlog = 2048
    server.include_server_header = False
    server.errorlog = logging.getLogger("hypercorn.error")
    return server


def serve(config: GatewayConfig, binding: Binding) -> int:
    """Run until interrupted; returns the exit code."""
    if not config.general_settings.master_key and not is_loopback(binding.host):
        raise StartupError(
            f"refusing to bind {binding.host}, which is not a loopback address, without a "
            "master key: set general_settings.master_key or TRIGATE_MASTER_KEY"
        )
    server = hypercorn_config(config, binding)
    if binding.workers == 1:
        trio.run(_serve_in_this_process, server)
        return 0
    return run(server)


async def _serve_in_this_process(server: HypercornConfig) -> None:
    """One worker, in this process. Hypercorn's own single-process path leaves SIGTERM
    unhandled (the process dies with spend rows unflushed) and relies on SIGINT raising
    KeyboardInterrupt, which a shell's background job never gets; both signals start a
    graceful shutdown here instead."""
    app = load_application(server.application_path, server.wsgi_max_body_size)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            async for _ in signals:
                return

        await worker_serve(app, server, shutdown_trigger=first_signal)


def worker_app() -> QuartTrio:
    """The app of one worker process, configured from the environment."""
    configure_logging()
    config = load_config(os.environ.get("TRIGATE_CONFIG"), os.environ)
    master_key = config.general_settings.master_key
    if not master_key:
        raise StartupError("no master key reached the worker (TRIGATE_MASTER_KEY is unset)")
    gc.set_threshold(*GC_THRESHOLDS)
    app = create_app(Gateway(config, master_key))
    app.before_serving(freeze_startup_heap)
    return app


async def freeze_startup_heap() -> None:
    """Once the gateway has started (encodings, price table, store), move everything alive
    out of the collector's sight: it lives as long as the process anyway."""
    gc.collect()
    gc.freeze()


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TRIGATE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: a line per upstream call, on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
