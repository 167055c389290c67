"""Instructions a pass-through call costs, with and without guardrails, counted by callgrind
as `scripts/bench_guardrails.py` counts them: `python scripts/bench_passthrough_guard.py`.

An Anthropic SDK's call on `/anthropic/v1/messages` (a prompt of about 2,000 tokens of
prose with an email in it), through the whole app in-process (ASGI: authentication,
admission, the spend row), to an upstream answered by an in-process transport with a
short message, whole or streamed (12 text deltas). Three gateways: no guardrail
configured; the embedded content filter (every prebuilt pattern and a keyword) as
pre_call and post_call on every call; and the same guardrail not `default_on`, which
the key does not name (configured, but no guardrail applies). Each figure is a
difference of two runs under callgrind, with and without `RUNS` more calls, divided by
`RUNS`: start-up, imports and warm-up cancel out. `--tree DIR` counts another checkout
(`git archive main | tar -x -C DIR`), for a before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

RUNS = 100
ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import random
import sys

import httpx
import orjson
import trio

from bench_counted import seed_scheduler
from trigate.api import create_app
from trigate.config import parse_config
from trigate.gateway import Gateway

MASTER = "sk-bench-master-0123456789"
MODEL = "claude-sonnet-4-5-20250929"
SENTENCE = (
    "The committee reviewed the quarterly figures and agreed that the migration of the "
    "billing service should wait until the new storage cluster has been load tested. "
)
PROMPT = SENTENCE * 70 + "Reach me at ada@example.com. " + SENTENCE * 5
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
           "content": [{"type": "text", "text": SENTENCE}], "stop_reason": "end_turn",
           "stop_sequence": None, "usage": {"input_tokens": 2000, "output_tokens": 30}}


def event(payload):
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


WORDS = SENTENCE.split(" ")
STREAM = b"".join([
    event({"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}}),
    event({"type": "content_block_start", "index": 0,
           "content_block": {"type": "text", "text": ""}}),
    *[event({"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": " ".join(WORDS[i:i + 2]) + " "}})
      for i in range(0, 24, 2)],
    event({"type": "content_block_stop", "index": 0}),
    event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 30}}),
    event({"type": "message_stop"}),
])


def answer(request):
    # The guardrail masked the prompt's email; without it, the email goes as it came.
    assert (b"ada@example.com" in request.content) is (sys.argv[2] != "guarded")
    if orjson.loads(request.content).get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=STREAM)
    return httpx.Response(200, headers={"content-type": "application/json"},
                          content=orjson.dumps(MESSAGE))


GUARDRAIL = {"guardrail_name": "cf", "litellm_params": {
    "guardrail": "litellm_content_filter", "mode": ["pre_call", "post_call"],
    "default_on": sys.argv[2] == "guarded",
    "patterns": [{"pattern_type": "prebuilt", "pattern_name": name, "action": action}
                 for name, action in (("pii", "MASK"), ("secrets", "BLOCK"),
                                      ("prompt_injection", "BLOCK"))],
    "blocked_words": [{"keyword": "confidential", "action": "BLOCK"}]}}
CONFIG = {
    "model_list": [{"model_name": "claude", "litellm_params": {
        "model": f"anthropic/{MODEL}", "api_base": "http://upstream", "api_key": "sk-up"}}],
    "general_settings": {"master_key": MASTER, "database_url": "sqlite://:memory:"},
    "guardrails": [] if sys.argv[2] == "none" else [GUARDRAIL],
}
STREAMED = sys.argv[3] == "stream"
BODY = orjson.dumps({"model": MODEL, "max_tokens": 100, "stream": STREAMED,
                     "messages": [{"role": "user", "content": PROMPT}]})
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
         "scheme": "http", "path": "/anthropic/v1/messages",
         "raw_path": b"/anthropic/v1/messages", "query_string": b"", "root_path": "",
         "headers": [(b"host", b"gateway"), (b"x-api-key", MASTER.encode()),
                     (b"content-type", b"application/json"),
                     (b"content-length", str(len(BODY)).encode())],
         "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 4000), "extensions": {}}


async def call(app):
    given = False
    answered = []

    async def receive():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await trio.sleep_forever()

    async def send(message):
        answered.append(message)

    await app(dict(SCOPE), receive, send)
    assert answered[0]["status"] == 200, answered


async def main(count):
    gateway = Gateway(parse_config(CONFIG, {}), MASTER, transport=httpx.MockTransport(answer))
    app = create_app(gateway)
    inbox_send, inbox = trio.open_memory_channel(1)
    outbox, outbox_receive = trio.open_memory_channel(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                           inbox.receive, outbox.send)
        await inbox_send.send({"type": "lifespan.startup"})
        assert (await outbox_receive.receive())["type"] == "lifespan.startup.complete"
        for _ in range(5):  # warm: regex caches, metric children, token counts
            await call(app)
        for _ in range(count):
            await call(app)
        await inbox_send.send({"type": "lifespan.shutdown"})
        await outbox_receive.receive()
        nursery.cancel_scope.cancel()

seed_scheduler()
random.seed(20)
trio.run(main, int(sys.argv[1]))
"""


def main() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_callgrind import per_request

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the trigate checkout to count")
    parser.add_argument("--only", choices=("none", "unselected", "guarded"))
    args = parser.parse_args()
    cases = [
        ("none", "no guardrail configured"),
        ("unselected", "a guardrail configured that the call does not meet"),
        ("guarded", "the content filter, pre_call + post_call"),
    ]
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        for shape in ("whole", "stream"):
            for guardrail, what in cases:
                if args.only not in (None, guardrail):
                    continue
                cost = per_request(WORKER, RUNS, [guardrail, shape], workdir, args.tree)
                print(f"/anthropic/v1/messages, {shape}, {what}: "
                      f"{cost:,.0f} instructions per call")  # fmt: skip


if __name__ == "__main__":
    main()
