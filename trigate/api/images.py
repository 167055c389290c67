"""`POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart/form-data):
OpenAI's image API, priced per image by size and quality.

The body goes to the upstream as it came (`response_format` `url` or `b64_json`
included), and its answer comes back as it came. The cost is reckoned from what the
upstream answered: the images in its `data`, at the table's price for the request's
size and quality ("hd/1024-x-1024/dall-e-3", per image or per pixel), or, where the
upstream reports image tokens (gpt-image-1's `usage`) and the table prices them, by
those tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from trigate.api.envelopes import OPENAI
from trigate.api.surface import IMAGE_EDITS, IMAGES, OpenAIExchange, Operation
from trigate.api.validation import require_model
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.forms import UploadedFile
from trigate.gateway import Gateway
from trigate.providers import Completion
from trigate.router.deployments import Deployment
from trigate.spend.prices import ModelPrice, PriceTable, image_cost
from trigate.usage import Usage

# OpenAI's defaults where a request names no size or quality.
DEFAULT_SIZE = "1024x1024"
DEFAULT_QUALITY = "standard"


class ImageExchange(OpenAIExchange):
    """An image request: answered as the upstream answered (no usage is added to an image
    list), billed per image (`bill`)."""

    __slots__ = ("_prices",)

    def __init__(
        self, requested: str, body: dict[str, Any], operation: Operation[Any], prices: PriceTable
    ) -> None:
        super().__init__(requested, body, operation, False)
        self._prices = prices

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        return completion.raw or orjson.dumps(completion.body)

    def bill(self, deployment: Deployment, completion: Completion | None, usage: Usage) -> Usage:
        answer = completion.body if completion is not None else {}
        data = answer.get("data")
        images = len(data) if isinstance(data, list) else 0
        reported = answer.get("usage")
        tokens = _image_tokens(reported) if isinstance(reported, dict) else None
        price = deployment.price
        if tokens is not None and price is not None and price.image_output_token is not None:
            return _by_tokens(price, *tokens)
        size, quality = self._size(), self._quality()
        params = deployment.params
        sized = self._prices.image_price(params.provider, deployment.priced_model, size, quality)
        width, height = _dimensions(size)
        unit_price = sized or price or ModelPrice()
        cost = image_cost(unit_price, width, height, images)
        return Usage(usage.prompt_tokens, 0, usage.source, unit_cost=cost)

    def _size(self) -> str:
        size = self.body.get("size")
        return size if isinstance(size, str) and _dimensions(size) != (0, 0) else DEFAULT_SIZE

    def _quality(self) -> str:
        quality = self.body.get("quality")
        return quality if isinstance(quality, str) and quality != "auto" else DEFAULT_QUALITY


def _dimensions(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    if width.isdigit() and height.isdigit():
        return int(width), int(height)
    return 0, 0


def _image_tokens(usage: dict[str, Any]) -> tuple[int, int, int] | None:
    """Text and image input tokens and output tokens, as gpt-image-1 reports them."""
    given, made = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(given, int) or not isinstance(made, int):
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    images = details.get("image_tokens")
    images = images if isinstance(images, int) else 0
    text = details.get("text_tokens")
    text = text if isinstance(text, int) else given - images
    return text, images, made


def _by_tokens(price: ModelPrice, text: int, images_in: int, made: int) -> Usage:
    cost = (
        text * (price.input or 0.0)
        + images_in * (price.image_input_token or price.input or 0.0)
        + made * (price.image_output_token or 0.0)
    )
    return Usage(text + images_in, made, "upstream", unit_cost=cost)


def _require_prompt(body: Mapping[str, Any]) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("`prompt` is required: a non-empty string.", param="prompt")


class ImagesSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> ImageExchange:
        model = require_model(body)
        _require_prompt(body)
        return ImageExchange(model, body, IMAGES, gateway.models.prices)


class ImageEditsSurface:
    """Image edits: a form whose `image` (or `image[]`) files and optional `mask` go to the
    upstream as they came, with its text fields."""

    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> ImageExchange:
        model = require_model(body)
        _require_prompt(body)
        images = body.get("image", body.get("image[]"))
        items = images if isinstance(images, list) else [images]
        if not all(isinstance(item, UploadedFile) for item in items):
            raise InvalidRequest("`image` is required: one or more image files.", param="image")
        return ImageExchange(model, body, IMAGE_EDITS, gateway.models.prices)
