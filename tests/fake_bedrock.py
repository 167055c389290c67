"""A fake Bedrock Runtime that speaks Converse as AWS documents it, checked against
botocore's own service model for Bedrock Runtime: every request body it receives is
validated against the Converse input shape (plus the rules Bedrock enforces beyond it:
alternating roles, no blank text, tool config with tool blocks), every response and stream
event it sends against the output shapes. Streams are real binary event-stream frames
with correct CRCs, from a small encoder written here from the framing spec. Each request's
SigV4 signature is recomputed independently of botocore, from what arrived on the socket;
a bad one gets AWS's 403."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote

import orjson
from botocore.exceptions import ParamValidationError
from botocore.loaders import Loader
from botocore.model import ServiceModel, Shape, StructureShape
from botocore.validate import validate_parameters
from fakes import FakeUpstream, JSONReply, ReceivedRequest, Reply, StreamReply
from helpers import deployment_config

from trigate.providers.bedrock import EVENT_STREAM

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE//////////wEaDsessiontoken"
REGION = "eu-west-3"
MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"


def _structure(shape: Shape | None) -> StructureShape:
    """botocore types a shape as optional or as any kind; the ones checked here are structures."""
    assert isinstance(shape, StructureShape), shape
    return shape


_SERVICE = ServiceModel(Loader().load_service_model("bedrock-runtime", "service-2"))
CONVERSE = _SERVICE.operation_model("Converse")
CONVERSE_INPUT = _structure(CONVERSE.input_shape)
CONVERSE_OUTPUT = _structure(CONVERSE.output_shape)
STREAM_EVENTS = _structure(
    _structure(_SERVICE.operation_model("ConverseStream").output_shape).members["stream"]
)


def bedrock_config(upstream: FakeUpstream, **params: Any) -> dict[str, Any]:
    credentials = {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_region_name": REGION,
    }
    base = f"http://127.0.0.1:{upstream.port}"
    model = {"model": f"bedrock/{MODEL_ID}", "api_base": base, **credentials}
    return deployment_config("claude", {**model, **params})


def event_stream(frames: Sequence[bytes | float]) -> StreamReply:
    """A ConverseStream answer, with the content-type Bedrock gives one."""
    return StreamReply(frames, content_type=EVENT_STREAM)


def aws_error(status: int, error_type: str, message: str, **headers: str) -> JSONReply:
    """Bedrock's error: the type in a header, only a message in the body."""
    error_type = f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    return JSONReply({"message": message}, status, {"x-amzn-errortype": error_type, **headers})


def bedrock(
    reply: Callable[[ReceivedRequest], Reply], *, token: str | None = None, signed: bool = True
) -> Callable[[ReceivedRequest], Reply]:
    """A handler that refuses what Bedrock would refuse, then answers with `reply`."""

    def handle(request: ReceivedRequest) -> Reply:
        if signed and (problem := signature_problem(request, token)):
            return aws_error(403, "InvalidSignatureException", problem)
        if problem := converse_problem(request):
            return aws_error(400, "ValidationException", problem)
        return reply(request)

    return handle


_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/bedrock/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})"
)


def signature_problem(request: ReceivedRequest, token: str | None = None) -> str | None:
    """SigV4 recomputed from the spec (not botocore) over the request as it arrived."""
    match = _AUTHORIZATION.fullmatch(request.headers.get("authorization", ""))
    if match is None or match["key"] != ACCESS_KEY or match["region"] != REGION:
        return f"Malformed Authorization header: {request.headers.get('authorization')!r}"
    amz_date = request.headers.get("x-amz-date", "")
    signed = match["signed"].split(";")
    if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date) or amz_date[:8] != match["date"]:
        return f"Bad x-amz-date {amz_date!r}"
    if not {"host", "x-amz-date", "content-type"} <= set(signed) or signed != sorted(signed):
        return f"Bad SignedHeaders {signed}"
    if token is not None and (
        request.headers.get("x-amz-security-token") != token or "x-amz-security-token" not in signed
    ):
        return "The security token included in the request is invalid."
    # Services other than S3 encode each path segment twice: once on the wire, once here.
    canonical = "\n".join(
        [
            request.method,
            quote(request.target, safe="/-_.~"),
            "",
            *(f"{name}:{' '.join(request.headers[name].split())}" for name in signed),
            "",
            match["signed"],
            hashlib.sha256(request.body).hexdigest(),
        ]
    )
    scope = f"{match['date']}/{REGION}/bedrock/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (match["date"], REGION, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    if hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() != match["sig"]:
        return "The request signature we calculated does not match the signature you provided."
    return None


def model_id(request: ReceivedRequest) -> str:
    return unquote(request.target.split("/model/", 1)[1].rsplit("/", 1)[0])


def converse_problem(request: ReceivedRequest) -> str | None:
    """What Bedrock's ValidationException would say about this Converse body, if anything."""
    body = request.json
    try:
        validate_parameters({**body, "modelId": model_id(request)}, CONVERSE_INPUT)
    except ParamValidationError as error:
        return str(error)
    roles = [message["role"] for message in body["messages"]]
    if roles[:1] != ["user"] or any(a == b for a, b in itertools.pairwise(roles)):
        return f"A conversation must start with a user message and alternate roles: {roles}"
    blocks = [block for message in body["messages"] for block in message["content"]]
    blocks += body.get("system", [])
    if any(len(block) != 1 for block in blocks):
        return "Each content block must set exactly one member."
    if any("text" in block and not block["text"].strip() for block in blocks):
        return "The text field in the ContentBlock object is blank."
    if "toolConfig" not in body and any("toolUse" in b or "toolResult" in b for b in blocks):
        return "The toolConfig field must be defined when using toolUse and toolResult content."
    return None


def converse_response(
    content: list[dict[str, Any]],
    stop_reason: str = "end_turn",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    usage = usage or {"inputTokens": 12, "outputTokens": 3}
    usage.setdefault("totalTokens", sum(usage.values()))
    body = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 321},
    }
    validate_parameters(body, CONVERSE_OUTPUT)
    return body


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths), its CRC, string headers, payload, CRC."""
    encoded = b""
    for name, value in headers.items():
        raw = value.encode()
        encoded += bytes([len(name)]) + name.encode() + struct.pack(">BH", 7, len(raw)) + raw
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, **payload: Any) -> bytes:
    """A ConverseStream event, with the padding field `p` Bedrock adds to hide lengths."""
    validate_parameters(payload, STREAM_EVENTS.members[event_type])
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_frame(headers, orjson.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyzAB"}))


def exception(name: str, message: str) -> bytes:
    assert name in STREAM_EVENTS.members
    headers = {
        ":exception-type": name,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_frame(headers, orjson.dumps({"message": message}))


def text_events(*pieces: str, stop_reason: str = "end_turn") -> list[bytes]:
    return [
        event("messageStart", role="assistant"),
        *(event("contentBlockDelta", contentBlockIndex=0, delta={"text": p}) for p in pieces),
        event("contentBlockStop", contentBlockIndex=0),
        event("messageStop", stopReason=stop_reason),
    ]


def metadata(**usage: int) -> bytes:
    usage.setdefault("totalTokens", sum(usage.values()))
    return event("metadata", usage=usage, metrics={"latencyMs": 250})


def split_at(data: bytes, offsets: list[int]) -> list[bytes | float]:
    """The bytes cut at `offsets`, with pauses between, so that each piece is its own read."""
    pieces: list[bytes | float] = []
    start = 0
    for end in [*offsets, len(data)]:
        pieces += [data[start:end], 0.005]
        start = end
    return pieces
