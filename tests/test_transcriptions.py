"""Audio transcriptions and translations: the OpenAI SDK's multipart upload streamed
through the gateway to a fake upstream on a real socket, priced per second; the size
cap enforced while the upload is read; a client that leaves mid-upload closes the
upstream's connection."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any, Literal

import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest
from helpers import MASTER_KEY, UPSTREAM_KEY, RunningGateway, deployment_config, sdk, start_gateway
from openai.types.audio.transcription import Transcription, UsageDuration

from trigate.audio import wav_seconds
from trigate.audio import wav_silence as wav
from trigate.forms import parse_form


def config(upstream: FakeUpstream, **general: object) -> dict[str, Any]:
    base = {"api_key": UPSTREAM_KEY, "api_base": upstream.base_url}
    raw = deployment_config("whisper-1", {**base, "model": "openai/whisper-1"})
    raw["general_settings"] = general
    return raw


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, config(upstream))
    yield running
    await running.stop()


def received_form(request: ReceivedRequest) -> dict[str, Any]:
    return parse_form(request.body, request.headers)


async def test_transcription_json_priced_by_reported_seconds(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    audio = wav(2.0)
    upstream.handler = lambda request: JSONReply(
        {"text": "Hello there.", "usage": {"type": "duration", "seconds": 42}}
    )
    async with sdk(gateway) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("hello.wav", audio, "audio/wav"), language="en"
        )
    assert result.text == "Hello there."
    [received] = upstream.requests
    assert received.target == "/v1/audio/transcriptions"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received.headers["transfer-encoding"] == "chunked"
    form = received_form(received)
    assert form["model"] == "whisper-1" and form["language"] == "en"
    assert form["file"].data == audio and form["file"].filename == "hello.wav"
    assert form["file"].content_type == "audio/wav"
    [record] = await gateway.records.wait_for(1)
    # whisper-1: 0.0001 a second, for the 42 the upstream reported.
    assert record.cost == pytest.approx(42 * 0.0001) and record.status == 200


async def test_text_answer_priced_by_the_wav_header(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        b"Hello there.\n", headers={"content-type": "text/plain; charset=utf-8"}
    )
    async with sdk(gateway) as client:
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("hello.wav", wav(3.5), "audio/wav"), response_format="text"
        )
    assert text == "Hello there.\n"
    [record] = await gateway.records.wait_for(1)
    assert record.cost == pytest.approx(3.5 * 0.0001)


async def test_translation_verbose_json_duration(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        {"task": "translate", "language": "german", "duration": 8.5, "text": "Hello."}
    )
    async with sdk(gateway) as client:
        result = await client.audio.translations.create(
            model="whisper-1",
            file=("hallo.wav", wav(1.0), "audio/wav"),
            response_format="verbose_json",
        )
    assert result.text == "Hello."
    assert upstream.requests[0].target == "/v1/audio/translations"
    [record] = await gateway.records.wait_for(1)
    assert record.cost == pytest.approx(8.5 * 0.0001)


async def test_the_file_must_follow_the_model(gateway: RunningGateway) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n'
        f'\r\nRIFF\r\n--{boundary}\r\ncontent-disposition: form-data; name="model"\r\n\r\n'
        f"whisper-1\r\n--{boundary}--\r\n"
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with gateway.client() as client:
        response = await client.post("/v1/audio/transcriptions", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


async def test_size_cap_enforced_while_streaming(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A body with no declared length goes past the cap mid-upload: a 413, and the
    upstream's half-sent request is abandoned (its connection closed)."""
    running = await start_gateway(nursery, config(upstream, max_request_size_mb=1))
    upstream.handler = lambda request: JSONReply({"text": "never"})

    async def body() -> AsyncIterator[bytes]:
        yield (
            b'--b\r\ncontent-disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b'--b\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        )
        for _ in range(40):
            yield bytes(64 * 1024)
        yield b"\r\n--b--\r\n"

    async with running.client() as client:
        response = await client.post(
            "/v1/audio/transcriptions",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    assert response.status_code == 413
    with trio.fail_after(5):
        await upstream.wait_for(
            lambda: upstream.connections_closed == upstream.connections_opened == 1
        )
    assert upstream.requests == []
    await running.stop()


async def test_client_leaving_mid_upload_closes_the_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: gw\r\n"
        f"authorization: Bearer {MASTER_KEY}\r\n"
        "content-type: multipart/form-data; boundary=b\r\ncontent-length: 10000000\r\n\r\n"
    ).encode()
    await stream.send_all(
        head
        + b'--b\r\ncontent-disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        + b'--b\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + bytes(200_000)
    )
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.connections_opened == 1)
    await stream.aclose()
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.connections_closed == 1)
    assert upstream.requests == []
    [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client


def test_wav_seconds_from_header() -> None:
    audio = wav(1.25, rate=16000)
    assert wav_seconds(audio[:4096], len(audio)) == pytest.approx(1.25)
    streamed = audio[:40] + struct.pack("<I", 0xFFFFFFFF) + audio[44:]
    assert wav_seconds(streamed[:4096], len(streamed)) == pytest.approx(1.25)
    assert wav_seconds(b"ID3\x04mp3 data", 1000) == 0.0


async def test_openai_sdk_error_shape_for_unknown_model(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.NotFoundError):
            await client.audio.transcriptions.create(
                model="nope", file=("a.wav", wav(0.1), "audio/wav")
            )


async def test_configured_price_per_second(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    """LiteLLM's `input_cost_per_second` in `litellm_params` prices over the table's."""
    raw = config(upstream)
    raw["model_list"][0]["litellm_params"]["input_cost_per_second"] = 0.01
    running = await start_gateway(nursery, raw)
    upstream.handler = lambda request: JSONReply({"text": "Hi.", "duration": 2.0})
    async with sdk(running) as client:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav(0.1), "audio/wav"), response_format="verbose_json"
        )
    [record] = await running.records.wait_for(1)
    assert record.cost == pytest.approx(0.02)
    await running.stop()


MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(4000)  # a header that says no duration
SRT = b"1\n00:00:00,000 --> 00:00:04,200\nHello\n\n2\n00:00:04,200 --> 00:00:07,250\nthere.\n\n"
VTT = b"WEBVTT\n\n00:00.000 --> 00:04.200\nHello\n\n00:04.200 --> 00:07.250\nthere.\n\n"


def whisper(request: ReceivedRequest) -> JSONReply:
    """whisper-1 as OpenAI's reference has it: each `response_format` its own shape,
    only `verbose_json` saying the audio's duration."""
    answer = received_form(request).get("response_format", "json")
    if answer == "verbose_json":
        return JSONReply(
            {"task": "transcribe", "language": "english", "duration": 7.25, "text": "Hello there."}
        )
    if answer == "json":
        return JSONReply({"text": "Hello there."})
    subtitles = {"text": b"Hello there.\n", "srt": SRT, "vtt": VTT}[answer]
    return JSONReply(subtitles, headers={"content-type": "text/plain; charset=utf-8"})


@pytest.mark.parametrize("asked", [None, "json", "text"])
async def test_json_and_text_asked_of_the_upstream_as_verbose_json(
    gateway: RunningGateway, upstream: FakeUpstream, asked: Literal["json", "text"] | None
) -> None:
    """A non-WAV upload whose `json` or `text` answer would say no duration: the
    upstream is asked `verbose_json`, the client gets the shape it asked for, and the
    row is priced by the duration the upstream reported."""
    upstream.handler = whisper
    async with sdk(gateway) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1",
            file=("hello.mp3", MP3, "audio/mpeg"),
            response_format=openai.omit if asked is None else asked,
        )
    if asked == "text":
        assert result == "Hello there.\n"
    else:
        assert isinstance(result, Transcription)
        assert result.text == "Hello there."
        assert isinstance(result.usage, UsageDuration) and result.usage.seconds == 7.25
        assert set(result.model_dump(exclude_none=True)) == {"text", "usage"}
    [received] = upstream.requests
    assert received_form(received)["response_format"] == "verbose_json"
    [record] = await gateway.records.wait_for(1)
    assert record.cost == pytest.approx(7.25 * 0.0001)
    assert record.usage_source == "upstream"


@pytest.mark.parametrize(
    ("asked", "audio"), [("srt", MP3), ("vtt", MP3), ("srt", wav(1.0))], ids=["srt", "vtt", "wav"]
)
async def test_subtitles_billed_by_their_last_timestamp(
    gateway: RunningGateway, upstream: FakeUpstream, asked: Literal["srt", "vtt"], audio: bytes
) -> None:
    """SRT and VTT say no duration: their last timestamp does (LiteLLM's reading), or,
    past a WAV header that says less, the header is not believed."""
    upstream.handler = whisper
    async with sdk(gateway) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("hello", audio, "audio/mpeg"), response_format=asked
        )
    assert result == {"srt": SRT, "vtt": VTT}[asked].decode()
    assert received_form(upstream.requests[0])["response_format"] == asked
    [record] = await gateway.records.wait_for(1)
    assert record.cost == pytest.approx(7.25 * 0.0001)
    assert record.usage_source == "counted"


@pytest.mark.parametrize("asked", ["json", "srt"])
async def test_a_duration_nobody_says_is_marked_unknown(
    gateway: RunningGateway, upstream: FakeUpstream, asked: Literal["json", "srt"]
) -> None:
    """An upstream that ignores `verbose_json` (its `json` has no duration), or subtitles
    with no timestamp, for a file whose header says no length: the row is not priced and
    says so, `usage_source` "unknown", never a counted 0."""
    upstream.handler = lambda request: (
        JSONReply({"text": ""})
        if asked == "json"
        else JSONReply(b"", headers={"content-type": "text/plain; charset=utf-8"})
    )
    async with sdk(gateway) as client:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("hush.mp3", MP3, "audio/mpeg"), response_format=asked
        )
    [record] = await gateway.records.wait_for(1)
    assert (record.status, record.cost, record.usage_source) == (200, 0.0, "unknown")


async def test_gpt_4o_transcribe_is_asked_json_and_billed_by_tokens(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """gpt-4o-transcribe takes no `verbose_json`; its `json` reports tokens, so `text` is
    asked of it as `json` and answered bare."""
    base = {"api_key": UPSTREAM_KEY, "api_base": upstream.base_url}
    running = await start_gateway(
        nursery, deployment_config("scribe", {**base, "model": "openai/gpt-4o-transcribe"})
    )
    tokens = {"type": "tokens", "input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
    upstream.handler = lambda request: JSONReply({"text": "Hello there.", "usage": tokens})
    async with sdk(running) as client:
        text = await client.audio.transcriptions.create(
            model="scribe", file=("hello.mp3", MP3, "audio/mpeg"), response_format="text"
        )
        result = await client.audio.transcriptions.create(
            model="scribe", file=("hello.mp3", MP3, "audio/mpeg"), response_format="json"
        )
    assert text == "Hello there.\n" and result.text == "Hello there."
    assert [received_form(r)["response_format"] for r in upstream.requests] == ["json"] * 2
    records = await running.records.wait_for(2)
    for record in records:
        # gpt-4o-transcribe: 2.5e-06 a token in, 1e-05 out.
        assert record.cost == pytest.approx(100 * 2.5e-06 + 20 * 1e-05)
        assert record.usage_source == "upstream"
    await running.stop()


@pytest.mark.parametrize(("priced", "sent"), [(False, "text"), (True, "verbose_json")])
async def test_only_a_deployment_priced_by_the_second_is_asked_verbose_json(
    nursery: trio.Nursery, upstream: FakeUpstream, priced: bool, sent: str
) -> None:
    """A model the table does not know (an Azure deployment's name, a local server) is
    asked as the client asked, unless its own `input_cost_per_second` prices it by the
    second: then its duration is asked for."""
    params: dict[str, Any] = {
        "api_key": UPSTREAM_KEY,
        "api_base": upstream.base_url,
        "model": "openai/house",
    }
    if priced:
        params["input_cost_per_second"] = 0.01
    running = await start_gateway(nursery, deployment_config("house", params))
    upstream.handler = whisper
    async with sdk(running) as client:
        text = await client.audio.transcriptions.create(
            model="house", file=("hello.mp3", MP3, "audio/mpeg"), response_format="text"
        )
    assert text == "Hello there.\n"
    assert received_form(upstream.requests[0])["response_format"] == sent
    [record] = await running.records.wait_for(1)
    assert record.cost == pytest.approx(0.0725 if priced else 0.0)
    await running.stop()
