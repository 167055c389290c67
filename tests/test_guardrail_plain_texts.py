"""The guardrail runner's plain readers (`plain_request_texts`, `plain_answer_texts`)
read exactly what the slots read (`request_slots`, `answer_slots`), on every chat shape
they take, and leave every other to the slots.

The readers' lists of keys (what a plain request or message may hold) are kept in step
with the slots' by hand: a key the slots read and the readers skip would let a text
through unchecked. Generated requests and answers cover roles, content as parts, tool
calls and results, refusals, reasoning, audio, the keys of other APIs and shapes that
are not chat at all.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigate.guardrails.text import (
    answer_slots,
    plain_answer_texts,
    plain_request_texts,
    request_slots,
)

Strategy = st.SearchStrategy[Any]

_TEXTS = ["", "hi", "mail a@b.co", "BLOCK me", "zzz secret", "<EMAIL_ADDRESS_1>", "tool out"]
_texty = st.sampled_from(_TEXTS)
_scalar: Strategy = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), _texty)


def _jsonish(depth: int = 2) -> Strategy:
    if depth == 0:
        return _scalar
    keys = st.sampled_from(["a", "text", "q", "content", "type"])
    inner = _jsonish(depth - 1)
    return st.one_of(_scalar, st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3))


def _fixed(required: dict[str, Strategy], optional: dict[str, Strategy] | None = None) -> Strategy:
    return st.fixed_dictionaries(required, optional=optional or {})


_part = st.one_of(
    _fixed({"type": st.just("text"), "text": _texty}),
    _fixed({"type": st.just("image_url"), "image_url": st.just({"url": "https://x/y.png"})}),
    _fixed(
        {"type": st.just("input_audio"), "input_audio": st.just({"data": "AA", "format": "wav"})}
    ),
    _fixed({"type": st.just("refusal"), "refusal": _texty}),
    _jsonish(1),
)
_content = st.one_of(
    _texty, st.none(), st.lists(_part, max_size=3), st.integers(),
    st.dictionaries(st.just("text"), _texty, max_size=1),
)  # fmt: skip
_arguments = st.one_of(
    st.just('{"q": "a@b.co", "n": 1}'), st.just("not json a@b.co"), st.just(""), _jsonish(1)
)
_function = _fixed({"name": st.just("f"), "arguments": _arguments})
_call = st.one_of(
    _fixed({"id": st.just("c1"), "type": st.just("function"), "function": _function}),
    _jsonish(1),
)
_OPTIONAL: dict[str, Strategy] = {
    "name": st.one_of(_texty, st.none()),
    "tool_call_id": st.just("c1"),
    "tool_calls": st.one_of(st.lists(_call, max_size=2), st.none(), _jsonish(1)),
    "function_call": st.one_of(_function, st.none(), _texty),
    "refusal": st.one_of(st.none(), _texty, st.integers()),
    "reasoning_content": st.one_of(st.none(), _texty, st.lists(_texty, max_size=1)),
    "reasoning": st.one_of(st.none(), _texty, st.dictionaries(st.just("text"), _texty)),
    "audio": st.one_of(st.none(), _fixed({"id": st.just("a1"), "transcript": _texty})),
    "annotations": st.just([]),
    "extra": _jsonish(1),
    "thinking_blocks": st.lists(_fixed({"type": st.just("thinking"), "thinking": _texty})),
}
_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])
_message = st.one_of(
    _fixed({"role": _roles, "content": _content}, _OPTIONAL),
    _fixed({"role": _roles, "content": _texty}),
    _fixed({"role": _roles}, {"content": _content, **_OPTIONAL}),
    _scalar,
)
_PLAIN_KEYS: dict[str, Strategy] = {
    "model": st.just("m"), "stream": st.booleans(), "n": st.integers(1, 3),
    "temperature": st.just(0.5), "tool_choice": st.just("auto"), "user": _texty,
    "tools": st.just([{"type": "function", "function": {"name": "f", "description": "a@b.co"}}]),
    "metadata": st.dictionaries(st.sampled_from(["tag", "guardrails"]), _jsonish(1), max_size=2),
    "response_format": st.just({"type": "text"}), "guardrails": _jsonish(1),
}  # fmt: skip
_OTHER_KEYS: dict[str, Strategy] = {
    key: _jsonish(1)
    for key in (
        "system", "instructions", "prompt", "input", "query", "suffix", "documents",
        "contents", "systemInstruction", "content", "requests", "generateContentRequest",
        "system_instruction",
    )
}  # fmt: skip
requests = st.one_of(
    _fixed({"messages": st.lists(_message, max_size=4)}, {**_PLAIN_KEYS, **_OTHER_KEYS}),
    _fixed(
        {"messages": st.lists(_fixed({"role": _roles, "content": _texty}, _OPTIONAL))}, _PLAIN_KEYS
    ),
    _fixed(
        {"messages": st.lists(_fixed({"role": _roles, "content": _texty}), max_size=4)}, _PLAIN_KEYS
    ),
    _fixed({}, {"messages": _jsonish(1), **_PLAIN_KEYS, **_OTHER_KEYS}),
)
_choice = st.one_of(
    _fixed({"index": st.integers(0, 2), "message": _message},
           {"finish_reason": st.just("stop"), "text": st.one_of(_texty, st.none(), st.integers())}),
    _fixed({"index": st.integers(0, 2),
            "message": _fixed({"role": st.just("assistant"), "content": _texty}, _OPTIONAL)}),
    _fixed({"index": st.integers(0, 2)},
           {"text": st.one_of(_texty, st.none()), "message": st.one_of(st.none(), _message)}),
    _scalar,
)  # fmt: skip
_OBJECTS = ["chat.completion", "text_completion", "response", "other"]
answers = _fixed(
    {},
    {
        "object": st.sampled_from(_OBJECTS), "type": st.sampled_from(["message", "other"]),
        "choices": st.one_of(st.lists(_choice, max_size=3), st.none(), _jsonish(1)),
        "usage": st.just({"prompt_tokens": 1}), "candidates": _jsonish(1),
        "content": _jsonish(1), "output": _jsonish(1),
    },
)  # fmt: skip


def _slot_texts(read: Any, document: dict[str, Any]) -> object:
    try:
        return [slot.text for slot in read(document)]
    except Exception as error:  # a shape the slots refuse: the reader must not read it
        return ("raised", type(error).__name__)


def _reads_as_its_slots(plain: Any, slots: Any, document: dict[str, Any]) -> None:
    """The plain reader leaves the document as it is, and reads what its slots read
    (or leaves it to them)."""
    before = copy.deepcopy(document)
    expected = _slot_texts(slots, document)
    texts = plain(document)
    assert document == before
    if texts is not None:
        assert texts == expected


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests)
def test_a_plain_request_reads_as_its_slots_do(body: dict[str, Any]) -> None:
    _reads_as_its_slots(plain_request_texts, request_slots, body)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(answers)
def test_a_plain_answer_reads_as_its_slots_do(answer: dict[str, Any]) -> None:
    _reads_as_its_slots(plain_answer_texts, answer_slots, answer)


def test_the_plain_readers_take_the_plain_shapes() -> None:
    """The properties above are not vacuous: a plain chat request and answer are read
    by the plain readers, and a request with a system prompt in another API's key is not."""
    body = {"model": "m", "messages": [{"role": "user", "content": "mail a@b.co"}]}
    assert plain_request_texts(body) == ["mail a@b.co"]
    message = {"role": "assistant", "content": "hi"}
    answer = {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
    assert plain_answer_texts(answer) == ["hi"]
    assert plain_request_texts({**body, "system": "be terse"}) is None
