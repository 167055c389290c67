"""What an audio file's header says of it, for billing audio by the second when the
upstream does not report its length."""

from __future__ import annotations

import struct


def wav_seconds(head: bytes, size: int) -> float:
    """A WAV file's duration from its header; 0 for a file whose header does not say."""
    return wav_length(head, size) or 0.0


def wav_length(head: bytes, size: int) -> float | None:
    """A WAV file's duration from its header: its data chunk's length (or, for a header
    written before the length was known, the rest of the file) over its byte rate; None
    for a file that is not WAV, or whose header (in `head`) does not say."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk, length = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"fmt " and offset + 20 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        elif chunk == b"data":
            if not byte_rate:
                return None
            data = size - offset - 8
            if 0 < length < 0xFFFFFFFF:
                data = min(length, data)
            return max(data, 0) / byte_rate
        offset += 8 + length + (length & 1)
    return None


def wav_silence(seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV file of silence, `seconds` long."""
    data = bytes(int(seconds * rate) * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + len(data)) + b"WAVE" + chunks + data
