"""`trigate serve --workers N` as operators run it: workers die, and stops are graceful.

Real processes and real signals: the supervisor must replace a worker killed
outright, and a SIGTERM must let every worker finish its streams and write
their spend rows.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from pathlib import Path

import httpx
import trio
from test_cli import Served, clean_env, serve

MASTER = "sk-supervised-0123456789"
STARTED = re.compile(rb"worker (\d+) started \(pid (\d+)\)")
# Ten words, a word every 0.3 s: a stream that is still running when the stop comes.
SLOW_TEXT = " ".join(f"word{i}" for i in range(10))


def _pids(served: Served) -> dict[int, int]:
    """Each worker slot's newest pid, from the supervisor's log."""
    return {int(slot): int(pid) for slot, pid in STARTED.findall(served.output)}


async def _read_more(served: Served) -> None:
    assert served.process.stdout is not None
    data = await served.process.stdout.receive_some()
    assert data, served.output.decode()
    served.output += data


def _slow_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: slow\n"
        "    litellm_params: {model: mock/gpt-4o, mock_chunk_delay: 0.3}\n"
        "general_settings: {graceful_timeout: 30}\n"
    )
    return path


async def _chat(client: httpx.AsyncClient, stream: bool = False) -> httpx.Response:
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return await client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER}"}
    )


async def test_a_killed_worker_is_replaced_and_the_others_keep_serving(tmp_path: Path) -> None:
    served = await serve(
        "--workers", "2", "--config", str(_slow_config(tmp_path)),
        env=clean_env(TRIGATE_MASTER_KEY=MASTER),
    )  # fmt: skip
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=2)
        before = _pids(served)
        os.kill(before[0], signal.SIGKILL)
        with trio.fail_after(30):
            while _pids(served).get(0) == before[0]:
                await _read_more(served)
            await served.wait_ready(workers=3)  # the replacement is serving too
        os.kill(before[1], 0)  # the other worker was never stopped
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            for _ in range(6):
                assert (await _chat(client)).status_code == 200
        assert b"worker 0 exited with signal SIGKILL; starting another" in served.output
    finally:
        assert await served.stop() == 0


async def test_sigterm_drains_every_workers_streams_and_flushes_their_spend(
    tmp_path: Path,
) -> None:
    database = tmp_path / "spend.db"
    env = clean_env(TRIGATE_MASTER_KEY=MASTER, TRIGATE_DATABASE_URL=f"sqlite:///{database}")
    served = await serve("--workers", "2", "--config", str(_slow_config(tmp_path)), env=env)
    with trio.fail_after(60):
        await served.wait_ready(workers=2)
    streams = 8
    bodies: list[str] = []
    first_chunks = trio.Semaphore(0)

    async def one_stream() -> None:
        # A connection of its own, so the streams spread over both workers.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            body = {
                "model": "slow", "stream": True, "mock_response": SLOW_TEXT,
                "messages": [{"role": "user", "content": "hi"}],
            }  # fmt: skip
            headers = {"authorization": f"Bearer {MASTER}"}
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as response:
                text = ""
                async for part in response.aiter_text():
                    if not text:
                        first_chunks.release()
                    text += part
                bodies.append(text)

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(one_stream)
                for _ in range(streams):
                    await first_chunks.acquire()
                served.process.send_signal(signal.SIGTERM)
            assert await served.process.wait() == 0
    finally:
        if served.process.returncode is None:
            served.process.kill()
    assert len(bodies) == streams
    for text in bodies:
        assert "word9" in text and text.rstrip().endswith("data: [DONE]")
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT status, cancelled_by_client FROM trigate_spend_logs")
        assert sorted(rows.fetchall()) == [(200, 0)] * streams
