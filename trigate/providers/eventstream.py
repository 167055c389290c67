"""AWS event-stream framing (`application/vnd.amazon.eventstream`), decoded as bytes arrive.

Each frame is `total length | headers length | prelude CRC | headers | payload |
message CRC`, and upstream reads split frames at arbitrary byte offsets. botocore's
buffer does the framing and checks both CRCs; this wrapper yields frames one at a
time, so the frames before a corrupt one still count, and turns framing failures
into the gateway's `UpstreamError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

from botocore.eventstream import EventStreamBuffer, ParserError

from trigate.errors import UpstreamError

# What botocore's parser raises on bytes that are not a frame, besides its own errors.
_MALFORMED = (ParserError, struct.error, KeyError, UnicodeDecodeError)


class Frame(NamedTuple):
    headers: dict[str, Any]
    payload: bytes


class EventStreamDecoder:
    """Feed it bytes as they arrive; it yields the frames completed so far."""

    __slots__ = ("_buffer", "_unframed")

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        # Bytes fed but not yet part of a whole frame: non-zero at the end means a cut frame.
        self._unframed = 0

    @property
    def pending(self) -> bool:
        return self._unframed > 0

    def feed(self, data: bytes) -> Iterator[Frame]:
        """The frames `data` completes; iterate them to the end to decode them all."""
        self._buffer.add_data(data)
        self._unframed += len(data)
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        try:
            for message in self._buffer:
                # botocore-stubs declares `prelude` and `headers` as int; botocore gives a
                # MessagePrelude and a dict.
                self._unframed -= message.prelude.total_length  # type: ignore[attr-defined]
                yield Frame(message.headers, message.payload)  # type: ignore[arg-type]
        except _MALFORMED as error:
            raise UpstreamError(
                f"The upstream sent a corrupt event-stream frame: {error}"
            ) from None
