"""What the response cache makes of Redis's error replies, by their kind.

An error reply (`-LOADING ...`) is Redis answering: it is up (the reader closes the
connection all the same, `trigate.cache.resp`: the reply may not be the command's own).
What it refused says what the cache should do, and none of it fails a request:

- `UNAVAILABLE`: Redis cannot serve anyone for now (loading its data after a restart, a
  script running past its time, a replica cut from its primary). A miss, and the cache
  backs off as from a Redis that is away: no command until the probe's GET is answered
  (a PING may be answered all the while), its warning logged once per episode.
- `WRITES_REFUSED`: memory full under `noeviction`, a failed snapshot that stops writes, a
  replica. The write is skipped (the answer is served, not kept); reads go on.
- `CREDENTIALS`: no password, a wrong one, or an ACL user without the right to the command
  or the key. A configuration error: logged as one, each read a miss, each write skipped.
- `KEY`: a value of another type under the cache's key. That read is a miss (nothing is
  served from it), Redis stays up, and the answer's SET replaces the value.
- Any other (`ERR ...`): that read a miss, that write skipped, Redis stays up.

Each is counted by its code (`trigate_cache_redis_errors`; a code not in `CODES` as
`other`) and logged once per episode of its label (none of it for `EPISODE_GAP`), so codes
not named share one; `UNAVAILABLE`'s through the outage's warning. What is logged is
Redis's message, never a value or a secret (the arguments Redis quotes back, as `unknown
command` does, are cut out).
"""

from __future__ import annotations

import logging
import re

import coredis
import trio

from trigate.cache.resp import RedisErrorReply

logger = logging.getLogger("trigate")

UNAVAILABLE = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})
WRITES_REFUSED = frozenset({"OOM", "MISCONF", "READONLY", "NOREPLICAS"})
CREDENTIALS = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
KEY = frozenset({"WRONGTYPE"})
# The codes counted under their own name; any other is `other` (the label stays bounded
# whatever a Redis-like server sends).
CODES = UNAVAILABLE | WRITES_REFUSED | CREDENTIALS | KEY | {"ERR"}
# An episode of one kind ends after this many seconds without one: the next is logged.
EPISODE_GAP = 60.0
# Longest part of Redis's message that is logged.
MAX_MESSAGE = 200
# coredis's classes for the codes it strips from its message.
_COREDIS_CODES: tuple[tuple[type[Exception], str], ...] = (
    (coredis.exceptions.BusyLoadingError, "LOADING"),
    (coredis.exceptions.WrongTypeError, "WRONGTYPE"),
    (coredis.exceptions.ReadOnlyError, "READONLY"),
    (coredis.exceptions.AuthenticationRequiredError, "NOAUTH"),
    (coredis.exceptions.AuthenticationFailureError, "WRONGPASS"),
    (coredis.exceptions.AuthorizationError, "NOPERM"),
    (coredis.exceptions.TryAgainError, "TRYAGAIN"),
    (coredis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)
# coredis's classes for an `ERR ...` reply, or one of a code it does not know.
_COREDIS_ERR = (coredis.exceptions.ResponseError, coredis.exceptions.UnknownCommandError)
_QUOTED = re.compile(r"'[^']*'|`[^`]*`|\"[^\"]*\"")


def error_code(error: BaseException) -> str | None:
    """The code of the error reply `error` reports (`WRONGTYPE`), or None: no reply at
    all (Redis away, too slow, the connection broken)."""
    if isinstance(error, RedisErrorReply):
        return error.code
    for kind, code in _COREDIS_CODES:
        if isinstance(error, kind):
            return code
    if isinstance(error, coredis.exceptions.ResponseError):
        return _coredis_code(error)
    return None


def _coredis_code(error: coredis.exceptions.ResponseError) -> str:
    """The code of an error reply coredis raised. coredis cuts a code it knows from the
    message (`ERR ` among them) and keeps one it does not, so `DB index is out of range`
    (from `ERR DB index ...`) and `DB index ...` (a code `DB`) read the same: a first word
    the cache names is taken for the code, any other message is an `ERR`'s. Another class
    of coredis's is a code it knows and the cache does not name (`MOVED`), `other`."""
    if type(error) not in _COREDIS_ERR:
        return type(error).__name__
    first = str(error).split(" ", 1)[0]
    return first if first in CODES else "ERR"


def label(code: str) -> str:
    return code if code in CODES else "other"


def describe(error: BaseException) -> str:
    """Redis's message, safe to log: what it quotes back (a key, a command's arguments,
    among them a value) cut out, and cut short."""
    text = error.message if isinstance(error, RedisErrorReply) else str(error)
    text = _QUOTED.sub("'...'", text.split(", with args", 1)[0])
    return text[:MAX_MESSAGE]


class Episodes:
    """When an error reply of a kind starts an episode, worth a log line: none of its code
    for `EPISODE_GAP` seconds. Only refusals call it, never a command Redis served; codes
    are kept by their label, so a server inventing codes cannot grow it."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def starts(self, code: str) -> bool:
        now = trio.current_time()
        kind = label(code)
        last = self._last.get(kind)
        self._last[kind] = now
        return last is None or now - last > EPISODE_GAP


def log_refusal(code: str, operation: str, error: BaseException) -> None:
    """The log line of an episode of refusals that leave Redis up (`UNAVAILABLE`'s is
    the outage's own)."""
    message = describe(error)
    if code in CREDENTIALS:
        logger.error(
            "the response cache's Redis refuses its credentials or permissions (%s): each "
            "read it refuses so is a miss and each write skipped (every one, if it refuses "
            "the credentials or every cache key); check the cache's Redis password, user "
            "and ACL (cache_params, router_settings)",
            message,
        )
    elif code in WRITES_REFUSED:
        logger.warning(
            "the response cache's Redis refuses writes (%s): answers are served but not "
            "kept; reads go on",
            message,
        )
    elif code in KEY:
        logger.warning(
            "the response cache's Redis holds a value of another type under a cache key "
            "(%s): that read is a miss, and the answer's write replaces it",
            message,
        )
    else:
        logger.warning(
            "the response cache's Redis answered a %s with an error (%s): a %s",
            operation, message, "miss" if operation == "read" else "write skipped",
        )  # fmt: skip
