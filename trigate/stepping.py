"""An app's coroutine run as part of the task that awaits it, with a hook on its first
wait: how a lean connection (`trigate.http1`) serves a request on its own task and still
hears its client leave once the app starts waiting (`trigate.departures`).

It passes on Trio's traps (the objects a coroutine yields to Trio's scheduler) as
`await` would, which ties it to how Trio's traps are made: the upper bound on trio in
pyproject.toml, and tests/test_http1.py, guard it.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Callable, Coroutine
from typing import Any

import trio


@types.coroutine
def on_this_task(coro: Coroutine[Any, Any, None], on_wait: Callable[[], None]) -> Any:
    """Run `coro` as part of the awaiting task, as `await coro` would, calling `on_wait`
    the first time it yields to Trio to wait for something (not a mere reschedule:
    `cancel_shielded_checkpoint`), and stepping it in a copy of the task's context,
    as a task of its own would have (a context variable it sets stays its own)."""
    context = contextvars.copy_context()
    waited = False
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                trap = context.run(coro.send, value)
            else:
                trap = context.run(coro.throw, error)
        except StopIteration:
            return None
        error = None
        if not waited and trap is not _RESCHEDULE:
            waited = True
            on_wait()
        try:
            value = yield trap
        except GeneratorExit:
            context.run(coro.close)  # its `finally` blocks run in its own context
            raise
        except BaseException as thrown:
            error = thrown


def _reschedule_trap() -> object:
    """What `cancel_shielded_checkpoint` yields to Trio: a reschedule, not a wait."""
    step = trio.lowlevel.cancel_shielded_checkpoint()  # noqa: ASYNC105 (stepped by hand)
    trap = step.send(None)
    step.close()
    return trap


_RESCHEDULE = _reschedule_trap()
