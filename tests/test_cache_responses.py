"""The response cache's key for OpenAI's Responses API: a request is keyed on what it
asks as its client sent it (with the conversation it continues), not on its chat form
alone, which lacks what has no chat form (an image by `file_id`, reasoning items,
custom tools' calls) and what a native upstream's Response echoes (`metadata`,
`store`). Identical requests still hit, whatever their JSON key order, and a streamed
and a whole request still share a translated answer."""

from __future__ import annotations

from typing import Any

import fake_guardrails
import orjson
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import RunningGateway, openai_config, start_gateway
from test_guarded_native_responses import response

USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


def _numbered(upstream: FakeUpstream, *, native: bool) -> None:
    """Each upstream call's answer is numbered, so a test tells which call made it: a
    Response (`native`) or a chat completion."""
    calls: list[ReceivedRequest] = []

    def handle(request: ReceivedRequest) -> JSONReply:
        calls.append(request)
        text = f"answer #{len(calls)}"
        return JSONReply(response(text) if native else chat_completion(text, USAGE))

    upstream.handler = handle


def _config(upstream: FakeUpstream, *, native: bool) -> dict[str, Any]:
    """A cached gateway whose one deployment speaks the Responses API (`native`) or is
    sent each request translated to a chat completion."""
    _numbered(upstream, native=native)
    config = openai_config(upstream)
    config["model_list"][0]["model_info"] = {"supports_responses_api": native}
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local"}}
    return config


async def _gateway(
    nursery: trio.Nursery, upstream: FakeUpstream, *, native: bool
) -> RunningGateway:
    return await start_gateway(nursery, _config(upstream, native=native))


async def _ask(running: RunningGateway, body: dict[str, Any] | bytes) -> tuple[str, str, str]:
    """The cache's state, the key and the answer's text for one request."""
    async with running.client() as client:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            answer = await client.post("/v1/responses", content=body, headers=headers)
        else:
            answer = await client.post("/v1/responses", json=body)
    assert answer.status_code == 200, answer.text
    text = answer.json()["output"][0]["content"][0]["text"]
    return answer.headers["x-trigate-cache"], answer.headers["x-litellm-cache-key"], text


def _image_request(question: str, file_id: str) -> dict[str, Any]:
    """A request with no chat form: its image is an uploaded file's."""
    content = [
        {"type": "input_text", "text": question},
        {"type": "input_image", "file_id": file_id},
    ]
    return {"model": "gpt-test", "store": False, "input": [{"role": "user", "content": content}]}


async def test_requests_without_a_chat_form_each_get_their_own_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await _gateway(nursery, upstream, native=True)
    first = await _ask(running, _image_request("What is in this image?", "file-a"))
    second = await _ask(running, _image_request("Describe it in French.", "file-b"))
    assert first[0] == second[0] == "miss"
    assert first[2] == "answer #1" and second[2] == "answer #2"
    assert first[1] != second[1]
    # The same file under the same question is the same request: still cached.
    again = await _ask(running, _image_request("What is in this image?", "file-a"))
    assert again == ("hit", first[1], "answer #1")
    # Only the file differs: another request, another key.
    other_file = await _ask(running, _image_request("What is in this image?", "file-c"))
    assert other_file[0] == "miss" and other_file[2] == "answer #3"
    assert len(upstream.requests) == 3
    await running.stop()


def _reasoned(summary: str) -> dict[str, Any]:
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [
        {"type": "summary_text", "text": summary}
    ]}  # fmt: skip
    return {"model": "gpt-test", "store": False,
            "input": [reasoning, {"role": "user", "content": "Go on."}]}  # fmt: skip


def _custom_called(argument: str) -> dict[str, Any]:
    tool = {"type": "custom", "name": "shell", "description": "Runs a command."}
    call = {"type": "custom_tool_call", "call_id": "call_1", "name": "shell", "input": argument}
    output = {"type": "custom_tool_call_output", "call_id": "call_1", "output": "done"}
    return {"model": "gpt-test", "store": False, "tools": [tool],
            "input": [{"role": "user", "content": "Clean up."}, call, output]}  # fmt: skip


async def test_what_the_translation_drops_still_tells_requests_apart(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Reasoning items and custom tools' calls have no chat form (the translation drops
    them), and `metadata` none in the key of a chat request; a native upstream is sent
    them, or echoes them in its Response, so each request is its own."""
    running = await _gateway(nursery, upstream, native=True)
    one = await _ask(running, _reasoned("Think of one thing."))
    two = await _ask(running, _reasoned("Think of another."))
    assert (one[0], one[2], two[0], two[2]) == ("miss", "answer #1", "miss", "answer #2")
    three = await _ask(running, _custom_called("rm -rf build"))
    four = await _ask(running, _custom_called("rm -rf dist"))
    assert (three[0], three[2], four[0], four[2]) == ("miss", "answer #3", "miss", "answer #4")
    tagged = await _ask(running, {**_custom_called("rm -rf dist"), "metadata": {"run": "b"}})
    assert tagged[0] == "miss" and tagged[2] == "answer #5"
    assert len({one[1], two[1], three[1], four[1], tagged[1]}) == 5
    # Each is still kept: the same request again is a hit.
    assert await _ask(running, _reasoned("Think of another.")) == ("hit", two[1], "answer #2")
    assert len(upstream.requests) == 5
    await running.stop()


async def test_a_stored_request_is_never_answered_with_an_unstored_native_response(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A native upstream's Response kept for `store: false` was not stored upstream: a
    request asking for it stored goes upstream, and its Response is stored."""
    running = await _gateway(nursery, upstream, native=True)
    ask = {"model": "gpt-test", "input": "Say hello"}
    unstored = await _ask(running, {**ask, "store": False})
    stored = await _ask(running, ask)
    assert unstored[0] == stored[0] == "miss"
    assert stored[2] == "answer #2" and len(upstream.requests) == 2
    await running.stop()


async def test_a_request_naming_an_upstream_conversation_is_not_cached(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Its answer depends on what the upstream holds of that conversation."""
    running = await _gateway(nursery, upstream, native=True)
    body = {"model": "gpt-test", "store": False, "conversation": "conv_1", "input": "Next?"}
    async with running.client() as client:
        for _ in range(2):
            answer = await client.post("/v1/responses", json=body)
            assert answer.status_code == 200 and "x-trigate-cache" not in answer.headers
    assert len(upstream.requests) == 2
    await running.stop()


async def test_the_same_request_in_any_json_key_order_is_a_hit(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await _gateway(nursery, upstream, native=True)
    one = (
        b'{"model":"gpt-test","store":false,"temperature":0.5,"input":[{"role":"user",'
        b'"content":[{"type":"input_text","text":"Look"},{"type":"input_image","file_id":"f1"}]}],'
        b'"text":{"format":{"type":"json_schema","name":"a","schema":{"b":1,"a":2}}}}'
    )
    two = (
        b'{"text":{"format":{"schema":{"a":2,"b":1},"name":"a","type":"json_schema"}},'
        b'"input":[{"content":[{"text":"Look","type":"input_text"},{"file_id":"f1",'
        b'"type":"input_image"}],"role":"user"}],"temperature":0.5,"store":false,"model":"gpt-test"}'
    )
    assert orjson.loads(one) == orjson.loads(two) and one != two
    first = await _ask(running, one)
    second = await _ask(running, two)
    assert first[0] == "miss" and second == ("hit", first[1], "answer #1")
    assert len(upstream.requests) == 1
    await running.stop()


async def test_translated_requests_share_a_key_streamed_or_whole(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await _gateway(nursery, upstream, native=False)
    body = {"model": "gpt-test", "input": "Say hello", "instructions": "Be brief."}
    whole = await _ask(running, body)
    assert whole[0] == "miss" and whole[2] == "answer #1"
    async with (
        running.client() as client,
        client.stream("POST", "/v1/responses", json={**body, "stream": True}) as streamed,
    ):
        text = (await streamed.aread()).decode()
    assert streamed.headers["x-trigate-cache"] == "hit"
    assert streamed.headers["x-litellm-cache-key"] == whole[1]
    assert "response.completed" in text and "answer #1" in text
    # Another instruction is another request, though the input is the same.
    other = await _ask(running, {**body, "instructions": "Be verbose."})
    assert other[0] == "miss" and other[2] == "answer #2"
    assert len(upstream.requests) == 2
    await running.stop()


async def test_a_follow_up_is_keyed_on_the_conversation_it_continues(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The same new input continuing two stored conversations is two requests; the
    same follow-up again is a hit."""
    running = await _gateway(nursery, upstream, native=False)
    async with running.client() as client:
        ids = []
        for text in ("Pick a colour.", "Pick a number."):
            made = await client.post("/v1/responses", json={"model": "gpt-test", "input": text})
            ids.append(made.json()["id"])
    follow = {"model": "gpt-test", "input": "Why that one?"}
    first = await _ask(running, {**follow, "previous_response_id": ids[0]})
    second = await _ask(running, {**follow, "previous_response_id": ids[1]})
    assert (first[0], first[2], second[0], second[2]) == ("miss", "answer #3", "miss", "answer #4")
    again = await _ask(running, {**follow, "previous_response_id": ids[0]})
    assert again == ("hit", first[1], "answer #3")
    assert len(upstream.requests) == 4
    await running.stop()


async def test_masked_prompts_two_callers_share_still_share_an_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A guardrail masks the request as the client sent it as well as its chat form: the
    key is the masked request's, not each caller's own address."""
    presidio = FakeUpstream(fake_guardrails.presidio)
    await presidio.start(nursery)
    base = f"http://127.0.0.1:{presidio.port}"
    config = _config(upstream, native=True)
    config["guardrails"] = [{"guardrail_name": "pii", "litellm_params": {
        "default_on": True, "guardrail": "presidio", "mode": "pre_call",
        "presidio_analyzer_api_base": base, "presidio_anonymizer_api_base": base,
        "pii_entities_config": {"EMAIL_ADDRESS": "MASK"},
    }}]  # fmt: skip
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        keys = [(await admin.post("/key/generate", json={})).json()["key"] for _ in range(2)]
    answers = []
    for key, email in zip(keys, ("ada@example.com", "bob@other.org"), strict=True):
        body = {"model": "gpt-test", "store": False, "input": f"my email is {email}"}
        async with running.client(key=key) as client:
            answer = await client.post("/v1/responses", json=body)
        assert answer.status_code == 200, answer.text
        answers.append((answer.headers["x-trigate-cache"], answer.headers["x-litellm-cache-key"]))
    assert answers[0][0] == "miss" and answers[1] == ("hit", answers[0][1])
    sent = upstream.requests[0].json["input"]
    assert "ada@" not in orjson.dumps(sent).decode()
    assert len(upstream.requests) == 1
    await running.stop()
