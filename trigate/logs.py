"""Logging: plain lines, or JSON lines with one access line per request.

`TRIGATE_LOG_FORMAT=json`, or LiteLLM's switches (`json_logs: true` in
`litellm_settings` or `general_settings`, or `JSON_LOGS=True`), makes every log
line a JSON object and adds an access line per model API request
(logger `trigate.access`). Handlers never write on the event loop: records go
through a `QueueHandler` to a `QueueListener`, whose thread does the writing, so
a slow terminal or a full pipe cannot stall requests.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
from datetime import UTC, datetime
from typing import Any

import orjson

from trigate.config import GatewayConfig

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMAT_ENV = "TRIGATE_LOG_FORMAT"
access = logging.getLogger("trigate.access")
_listener: logging.handlers.QueueListener | None = None


def json_logs(config: GatewayConfig | None) -> bool:
    """Whether logs are JSON: `TRIGATE_LOG_FORMAT` when set, else LiteLLM's switches."""
    chosen = os.environ.get(FORMAT_ENV, "").lower()
    if chosen:
        return chosen == "json"
    if os.environ.get("JSON_LOGS", "").lower() == "true":
        return True
    if config is None:
        return False
    general = config.general_settings.model_extra or {}
    return general.get("json_logs") is True or config.litellm_settings.get("json_logs") is True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an access line's
    fields (`extra={"access": {...}}`) at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(config: GatewayConfig | None = None) -> None:
    """The process's logging, from the environment and `config`; may be called again
    once the configuration is known (a worker learns it after starting)."""
    global _listener
    if _listener is not None:
        _listener.stop()
    output = logging.StreamHandler()
    structured = json_logs(config)
    output.setFormatter(JSONFormatter() if structured else logging.Formatter(PLAIN_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, output, respect_handler_level=True)
    _listener.start()
    handler = logging.handlers.QueueHandler(records)
    # The queued record's message is the bare message; the listener's handler formats it.
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(
        level=os.environ.get("TRIGATE_LOG_LEVEL", "INFO").upper(), handlers=[handler], force=True
    )
    # httpx logs every request at INFO: a line per upstream call, on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@atexit.register
def _flush_at_exit() -> None:
    """The listener's thread is a daemon: write what is still queued before exiting."""
    if _listener is not None:
        _listener.stop()
