"""The response cache (issue 22): LiteLLM's `litellm_settings.cache`, hits for each
surface, streamed replay, coalescing of identical requests in flight, its operators'
view (headers, spend rows, metrics, admin routes) and Redis's failures."""

from __future__ import annotations

import gc
import hashlib
import weakref
from typing import Any, cast

import anthropic
import orjson
import pytest
import trio
from anthropic.types import MessageParam
from fakes import (
    DONE,
    FakeUpstream,
    JSONReply,
    StreamReply,
    chat_completion,
    chunk,
    usage_chunk,
)
from helpers import (
    MASTER_KEY,
    MESSAGES,
    RedisServer,
    RunningGateway,
    openai_config,
    sdk,
    start_gateway,
)
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from trigate.cache import keys
from trigate.cache.keys import cache_key

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)
# And as Anthropic's SDK types them.
ASK = cast("list[MessageParam]", MESSAGES)

USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}


def cached_config(upstream: FakeUpstream, **params: Any) -> dict[str, Any]:
    config = openai_config(upstream, **PRICES)
    # Responses requests are translated to chat (a native upstream's: see its own test).
    config["model_list"][0]["model_info"] = {"supports_responses_api": False}
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local", **params}}
    return config


async def _post(gateway: RunningGateway, path: str, body: dict[str, Any]) -> Any:
    async with gateway.client(timeout=30) as client:
        return await client.post(path, json=body)


async def _stream(gateway: RunningGateway, body: dict[str, Any]) -> tuple[Any, str]:
    # A long read timeout: shared streams wait, on a loaded machine, for all to join.
    async with (
        gateway.client(timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response,
    ):
        return response, (await response.aread()).decode()


def _chat(text: str = "Say hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


# --- the key ------------------------------------------------------------------------------


def test_the_key_is_the_same_however_the_json_keys_are_ordered() -> None:
    one = orjson.loads(
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,'
        b'"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"b":1,"a":2}}}}'
    )
    two = orjson.loads(
        b'{"response_format":{"json_schema":{"schema":{"a":2,"b":1},"name":"a"},"type":"json_schema"},'
        b'"temperature":0.5,"messages":[{"content":"hi","role":"user"}]}'
    )
    assert cache_key("chat", "g", "", one, None) == cache_key("chat", "g", "", two, None)
    # What does not shape the answer is left out; what does is not.
    three = {**two, "stream": True, "user": "u1", "metadata": {"a": 1}, "stream_options": {}}
    assert cache_key("chat", "g", "", three, None) == cache_key("chat", "g", "", one, None)
    assert cache_key("chat", "g", "", {**one, "temperature": 0.6}, None) != cache_key(
        "chat", "g", "", one, None
    )
    assert cache_key("chat", "h", "", one, None) != cache_key("chat", "g", "", one, None)
    assert cache_key("messages", "g", "", one, None) != cache_key("chat", "g", "", one, None)
    assert cache_key("chat", "g", "", one, "ns").startswith("ns:")
    # A key that is no string (a hook may put one) is keyed as its JSON string.
    biased = {**one, "logit_bias": {50256: -100}}
    assert cache_key("chat", "g", "", biased, None) == cache_key(
        "chat", "g", "", {**one, "logit_bias": {"50256": -100}}, None
    )


_GOLDEN_BODY = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": "h\u00e9llo \U0001f600"}],
    "temperature": 0.7,
    "logit_bias": {"50256": -100},
    "user": "u",
    "stream": True,
}


def test_the_keys_value_is_what_it_was() -> None:
    """The key's very digest, pinned: entries in Redis outlive the gateway that wrote
    them, and a key computed differently (another canonical form, another escaping of
    text past ASCII) would turn every one of them into a miss without any test noticing."""
    golden = "0d2da33be67c90b5f30bed17abac9db6e1669af43f5a47259f91fd040f606a3b"
    assert cache_key("chat", "gpt-test", "", _GOLDEN_BODY, None) == golden
    # A key that is no string (a hook may put one) is keyed as its JSON string.
    biased = {**_GOLDEN_BODY, "logit_bias": {50256: -100}}
    assert cache_key("chat", "gpt-test", "", biased, None) == golden


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    # Keys that are no strings too (a hook's), written as orjson writes them.
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text() | st.integers(0, 99), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    surface=st.sampled_from(["chat", "messages", "responses", "embeddings"]),
    group=st.text(),
    tenant=st.text(),
    body=st.dictionaries(st.sampled_from(sorted(keys.UNKEYED)) | st.text(), _JSON, max_size=5),
)
def test_the_form_is_the_whole_form_sorted(
    surface: str, group: str, tenant: str, body: dict[str, Any]
) -> None:
    """The form is written as the body's part then the rest of its fields
    (`keys._form`): byte for byte the whole form's sorted JSON, so every key (and every
    entry in Redis) is what it was when the form was written whole."""
    shaped = {name: value for name, value in body.items() if name not in keys.UNKEYED}
    form = {"v": keys.KEY_VERSION, "surface": surface, "model": group, "scope": tenant}
    try:
        whole = orjson.dumps({**form, "body": shaped}, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        whole = orjson.dumps({**form, "body": shaped}, option=options)
    assert keys.canonical(surface, group, tenant, body) == whole
    digest = hashlib.sha256(whole).hexdigest()
    assert cache_key(surface, group, tenant, body, None) == digest
    assert cache_key(surface, group, tenant, body, None) == digest  # kept, read back


def test_a_repeated_requests_key_is_hashed_once_and_the_digests_kept_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hit is a request made again: its key's digest is remembered, not hashed anew
    (OpenSSL's setup per call was a sixtieth of a hit), in a memory bounded in bytes, and
    a large form is hashed each time, never kept."""
    hashed: list[int] = []
    sha256 = hashlib.sha256

    def counted(data: bytes) -> Any:
        hashed.append(len(data))
        return sha256(data)

    monkeypatch.setattr(hashlib, "sha256", counted)
    body = {"messages": [{"role": "user", "content": "hashed once"}]}
    first = cache_key("chat", "g", "", body, None)
    assert cache_key("chat", "g", "", orjson.loads(orjson.dumps(body)), None) == first
    assert len(hashed) == 1
    assert cache_key("chat", "g", "", body, "ns") == f"ns:{first}"
    assert len(hashed) == 1
    large = {"messages": [{"role": "user", "content": "x" * keys.LARGEST_FORM_KEPT}]}
    assert cache_key("chat", "g", "", large, None) == cache_key("chat", "g", "", large, None)
    assert len(hashed) == 3
    monkeypatch.setattr(keys, "DIGESTS_KEPT_BYTES", 1000)
    digests = keys._Digests()
    for n in range(50):
        written = b'"%03d"' % n * 33
        form = keys._form("chat", "g", "", written)
        assert digests.hexdigest("chat", "g", "", written) == sha256(form).hexdigest()
        kept = sum(len(kept[3]) + keys.KEPT_OVERHEAD for kept in digests._kept)
        assert kept <= 1000


@pytest.mark.parametrize(("scope", "group_length"), [("global", 1), ("key", 1), ("key", 1000)])
def test_the_digests_kept_hold_the_memory_they_count(
    monkeypatch: pytest.MonkeyPatch, scope: str, group_length: int
) -> None:
    """The bound is on memory held, not only on the forms' lengths: a body's part is kept
    as a copy of its own size (orjson's bytes keep the buffer they were written in, some
    4 KiB for a small one), and each one's digest, slot and tuple are counted too, with a
    tenant string of its own per request (`scope: key`, a key's 64-character hash) and a
    group's (a model name a wildcard matched, as long as the client made it)."""
    import tracemalloc

    bound = 256 << 10
    monkeypatch.setattr(keys, "DIGESTS_KEPT_BYTES", bound)
    digests = keys._Digests()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = 0
        for n in range(2000):  # each form made as a request's key makes it, then let go
            body = {"messages": [{"role": "user", "content": f"q{n}"}]}
            tenant = "" if scope == "global" else f"key:{n:064x}"
            group = "g" if group_length == 1 else f"{n:0{group_length}x}"
            digests.hexdigest("chat", group, tenant, keys.sorted_body(body))
            held = max(held, tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert digests._kept and held <= bound, held


# --- hits -----------------------------------------------------------------------------------


async def test_a_repeated_chat_request_is_a_hit_with_its_headers_and_a_free_spend_row(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    first = await _post(running, "/v1/chat/completions", _chat())
    assert first.headers["x-trigate-cache"] == "miss"
    key = first.headers["x-litellm-cache-key"]
    # The same request, its JSON keys in another order and another `user`.
    body = {"messages": [{"content": "Say hello", "role": "user"}], "model": "gpt-test"}
    second = await _post(running, "/v1/chat/completions", {**body, "user": "someone"})
    assert second.headers["x-trigate-cache"] == "hit"
    assert second.headers["x-litellm-cache-key"] == key
    assert second.json()["choices"][0]["message"]["content"] == "Cached!"
    assert second.json()["usage"] == USAGE
    assert len(upstream.requests) == 1
    records = await running.records.wait_for(2)
    assert [(r.cache_hit, r.cache_key) for r in records] == [(False, key), (True, key)]
    assert records[0].cost == pytest.approx(7 * 0.001 + 4 * 0.002)
    assert records[1].cost == 0.0 and records[1].deployment is None
    # The hit's row names the answer it gave, read from its entry's fields.
    assert records[1].response_id == records[0].response_id == first.json()["id"]
    await running.stop()


@pytest.mark.parametrize(
    ("usage", "source"),
    [
        ({**USAGE, "prompt_tokens_details": {"cached_tokens": 3}}, "upstream"),
        # Counts that are no counts: the miss is billed by tiktoken's count of its prompt
        # and answer, and so is every hit.
        ({"prompt_tokens": "7", "completion_tokens": True, "total_tokens": 11}, "counted"),
    ],
)
async def test_every_hit_of_an_entry_is_billed_the_usage_its_miss_was(
    nursery: trio.Nursery, upstream: FakeUpstream, usage: dict[str, Any], source: str
) -> None:
    """A hit's usage is found once per entry the worker keeps (`Entry.billed`), as the
    meter would find it from the kept answer's usage, and every hit of it is billed that:
    the tokens and their source on each row are the miss's."""
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", usage))
    running = await start_gateway(nursery, cached_config(upstream))
    for _ in range(3):
        await _post(running, "/v1/chat/completions", _chat())
    records = await running.records.wait_for(3)
    assert [r.cache_hit for r in records] == [False, True, True]
    billed = {(r.prompt_tokens, r.completion_tokens, r.usage_source) for r in records}
    assert len(billed) == 1
    _, completion_tokens, counted_by = billed.pop()
    # Counted, the answer's text is: "Cached!" is a token or two, never none.
    assert counted_by == source and completion_tokens > 0
    await running.stop()


async def test_a_hook_that_changes_a_hits_usage_changes_that_hits_alone(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """An entry's usage is found once for all its hits (`Entry.billed`); a hook given it
    (which may change it in place) is given a copy, so one hit's change never reaches the
    next hit's row."""
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    config = cached_config(upstream)
    config["litellm_settings"]["callbacks"] = ["hook_examples.surcharge_usage"]
    running = await start_gateway(nursery, config)
    for _ in range(3):
        await _post(running, "/v1/chat/completions", _chat())
    records = await running.records.wait_for(3)
    assert [r.cache_hit for r in records] == [False, True, True]
    assert [r.prompt_tokens for r in records] == [USAGE["prompt_tokens"] + 1000] * 3
    await running.stop()


async def test_a_namespace_that_no_header_can_hold_is_refused_before_any_call(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The namespace begins the key sent back in `x-litellm-cache-key`: one with a CR or
    LF (a header of the client's own making) or any control character is the client's
    400, before the upstream is called, not a 500 after it; and a config's is refused at
    start-up. One that is only odd (spaces, a colon, past ASCII) is kept as it is."""
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    for namespace in ("eval\r\nx-evil: 1", "nul\x00", "tab\tbell\x07"):
        refused = await _post(
            running, "/v1/chat/completions", _chat(cache={"namespace": namespace})
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "cache"
        assert "x-evil" not in refused.headers
    assert upstream.requests == []
    kept = await _post(running, "/v1/chat/completions", _chat(cache={"namespace": "a b:é"}))
    assert kept.headers["x-litellm-cache-key"].startswith("a b:é:")
    await running.stop()
    from helpers import build_app

    from trigate.config import ConfigError

    with pytest.raises(ConfigError, match="control characters"):
        build_app(cached_config(upstream, namespace="a\nb"))


async def test_a_hits_call_is_freed_as_it_ends_not_left_to_the_collector(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's context and its call refer to each other; parted as the request ends,
    the call (and all it holds) is freed then, not left for the cyclic collector, whose
    passes come the more often the more cycles requests leave."""
    from trigate.api import pipeline

    calls: list[weakref.ref[Any]] = []
    made = pipeline.Call.__init__

    def noted(self: Any, *args: Any) -> None:
        made(self, *args)
        calls.append(weakref.ref(self))

    monkeypatch.setattr(pipeline.Call, "__init__", noted)
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    assert (await _post(running, "/v1/chat/completions", _chat())).status_code == 200
    gc.collect()
    gc.disable()
    try:
        hit = await _post(running, "/v1/chat/completions", _chat())
        assert hit.headers["x-trigate-cache"] == "hit"
        await running.records.wait_for(2)
        await trio.testing.wait_all_tasks_blocked()
        assert len(calls) == 2
        assert calls[1]() is None
    finally:
        gc.enable()
    await running.stop()


async def test_a_kept_whole_answer_is_parsed_only_once_something_reads_it() -> None:
    from trigate.cache.entries import ENTRY_VERSION, KeptCompletion, decode, encode

    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": USAGE}
    raw = orjson.dumps(answer, option=orjson.OPT_INDENT_2)  # the upstream's own bytes
    kept = encode({"answer": answer}, raw)
    # Still the version a gateway without these fields reads (it parses the answer).
    assert orjson.loads(kept.partition(b"\n")[0])["v"] == ENTRY_VERSION == 2
    entry = decode(kept, None)
    assert entry is not None and entry.tokens() == 11
    served = entry.serve(False)
    # What a hit reads comes from the entry's fields: its bytes go out as they were kept.
    assert isinstance(served, KeptCompletion) and served.unread
    assert (served.raw, served.usage, served.answer_id) == (raw, USAGE, "chatcmpl-1")
    assert served.body == answer  # parsed when read, as a hook reads it
    served.body["usage"] = {**USAGE, "total_tokens": 12}  # and changed, the usage with it
    assert served.usage == {**USAGE, "total_tokens": 12}
    replayed = entry.serve(True)
    assert replayed is not None and not isinstance(replayed, KeptCompletion)
    # An entry decoded once serves every hit of its value (`ResponseCache._read`): each
    # hit's answer is its own, whatever the one before did to its own.
    first = entry.serve(False)
    assert isinstance(first, KeptCompletion) and first.usage is not None
    first.usage["total_tokens"] = 13
    again = entry.serve(False)
    assert isinstance(again, KeptCompletion) and again.unread and again.usage == USAGE


@pytest.mark.parametrize(
    "kept",
    [b'{"id": garbage}', b'{"a":1}{"b":2}', b"[1]", b"", b'{"id": "chatcmpl-1"'],
)
async def test_kept_bytes_that_are_no_answer_are_a_miss(kept: bytes) -> None:
    """Bytes the entry's writer did not keep (damaged, or another writer's), that are no
    JSON object, are never served as an answer."""
    from trigate.cache.entries import decode, encode

    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": USAGE}
    line = encode({"answer": answer}).partition(b"\n")[0]
    assert decode(line + b"\n" + kept, None) is None


async def test_an_older_gateways_entry_is_a_hit_parsed_at_once() -> None:
    """An entry written before its whole answers had their usage and id beside them (a
    gateway still running the older code in a rolling deploy, or its entries in Redis)
    is served as it was then: its answer parsed from its bytes."""
    from trigate.cache.entries import KeptCompletion, decode
    from trigate.providers import Completion

    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": USAGE}
    raw = orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n"
    older = orjson.dumps({"v": 2, "at": 0, "body": "answer"}) + b"\n" + raw
    entry = decode(older, None)
    assert entry is not None and entry.tokens() == 11
    served = entry.serve(False)
    assert isinstance(served, Completion) and not isinstance(served, KeptCompletion)
    assert (served.body, served.raw, served.usage) == (answer, raw, USAGE)


async def test_an_older_gateways_entry_is_judged_by_when_it_was_kept() -> None:
    """Parsed at once, an older gateway's entry still carries when it was kept: a request's
    `s-maxage` serves it while it is young enough, and only then."""
    from trigate.cache.entries import decode
    from trigate.clock import wall_time

    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": USAGE}
    now = wall_time()
    older = orjson.dumps({"v": 2, "at": now - 100, "body": "answer"}) + b"\n" + orjson.dumps(answer)
    assert decode(older, 3600) is not None
    entry = decode(older, None)
    assert entry is not None and entry.fresh(3600) and not entry.fresh(10)


async def test_a_decoded_entry_counts_in_the_bytes_the_cache_holds() -> None:
    """A local entry decoded once for its later hits keeps a copy of its answer beside the
    value: that copy counts towards `max_bytes`, and makes room as a value would."""
    from trigate.cache.backends import LocalBackend
    from trigate.cache.cache import ResponseCache
    from trigate.cache.entries import encode

    values = {}
    for n in range(3):
        answer = chat_completion("y" * 100_000 + str(n), USAGE)
        values[f"k{n}"] = encode({"answer": answer}, orjson.dumps(answer))
    size = len(values["k0"]) + 2
    memory = LocalBackend(max_bytes=4 * size, max_entry_bytes=4 * size)
    cache = ResponseCache.__new__(ResponseCache)  # its reading alone, over this memory
    cache._memory = memory
    for key, value in values.items():
        assert memory.write(key, value, None)
    held = memory.held_bytes()
    assert cache._read("k0", memory.read("k0"), None) is not None
    noted = memory.held_bytes() - held
    assert 100_000 < noted < size  # the answer's copy, counted
    # A second hit reads the note: nothing more held. A third entry's note makes room.
    assert cache._read("k0", memory.read("k0"), None) is not None
    assert memory.held_bytes() == held + noted
    assert cache._read("k1", memory.read("k1"), None) is not None
    assert memory.held_bytes() <= memory.max_bytes
    assert memory.read("k2") is None  # the least recently used went, to make room
    await memory.flush()
    assert memory.held_bytes() == 0


async def test_a_changed_entry_is_read_afresh_not_from_its_note(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A hit's decoded entry serves the value it was read from, never the one that
    replaced it: deleted and kept again with another answer, the key serves the new one."""
    answers = iter(["First!", "Second!"])
    upstream.handler = lambda request: JSONReply(chat_completion(next(answers), USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    first = await _post(running, "/v1/chat/completions", _chat())
    hit = await _post(running, "/v1/chat/completions", _chat())  # decoded, and noted
    assert hit.json()["choices"][0]["message"]["content"] == "First!"
    async with running.client() as client:
        key = first.headers["x-litellm-cache-key"]
        assert (await client.post("/cache/delete", json={"keys": [key]})).status_code == 200
    again = await _post(running, "/v1/chat/completions", _chat())
    assert again.headers["x-trigate-cache"] == "miss"
    after = await _post(running, "/v1/chat/completions", _chat())
    assert after.headers["x-trigate-cache"] == "hit"
    assert after.json()["choices"][0]["message"]["content"] == "Second!"
    await running.stop()


async def test_a_whole_answers_usage_and_id_are_those_of_the_bytes_kept() -> None:
    """A hook may change an answer in place without saying so (LiteLLM's
    `async_post_call_success_hook`): the client got the upstream's bytes, which the entry
    keeps, so the usage and id a hit reads are theirs, not the changed body's."""
    from trigate.cache.entries import KeptCompletion, decode, encode

    sent = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": USAGE}
    raw = orjson.dumps(sent)
    changed = {**sent, "id": "chatcmpl-2", "usage": {**USAGE, "total_tokens": 111}}
    entry = decode(encode({"answer": changed}, raw), None)
    assert entry is not None and entry.tokens() == 11
    served = entry.serve(False)
    assert isinstance(served, KeptCompletion) and served.raw == raw
    assert (served.usage, served.answer_id) == (USAGE, "chatcmpl-1")


@pytest.mark.parametrize("tail", [b"\n", b"\r\n", b"  ", b"\n\t "])
async def test_an_upstreams_answer_ending_in_whitespace_is_a_hit(
    nursery: trio.Nursery, upstream: FakeUpstream, tail: bytes
) -> None:
    """OpenAI's bodies are indented and end in a newline: kept as sent, they are hits."""
    sent = orjson.dumps(chat_completion("Indented!", USAGE), option=orjson.OPT_INDENT_2) + tail
    upstream.handler = lambda request: JSONReply(sent)
    running = await start_gateway(nursery, cached_config(upstream))
    answers = [await _post(running, "/v1/chat/completions", _chat()) for _ in range(3)]
    assert [a.headers["x-trigate-cache"] for a in answers] == ["miss", "hit", "hit"]
    assert [a.content for a in answers] == 3 * [sent]
    assert len(upstream.requests) == 1
    await running.stop()


async def test_a_hits_spend_row_names_the_id_a_hook_gave_its_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    config = cached_config(upstream)
    config["litellm_settings"]["callbacks"] = ["hook_examples.renumber_answers"]
    running = await start_gateway(nursery, config)
    miss = await _post(running, "/v1/chat/completions", _chat())
    hit = await _post(running, "/v1/chat/completions", _chat())
    assert hit.headers["x-trigate-cache"] == "hit"
    assert miss.json()["id"] != hit.json()["id"]
    records = await running.records.wait_for(2)
    assert [r.response_id for r in records] == [miss.json()["id"], hit.json()["id"]]
    await running.stop()


async def test_an_answer_without_usage_is_kept_with_the_usage_counted_once(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    # An upstream that reports no usage: the miss counts its tokens; its entry keeps
    # what the client was told, so a hit answers with the same usage and counts nothing.
    upstream.handler = lambda request: JSONReply(chat_completion("Uncounted upstream"))
    running = await start_gateway(nursery, cached_config(upstream))
    first = await _post(running, "/v1/chat/completions", _chat())
    counted = first.json()["usage"]
    assert counted["prompt_tokens"] > 0 and counted["completion_tokens"] > 0
    second = await _post(running, "/v1/chat/completions", _chat())
    assert second.headers["x-trigate-cache"] == "hit"
    assert second.json()["usage"] == counted
    records = await running.records.wait_for(2)
    assert [r.usage_source for r in records] == ["counted", "upstream"]
    assert [(r.prompt_tokens, r.completion_tokens) for r in records] == 2 * [
        (counted["prompt_tokens"], counted["completion_tokens"])
    ]
    await running.stop()


def _reasoning_stream() -> StreamReply:
    """A stream with reasoning, a tool call in two parts, and its finish reason."""
    call_start = {"index": 0, "id": "call_1", "type": "function",
                  "function": {"name": "get_weather", "arguments": '{"city":'}}  # fmt: skip
    call_rest = {"index": 0, "function": {"arguments": ' "Paris"}'}}
    frames: list[bytes | float | trio.Event] = [
        chunk(
            None,
            choices=[
                {
                    "index": 0,
                    "delta": {"role": "assistant", "reasoning_content": "Think"},
                    "finish_reason": None,
                }
            ],
        ),
        chunk(
            None,
            choices=[{"index": 0, "delta": {"reasoning_content": "ing."}, "finish_reason": None}],
        ),
        chunk(
            None,
            choices=[{"index": 0, "delta": {"tool_calls": [call_start]}, "finish_reason": None}],
        ),
        chunk(
            None,
            choices=[{"index": 0, "delta": {"tool_calls": [call_rest]}, "finish_reason": None}],
        ),
        chunk(finish="tool_calls"),
        usage_chunk(9, 6),
        DONE,
    ]
    return StreamReply(frames)


async def test_a_stream_is_kept_whole_and_serves_both_kinds_of_request_with_reasoning_and_tools(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: _reasoning_stream()
    running = await start_gateway(nursery, cached_config(upstream))
    client = sdk(running)
    body = _chat("Weather in Paris?")
    streamed = await client.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    )
    async for _ in streamed:
        pass
    # A whole request, answered from the stream's entry.
    whole = await client.chat.completions.with_raw_response.create(**body)
    assert whole.headers["x-trigate-cache"] == "hit"
    message = whole.parse().choices[0].message
    assert whole.parse().choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert message.model_extra["reasoning_content"] == "Thinking."
    # A streamed request replayed: the SDK's own accumulation of its chunks.
    async with client.chat.completions.stream(
        **body, stream_options={"include_usage": True}
    ) as replay:
        final = await replay.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    replayed_calls = final.choices[0].message.tool_calls
    assert replayed_calls is not None
    assert replayed_calls[0].function.arguments == '{"city": "Paris"}'
    assert final.usage is not None and final.usage.total_tokens == 15
    _, text = await _stream(running, body)
    assert text.endswith("data: [DONE]\n\n") and '"reasoning_content":"Thinking."' in text
    assert len(upstream.requests) == 1
    await running.stop()


async def test_a_whole_answer_is_replayed_as_a_stream_in_each_surface(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    await _post(running, "/v1/chat/completions", _chat())
    response, text = await _stream(running, _chat())
    assert response.headers["x-trigate-cache"] == "hit"
    assert '"content":"Cached!"' in text and text.endswith("data: [DONE]\n\n")
    # Anthropic's Messages: its own key (another surface), then its own stream on a hit.
    messages = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    first = await messages.messages.create(model="gpt-test", max_tokens=50, messages=ASK)
    block = first.content[0]
    assert block.type == "text" and block.text == "Cached!"
    async with messages.messages.stream(model="gpt-test", max_tokens=50, messages=ASK) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    block = final.content[0]
    assert kinds[-1] == "message_stop" and block.type == "text" and block.text == "Cached!"
    assert final.usage.output_tokens == 4
    # The Responses API, translated: a hit for a stream ends with response.completed.
    client = sdk(running)
    await client.responses.create(model="gpt-test", input="Say hello", store=False)
    events = [
        event async for event in await client.responses.create(
            model="gpt-test", input="Say hello", store=False, stream=True
        )
    ]  # fmt: skip
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.output_text == "Cached!"
    assert len(upstream.requests) == 3  # chat, Messages, Responses: one call each
    await running.stop()


async def test_text_completions_are_cached(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    answer = {
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "Once upon", "finish_reason": "length", "logprobs": None}],
        "usage": USAGE,
    }  # fmt: skip
    upstream.handler = lambda request: JSONReply(answer)
    running = await start_gateway(nursery, cached_config(upstream))
    client = sdk(running)
    await client.completions.create(model="gpt-test", prompt="Tell me")
    again = await client.completions.with_raw_response.create(model="gpt-test", prompt="Tell me")
    assert again.headers["x-trigate-cache"] == "hit"
    assert again.parse().choices[0].text == "Once upon"
    streamed = await client.completions.create(model="gpt-test", prompt="Tell me", stream=True)
    texts = [c.choices[0].text async for c in streamed if c.choices]
    assert "".join(texts) == "Once upon"
    assert len(upstream.requests) == 1
    await running.stop()


async def test_request_controls(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    await _post(running, "/v1/chat/completions", _chat(cache={"no-store": True}))
    await _post(running, "/v1/chat/completions", _chat())  # nothing was kept: a miss
    assert len(upstream.requests) == 2
    fresh = await _post(running, "/v1/chat/completions", _chat(cache={"no-cache": True}))
    assert fresh.headers["x-trigate-cache"] == "miss" and len(upstream.requests) == 3
    bypass = await _post(running, "/v1/chat/completions", _chat(caching=False))
    assert "x-trigate-cache" not in bypass.headers and len(upstream.requests) == 4
    # A namespace keeps its own entries.
    spaced = await _post(running, "/v1/chat/completions", _chat(cache={"namespace": "eval"}))
    assert spaced.headers["x-litellm-cache-key"].startswith("eval:")
    assert spaced.headers["x-trigate-cache"] == "miss"
    hit = await _post(running, "/v1/chat/completions", _chat(cache={"s-maxage": 3600}))
    assert hit.headers["x-trigate-cache"] == "hit"
    bad = await _post(running, "/v1/chat/completions", _chat(cache={"ttl": "soon"}))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache"
    await running.stop()


async def test_default_off_caches_only_requests_that_opt_in(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream, mode="default_off"))
    await _post(running, "/v1/chat/completions", _chat())
    plain = await _post(running, "/v1/chat/completions", _chat())
    assert "x-trigate-cache" not in plain.headers and len(upstream.requests) == 2
    await _post(running, "/v1/chat/completions", _chat(cache={"use-cache": True}))
    hit = await _post(running, "/v1/chat/completions", _chat(caching=True))
    assert hit.headers["x-trigate-cache"] == "hit" and len(upstream.requests) == 3
    await running.stop()


def _response_object(text: str) -> dict[str, Any]:
    return {
        "id": "resp_upstream", "object": "response", "created_at": 1, "status": "completed",
        "model": "upstream-model", "output": [{
            "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }],
        "usage": {"input_tokens": 7, "output_tokens": 4, "total_tokens": 11},
    }  # fmt: skip


async def test_a_native_responses_answer_is_kept_only_when_the_upstream_does_not_store_it(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(_response_object("Native!"))
    config = cached_config(upstream)
    config["model_list"][0]["model_info"] = {"supports_responses_api": True}
    running = await start_gateway(nursery, config)
    client = sdk(running)
    for _ in range(2):
        answer = await client.responses.with_raw_response.create(
            model="gpt-test", input="Say hello", store=False
        )
    assert answer.headers["x-trigate-cache"] == "hit"
    assert answer.parse().output_text == "Native!"
    assert len(upstream.requests) == 1
    # Stored upstream (store defaults to true): every request goes there.
    for _ in range(2):
        await client.responses.create(model="gpt-test", input="Say hi")
    assert len(upstream.requests) == 3
    await running.stop()


async def _read_stream(gateway: RunningGateway, seen: list[str]) -> None:
    _, text = await _stream(gateway, _chat("Count", stream_options={"include_usage": True}))
    seen.append(text)


async def _subscribers(gateway: RunningGateway, count: int) -> None:
    """Until `count` requests share the one call in flight (the cache's state, polled)."""
    cache = gateway.gateway.cache
    assert cache is not None

    def most() -> int:
        return max((len(flight.subscribers) for flight in cache._flights.values()), default=0)

    with trio.fail_after(30):
        while most() < count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_fifty_identical_streams_share_one_upstream_call_billed_once(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The upstream sends its first chunk, then waits until all 50 have joined: those
    that came after it get it too, then the rest live."""
    words = [f" w{i}" for i in range(20)]
    resume = trio.Event()
    frames: list[bytes | float | trio.Event] = [chunk(words[0]), resume]
    for word in words[1:]:
        frames += [chunk(word), 0.01]
    frames += [chunk(finish="stop"), usage_chunk(10, 20), DONE]
    upstream.handler = lambda request: StreamReply(frames)
    running = await start_gateway(nursery, cached_config(upstream))
    seen: list[str] = []
    async with trio.open_nursery() as clients:
        for _ in range(50):
            clients.start_soon(_read_stream, running, seen)
        await _subscribers(running, 50)
        resume.set()
    assert len(upstream.requests) == 1
    assert len(seen) == 50 and len(set(seen)) == 1
    content = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in seen[0].split("\n\n")
        if line.startswith("data: {") and orjson.loads(line[6:])["choices"]
    )
    assert content == "".join(words)
    assert seen[0].endswith("data: [DONE]\n\n") and '"total_tokens":30' in seen[0]
    records = await running.records.wait_for(50)
    # Billed once: the sum over the group is the upstream's usage priced once.
    assert sum(r.cost for r in records) == pytest.approx(10 * 0.001 + 20 * 0.002)
    assert sum(1 for r in records if r.cost > 0) == 1
    assert sum(1 for r in records if r.cache_hit) == 49
    await running.stop()


async def test_the_shared_upstream_closes_only_when_its_last_subscriber_leaves(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Late subscribers get every chunk from the first; 49 leaving keep it open."""
    upstream.handler = lambda request: StreamReply([chunk("one")], tail=chunk(" more"))
    running = await start_gateway(nursery, cached_config(upstream))
    scopes: list[trio.CancelScope] = []
    firsts: list[str] = []

    async def subscriber(task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            async with (
                running.client() as client,
                client.stream("POST", "/v1/chat/completions", json=_chat("Go", stream=True)) as r,
            ):
                lines = r.aiter_lines()
                firsts.append(await anext(lines))
                task_status.started()
                async for _ in lines:
                    pass

    async with trio.open_nursery() as clients:
        for _ in range(50):
            await clients.start(subscriber)
        assert len(upstream.requests) == 1
        assert all('"content":"one"' in line for line in firsts)
        for scope in scopes[:49]:
            scope.cancel()
        await trio.sleep(0.3)
        assert upstream.aborted == 0 and upstream.connections_closed == 0
        scopes[49].cancel()
        with trio.fail_after(30):  # against a hang, not a timing assertion
            await upstream.wait_for(lambda: upstream.aborted == 1)
    records = await running.records.wait_for(50)
    # The last to leave had every chunk the upstream sent, and pays for them.
    assert sum(1 for r in records if r.cost > 0) <= 1
    await running.stop()


async def test_a_failed_shared_call_fails_every_subscriber_and_is_not_kept(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    resume = trio.Event()
    failure = orjson.dumps({"error": {"message": "overloaded", "type": "server_error"}})
    upstream.handler = lambda request: StreamReply(
        [resume, failure], status=500, content_type="application/json"
    )
    running = await start_gateway(nursery, cached_config(upstream))
    statuses: list[int] = []

    async def ask() -> None:
        statuses.append((await _post(running, "/v1/chat/completions", _chat())).status_code)

    async with trio.open_nursery() as clients:
        for _ in range(5):
            clients.start_soon(ask)
        await _subscribers(running, 4)  # the leader's four followers wait on it
        resume.set()
    assert len(upstream.requests) == 1 and statuses == [502] * 5  # as each had alone
    upstream.handler = lambda request: JSONReply(chat_completion("Better", USAGE))
    again = await _post(running, "/v1/chat/completions", _chat())
    assert again.status_code == 200 and again.headers["x-trigate-cache"] == "miss"
    await running.stop()


def _embeddings_answer(request: Any) -> JSONReply:
    """One vector per input item, [len(item), position]; a token per item."""
    items = request.json["input"]
    items = [items] if isinstance(items, str) else items
    data = [{"object": "embedding", "index": i, "embedding": [float(len(item)), float(i)]}
            for i, item in enumerate(items)]  # fmt: skip
    usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
    return JSONReply({"object": "list", "data": data, "model": "upstream-model", "usage": usage})


async def test_embeddings_are_cached_per_item_and_a_batch_pays_only_for_new_items(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = _embeddings_answer
    running = await start_gateway(nursery, cached_config(upstream))
    client = sdk(running)
    await client.embeddings.create(model="gpt-test", input=["a", "bb"])
    batch = await client.embeddings.with_raw_response.create(
        model="gpt-test", input=["ccc", "a", "dddd", "bb"]
    )
    assert batch.headers["x-trigate-cache"] == "miss"
    assert upstream.requests[-1].json["input"] == ["ccc", "dddd"]  # only the new items
    vectors = [(d.index, d.embedding[0]) for d in batch.parse().data]
    assert vectors == [(0, 3.0), (1, 1.0), (2, 4.0), (3, 2.0)]
    assert batch.parse().usage.prompt_tokens == 2  # what the upstream was paid for
    whole = await client.embeddings.with_raw_response.create(model="gpt-test", input=["bb", "dddd"])
    assert whole.headers["x-trigate-cache"] == "hit"
    assert [d.embedding[0] for d in whole.parse().data] == [2.0, 4.0]
    single = await client.embeddings.with_raw_response.create(model="gpt-test", input="ccc")
    assert single.headers["x-trigate-cache"] == "hit"
    assert len(upstream.requests) == 2
    records = await running.records.wait_for(4)
    assert [r.cache_hit for r in records] == [False, False, True, True]
    assert records[2].cost == 0.0 and records[1].cost == pytest.approx(2 * 0.001)
    await running.stop()


# --- Redis, shared by two gateways; the store's rows ---------------------------------------


def redis_cached_config(
    upstream: FakeUpstream, url: str, prefix: str, database_url: str | None = None, **params: Any
) -> dict[str, Any]:
    config = cached_config(upstream, type="redis", url=url, **params)
    # The cache's keys live under the router's key prefix: each test has its own.
    config["router_settings"]["redis_key_prefix"] = prefix
    if database_url is not None:
        config["general_settings"] = {"database_url": database_url}
    return config


async def _spend_rows(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    """The store's spend rows (`/spend/logs`), once the ledger has written `count`."""
    with trio.fail_after(10):
        while True:
            async with gateway.client() as client:
                reply = await client.get("/spend/logs")
            rows: list[dict[str, Any]] = reply.json()
            if len(rows) >= count:
                return rows
            await trio.sleep(0.1)


async def test_two_gateways_share_hits_through_redis_and_their_stores_say_so(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    redis_url: str,
    redis_prefix: str,
    database_url: str,
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Shared!", USAGE))
    config = redis_cached_config(upstream, redis_url, redis_prefix, database_url)
    one = await start_gateway(nursery, config)
    two = await start_gateway(nursery, redis_cached_config(upstream, redis_url, redis_prefix))
    first = await sdk(one).chat.completions.with_raw_response.create(
        model="gpt-test", messages=CHAT
    )
    assert first.headers["x-trigate-cache"] == "miss"
    again = await sdk(two).chat.completions.with_raw_response.create(
        model="gpt-test", messages=CHAT, stream=True
    )
    assert again.headers["x-trigate-cache"] == "hit"
    text = "".join([c.choices[0].delta.content or "" async for c in again.parse() if c.choices])
    assert text == "Shared!"
    assert len(upstream.requests) == 1
    # Gateway one's own hit, spend-logged in its store with LiteLLM's fields.
    hit = await _post(one, "/v1/chat/completions", {"model": "gpt-test", "messages": MESSAGES})
    assert hit.headers["x-trigate-cache"] == "hit"
    rows = sorted(await _spend_rows(one, 2), key=lambda row: row["start_time"])
    key = first.headers["x-litellm-cache-key"]
    # LiteLLM's spend-log shapes: strings.
    assert [(r["cache_hit"], r["cache_key"]) for r in rows] == [("False", key), ("True", key)]
    assert rows[0]["spend"] > 0 and rows[1]["spend"] == 0
    await one.stop()
    await two.stop()


async def test_redis_killed_mid_run_every_request_is_still_served(
    nursery: trio.Nursery, upstream: FakeUpstream, own_redis: Any
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Fine", USAGE))
    running = await start_gateway(nursery, redis_cached_config(upstream, own_redis.url, "t:"))
    assert (await _post(running, "/v1/chat/completions", _chat())).status_code == 200
    hit = await _post(running, "/v1/chat/completions", _chat())
    assert hit.headers["x-trigate-cache"] == "hit"
    await own_redis.kill()
    for text in ("one", "two", "one"):
        answer = await _post(running, "/v1/chat/completions", _chat(text))
        assert answer.status_code == 200 and answer.headers["x-trigate-cache"] == "miss"
    assert len(upstream.requests) == 4
    async with running.client() as client:
        metrics = (await client.get("/metrics")).text
    assert _metric(metrics, "trigate_cache_unavailable_total") >= 3
    await own_redis.start()
    with trio.fail_after(10):  # the probe finds it again; then answers are kept anew
        while True:
            await _post(running, "/v1/chat/completions", _chat("back"))
            if (await _post(running, "/v1/chat/completions", _chat("back"))).headers[
                "x-trigate-cache"
            ] == "hit":
                break
            await trio.sleep(0.2)
    await running.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# --- operators -------------------------------------------------------------------------------


async def test_metrics_and_the_admin_routes(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    first = await _post(running, "/v1/chat/completions", _chat())
    await _post(running, "/v1/chat/completions", _chat())
    async with running.client() as client:
        text = (await client.get("/metrics")).text
        assert _metric(text, "litellm_cache_hits_metric_total") == 1
        assert _metric(text, "litellm_cache_misses_metric_total") == 1
        assert _metric(text, "litellm_cached_tokens_metric_total") == 11
        assert _metric(text, "trigate_cache_bytes") > 0
        ping = await client.get("/cache/ping")
        assert ping.status_code == 200 and ping.json()["status"] == "healthy"
        assert ping.json()["cache_type"] == "local"
        key = first.headers["x-litellm-cache-key"]
        deleted = await client.post("/cache/delete", json={"keys": [key]})
        assert deleted.json() == {"status": "success", "deleted": 1}
        assert (await _post(running, "/v1/chat/completions", _chat())).headers[
            "x-trigate-cache"
        ] == "miss"
        assert (await client.post("/cache/flushall")).json() == {"status": "success"}
        assert (await _post(running, "/v1/chat/completions", _chat())).headers[
            "x-trigate-cache"
        ] == "miss"
        # An admin's only.
        made = await client.post("/key/generate", json={})
        user_key = made.json()["key"]
    async with running.client(user_key) as client:
        assert (await client.get("/cache/ping")).status_code == 403
        assert (await client.post("/cache/flushall")).status_code == 403
    await running.stop()


async def test_without_a_cache_the_admin_routes_answer_503_and_cache_fields_are_refused(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, openai_config(upstream))
    async with running.client() as client:
        assert (await client.get("/cache/ping")).status_code == 503
    refused = await _post(running, "/v1/chat/completions", _chat(caching=True))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "caching"
    asked = await _post(running, "/v1/chat/completions", _chat(cache={"ttl": 5}))
    assert asked.status_code == 400 and asked.json()["error"]["param"] == "cache"
    fine = await _post(running, "/v1/chat/completions", _chat(cache={"no-cache": True}))
    assert fine.status_code == 200 and "x-trigate-cache" not in fine.headers
    await running.stop()


async def test_scope_key_keeps_each_keys_answers_apart(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Mine", USAGE))
    running = await start_gateway(nursery, cached_config(upstream, scope="key"))
    async with running.client() as client:
        keys = [(await client.post("/key/generate", json={})).json()["key"] for _ in range(2)]
    states = []
    for key in (*keys, keys[0]):
        async with running.client(key) as client:
            reply = await client.post("/v1/chat/completions", json=_chat())
            states.append(reply.headers["x-trigate-cache"])
    assert states == ["miss", "miss", "hit"]
    await running.stop()


async def test_an_answer_over_the_entry_cap_is_served_not_kept(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("x" * 5000, USAGE))
    running = await start_gateway(nursery, cached_config(upstream, max_entry_bytes=2000))
    for _ in range(2):
        reply = await _post(running, "/v1/chat/completions", _chat())
        assert reply.status_code == 200 and reply.headers["x-trigate-cache"] == "miss"
    async with running.client() as client:
        assert _metric((await client.get("/metrics")).text, "trigate_cache_too_large_total") == 2
    await running.stop()


# --- settings and the local cache's bounds -------------------------------------------------


def test_an_unsupported_cache_type_stops_start_up_naming_it() -> None:
    from helpers import build_app

    from trigate.config import ConfigError

    for kind in ("redis-semantic", "qdrant-semantic", "s3", "disk"):
        config = {
            **openai_config(FakeUpstream()),
            "litellm_settings": {"cache": True, "cache_params": {"type": kind}},
        }
        with pytest.raises(ConfigError, match=f"`{kind}` is not supported"):
            build_app(config)
    # `cache: false` asks for nothing: no cache, and no refusal.
    config = {**openai_config(FakeUpstream()), "litellm_settings": {"cache": False}}
    assert build_app(config)[1].cache is None


def test_cache_params_keys_are_classified() -> None:
    from trigate.litellm_keys import classify

    raw = {"litellm_settings": {"cache": True, "cache_params": {
        "type": "redis", "host": "h", "similarity_threshold": 0.8, "ttl": 5, "nonsense": 1,
    }}}  # fmt: skip
    findings = classify(raw)
    assert "litellm_settings.cache_params.similarity_threshold" in findings.ignored
    assert findings.unknown == ["litellm_settings.cache_params.nonsense"]
    assert "litellm_settings.cache" not in findings.ignored


async def test_the_local_cache_is_an_lru_bounded_in_bytes() -> None:
    from trigate.cache.backends import LocalBackend

    local = LocalBackend(max_bytes=300, max_entry_bytes=150)
    for name in "abc":
        assert local.write(name, b"x" * 99, None)
    assert local.held_bytes() == 300
    assert local.read("a") is not None  # a is now the most recently used
    assert local.write("d", b"x" * 99, None)  # evicts b, the least recently used
    assert local.read("b") is None and local.read("a") is not None
    assert local.held_bytes() <= 300
    assert not local.write("big", b"x" * 200, None)  # over the entry cap: not kept
    assert local.read("big") is None


def test_a_stream_assembled_then_replayed_keeps_reasoning_tools_and_finish() -> None:
    from trigate.cache.shapes import Assembler, replay_chunks

    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
            {"index": 0, "delta": {"role": "assistant", "reasoning_content": "Hm"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"thinking_blocks": [{"type": "thinking"}]}}]},  # noqa: E501
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": "{"}}]}}]},  # noqa: E501
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "}"}}]}, "finish_reason": "tool_calls"}]},
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},  # noqa: E501
    ]  # fmt: skip
    assembler = Assembler()
    assembler.add(chunks)
    answer = assembler.answer()
    assert answer is not None
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] == "Hm" and message["content"] == "Hi"
    assert message["thinking_blocks"] == [{"type": "thinking"}]
    assert message["tool_calls"] == [
        {"type": "function", "id": "t1", "function": {"name": "f", "arguments": "{}"}}
    ]
    again = Assembler()
    again.add(replay_chunks(answer))
    assert again.answer() == answer
    # A stream cut short (no finish reason) is not kept.
    cut = Assembler()
    cut.add(chunks[:3])
    assert cut.answer() is None


async def test_when_the_first_caller_leaves_the_one_carrying_the_stream_to_its_end_pays(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A stream follower and a whole-answer follower join; the leader leaves mid-stream."""
    # The upstream pauses mid-stream until both have joined and the leader has left.
    resume = trio.Event()
    frames: list[bytes | float | trio.Event] = [
        chunk("one"), resume, chunk(" two"), chunk(finish="stop"),
    ]  # fmt: skip
    upstream.handler = lambda request: StreamReply([*frames, usage_chunk(10, 20), DONE])
    running = await start_gateway(nursery, cached_config(upstream))
    texts: dict[str, str] = {}
    leave = trio.Event()

    async def leader(task_status: trio.TaskStatus[str]) -> None:
        async with (
            running.client() as client,
            client.stream("POST", "/v1/chat/completions", json=_chat("Go", stream=True)) as r,
        ):
            assert r.headers["x-trigate-cache"] == "miss"
            lines = r.aiter_lines()  # held: a dropped one would be closed, and the stream
            await anext(lines)
            task_status.started(r.headers["x-litellm-cache-key"])
            await leave.wait()  # ... and leaves, mid-stream

    async def follower(stream: bool) -> None:
        async with running.client() as client:
            reply = await client.post("/v1/chat/completions", json=_chat("Go", stream=stream))
        assert reply.headers["x-trigate-cache"] == "coalesced"
        texts["stream" if stream else "whole"] = reply.text

    async with trio.open_nursery() as clients:
        key = await clients.start(leader)
        clients.start_soon(follower, True)
        clients.start_soon(follower, False)
        cache = running.gateway.cache
        assert cache is not None
        with trio.fail_after(10):  # both have joined the leader's call (its state, polled)
            while len(cache._flights[key].subscribers) < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
        leave.set()
        with trio.fail_after(10):
            while len(cache._flights[key].subscribers) > 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        resume.set()
    assert len(upstream.requests) == 1
    assert '"content":"one"' in texts["stream"] and '"content":" two"' in texts["stream"]
    assert orjson.loads(texts["whole"])["choices"][0]["message"]["content"] == "one two"
    records = await running.records.wait_for(3)
    [leader_row] = [r for r in records if r.cancelled_by_client]
    assert leader_row.cost == 0.0 and leader_row.deployment is not None
    assert not leader_row.cache_hit
    # The follower that joined first of those there at the end pays for all of it; the
    # other's row is a hit at no cost.
    [paid] = [r for r in records if r.cost > 0]
    assert not paid.cancelled_by_client and not paid.cache_hit
    assert paid.cost == pytest.approx(10 * 0.001 + 20 * 0.002)
    [free] = [r for r in records if r is not paid and r is not leader_row]
    assert free.cache_hit and free.cost == 0.0
    await running.stop()


async def test_a_reload_that_changes_the_cache_is_warned_of_and_the_cache_goes_on(
    nursery: trio.Nursery, upstream: FakeUpstream, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    upstream.handler = lambda request: JSONReply(chat_completion("Kept", USAGE))
    config = cached_config(upstream, ttl=600)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    running = await start_gateway(nursery, yaml.safe_load(path.read_text()), config_path=str(path))
    await _post(running, "/v1/chat/completions", _chat())

    async def reload() -> list[str]:
        caplog.clear()
        async with running.client() as admin:
            assert (await admin.post("/config/reload")).status_code == 200
        return [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]

    assert await reload() == []  # unchanged
    config["litellm_settings"]["cache_params"]["ttl"] = 5
    path.write_text(yaml.safe_dump(config))
    assert await reload() == [
        "config reload: litellm_settings.cache or cache_params changed; the response cache "
        "changes at restart"
    ]
    hit = await _post(running, "/v1/chat/completions", _chat())
    assert hit.headers["x-trigate-cache"] == "hit"
    await running.stop()


async def test_a_native_messages_upstream_is_cached_whole_and_streamed_as_it_came(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    from fake_anthropic import (
        anthropic_config,
        message,
        message_end,
        message_start,
        serve,
        text_block,
    )

    def reply(body: dict[str, Any]) -> JSONReply | StreamReply:
        if body.get("stream"):
            end = message_end("end_turn", output_tokens=6)
            return StreamReply([message_start(), *text_block(0, "Nat", "ive"), *end])
        return JSONReply(message([{"type": "text", "text": "Native"}]))

    serve(upstream, reply)
    config = anthropic_config(upstream)
    config["litellm_settings"] = {"cache": True}
    running = await start_gateway(nursery, config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    said: list[MessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}
    ]
    for _ in range(2):
        whole = await client.messages.with_raw_response.create(
            model="claude", max_tokens=50, messages=said
        )
    assert whole.headers["x-trigate-cache"] == "hit"
    block = (await whole.parse()).content[0]
    assert block.type == "text" and block.text == "Native"
    # A native whole answer serves whole requests only: the first stream goes upstream,
    # and its events, kept as they came, answer the next.
    texts = []
    for _ in range(2):
        async with client.messages.stream(model="claude", max_tokens=50, messages=said) as stream:
            streamed = (await stream.get_final_message()).content[0]
            assert streamed.type == "text"
            texts.append(streamed.text)
    assert texts == ["Native", "Native"]
    assert len(upstream.requests) == 2
    await running.stop()


async def test_a_local_copy_in_front_of_redis_answers_while_redis_is_away(
    nursery: trio.Nursery, upstream: FakeUpstream, own_redis: Any
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Front", USAGE))
    config = redis_cached_config(upstream, own_redis.url, "t:", default_in_memory_ttl=60)
    running = await start_gateway(nursery, config)
    await _post(running, "/v1/chat/completions", _chat())
    await own_redis.kill()
    hit = await _post(running, "/v1/chat/completions", _chat())
    assert hit.headers["x-trigate-cache"] == "hit" and len(upstream.requests) == 1
    await running.stop()


async def test_a_mocked_answer_is_never_cached(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, cached_config(upstream))
    for text in ("first", "second"):
        reply = await _post(running, "/v1/chat/completions", _chat(mock_response=text))
        assert reply.json()["choices"][0]["message"]["content"] == text
        assert "x-trigate-cache" not in reply.headers
    await running.stop()


# A password with characters a URL must percent-encode: `cache_settings` and
# `router_settings` encode it into the URL they build, which coredis must decode.
AWKWARD_PASSWORD = "p@ss:w/rd%25 #?"


@pytest.mark.parametrize("where", ["cache_params", "router_settings"])
async def test_a_redis_password_that_needs_encoding_reaches_redis_whole(
    nursery: trio.Nursery, upstream: FakeUpstream, where: str
) -> None:
    server = RedisServer(password=AWKWARD_PASSWORD)
    await server.start()
    try:
        upstream.handler = lambda request: JSONReply(chat_completion("Kept!", USAGE))
        parts = {"host": "127.0.0.1", "port": server.port, "password": AWKWARD_PASSWORD}
        config = cached_config(upstream, type="redis", **parts if where == "cache_params" else {})
        config["router_settings"]["redis_key_prefix"] = "awkward:"
        if where == "router_settings":  # the fleet's Redis, which the cache then uses too
            config["router_settings"].update({f"redis_{name}": v for name, v in parts.items()})
        running = await start_gateway(nursery, config)
        body = {"model": "gpt-test", "messages": MESSAGES}
        assert (await _post(running, "/v1/chat/completions", body)).headers[
            "x-trigate-cache"
        ] == "miss"
        hit = await _post(running, "/v1/chat/completions", body)
        assert hit.headers["x-trigate-cache"] == "hit"
        assert hit.json()["choices"][0]["message"]["content"] == "Kept!"
        if where == "router_settings":
            async with running.client() as client:
                ready = (await client.get("/health/readiness")).json()
            assert ready["fleet"]["state"] == "shared"
        await running.stop()
    finally:
        await server.kill()


async def test_a_hit_sends_the_upstreams_own_bytes_as_the_miss_did(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """An entry keeps the upstream's bytes as they came (indented here, keys in its own
    order), not an encoding of its own: the hit's body is the miss's, byte for byte."""
    answer = chat_completion("Kept as sent!", USAGE)
    sent = orjson.dumps(answer, option=orjson.OPT_INDENT_2)
    upstream.handler = lambda request: JSONReply(sent)
    running = await start_gateway(nursery, cached_config(upstream))
    body = {"model": "gpt-test", "messages": MESSAGES}
    miss = await _post(running, "/v1/chat/completions", body)
    hit = await _post(running, "/v1/chat/completions", body)
    assert (miss.headers["x-trigate-cache"], hit.headers["x-trigate-cache"]) == ("miss", "hit")
    assert miss.content == hit.content == sent
    await running.stop()
