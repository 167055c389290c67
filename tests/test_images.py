"""Images, moderations and speech through the pipeline: the OpenAI SDK against the gateway,
fake OpenAI and Azure upstreams on real sockets, with the shapes of OpenAI's API
reference; keys, routing and spend rows priced per image, per character or by tokens."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply
from helpers import (
    MASTER_KEY,
    MOCK_DEPLOYMENT,
    UPSTREAM_KEY,
    RunningGateway,
    deployment_config,
    sdk,
    start_gateway,
)

from trigate.audio import wav_seconds

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()


def image_answer(request: ReceivedRequest, count: int = 1) -> JSONReply:
    """OpenAI's ImagesResponse: a url or b64_json per image, as the request asked."""
    fmt = "b64_json"
    if request.headers.get("content-type", "").startswith("application/json"):
        fmt = request.json.get("response_format", "url")
    item = {"url": "https://images.example/1.png"} if fmt == "url" else {"b64_json": PNG}
    data = [{**item, "revised_prompt": "A cute baby sea otter, floating"}] * count
    return JSONReply({"created": 1713833628, "data": data})


def config(upstream: FakeUpstream) -> dict[str, Any]:
    base = {"api_key": UPSTREAM_KEY, "api_base": upstream.base_url}
    azure = {
        "api_key": UPSTREAM_KEY,
        "api_base": f"http://127.0.0.1:{upstream.port}",
        "model": "azure/dalle3-prod",
    }
    return deployment_config(
        "dall-e-3",
        {**base, "model": "openai/dall-e-3"},
        others=(
            {"model_name": "dall-e-2", "litellm_params": {**base, "model": "openai/dall-e-2"}},
            {
                "model_name": "gpt-image-1",
                "litellm_params": {**base, "model": "openai/gpt-image-1"},
            },
            {
                "model_name": "azure-dalle",
                "litellm_params": azure,
                "model_info": {"base_model": "dall-e-3"},
            },
            {
                "model_name": "omni-moderation-latest",
                "litellm_params": {**base, "model": "openai/omni-moderation-latest"},
            },
            {"model_name": "tts-1", "litellm_params": {**base, "model": "openai/tts-1"}},
        ),
    )


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, config(upstream))
    yield running
    await running.stop()


async def test_generation_url_priced_per_image(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: image_answer(request, 2)
    async with sdk(gateway) as client:
        result = await client.images.generate(
            model="gpt-image-1", prompt="A cute baby sea otter", n=2, quality="medium"
        )
    assert result.data is not None
    assert [image.url for image in result.data] == ["https://images.example/1.png"] * 2
    assert result.data[0].revised_prompt == "A cute baby sea otter, floating"
    [received] = upstream.requests
    assert received.target == "/v1/images/generations"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received.json == {
        "model": "gpt-image-1",
        "prompt": "A cute baby sea otter",
        "n": 2,
        "quality": "medium",
    }
    [record] = await gateway.records.wait_for(1)
    # The table's "medium/1024-x-1024/gpt-image-1": 0.042 an image, for each one answered.
    assert record.cost == pytest.approx(0.042 * 2)
    assert record.status == 200 and record.model_group == "gpt-image-1"


async def test_azure_priced_per_pixel_by_base_model(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = image_answer
    async with sdk(gateway) as client:
        await client.images.generate(
            model="azure-dalle", prompt="An otter", size="1024x1792", quality="hd"
        )
    [received] = upstream.requests
    assert received.target.startswith("/openai/deployments/dalle3-prod/images/generations?")
    assert received.headers["api-key"] == UPSTREAM_KEY
    assert received.json["model"] == "dalle3-prod"
    [record] = await gateway.records.wait_for(1)
    # The table's "azure/hd/1024-x-1792/dall-e-3" (model_info.base_model), per pixel.
    assert record.cost == pytest.approx(7.19343e-08 * 1024 * 1792)


async def test_generation_b64_json_and_default_size(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = image_answer
    async with sdk(gateway) as client:
        result = await client.images.generate(
            model="dall-e-2", prompt="An otter", response_format="b64_json"
        )
    assert result.data is not None
    assert result.data[0].b64_json == PNG and result.data[0].url is None
    assert upstream.requests[0].json["response_format"] == "b64_json"


async def test_gpt_image_priced_by_its_reported_tokens(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    usage = {
        "total_tokens": 4210,
        "input_tokens": 50,
        "output_tokens": 4160,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
    }
    upstream.handler = lambda request: JSONReply(
        {"created": 1, "data": [{"b64_json": PNG}], "usage": usage}
    )
    async with sdk(gateway) as client:
        result = await client.images.generate(model="gpt-image-1", prompt="An otter")
    assert result.usage is not None and result.usage.output_tokens == 4160
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (50, 4160)
    assert record.cost == pytest.approx(50 * 5e-06 + 4160 * 4e-05)


async def test_edit_is_a_form_sent_on(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = image_answer
    async with sdk(gateway) as client:
        result = await client.images.edit(
            model="gpt-image-1",
            image=("otter.png", b"\x89PNG-otter", "image/png"),
            mask=("mask.png", b"\x89PNG-mask", "image/png"),
            prompt="Add a hat",
            quality="low",
        )
    assert result.data is not None and result.data[0].b64_json == PNG
    [received] = upstream.requests
    assert received.target == "/v1/images/edits"
    assert received.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = received.body
    assert b"\x89PNG-otter" in body and b"\x89PNG-mask" in body
    assert b'name="prompt"\r\n\r\nAdd a hat' in body
    assert b'name="model"\r\n\r\ngpt-image-1' in body
    [record] = await gateway.records.wait_for(1)
    assert record.cost == pytest.approx(0.011)  # "low/1024-x-1024/gpt-image-1"


async def test_edit_needs_an_image(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/images/edits", data={"model": "dall-e-2", "prompt": "x"}, files={"other": b"1"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"


async def test_litellm_e2e_image_generation(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """LiteLLM's tests/test_openai_endpoints.py::test_image_generation, as it runs: a key
    and a user made with `dall-e-2` among their models, each posting to
    /images/generations (no /v1) with a bare JSON body."""
    upstream.handler = image_answer
    async with gateway.client() as admin:
        models = {"models": ["gpt-4", "text-embedding-ada-002", "dall-e-2"], "duration": None}
        keys = [
            (await admin.post(path, json=models)).json()["key"]
            for path in ("/key/generate", "/user/new")
        ]
    for key in keys:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            response = await client.post(
                "/images/generations",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                json={"model": "dall-e-2", "prompt": "A cute baby sea otter"},
            )
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["url"] == "https://images.example/1.png"


async def test_model_access_applies(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    async with gateway.client() as admin:
        key = (await admin.post("/key/generate", json={"models": ["dall-e-2"]})).json()["key"]
    async with sdk(gateway, key) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.images.generate(model="dall-e-3", prompt="An otter")
    assert upstream.requests == []


async def test_moderation(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    answer = {
        "id": "modr-0d9740456c391e43c445bf0f010940c7",
        "model": "omni-moderation-latest",
        "results": [
            {
                "flagged": True,
                "categories": {"harassment": True, "violence": False},
                "category_scores": {"harassment": 0.81, "violence": 0.01},
                "category_applied_input_types": {"harassment": ["text"], "violence": ["text"]},
            }
        ],
    }
    upstream.handler = lambda request: JSONReply(answer)
    async with sdk(gateway) as client:
        result = await client.moderations.create(input="I want to hurt them.")
    assert result.id == answer["id"] and result.results[0].flagged
    [received] = upstream.requests
    assert received.target == "/v1/moderations"
    assert received.json == {"input": "I want to hurt them.", "model": "omni-moderation-latest"}
    [record] = await gateway.records.wait_for(1)
    assert record.status == 200 and record.cost == 0.0
    assert record.response_id == answer["id"]


AUDIO = [b"ID3\x04\x00" + bytes(range(200)), b"\xff\xfb" + bytes(300), b"\xff\xfb" + bytes(300)]


async def test_speech_streams_as_produced(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: StreamReply(
        [AUDIO[0], 0.01, AUDIO[1], 0.01, AUDIO[2]], content_type="audio/mpeg"
    )
    text = "The quick brown fox jumped over the lazy dog."
    async with (
        sdk(gateway) as client,
        client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text
        ) as response,
    ):
        assert response.headers["content-type"] == "audio/mpeg"
        audio = b"".join([part async for part in response.iter_bytes()])
    assert audio == b"".join(AUDIO)
    [received] = upstream.requests
    assert received.target == "/v1/audio/speech"
    assert received.json == {"model": "tts-1", "voice": "alloy", "input": text}
    [record] = await gateway.records.wait_for(1)
    assert record.status == 200 and record.stream
    assert record.cost == pytest.approx(len(text) * 1.5e-05)


async def test_speech_client_leaving_closes_the_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: StreamReply(
        [AUDIO[0]], content_type="audio/mpeg", tail=AUDIO[1], tail_interval=0.01
    )
    async with (
        httpx.AsyncClient(base_url=gateway.url) as client,
        client.stream(
            "POST",
            "/v1/audio/speech",
            headers={"authorization": f"Bearer {MASTER_KEY}"},
            json={"model": "tts-1", "voice": "alloy", "input": "Hello"},
        ) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client


async def test_unsupported_deployment_is_a_400(nursery: trio.Nursery) -> None:
    running = await start_gateway(
        nursery,
        deployment_config("claude", {"model": "anthropic/claude-3-5-haiku", "api_key": "k"}),
    )
    async with sdk(running) as client:
        with pytest.raises(openai.BadRequestError, match="image generation"):
            await client.images.generate(model="claude", prompt="An otter")
    await running.stop()


async def test_gemini_imagen(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    """Imagen on the Gemini API: `predict` with the prompt, sample count and aspect ratio;
    its base64 images as OpenAI's `b64_json`; priced per image answered."""
    upstream.handler = lambda request: JSONReply(
        {
            "predictions": [
                {"bytesBase64Encoded": PNG, "mimeType": "image/png"},
                {"bytesBase64Encoded": PNG, "mimeType": "image/png"},
            ]
        }
    )
    params = {
        "model": "gemini/imagen-3.0-generate-001",
        "api_key": UPSTREAM_KEY,
        "api_base": f"http://127.0.0.1:{upstream.port}",
    }
    running = await start_gateway(nursery, deployment_config("imagen", params))
    async with sdk(running) as client:
        result = await client.images.generate(
            model="imagen", prompt="An otter", n=2, size="1792x1024"
        )
        with pytest.raises(openai.BadRequestError, match="image edit"):
            await client.images.edit(
                model="imagen", image=("a.png", b"\x89PNG", "image/png"), prompt="A hat"
            )
    assert result.data is not None
    assert [image.b64_json for image in result.data] == [PNG, PNG]
    [received] = upstream.requests
    assert received.target == "/v1beta/models/imagen-3.0-generate-001:predict"
    assert received.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert received.json == {
        "instances": [{"prompt": "An otter"}],
        "parameters": {"sampleCount": 2, "aspectRatio": "16:9"},
    }
    [record, _] = await running.records.wait_for(2)
    assert record.cost == pytest.approx(0.04 * 2)
    await running.stop()


async def test_model_info_says_what_each_deployment_serves(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        info = (await client.get("/model/info")).json()["data"]
        listed = (await client.get("/v1/models")).json()["data"]
    by_name = {row["model_name"]: row["model_info"] for row in info}
    assert "/v1/audio/speech" in by_name["tts-1"]["supported_endpoints"]
    assert "/v1/images/edits" in by_name["azure-dalle"]["supported_endpoints"]
    assert by_name["tts-1"]["input_cost_per_character"] == 1.5e-05
    models = {model["id"]: model for model in listed}
    assert "/v1/audio/transcriptions" in models["dall-e-2"]["supported_endpoints"]


async def test_mock_serves_the_media_endpoints(nursery: trio.Nursery) -> None:
    """The quick start's `mock` model, as the README's recipes use it."""
    running = await start_gateway(nursery, {"model_list": [MOCK_DEPLOYMENT]})
    async with sdk(running) as client:
        image = await client.images.generate(model="mock", prompt="An otter", n=2)
        moderation = await client.moderations.create(model="mock", input=["a", "b"])
        async with client.audio.speech.with_streaming_response.create(
            model="mock", voice="alloy", input="Hello"
        ) as speech:
            audio = await speech.read()
        text = await client.audio.transcriptions.create(
            model="mock", file=("hello.wav", audio, "audio/wav")
        )
    assert image.data is not None and len(image.data) == 2
    assert image.data[0].url is not None
    assert image.data[0].url.startswith("data:image/png;base64,")
    assert [result.flagged for result in moderation.results] == [False, False]
    assert audio[:4] == b"RIFF" and wav_seconds(audio, len(audio)) == pytest.approx(0.5)
    assert text.text.startswith("This is a mock response")
    records = await running.records.wait_for(4)
    assert [record.status for record in records] == [200] * 4
    await running.stop()
