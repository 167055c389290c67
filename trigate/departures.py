"""The worker's one look-out for clients that leave while their requests wait.

A lean connection (`trigate.http1`) runs a request's app on its own task; while that
app waits (for its upstream, say) nothing reads the connection's socket, so a client's
end-of-file would go unheard and the upstream call would outlive its client. A reading
task per connection would hear it, at the cost of a trip through Trio's scheduler for
every request that reaches its upstream; one epoll set for the whole worker, which a
socket joins while its app waits, costs two `epoll_ctl` calls instead.
"""

from __future__ import annotations

import contextlib
import logging
import select
from typing import Protocol

import trio

logger = logging.getLogger(__name__)


class Watched(Protocol):
    """A connection whose socket the watch looks at."""

    def readable(self) -> None:
        """Its socket is readable: the client sent more, or left."""

    def unwatch_departure(self) -> None:
        """Stop being looked at."""


class DepartureWatch:
    """The worker's one look-out for clients leaving while their apps wait, where a
    task per connection reading its socket would cost a trip through the scheduler
    for every request that reaches its upstream.

    A connection whose app (run on the connection's own task) waits registers its
    socket here (`watch`) until the app returns (`unwatch`): one `epoll_ctl` each, in
    an epoll set of the watch's own, whose descriptor this task waits on through
    Trio. A socket found readable is looked at no more, and its connection is told
    (`Watched.readable`)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watched: dict[int, Watched] = {}

    @classmethod
    def made(cls) -> DepartureWatch | None:
        """The worker's watch, where the system has epoll (Linux); elsewhere None, and
        every app runs in a task of its own while its connection's task reads."""
        return cls() if hasattr(select, "epoll") else None

    def watch(self, fd: int, connection: Watched) -> bool:
        """Look at `connection`'s socket, `fd`, from now on; whether it is looked at.
        Never raises: it is called from an app's first wait (`trigate.stepping`), where
        a raise would leave the task waiting on a trap it never yielded. A descriptor
        still listed is one closed while watched and reused since: it is now this
        connection's."""
        if fd < 0:
            return False
        try:
            try:
                self._epoll.register(fd, select.EPOLLIN)
            except FileExistsError:
                self._epoll.modify(fd, select.EPOLLIN)
        except (OSError, ValueError):
            # No room in the set (ENOSPC, ENOMEM), or the watch closed (ValueError).
            logger.warning("cannot watch a connection for its client's departure", exc_info=True)
            return False
        self._watched[fd] = connection
        return True

    def unwatch(self, fd: int, connection: Watched) -> None:
        """Stop looking at `connection`'s socket (and only its: a descriptor closed
        while watched may have been reused by another connection since)."""
        if self._watched.get(fd) is connection:
            del self._watched[fd]
            # Closed since, maybe: the kernel then dropped it from the set itself.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0):
                    connection = self._watched.pop(fd, None)
                    with contextlib.suppress(OSError):
                        self._epoll.unregister(fd)
                    if connection is not None:
                        self._tell(connection)
        finally:
            self._epoll.close()

    def _tell(self, connection: Watched) -> None:
        """`connection.readable()`: a failure there is that connection's (logged, and the
        connection looked at no more), never the worker's, whose every connection this
        one task watches."""
        try:
            connection.readable()
        except Exception:
            logger.exception("the departure watch failed on a connection")
            with contextlib.suppress(Exception):
                connection.unwatch_departure()
