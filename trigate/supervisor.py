"""The supervisor of `--workers N`: keeps N worker processes serving one socket.

Hypercorn's own multi-process runner stops every worker when one exits, and
on SIGTERM signals the others as soon as the first has finished, cutting their
streams and losing their spend rows. Here:

- A worker that dies is replaced at once; one that dies again soon after it
  started is replaced after a back-off (doubling to `MAX_BACKOFF`), so a worker
  that cannot start does not spin.
- SIGTERM or SIGINT starts one graceful stop: every worker is told to drain,
  and each finishes its streams (up to `graceful_timeout`) and flushes its
  spend ledger before it exits. Only a worker still running well past that is
  killed.
- SIGHUP is passed on to every worker, and each reloads the config file.
- Workers watch a pipe whose other end only the supervisor holds, so if the
  supervisor is killed outright they drain and exit rather than run orphaned.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

import trio

from trigate.config import GatewayConfig
from trigate.fleet import SLOT_ENV, WORKERS_ENV

logger = logging.getLogger("trigate")

# A worker that exits within this long of starting is restarted only after a back-off.
QUICK_EXIT = 10.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Past `graceful_timeout`, how long a worker may take to shut its gateway down.
SHUTDOWN_MARGIN = 30.0


class Supervisor:
    def __init__(self, sockets: list[socket.socket], workers: int, config: GatewayConfig) -> None:
        self._sockets = sockets
        self._workers = workers
        self._graceful_timeout = config.general_settings.graceful_timeout
        self._processes: dict[int, trio.Process] = {}
        self._stopping = trio.Event()
        self._failed = False

    async def run(self) -> int:
        """Supervise until a signal stops the workers; the exit code is 0 if every worker
        drained cleanly."""
        # The read end goes to every worker; the write end stays here, and closes with us.
        pipe_read, pipe_write = os.pipe()
        try:
            stops = (signal.SIGINT, signal.SIGTERM)
            with trio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    for slot in range(self._workers):
                        nursery.start_soon(self._keep_serving, slot, pipe_read)
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            self._reload()
                            continue
                        self._stop(signal.Signals(signum).name, nursery)
                        break
        finally:
            os.close(pipe_read)
            os.close(pipe_write)
        return 1 if self._failed else 0

    def _reload(self) -> None:
        """Each worker reloads the config file itself, and reports a bad one itself."""
        logger.info("SIGHUP: reloading the config in %d workers", len(self._processes))
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)

    def _stop(self, reason: str, nursery: trio.Nursery) -> None:
        logger.info("%s: draining %d workers", reason, len(self._processes))
        self._stopping.set()
        for listener in self._sockets:
            listener.close()
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        nursery.cancel_scope.deadline = (
            trio.current_time() + self._graceful_timeout + SHUTDOWN_MARGIN
        )

    async def _keep_serving(self, slot: int, pipe: int) -> None:
        """Run worker `slot`, replacing it whenever it dies, until the stop."""
        backoff = 0.0
        while not self._stopping.is_set():
            started = trio.current_time()
            code = await self._run_worker(slot, pipe)
            if self._stopping.is_set():
                self._failed |= code != 0
                return
            quick = trio.current_time() - started < QUICK_EXIT
            backoff = min(max(backoff * 2, FIRST_BACKOFF), MAX_BACKOFF) if quick else 0.0
            logger.error(
                "worker %d exited with %s; starting another%s",
                slot, _describe(code), f" in {backoff:g} s" if backoff else "",
            )  # fmt: skip
            with trio.move_on_after(backoff):
                await self._stopping.wait()

    async def _run_worker(self, slot: int, pipe: int) -> int:
        descriptors = [listener.fileno() for listener in self._sockets]
        command = [sys.executable, "-m", "trigate.worker", str(pipe), *map(str, descriptors)]
        # Each worker learns its slot, to take its share of every limit when Redis is away.
        environ = {**os.environ, WORKERS_ENV: str(self._workers), SLOT_ENV: str(slot)}
        process = await trio.lowlevel.open_process(
            command, pass_fds=[pipe, *descriptors], env=environ
        )
        self._processes[slot] = process
        logger.info("worker %d started (pid %d)", slot, process.pid)
        try:
            return await process.wait()
        finally:
            if process.returncode is None:
                # The stop's deadline passed: this worker would not finish.
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                logger.error("worker %d did not drain in time and was killed", slot)
                self._failed = True
            del self._processes[slot]


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
