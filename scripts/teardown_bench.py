"""Mass teardown: how soon a departing client's upstream connection is closed.

Issue 19's measure: with many streams open, clients leave, and what counts is
the moment each one's upstream sees its connection close. This script holds
`--streams` streams open through a real gateway process, each to a fake
upstream on a real socket that sends an SSE chunk every `--pace` seconds and
records (CLOCK_MONOTONIC, shared by every process) when its connection ends.
Then, first, `--singles` clients leave one at a time (a quiet departure each),
and the rest leave together (one loop closing their sockets). A departure's
latency is from its client's close to its upstream's end-of-file.

    .venv/bin/python scripts/teardown_bench.py [--streams 1000] [--singles 100]

The gateway runs pinned to core 1 (`taskset -c 1`), this process (the clients
and the upstream, each light and a process of its own) to core 0, all at
niceness -20 and under SCHED_FIFO (priority 10) when run as root: on a machine
shared with other work, niceness alone still let other processes take the
gateway's core for several milliseconds at a time, in the middle of a burst.
It prints single p50/p99 and mass p50/p99 in milliseconds, and the gateway's
CPU time per departing stream.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import signal
import statistics
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

MASTER_KEY = "sk-teardown-bench"
ROOT = Path(__file__).resolve().parent.parent
_FRAME = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
)
_CHUNK = b"%x\r\n%s\r\n" % (len(_FRAME), _FRAME)


class Upstream:
    """A fake OpenAI upstream: every chat stream sends a chunk every `pace` seconds until
    its client goes, and the moment its connection ends is kept by the stream's tag."""

    def __init__(self, pace: float) -> None:
        self.pace = pace
        self.closed_at: dict[str, float] = {}
        self.opened = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        read = await read_request(stream)
        if read is None:
            return
        body, _ = read
        tag = orjson.loads(body)["messages"][0]["content"]
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + _CHUNK
        )
        self.opened += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pace, stream)
            try:
                while await stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            self.closed_at[tag] = time.monotonic()
            # Let every other end-of-file seen with this one be timed before any unwinds.
            await trio.lowlevel.cancel_shielded_checkpoint()
            nursery.cancel_scope.cancel()

    async def _pace(self, stream: trio.SocketStream) -> None:
        try:
            while True:
                await trio.sleep(self.pace)
                await stream.send_all(_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Client:
    """One streaming client on a raw socket: it reads its stream until told to leave."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.left_at = 0.0
        self.stream: trio.SocketStream | None = None

    async def run(self, port: int, task_status: trio.TaskStatus[None]) -> None:
        body = orjson.dumps(
            {"model": "bench", "stream": True, "messages": [{"role": "user", "content": self.tag}]}
        )
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
            f"authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        self.stream = stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head + body)
        seen = b""
        while b"data:" not in seen:
            part = await stream.receive_some(65536)
            if not part:
                raise RuntimeError(f"stream {self.tag} ended early: {seen[:300]!r}")
            seen += part
        task_status.started()
        try:
            while await stream.receive_some(65536):
                pass
        except trio.ClosedResourceError:
            pass  # it left

    def leave(self) -> None:
        """Close the socket at once, as a client process that exits does."""
        assert self.stream is not None
        self.left_at = time.monotonic()
        self.stream.socket.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(name: str, latencies: list[float]) -> str:
    ms = [value * 1000 for value in latencies]
    return (
        f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms "
        f"p99={_percentile(ms, 0.99):.1f} ms max={max(ms):.1f} ms"
    )


class RemoteUpstream:
    """The upstream, run as a process of its own (this script with `--upstream`) so that
    the clients' work here never delays its noticing a close."""

    def __init__(self, args: argparse.Namespace) -> None:
        argv = [sys.executable, __file__, "--upstream", "--pace", str(args.pace)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.closed_at: dict[str, float] = {}
        self.opened = 0

    async def refresh(self) -> None:
        """Fetch what the upstream has seen so far."""
        self.opened, self.closed_at = await trio.to_thread.run_sync(self._ask)

    def _ask(self) -> tuple[int, dict[str, float]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"report\n")
        self.process.stdin.flush()
        seen = orjson.loads(self.process.stdout.readline())
        return seen["opened"], seen["closed_at"]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def serve_upstream(args: argparse.Namespace) -> None:
    """The `--upstream` process: prints its port, then answers each `report` line on
    stdin with what it has seen, as one JSON line."""
    upstream = Upstream(args.pace)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
    print(listeners[0].socket.getsockname()[1], flush=True)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, upstream.serve, listeners)
        pending = b""
        while part := await stdin.receive_some():
            pending += part
            while b"\n" in pending:
                _, _, pending = pending.partition(b"\n")
                report = {"opened": upstream.opened, "closed_at": upstream.closed_at}
                sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
                sys.stdout.buffer.flush()
        nursery.cancel_scope.cancel()


async def bench(
    args: argparse.Namespace, gateway_port: int, gateway_pid: int, upstream: RemoteUpstream
) -> None:
    await wait_listening(gateway_port, 60)
    clients = [Client(f"stream-{i}") for i in range(args.streams)]
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(50)

        async def open_one(client: Client) -> None:
            async with limiter:
                await nursery.start(client.run, gateway_port)

        async with trio.open_nursery() as opening:
            for client in clients:
                opening.start_soon(open_one, client)
        await upstream.refresh()
        print(f"{len(clients)} streams open; upstream saw {upstream.opened}", flush=True)
        await trio.sleep(1)
        singles, mass = clients[: args.singles], clients[args.singles :]
        for client in singles:
            client.leave()
            await trio.sleep(args.gap)
        profiler = _profile(args.profile, gateway_pid) if args.profile else None
        await trio.sleep(1)
        cpu_before = _cpu_seconds(gateway_pid)
        for client in mass:
            client.leave()
        with trio.move_on_after(10):
            while any(c.tag not in upstream.closed_at for c in mass):
                await trio.sleep(0.2)
                await upstream.refresh()
        await trio.sleep(1)
        cpu = _cpu_seconds(gateway_pid) - cpu_before
        leaving = (mass[-1].left_at - mass[0].left_at) * 1000
        print(
            f"mass departure: clients closed within {leaving:.1f} ms; gateway CPU "
            f"{cpu * 1000:.0f} ms in all, {cpu / len(mass) * 1e6:.0f} us per departing stream",
            flush=True,
        )
        nursery.cancel_scope.cancel()
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)
    for name, group in (("single", singles), ("mass", mass)):
        closed = upstream.closed_at
        latencies = [closed[c.tag] - c.left_at for c in group if c.tag in closed]
        missing = len(group) - len(latencies)
        print(_summary(name, latencies) + (f" ({missing} never closed)" if missing else ""))
        if args.verbose:
            closes = sorted(upstream.closed_at[c.tag] - group[0].left_at for c in group)
            shares = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)
            deciles = [closes[int(q * (len(closes) - 1))] * 1000 for q in shares]
            print(
                "  upstream closes after the first departure (ms, 0/10/25/50/75/90/100%):",
                " ".join(f"{d:.0f}" for d in deciles),
            )


async def main(args: argparse.Namespace) -> None:
    upstream = RemoteUpstream(args)
    upstream_port = upstream.port
    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": "bench",
                            "litellm_params": {
                                "model": "openai/gpt-4o",
                                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                                "api_key": "sk-upstream",
                            },
                        }
                    ],
                    "general_settings": {
                        "master_key": MASTER_KEY,
                        "max_upstream_connections": args.streams + 100,
                    },
                }
            )
        )
        gateway_port = free_port()
        log = (Path(workdir) / "gateway.log").open("w")
        gateway = _start_gateway(args, config, gateway_port, log)
        try:
            await bench(args, gateway_port, gateway.pid, upstream)
        finally:
            upstream.stop()
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
            log.close()
            if args.show_log:
                print((Path(workdir) / "gateway.log").read_text()[-3000:])


def _start_gateway(
    args: argparse.Namespace, config: Path, port: int, log: IO[str]
) -> subprocess.Popen[bytes]:
    realtime = ["chrt", "--fifo", str(args.realtime)] if args.realtime else []
    wrapper = [*realtime, "nice", "-n", str(args.nice), "taskset", "-c", args.gateway_core]
    serve, env = serve_command(config, port, MASTER_KEY)
    return subprocess.Popen([*wrapper, *serve], env=env, stdout=log, stderr=subprocess.STDOUT)


def _profile(path: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy, sampling the gateway from here on (collapsed stacks, for grepping)."""
    argv = ["py-spy", "record", "-r", "1000", "-f", "raw", "-o", path, "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between single departures")
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between upstream chunks")
    parser.add_argument("--gateway-core", default="1")
    parser.add_argument("--bench-core", default="0")
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the gateway here")
    parser.add_argument(
        "--nice",
        type=int,
        default=-20 if os.geteuid() == 0 else 0,
        help="niceness of the gateway and of this process: other work on a shared machine "
        "would otherwise be timed as theirs",
    )
    parser.add_argument(
        "--realtime",
        type=int,
        default=10 if os.geteuid() == 0 else 0,
        help="SCHED_FIFO priority of the gateway and of this process (0: none): on a machine "
        "other work shares, even niceness -20 leaves the gateway descheduled for milliseconds "
        "at a time, timed as its own delay",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--show-log", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _arguments()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(arguments.bench_core)})
    if arguments.nice:
        os.nice(arguments.nice)
    if arguments.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(arguments.realtime))
    gc.disable()  # a collection here would be timed as the gateway's delay
    trio.run(serve_upstream if arguments.upstream else main, arguments)
    sys.exit(0)
