"""`trigate serve` as a user runs it: a real process, real workers, real signals."""

from __future__ import annotations

import gc
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from asgi_driver import start_lifespan

from trigate.server import GC_THRESHOLDS, worker_app

TRIGATE = [sys.executable, "-m", "trigate"]
RUNNING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
GENERATED = re.compile(rb"this run's master key is (sk-[A-Za-z0-9_\-]+)")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGATE_")}
    return {**env, "TRIGATE_DATABASE_URL": "sqlite://:memory:", **extra}


class Served:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = b""
        self.port = 0

    async def wait_ready(self, workers: int) -> None:
        assert self.process.stdout is not None
        while len(RUNNING.findall(self.output)) < workers:
            data = await self.process.stdout.receive_some()
            assert data, self.output.decode()
            self.output += data
        self.port = int(RUNNING.findall(self.output)[0])

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            with trio.fail_after(20):
                return await self.process.wait()
        finally:
            if self.process.returncode is None:
                self.process.kill()  # never leave a server behind a failed test


async def serve(*args: str, env: dict[str, str] | None = None) -> Served:
    process = await trio.lowlevel.open_process(
        [*TRIGATE, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env or clean_env(),
    )
    return Served(process)


async def test_no_config_generates_a_key_shared_by_all_workers() -> None:
    served = await serve("--workers", "2")
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=2)
        [key] = GENERATED.findall(served.output)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            for _ in range(12):  # new connections land on either worker
                response = await client.post(
                    "/v1/chat/completions",
                    json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {key.decode()}", "connection": "close"},
                )
                assert response.status_code == 200, response.text
            denied = await client.get("/v1/models", headers={"authorization": "Bearer sk-other"})
            assert denied.status_code == 401
    finally:
        assert await served.stop() == 0
    assert served.output.count(key) == 1, "the generated key is printed once, never logged"


async def test_configured_master_key_is_not_printed(tmp_path: Path) -> None:
    served = await serve(env=clean_env(TRIGATE_MASTER_KEY="sk-configured-0123456789"))
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            response = await client.get(
                "/v1/models", headers={"authorization": "Bearer sk-configured-0123456789"}
            )
        assert response.json()["data"][0]["id"] == "mock"
    finally:
        await served.stop()
    assert b"sk-configured-0123456789" not in served.output


async def run_to_exit(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = await trio.run_process(
        [*TRIGATE, "serve", "--port", "0", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env or clean_env(),
    )
    return result.returncode, (result.stdout + result.stderr).decode()


async def test_refuses_a_public_bind_without_a_master_key() -> None:
    code, output = await run_to_exit("--host", "0.0.0.0")
    assert code == 1
    assert "refusing to bind 0.0.0.0" in output and "master key" in output


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: nope/x}\n",
            "model_list[0].litellm_params.model: unknown provider prefix 'nope'",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {api_key: k}\n",
            "model_list[0].litellm_params.model: Field required",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params:\n"
            "      model: openai/x\n      api_key: os.environ/TRIGATE_TEST_UNSET\n",
            "environment variable TRIGATE_TEST_UNSET is not set",
        ),
    ],
)
async def test_bad_config_stops_startup_with_one_clear_line(
    tmp_path: Path, yaml: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml)
    code, output = await run_to_exit("--config", str(path))
    assert code == 1
    [line] = output.strip().splitlines()
    assert line.startswith("trigate: ") and message in line


def test_the_command_line_and_supervisor_import_no_part_of_the_app() -> None:
    """`trigate serve --workers N`'s supervisor runs trigate.cli and trigate.server; the
    app's modules (the HTTP surface, the gateway) are the workers' alone, and importing
    them too would hold up every worker's start by about as long again."""
    code = "import sys, trigate.cli; print([m for m in sys.modules if m.startswith(APP)])"
    app = "('trigate.api', 'trigate.gateway', 'quart')"
    done = subprocess.run(
        [sys.executable, "-c", code.replace("APP", app)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_sigterm_drains_and_flushes_spend(tmp_path: Path) -> None:
    """What `docker stop` or systemd sends: a graceful stop that writes the spend log."""
    database = tmp_path / "spend.db"
    env = clean_env(
        TRIGATE_MASTER_KEY="sk-configured-0123456789", TRIGATE_DATABASE_URL=f"sqlite:///{database}"
    )
    served = await serve(env=env)
    with trio.fail_after(60):
        await served.wait_ready(workers=1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
        for _ in range(3):
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer sk-configured-0123456789"},
            )
            assert response.status_code == 200
    served.process.send_signal(signal.SIGTERM)
    try:
        with trio.fail_after(20):
            assert await served.process.wait() == 0
    finally:
        if served.process.returncode is None:
            served.process.kill()
    with sqlite3.connect(database) as connection:
        [(rows,)] = connection.execute("SELECT COUNT(*) FROM trigate_spend_logs").fetchall()
    assert rows == 3


async def test_a_worker_keeps_its_startup_heap_out_of_collections(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up's objects (encodings, price table, store) are frozen once the gateway
    has started, and young collections run rarely: see `GC_THRESHOLDS`."""
    for name, value in clean_env(TRIGATE_MASTER_KEY="sk-" + "k" * 40).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TRIGATE_CONFIG", raising=False)
    thresholds = gc.get_threshold()
    try:
        app, _ = worker_app()
        await start_lifespan(nursery, app)
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
