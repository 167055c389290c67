"""Token counting with tiktoken, loaded offline.

tiktoken fetches its BPE files over the network on first use, and the gateway
must never do that. The `bpe-openai` wheel ships `cl100k_base` and `o200k_base`;
they are unpacked once and loaded through `load_tiktoken_bpe` with the sha256
tiktoken itself expects, so a corrupted or substituted file fails start-up.

Counting is only a fallback: usage reported by an upstream always wins.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tiktoken
import trio
from tiktoken.load import load_tiktoken_bpe

ENDOFTEXT = "<|endoftext|>"
ENDOFPROMPT = "<|endofprompt|>"

# The two encodings' definitions, as tiktoken_ext.openai_public has them, minus the download.
_ENCODINGS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "hash": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        "special_tokens": {
            ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            ENDOFPROMPT: 100276,
        },
    },
    "o200k_base": {
        "hash": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    },
}

# Model families that predate o200k_base; everything newer or unknown uses o200k_base.
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-")

# Texts longer than this are encoded in a worker thread so the event loop keeps serving.
# Counting is pure, so a thread abandoned by a cancelled caller does no harm.
THREAD_THRESHOLD = 32 * 1024

# OpenAI's published chat formula: every message is framed by 3 tokens, a name adds 1,
# and the reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Images are priced by tiles we cannot see without fetching them: low detail is a flat 85,
# anything else is counted as one 512px-tiled 1024x1024 image.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_DEFAULT = 765

# tiktoken returns every token as a Python int in a list, about 36 bytes a token, several
# times the text's own size; a longer text is counted a piece of about this many
# characters at a time, so counting a huge prompt holds one piece's tokens at once.
PIECE_CHARS = 256 * 1024
# Where a text may be cut without changing its tokens: a single space between two letters.
# Both encodings' pre-tokenisers end a match at a letter followed by a space and start the
# next match at that space (`[^\r\n\p{L}\p{N}]?\p{L}+` takes " word"), so no token crosses
# it. The letters are spelled out (Latin, Latin-1's, Cyrillic) because `re` has no \p{L}
# and its `[^\W\d_]` takes numerals such as "½" too; a text without such a place (CJK, say)
# is counted whole, as before.
_LETTER = "A-Za-zÀ-ÖØ-öø-ÿЁА-яё"
_CUT = re.compile(f"(?<=[{_LETTER}]) (?=[{_LETTER}])")


def _packed_bpe_file(name: str) -> Path:
    """Where the `bpe-openai` wheel keeps an encoding, found without importing that package
    (its import builds tokenizers of its own, which the gateway does not use)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bpe-openai package, which ships the BPE files, is not installed")
    return Path(next(iter(spec.submodule_search_locations)), "data", f"{name}.tiktoken.gz")


def _load_encoding(name: str) -> tiktoken.Encoding:
    spec = _ENCODINGS[name]
    packed = _packed_bpe_file(name)
    with tempfile.TemporaryDirectory(prefix="trigate-bpe-") as tmp:
        path = Path(tmp, f"{name}.tiktoken")
        path.write_bytes(gzip.decompress(packed.read_bytes()))
        ranks = load_tiktoken_bpe(str(path), expected_hash=spec["hash"])
    return tiktoken.Encoding(
        name=name,
        pat_str=spec["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=spec["special_tokens"],
    )


class TokenCounter:
    """Counts prompt and completion tokens the way OpenAI bills them."""

    def __init__(self, encodings: dict[str, tiktoken.Encoding]) -> None:
        self._encodings = encodings

    @classmethod
    def load(cls) -> TokenCounter:
        """Unpack and verify both encodings. Blocking: call it from a worker thread."""
        return cls({name: _load_encoding(name) for name in _ENCODINGS})

    def encoding_for(self, model: str) -> tiktoken.Encoding:
        name = model.rpartition("/")[2].lower()
        if name.startswith(_CL100K_PREFIXES) and not name.startswith(_O200K_PREFIXES):
            return self._encodings["cl100k_base"]
        return self._encodings["o200k_base"]

    def count_text(self, model: str, text: str) -> int:
        if not text:
            return 0
        return count_ordinary(self.encoding_for(model), text)

    async def count_text_async(self, model: str, text: str) -> int:
        if len(text) < THREAD_THRESHOLD:
            return self.count_text(model, text)
        return await trio.to_thread.run_sync(self.count_text, model, text, abandon_on_cancel=True)

    def count_prompt(self, model: str, messages: list[Any], tools: list[Any] | None = None) -> int:
        """Prompt tokens by OpenAI's chat formula, tool definitions included."""
        encoding = self.encoding_for(model)
        total = REPLY_PRIMING
        for message in messages:
            total += TOKENS_PER_MESSAGE
            if not isinstance(message, dict):
                continue
            for key, value in message.items():
                total += _count_value(encoding, value)
                if key == "name":
                    total += TOKENS_PER_NAME
        if isinstance(tools, list):
            total += _count_tools(encoding, tools)
        return total

    async def count_prompt_async(
        self, model: str, messages: list[Any], tools: list[Any] | None = None
    ) -> int:
        if _rough_size(messages) + _rough_size(tools) < THREAD_THRESHOLD:
            return self.count_prompt(model, messages, tools)
        return await trio.to_thread.run_sync(
            self.count_prompt, model, messages, tools, abandon_on_cancel=True
        )


def count_ordinary(encoding: tiktoken.Encoding, text: str) -> int:
    """`len(encoding.encode_ordinary(text))`, without holding a huge text's tokens at once."""
    if len(text) <= PIECE_CHARS:
        return len(encoding.encode_ordinary(text))
    total = start = 0
    while start < len(text):
        end = _cut_after(text, start + PIECE_CHARS)
        total += len(encoding.encode_ordinary(text[start:end]))
        start = end
    return total


def _cut_after(text: str, position: int) -> int:
    """The first place at or after `position` where `text` can be cut, else its end."""
    found = _CUT.search(text, position)
    return len(text) if found is None else found.start()


def _count_value(encoding: tiktoken.Encoding, value: Any) -> int:
    if isinstance(value, str):
        return count_ordinary(encoding, value)
    if isinstance(value, list):
        return sum(_count_part(encoding, part) for part in value)
    if isinstance(value, dict):
        return sum(_count_value(encoding, v) for v in value.values())
    return 0


def _count_part(encoding: tiktoken.Encoding, part: Any) -> int:
    """One element of a content list (text or image) or of `tool_calls`."""
    if not isinstance(part, dict):
        return _count_value(encoding, part)
    if part.get("type") == "image_url":
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else None
        return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_DEFAULT
    if "text" in part:
        return _count_value(encoding, part["text"])
    return sum(_count_value(encoding, v) for k, v in part.items() if k not in ("type", "id"))


def _count_tools(encoding: tiktoken.Encoding, tools: Iterable[Any]) -> int:
    """Tool definitions, after the OpenAI cookbook's accounting for function schemas."""
    function_init, prop_init, prop_key, enum_init, enum_item, function_end = 7, 3, 3, -3, 3, 12
    total = 0
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        total += function_init
        name = str(function.get("name", ""))
        description = str(function.get("description", "")).rstrip(".")
        total += len(encoding.encode_ordinary(f"{name}:{description}"))
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if isinstance(properties, dict) and properties:
            total += prop_init
            for key, schema in properties.items():
                total += prop_key
                schema = schema if isinstance(schema, dict) else {}
                enum = schema.get("enum")
                if isinstance(enum, list) and enum:
                    total += enum_init + sum(
                        enum_item + len(encoding.encode_ordinary(str(item))) for item in enum
                    )
                text = f"{key}:{schema.get('type', '')}:{schema.get('description', '')}"
                total += len(encoding.encode_ordinary(text.rstrip(".")))
    return total + function_end if total else 0


def _rough_size(value: Any) -> int:
    """A cheap upper-bound-ish size, to decide whether counting deserves a thread."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_rough_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_rough_size(v) for v in value.values())
    return 0
