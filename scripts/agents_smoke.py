"""Run Codex CLI and Claude Code against a real trigate, as their users would, and say
what each did. Called by `scripts/agents-smoke`, which installs both from npm.

trigate serves four model groups: `mock-agent` (the mock provider, so every request
is translated), `gpt-native` (an `openai/` deployment on a fake upstream that speaks
the Responses API), `claude-native` (an `anthropic/` deployment on a fake Messages
API) and `claude-vertex` (a `vertex_ai/` Claude deployment: the fake's `rawPredict`,
with a service account whose token the fake issues). Each agent runs once against a
translated and once against a native group, and once through its provider's
pass-through route (`/openai`, `/anthropic`); Claude Code also against the Vertex
deployment. For each run this prints
the agent's exit code and answer, what trigate served (its spend log) and what the
fake upstream received. `--only claude` (or `codex`) runs one agent's runs.
`--guardrail` adds a content filter that masks emails before and after every call
(pass-through ones included): the prompt and the fake's answer name one, and each run
must show it masked, and the fake must never receive it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

MASTER_KEY = "sk-agents-smoke-master-0123456789"
EMAIL = "ada@example.com"
ANSWER = f"Hi from the fake upstream; Ada is at {EMAIL}."
PROMPT = f"say hi to {EMAIL}"
GUARDRAIL = {
    "guardrail_name": "mask-emails",
    "litellm_params": {
        "guardrail": "litellm_content_filter",
        "mode": ["pre_call", "post_call"],
        "default_on": True,
        "patterns": [{"pattern_type": "prebuilt", "pattern_name": "email", "action": "MASK"}],
    },
}
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class FakeUpstream:
    """Anthropic's Messages API and OpenAI's Responses API, answering every request with
    one short text, streamed or whole, and keeping what each request held."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/token":  # the service account's token URI (Vertex's)
            token = {"access_token": "ya29.agents-smoke", "expires_in": 3600}
            await _reply(send, 200, json.dumps(token).encode(), "application/json")
            return
        request = json.loads(body or b"{}")
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append(_summary(scope["path"], headers, request))
        if scope["path"].endswith(("/messages", ":rawPredict", ":streamRawPredict")):
            frames = _messages_events(request) if request.get("stream") else _message(request)
        elif scope["path"].endswith("/responses"):
            frames = _response_events(request) if request.get("stream") else _response(request)
        else:
            await _reply(send, 404, b'{"error": {"message": "not here"}}', "application/json")
            return
        kind = "text/event-stream" if request.get("stream") else "application/json"
        await _reply(send, 200, frames, kind)


def _summary(path: str, headers: dict[str, str], request: dict[str, Any]) -> dict[str, Any]:
    items = request.get("messages") or request.get("input") or []
    roles = sorted({i.get("role", i.get("type")) for i in items if isinstance(i, dict)})
    return {
        "path": path,
        "model": request.get("model"),
        "stream": bool(request.get("stream")),
        "roles": roles,
        "tools": len(request.get("tools") or ()),
        "anthropic-beta": headers.get("anthropic-beta", "")[:60],
        "anthropic-version": headers.get("anthropic-version"),
        "email": EMAIL in json.dumps(request),
    }


async def _reply(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _message(request: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": "msg_fake_1",
            "type": "message",
            "role": "assistant",
            "model": request.get("model"),
            "content": [{"type": "text", "text": ANSWER}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 7},
        }
    ).encode()


def _messages_events(request: dict[str, Any]) -> bytes:
    start = {
        "id": "msg_fake_1",
        "type": "message",
        "role": "assistant",
        "model": request.get("model"),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    return _sse(
        [
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": ANSWER},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 7},
            },
            {"type": "message_stop"},
        ]
    )


def _response_object(request: dict[str, Any], status: str, text: str | None) -> dict[str, Any]:
    output = []
    if text is not None:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        output = [
            {
                "type": "message",
                "id": "msg_fake_1",
                "status": "completed",
                "role": "assistant",
                "content": content,
            }
        ]
    return {
        "id": f"resp_fake_{time.monotonic_ns()}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": request.get("model"),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 19,
        }
        if status == "completed"
        else None,
    }


def _response(request: dict[str, Any]) -> bytes:
    return json.dumps(_response_object(request, "completed", ANSWER)).encode()


def _response_events(request: dict[str, Any]) -> bytes:
    final = _response_object(request, "completed", ANSWER)
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    item = {
        "type": "message",
        "id": "msg_fake_1",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_fake_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        {"type": "response.output_text.delta", **where, "delta": ANSWER, "logprobs": []},
        {"type": "response.output_text.done", **where, "text": ANSWER, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": ANSWER}},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]
    return _sse([{**event, "sequence_number": i} for i, event in enumerate(events)])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Priced as a frontier model is, so that the spend log shows what each run cost.
PRICE = {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05}


def _service_account(base: str) -> str:
    """A service account's key, real enough for google-auth to sign its JWT grant, whose
    token URI is the fake upstream."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "agents-smoke",
            "private_key_id": "0",
            "private_key": pem,
            "client_email": "smoke@agents-smoke.iam.gserviceaccount.com",
            "token_uri": f"{base}/token",
        }
    )


def _config(upstream_port: int, guardrail: bool) -> str:
    base = f"http://127.0.0.1:{upstream_port}"
    return json.dumps(
        {
            "model_list": [
                {
                    "model_name": "mock-agent",
                    "litellm_params": {
                        "model": "mock/agent",
                        "mock_response": "Hi from trigate's mock provider.",
                        **PRICE,
                    },
                },
                {
                    "model_name": "gpt-native",
                    "litellm_params": {
                        "model": "openai/gpt-fake",
                        "api_base": f"{base}/v1",
                        "api_key": "sk-fake-upstream",
                        **PRICE,
                    },
                },
                {
                    "model_name": "claude-native",
                    "litellm_params": {
                        "model": "anthropic/claude-fake",
                        "api_base": base,
                        "api_key": "sk-fake-upstream",
                        **PRICE,
                    },
                },
                {
                    "model_name": "claude-vertex",
                    "litellm_params": {
                        "model": "vertex_ai/claude-fake@20250101",
                        "api_base": base,
                        "vertex_project": "agents-smoke",
                        "vertex_location": "us-east5",
                        "vertex_credentials": _service_account(base),
                        **PRICE,
                    },
                },
            ],
            "general_settings": {"master_key": MASTER_KEY},
            "guardrails": [GUARDRAIL] if guardrail else [],
        }
    )


@dataclass
class Agents:
    codex: Path
    claude: Path
    gateway: str
    workdir: Path

    def codex_run(self, model: str, route: str = "") -> subprocess.CompletedProcess[str]:
        """Codex on a model group, or (`route` "/openai") on the pass-through route, where
        `model` is the upstream's own name."""
        home = self.workdir / f"codex-{model}{route.replace('/', '-')}"
        home.mkdir()
        (home / "config.toml").write_text(
            f'model = "{model}"\nmodel_provider = "trigate"\n\n'
            "[model_providers.trigate]\n"
            'name = "trigate"\n'
            f'base_url = "{self.gateway}{route}/v1"\n'
            'env_key = "TRIGATE_API_KEY"\n'
            'wire_api = "responses"\n'
        )
        environ = {**os.environ, "CODEX_HOME": str(home), "TRIGATE_API_KEY": MASTER_KEY}
        command = [str(self.codex), "exec", "--skip-git-repo-check", PROMPT]
        return _run(command, environ, self.workdir)

    def claude_run(self, model: str, route: str = "") -> subprocess.CompletedProcess[str]:
        """Claude Code on a model group, or (`route` "/anthropic") on the pass-through
        route, where `model` is the upstream's own name."""
        home = self.workdir / f"claude-{model}{route.replace('/', '-')}"
        home.mkdir()
        environ = {
            **os.environ,
            "CLAUDE_CONFIG_DIR": str(home),
            "ANTHROPIC_BASE_URL": self.gateway + route,
            "ANTHROPIC_AUTH_TOKEN": MASTER_KEY,
            "ANTHROPIC_MODEL": model,
            "ANTHROPIC_SMALL_FAST_MODEL": model,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        environ.pop("ANTHROPIC_API_KEY", None)
        return _run([str(self.claude), "-p", PROMPT], environ, self.workdir)


def _run(
    command: list[str], environ: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            env=environ,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as expired:
        return subprocess.CompletedProcess(
            command, 124, str(expired.stdout or ""), "timed out after 120 s"
        )


def _spend(gateway: str) -> dict[str, dict[str, Any]]:
    """The spend log, by request id."""
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    rows = httpx.get(f"{gateway}/spend/logs", headers=headers).json()
    return {row["request_id"]: row for row in rows} if isinstance(rows, list) else {}


def _report(
    name: str,
    run: subprocess.CompletedProcess[str],
    served: list[dict[str, Any]],
    seen: list[dict[str, Any]],
    guardrail: bool,
) -> bool:
    answer = run.stdout.strip().splitlines()
    print(f"\n=== {name}: exit {run.returncode}")
    print("answer:  " + (" | ".join(answer[-3:]) or "(none)"))
    if run.returncode != 0:
        print("stderr:  " + " | ".join(run.stderr.strip().splitlines()[-5:]))
    for row in served:
        cost = float(row.get("spend") or row.get("cost") or 0)
        print(
            f"trigate: {row.get('model_group')!s:<14} status {row.get('status')}  "
            f"tokens {row.get('prompt_tokens')}+{row.get('completion_tokens')}  "
            f"stream {row.get('stream')}  cost ${cost:.6f}"
            + (f"  error {row['error']}" if row.get("error") else "")
        )
    for request in seen:
        print(f"upstream: {json.dumps(request)}")
    answered = run.returncode == 0 and bool(served)
    masked = not guardrail or (EMAIL not in run.stdout and not any(r["email"] for r in seen))
    if guardrail:
        print("guardrail: " + ("the email reached neither the fake nor the answer" if masked
                               else "FAILED: the email went through unmasked"))  # fmt: skip
    return answered and masked and all(row.get("status") == 200 for row in served)


async def _main(codex: Path, claude: Path, only: str | None, guardrail: bool) -> int:
    upstream = FakeUpstream()
    upstream_port, gateway_port = _free_port(), _free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{upstream_port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    ok = True
    with tempfile.TemporaryDirectory(prefix="trigate-agents-") as scratch:
        workdir = Path(scratch)
        config_path = workdir / "config.yaml"
        config_path.write_text(_config(upstream_port, guardrail))  # JSON is YAML
        environ = {
            **os.environ,
            "TRIGATE_DATABASE_URL": f"sqlite:///{workdir}/trigate.db",
            "TRIGATE_LOG_LEVEL": "WARNING",
        }
        command = [
            sys.executable,
            "-m",
            "trigate",
            "serve",
            "--config",
            str(config_path),
            "--port",
            str(gateway_port),
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(serve, upstream, config, shutdown_trigger=trio.sleep_forever)
            )
            gateway_process = await nursery.start(
                partial(trio.run_process, command, env=environ, check=False)
            )
            gateway = f"http://127.0.0.1:{gateway_port}"
            await _ready(gateway)
            agents = Agents(codex, claude, gateway, workdir)
            runs = [
                ("codex exec -> mock-agent (translated)", agents.codex_run, "mock-agent"),
                (
                    "codex exec -> gpt-native (openai/, native Responses API)",
                    agents.codex_run,
                    "gpt-native",
                ),
                (
                    "codex exec -> /openai pass-through (gpt-fake, Responses API)",
                    partial(agents.codex_run, route="/openai"),
                    "gpt-fake",
                ),
                ("claude -p -> mock-agent (translated)", agents.claude_run, "mock-agent"),
                (
                    "claude -p -> claude-native (anthropic/, native Messages API)",
                    agents.claude_run,
                    "claude-native",
                ),
                (
                    "claude -p -> claude-vertex (vertex_ai/, rawPredict)",
                    agents.claude_run,
                    "claude-vertex",
                ),
                (
                    "claude -p -> /anthropic pass-through (claude-fake)",
                    partial(agents.claude_run, route="/anthropic"),
                    "claude-fake",
                ),
            ]
            runs = [run for run in runs if only is None or run[0].startswith(only)]
            for name, run_agent, model in runs:
                before, requests = _spend(gateway), len(upstream.seen)
                run = await trio.to_thread.run_sync(run_agent, model)
                await trio.sleep(1.2)  # the spend ledger writes in batches
                served = [row for rid, row in _spend(gateway).items() if rid not in before]
                ok &= _report(name, run, served, upstream.seen[requests:], guardrail)
            gateway_process.terminate()
            await gateway_process.wait()
            nursery.cancel_scope.cancel()
    print("\nagents-smoke: " + ("every agent answered through trigate" if ok else "FAILED"))
    return 0 if ok else 1


async def _ready(gateway: str) -> None:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while True:
                try:
                    if (await client.get(f"{gateway}/health/readiness")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--codex", type=Path, required=True)
    parser.add_argument("--claude", type=Path, required=True)
    parser.add_argument("--only", choices=("codex", "claude"), help="one agent's runs only")
    parser.add_argument("--guardrail", action="store_true", help="mask emails, and check it")
    args = parser.parse_args()
    return trio.run(_main, args.codex, args.claude, args.only, args.guardrail)


if __name__ == "__main__":
    sys.exit(main())
