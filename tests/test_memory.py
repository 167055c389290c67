"""What serving a large request costs in memory: about its own size a few times over, not
a multiple per token or per copy."""

from __future__ import annotations

import random
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trigate import tokens
from trigate.read_deadlines import ReadDeadlines
from trigate.tokens import TokenCounter, count_ordinary
from trigate.transport import _Connection, _send_request

# "hello world " is two tokens in twelve characters; as a list of ints that is ~6 bytes a character.
HUGE_TEXT = "hello world " * 350_000  # 4.2 MB


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load()


def traced_peak(work: Callable[[], Any]) -> int:
    """The most memory `work` had allocated at once, as tracemalloc sees it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _can_reset_peak_resident() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _can_reset_peak_resident(), reason="needs Linux's /proc/self/clear_refs")
def test_serving_a_large_request_costs_a_few_times_its_size() -> None:
    """A 4 MB chat request to an `openai/` upstream that reports no usage (so the gateway
    counts the prompt): about 2x its size at peak; the body read as parts and joined, kept
    raw beside its parsed form, and its tokens listed whole took 8x."""
    probe = Path(__file__).with_name("memory_probe.py")
    run = subprocess.run(
        [sys.executable, str(probe), "4000000"], capture_output=True, text=True, check=True
    )
    assert float(run.stdout.split()[-1]) < 5


def test_counting_a_huge_prompt_holds_only_a_piece_of_its_tokens(counter: TokenCounter) -> None:
    messages = [{"role": "user", "content": HUGE_TEXT}]
    assert traced_peak(lambda: counter.count_prompt("gpt-4o", messages)) < len(HUGE_TEXT) / 2
    assert traced_peak(lambda: counter.count_text("gpt-4", HUGE_TEXT)) < len(HUGE_TEXT) / 2


def _texts(seed: int) -> Iterator[str]:
    alphabet = [*"aAzZ  ÿЖж\n\t\r'sé日本ÄΩ½Ⅻ\u06612_-.,!?/👋\u0301\u00a0\u2003", "'ll", "'S", "  "]
    rng = random.Random(seed)
    for _ in range(500):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_counting_in_pieces_counts_exactly_what_one_pass_does(
    counter: TokenCounter, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoding = counter._encodings[name]
    monkeypatch.setattr(tokens, "PIECE_CHARS", 40)
    for text in _texts(seed=len(name)):
        assert count_ordinary(encoding, text) == len(encoding.encode_ordinary(text)), text


class _Wire:
    """A connection's stream that only counts what is written to it."""

    def __init__(self) -> None:
        self.sent = 0

    async def send_all(self, data: bytes | memoryview) -> None:
        self.sent += len(data)


async def test_a_large_upstream_body_goes_out_without_a_copy() -> None:
    body = HUGE_TEXT.encode()
    request = httpx.Request("POST", "http://upstream.test/v1/chat/completions", content=body)
    wire = _Wire()
    conn = _Connection(
        ("http", "upstream.test", 80),
        wire,  # type: ignore[arg-type]
        sock=None,  # type: ignore[arg-type]
        deadlines=ReadDeadlines(),
    )
    tracemalloc.start()
    try:
        await _send_request(conn, request, body, write_timeout=10.0, retryable=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # All of it went out: the body and the head before it.
    assert wire.sent > len(body)
    assert peak < len(body) / 4


@pytest.mark.skipif(not _can_reset_peak_resident(), reason="needs Linux's /proc/self/clear_refs")
def test_a_100_mb_transcription_upload_keeps_memory_flat() -> None:
    """A 100 MB audio upload streamed through to the upstream as it arrives: the peak
    resident memory rises by well under 1% of it (the decoder's buffer, the channel's
    few parts in flight), where a body read whole would cost its size at least."""
    probe = Path(__file__).with_name("memory_probe.py")
    run = subprocess.run(
        [sys.executable, str(probe), "upload", str(100 * 1024 * 1024)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(run.stdout.split()[-1]) < 0.01
