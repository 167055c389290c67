"""CPU per paced stream: what the gateway spends relaying a stream whose chunks arrive
one at a time.

Issue 20's hardest target: a 21-chunk stream whose upstream sends one SSE frame,
flushes, and sleeps 2 ms before the next, so every chunk is its own upstream
read and its own client write. The gateway runs pinned to core 1; the paced
upstream (a process of its own) and the clients (`--concurrency` keep-alive
connections, each running streams back to back) share core 0. The gateway's
CPU time is read from /proc around the measured streams, after a warm-up.

    .venv/bin/python scripts/paced_stream_bench.py [--streams 2000] [--concurrency 20]
    .venv/bin/python scripts/paced_stream_bench.py --callgrind /tmp/cg.out \
        --streams 100 --warmup 20 --concurrency 4 --pace 0.02

Prints CPU milliseconds per stream (and per chunk) and streams per second; with
`--callgrind`, instructions per stream instead (steady on a shared machine).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import orjson
import trio
import yaml
from bench_streams import read_request, serve_command, wait_listening
from bench_systems import free_port

MASTER_KEY = "sk-paced-bench"
ROOT = Path(__file__).resolve().parent.parent
CHUNKS = 21
PACE = 0.002


def _frame(payload: dict[str, object]) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    return _frame(
        {
            "id": "chatcmpl-paced",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


_FRAMES = [
    _chunk({"role": "assistant", "content": ""}),
    *[_chunk({"content": f" word{i}"}) for i in range(CHUNKS - 2)],
    _chunk({}, "stop"),
]
# OpenAI's usage chunk (the gateway asks every upstream for it), then the terminator.
_USAGE = _frame(
    {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": CHUNKS - 1, "total_tokens": CHUNKS + 8},
    }
)
_DONE = _USAGE + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def _paced_upstream(stream: trio.SocketStream, pace: float = PACE) -> None:
    """Every request on the connection gets a paced 21-chunk stream."""
    buffer = b""
    try:
        while (read := await read_request(stream, buffer)) is not None:
            _, buffer = read
            await stream.send_all(_HEAD + _FRAMES[0])
            for frame in _FRAMES[1:]:
                await trio.sleep(pace)
                await stream.send_all(frame)
            await stream.send_all(_DONE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve_upstream(pace: float) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(functools.partial(_paced_upstream, pace=pace), listeners)


_BODY = orjson.dumps(
    {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
    b"authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(_BODY)
) + _BODY


async def _client(port: int, streams: trio.MemoryReceiveChannel[int], done: list[int]) -> None:
    """Run streams back to back on one keep-alive connection, reading each to its end."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async for _ in streams:
        await stream.send_all(_REQUEST)
        seen = b""
        while not seen.endswith(b"\r\n0\r\n\r\n"):
            part = await stream.receive_some(65536)
            if not part:
                raise RuntimeError(f"the gateway closed the connection: {seen[-300:]!r}")
            seen += part
        if b"[DONE]" not in seen or b" 200 " not in seen[:20]:
            raise RuntimeError(f"unexpected answer: {seen[:300]!r}")
        done.append(1)
    await stream.aclose()


async def _run_streams(port: int, count: int, concurrency: int) -> float:
    send, receive = trio.open_memory_channel[int](count)
    for index in range(count):
        send.send_nowait(index)
    send.close()
    done: list[int] = []
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_client, port, receive.clone(), done)
    return time.monotonic() - started


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of the process, or of one of its threads (the event loop's is `pid`)."""
    where = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(where).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_gateway(
    args: argparse.Namespace, config: Path, port: int, log: IO[str]
) -> subprocess.Popen[bytes]:
    serve, env = serve_command(config, port, MASTER_KEY)
    if args.callgrind:
        wrapper = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={args.callgrind}", str(ROOT / ".venv/bin/python"),
        ]  # fmt: skip
    else:
        wrapper = ["nice", "-n", str(args.nice), "taskset", "-c", args.gateway_core]
    return subprocess.Popen([*wrapper, *serve], env=env, stdout=log, stderr=subprocess.STDOUT)


async def _count_instructions(args: argparse.Namespace, port: int, pid: int) -> None:
    """Instructions per stream, counted by callgrind over `--streams` streams: steady where
    CPU time moves with whatever else the machine runs. Under callgrind the gateway is
    some 50 times slower, so `--pace` must be long enough (0.02 s) for the chunks still
    to arrive one at a time."""
    await trio.to_thread.run_sync(_callgrind_control, "-i", "on", pid)
    await _run_streams(port, args.streams, args.concurrency)
    await trio.to_thread.run_sync(_callgrind_control, "-i", "off", pid)
    await trio.to_thread.run_sync(_callgrind_control, "-d", pid)
    total = 0
    for dump in Path(args.callgrind).parent.glob(Path(args.callgrind).name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    print(
        f"{args.streams} paced streams of {CHUNKS} chunks (pace {args.pace} s): "
        f"{total / args.streams / 1e6:.2f} M instructions per stream",
        flush=True,
    )


def _callgrind_control(*command: str | int) -> None:
    argv = ["callgrind_control", *map(str, command)]
    subprocess.run(argv, check=True, capture_output=True)


def _start_profiler(path: str, pid: int) -> subprocess.Popen[bytes]:
    argv = ["py-spy", "record", "-r", "500", "-f", "raw", "-o", path, "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _start_upstream(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    argv = [sys.executable, __file__, "--upstream", "--pace", str(args.pace)]
    upstream = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert upstream.stdout is not None
    return upstream, int(upstream.stdout.readline())


async def main(args: argparse.Namespace) -> None:
    upstream, upstream_port = _start_upstream(args)
    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "config.yaml"
        deployment = {
            "model_name": "bench",
            "litellm_params": {
                "model": "openai/gpt-4o",
                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "sk-upstream",
            },
        }
        settings = {"master_key": MASTER_KEY}
        config.write_text(
            yaml.safe_dump({"model_list": [deployment], "general_settings": settings})
        )
        port = free_port()
        log = (Path(workdir) / "gateway.log").open("w")
        gateway = _start_gateway(args, config, port, log)
        try:
            await wait_listening(port, 600)
            await _run_streams(port, args.warmup, args.concurrency)
            profiler = None
            if args.profile:
                profiler = _start_profiler(args.profile, gateway.pid)
                await trio.sleep(1)
            if args.callgrind:
                await _count_instructions(args, port, gateway.pid)
                return
            for _ in range(args.rounds):
                before = _cpu_seconds(gateway.pid)
                loop_before = _cpu_seconds(gateway.pid, gateway.pid)
                elapsed = await _run_streams(port, args.streams, args.concurrency)
                cpu = _cpu_seconds(gateway.pid) - before
                loop = _cpu_seconds(gateway.pid, gateway.pid) - loop_before
                per_stream = cpu / args.streams * 1000
                print(
                    f"{args.streams} paced streams of {CHUNKS} chunks, {args.concurrency} at "
                    f"once: gateway CPU {per_stream:.3f} ms per stream "
                    f"({per_stream / CHUNKS * 1000:.1f} us per chunk; event loop thread "
                    f"{loop / args.streams * 1000:.3f} ms), "
                    f"{args.streams / elapsed:.0f} streams/s",
                    flush=True,
                )
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
            upstream.kill()
            upstream.wait()
            log.close()
            if args.show_log:
                print((Path(workdir) / "gateway.log").read_text()[-3000:])


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--gateway-core", default="1")
    parser.add_argument("--bench-core", default="0")
    parser.add_argument("--nice", type=int, default=-20 if os.geteuid() == 0 else 0)
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=float, default=PACE, help="seconds between chunks")
    parser.add_argument(
        "--callgrind", metavar="OUT", help="count instructions under callgrind, dumping to OUT"
    )
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the gateway here")
    parser.add_argument("--show-log", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _arguments()
    os.sched_setaffinity(0, {int(arguments.bench_core)})
    if arguments.nice:
        os.nice(arguments.nice)
    gc.disable()
    if arguments.upstream:
        trio.run(serve_upstream, arguments.pace)
    else:
        trio.run(main, arguments)
