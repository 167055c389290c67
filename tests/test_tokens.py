"""Offline token counting: verified encodings, OpenAI's chat formula, encoding by family."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

# bpe_openai ships no py.typed marker (nor stubs): its encoder is read as untyped.
import bpe_openai  # type: ignore[import-untyped]
import pytest

from trigate import tokens
from trigate.gateway import load_token_counter
from trigate.tokens import THREAD_THRESHOLD, TokenCounter

SAMPLES = [
    "hello world",
    "Grüße aus Köln! 👋 日本語のテキスト",
    "def f(x):\n    return x ** 2  # squares\n",
    "   leading spaces and trailing   \n\n",
]


@pytest.fixture
async def counter() -> TokenCounter:
    return await load_token_counter()


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("token encodings must load without the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    counter = TokenCounter.load()
    assert counter.count_text("gpt-4o", "hello world") == 2


def test_a_tampered_bpe_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = tokens._packed_bpe_file("cl100k_base").read_bytes()
    tampered = tmp_path / "cl100k_base.tiktoken.gz"
    lines = gzip.decompress(original).splitlines()
    lines[1000] = lines[1001]
    tampered.write_bytes(gzip.compress(b"\n".join(lines)))
    monkeypatch.setattr(tokens, "_packed_bpe_file", lambda name: tampered)
    with pytest.raises(ValueError, match=r"[Hh]ash"):
        tokens._load_encoding("cl100k_base")


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
async def test_encodings_match_an_independent_implementation(
    counter: TokenCounter, name: str
) -> None:
    model = "gpt-4" if name == "cl100k_base" else "gpt-4o"
    ours = counter.encoding_for(model)
    assert ours.name == name
    reference = bpe_openai.get_encoding(name)
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == list(reference.encode(text))


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4.1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("llama-3-70b", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
    ],
)
async def test_encoding_by_model_family(counter: TokenCounter, model: str, encoding: str) -> None:
    assert counter.encoding_for(model).name == encoding


async def test_chat_formula(counter: TokenCounter) -> None:
    # 3 to prime the reply, 3 per message, plus the tokens of every value; a name adds 1.
    assert counter.count_prompt("gpt-4o", [{"role": "user", "content": "hi"}]) == 3 + 3 + 1 + 1
    named = [{"role": "user", "name": "ada", "content": "hi"}]
    ada = counter.count_text("gpt-4o", "ada")
    assert counter.count_prompt("gpt-4o", named) == 3 + 3 + 1 + ada + 1 + 1


async def test_content_parts_and_images(counter: TokenCounter) -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        ],
    }
    text = counter.count_text("gpt-4o", "What is in this image?")
    assert counter.count_prompt("gpt-4o", [message]) == 3 + 3 + 1 + text + tokens.IMAGE_TOKENS_LOW


async def test_tools_add_tokens(counter: TokenCounter) -> None:
    messages = [{"role": "user", "content": "weather?"}]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": {
                    "type": "object",
                    "properties": {"unit": {"type": "string", "enum": ["c", "f"]}},
                },
            },
        }
    ]
    assert counter.count_prompt("gpt-4o", messages, tools) > counter.count_prompt(
        "gpt-4o", messages
    )


async def test_large_texts_count_the_same_off_the_event_loop(counter: TokenCounter) -> None:
    text = "lorem ipsum dolor " * (THREAD_THRESHOLD // 8)
    assert await counter.count_text_async("gpt-4o", text) == counter.count_text("gpt-4o", text)
    messages = [{"role": "user", "content": text}]
    assert await counter.count_prompt_async("gpt-4o", messages) == counter.count_prompt(
        "gpt-4o", messages
    )
