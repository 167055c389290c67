"""The measurements: wrk runs, open-loop runs, and the scenarios built from them.

wrk (closed loop, C, cheap per request) finds maximum throughput at fixed concurrency and
the mock's ceilings; bench_client (open loop, reads every byte) measures latency at a fixed
offered rate, time to first byte, relayed stream frames (each one counted) and the held
slow streams.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bench_client
from bench_systems import (
    MASTER_KEY,
    SCRIPTS,
    Server,
    group_pids,
    limited_key,
    rss_mb,
    worker_pids,
)

Figures = dict[str, Any]  # one measurement's figures, as they go into the JSON
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}
WRK_SCRIPT = SCRIPTS / "bench_wrk.lua"


@dataclass(frozen=True)
class Plan:
    """Every knob of one bench run, derived from the command line."""

    duration: float
    levels: tuple[int, ...]
    sweep: tuple[float, ...]
    scenarios: str
    workers: int
    # Requests carry a virtual key with every limit set, not the master key.
    virtual_key: bool = False
    redis: str | None = None
    fast_chunks: int = 2000
    fast_concurrency: int = 4
    short_chunks: int = 10
    slow_streams: int = 1000
    slow_chunks: int = 10
    slow_ramp_s: float = 1.0  # the streams open over this long, as clients would, not at once
    scaling_concurrency: int = 64
    # Scenario p: streams of this many content chunks, all in one upstream write ("burst")
    # or each flushed on its own this many ms after the last ("paced").
    percore_chunks: int = 21
    paced_interval_ms: int = 2
    percore_rounds: int = 2

    @property
    def slow_interval_ms(self) -> int:
        """Slow streams last a step (at least 3 s), so all of them are open at once."""
        return round(max(self.duration, 3.0) * 1000 / (stream_frames(self.slow_chunks) - 1))

    def upstream_models(self) -> dict[str, str]:
        """Gateway model name -> mock model name; the mock reads the stream shape from it."""
        return {
            "bench": "bench-model",
            "bench-short": f"mock-s{self.short_chunks}-i0",
            "bench-fast": f"mock-s{self.fast_chunks}-i0",
            "bench-slow": f"mock-s{self.slow_chunks}-i{self.slow_interval_ms}",
            "bench-burst": f"mock-s{self.percore_chunks}-i0",
            "bench-paced": f"mock-s{self.percore_chunks}-i{self.paced_interval_ms}",
            **self.translated_models(),
        }

    def translated_models(self) -> dict[str, str]:
        """Deployments that do not speak the Responses API (`model_info` says so): the
        gateway translates `/v1/responses` to chat completions for them, as for every
        provider but OpenAI's and Azure's."""
        return {
            "bench-translated": "bench-model",
            "bench-translated-short": f"mock-s{self.short_chunks}-i0",
        }


@dataclass(frozen=True)
class Target:
    """Where requests go: a gateway (by its model names) or the mock directly."""

    port: int
    models: dict[str, str]
    auth: str = MASTER_KEY
    # The API the requests speak: "chat" completions or the "responses" API.
    api: str = "chat"
    # More request headers (Portkey's gateway reads its route from them).
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        return PATHS[self.api]

    def body(self, model: str, *, stream: bool = False) -> bytes:
        payload: dict[str, object] = {"model": self.models[model]}
        if self.api == "responses":
            payload |= {"input": "hi", "store": False}
            if stream:
                payload["stream"] = True
        else:
            payload["messages"] = [{"role": "user", "content": "hi"}]
            if stream:
                payload |= {"stream": True, "stream_options": {"include_usage": True}}
        return json.dumps(payload, separators=(",", ":")).encode()

    def request(self, model: str, *, stream: bool = False, body: bytes | None = None) -> bytes:
        """The raw request: `body` if given, else the bench's own for `model`."""
        return bench_client.http_request(
            self.path,
            self.body(model, stream=stream) if body is None else body,
            self.auth,
            stream=stream,
            headers=self.headers,
        )


def stream_frames(chunks: int) -> int:
    """SSE frames in a mock stream of `chunks` content chunks, as the bench requests it
    (with usage): the chunks, the finish chunk, the usage chunk and [DONE]."""
    return chunks + 3


def gateway_target(server: Server, plan: Plan) -> Target:
    auth = limited_key(server.port) if plan.virtual_key else MASTER_KEY
    return Target(server.port, {name: name for name in plan.upstream_models()}, auth)


def mock_target(server: Server, plan: Plan) -> Target:
    return Target(server.port, plan.upstream_models())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of unsorted values; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values_ms: list[float]) -> Figures:
    """The latency figures every report row uses."""
    return {
        "p50_ms": percentile(values_ms, 50),
        "p90_ms": percentile(values_ms, 90),
        "p99_ms": percentile(values_ms, 99),
        "max_ms": max(values_ms, default=0.0),
    }


def wrk(
    target: Target,
    model: str,
    concurrency: int,
    duration: float,
    *,
    stream: bool = False,
    threads: int = 1,
    body: bytes | None = None,
) -> Figures:
    """One closed-loop wrk run: successful req/s, latency percentiles, errors. Every
    request carries `body` if given (a long prompt), else the bench's own for `model`."""
    env = {
        **os.environ,
        "BENCH_BODY": (target.body(model, stream=stream) if body is None else body).decode(),
        "BENCH_AUTH": f"Bearer {target.auth}",
        "BENCH_HEADERS": "".join(f"{name}: {value}\n" for name, value in target.headers),
    }
    argv = [
        "wrk",
        "-t",
        str(min(threads, concurrency)),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{target.port}{target.path}",
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    settle(target, model, stream=stream, body=body)
    line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return {
        "concurrency": concurrency,
        "requests": raw["requests"],
        "rps": (raw["requests"] - raw["status_errors"]) / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
    }


def settle(target: Target, model: str, *, stream: bool = False, body: bytes | None = None) -> None:
    """wrk stops with requests still in flight and the server keeps working on them; one more
    request (the run's own kind), waited for, lets that backlog drain before the next step
    starts."""
    request = target.request(model, stream=stream, body=body)
    bench_client.closed_loop(target.port, request, 1, 0.001)


def _errors(outcomes: list[bench_client.Outcome]) -> Figures:
    """How many failed, and why: the figures of a run with errors are suspect."""
    kinds = Counter(o.error or f"HTTP {o.status}" for o in outcomes if not o.ok)
    return {"errors": sum(kinds.values()), "error_kinds": dict(kinds)}


def open_loop(target: Target, model: str, rate: float, duration: float) -> Figures:
    """One open-loop run at a fixed offered rate; latency counts from each request's schedule."""
    run = bench_client.open_loop(target.port, target.request(model), rate, duration)
    ok = [o for o in run.outcomes if o.ok]
    figures = {
        "offered_rps": rate,
        "achieved_rps": len(ok) / run.elapsed if run.elapsed else 0.0,
        "requests": len(run.outcomes),
        **_errors(run.outcomes),
        "peak_connections": run.peak_conns,
        "send_lag_p99_ms": percentile([(o.sent - o.scheduled) * 1000 for o in ok], 99),
        **spread([(o.done - o.scheduled) * 1000 for o in ok]),
    }
    overheads = [o.overhead_ms for o in ok if o.overhead_ms is not None]
    if overheads:
        figures["reported_overhead_p50_ms"] = percentile(overheads, 50)
        figures["reported_overhead_p99_ms"] = percentile(overheads, 99)
    return figures


def fast_streams(target: Target, plan: Plan, workers: int, seconds: float) -> Figures:
    """Relayed SSE frames per second on long unpaced streams, every frame counted.

    The bench's own client reads them rather than wrk, which would count a stream that a
    gateway cut short (LiteLLM does on repeated chunks) as a success.
    """
    request = target.request("bench-fast", stream=True)
    run = bench_client.closed_loop(
        target.port, request, plan.fast_concurrency, seconds, keep_body=True
    )
    ok = [o for o in run.outcomes if o.ok]
    chunks = sum(o.frames for o in ok) / run.elapsed
    return {
        "streams": len(ok),
        **_errors(run.outcomes),
        "frames_expected": plan.fast_chunks + 3,
        "frames_wrong": sum(o.frames != plan.fast_chunks + 3 for o in ok),
        "chunks_per_s": chunks,
        "chunks_per_s_per_worker": chunks / workers,
    }


def ceilings(mock: Target, plan: Plan) -> Figures:
    """What the mock and the load generators can do, measured directly against the mock.

    These are steady at once, so no step here runs longer than 5 s.
    """
    seconds = min(plan.duration, 5.0)
    plain = wrk(mock, "bench", 64, seconds, threads=2)
    fast = wrk(mock, "bench-fast", plan.fast_concurrency, seconds, stream=True, threads=2)
    client = bench_client.closed_loop(mock.port, mock.request("bench"), 64, seconds)
    return {
        "mock_wrk_rps": plain["rps"],
        "mock_wrk_p99_ms": plain["p99_ms"],
        "mock_stream_chunks_per_s": fast["rps"] * (plan.fast_chunks + 3),
        "client_open_loop_rps": sum(o.ok for o in client.outcomes) / client.elapsed,
        "client_stream_chunks_per_s": fast_streams(mock, plan, 1, seconds)["chunks_per_s"],
    }


def scenario_a(gateway: Target, plan: Plan) -> Figures:
    """(a) Non-stream chat at fixed concurrency levels."""
    levels = [wrk(gateway, "bench", c, plan.duration) for c in plan.levels]
    return {"levels": levels, "max_rps": max(level["rps"] for level in levels)}


def scenario_b(gateway: Target, mock: Target, max_rps: float, plan: Plan) -> Figures:
    """(b) Added latency at half the gateway's maximum rate, plus the latency/load sweep."""
    if max_rps <= 0:
        return {"skipped": "no successful request in (a)"}
    rate = max_rps / 2
    through = open_loop(gateway, "bench", rate, plan.duration)
    direct = open_loop(mock, "bench", rate, plan.duration)
    sweep = [
        through
        if fraction == 0.5
        else open_loop(gateway, "bench", fraction * max_rps, plan.duration)
        for fraction in plan.sweep
    ]
    return {
        "rate_rps": rate,
        "gateway": through,
        "direct": direct,
        "added_p50_ms": through["p50_ms"] - direct["p50_ms"],
        "added_p99_ms": through["p99_ms"] - direct["p99_ms"],
        "sweep": sweep,
    }


def server_floor(floor: Target, direct: Figures, rate: float, plan: Plan) -> Figures:
    """hypercorn alone (no gateway, no upstream call) at the gateway's half-max rate: what
    the server trigate runs on adds by itself, for scenario (b)'s added latency."""
    run = open_loop(floor, "bench", rate, plan.duration)
    return {
        **run,
        "added_p50_ms": run["p50_ms"] - direct["p50_ms"],
        "added_p99_ms": run["p99_ms"] - direct["p99_ms"],
    }


def ttfb(target: Target, plan: Plan) -> Figures:
    """Time from sending a short stream request to its first body byte, one at a time, so no
    request waits behind another."""
    request = target.request("bench-short", stream=True)
    run = bench_client.closed_loop(target.port, request, 1, plan.duration, keep_body=True)
    ok = [o for o in run.outcomes if o.ok]
    return {
        "requests": len(run.outcomes),
        **_errors(run.outcomes),
        "frames_expected": plan.short_chunks + 3,
        "frames_wrong": sum(o.frames != plan.short_chunks + 3 for o in ok),
        **spread([(o.first_byte - o.sent) * 1000 for o in ok]),
    }


class _RssSampler(threading.Thread):
    """Samples the workers' RSS while the streams are held (the client loop is single-threaded)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {pid: rss_mb(pid) for pid in pids}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_mb(pid))


def slow_streams(server: Server, plan: Plan) -> Figures:
    """Many concurrent slow streams: their latency and the serving workers' peak RSS."""
    target = gateway_target(server, plan)
    pids = worker_pids(server)
    idle = {pid: rss_mb(pid) for pid in pids}
    sampler = _RssSampler(pids)
    sampler.start()
    ideal_s = (stream_frames(plan.slow_chunks) - 1) * plan.slow_interval_ms / 1000
    try:
        run = bench_client.open_loop(
            target.port,
            target.request("bench-slow", stream=True),
            plan.slow_streams / plan.slow_ramp_s,
            plan.slow_ramp_s,
            max_conns=plan.slow_streams + 16,
            timeout=ideal_s + 60,
            keep_body=True,
        )
    finally:
        sampler.stopping.set()
        sampler.join()
    ok = [o for o in run.outcomes if o.ok]
    totals = spread([(o.done - o.scheduled) * 1000 for o in ok])
    firsts = spread([(o.first_byte - o.scheduled) * 1000 for o in ok])
    return {
        "streams": plan.slow_streams,
        "completed": len(ok),
        **_errors(run.outcomes),
        "frames_wrong": sum(o.frames != stream_frames(plan.slow_chunks) for o in ok),
        "peak_concurrent": run.peak_inflight,
        "ideal_ms": ideal_s * 1000,
        "total_p50_ms": totals["p50_ms"],
        "total_p99_ms": totals["p99_ms"],
        "total_max_ms": totals["max_ms"],
        "ttfb_p50_ms": firsts["p50_ms"],
        "ttfb_p99_ms": firsts["p99_ms"],
        "workers": len(pids),
        "idle_rss_mb": max(idle.values(), default=0.0),
        "peak_rss_mb": max(sampler.peak.values(), default=0.0),
    }


def scenario_c(server: Server, mock: Target, plan: Plan) -> Figures:
    """(c) Streaming: added time to first byte, relay rate, held slow streams."""
    gateway = gateway_target(server, plan)
    through = ttfb(gateway, plan)
    direct = ttfb(mock, plan)
    return {
        "ttfb_gateway": through,
        "ttfb_direct": direct,
        "added_ttfb_p50_ms": through["p50_ms"] - direct["p50_ms"],
        "added_ttfb_p99_ms": through["p99_ms"] - direct["p99_ms"],
        "fast": fast_streams(gateway, plan, plan.workers, plan.duration),
        "slow": slow_streams(server, plan),
    }


RESPONSES_CONCURRENCY = 32
RESPONSES_ROUNDS = 2


def scenario_r(gateway: Target, plan: Plan) -> Figures:
    """(r) The Responses API translated to chat completions at the mock, beside chat
    completions on the same deployment: non-stream req/s (wrk) and short streams/s (the
    bench's client, every stream read to its end). Runs alternate, chat then responses,
    so that drift over the run touches both alike."""
    responses = replace(gateway, api="responses")
    figures: dict[str, list[float]] = {key: [] for key in ("chat", "responses")}
    streams: dict[str, list[float]] = {key: [] for key in ("chat", "responses")}
    for _ in range(RESPONSES_ROUNDS):
        for name, target in (("chat", gateway), ("responses", responses)):
            run = wrk(target, "bench-translated", RESPONSES_CONCURRENCY, plan.duration)
            figures[name].append(run["rps"])
            streams[name].append(_streams_per_s(target, plan))
    result: Figures = {"concurrency": RESPONSES_CONCURRENCY}
    for name in ("chat", "responses"):
        result[f"{name}_rps"] = sum(figures[name]) / RESPONSES_ROUNDS
        result[f"{name}_streams_per_s"] = sum(streams[name]) / RESPONSES_ROUNDS
    result["rps_ratio"] = result["responses_rps"] / max(result["chat_rps"], 1e-9)
    result["streams_ratio"] = result["responses_streams_per_s"] / max(
        result["chat_streams_per_s"], 1e-9
    )
    return result


def _streams_per_s(target: Target, plan: Plan) -> float:
    """Short streams (plan.short_chunks chunks) completed per second."""
    request = target.request("bench-translated-short", stream=True)
    run = bench_client.closed_loop(target.port, request, RESPONSES_CONCURRENCY, plan.duration)
    return sum(o.ok for o in run.outcomes) / run.elapsed


def throughput(gateway: Target, plan: Plan) -> Figures:
    """(d) One scaling point: non-stream req/s at the scaling concurrency."""
    return wrk(gateway, "bench", plan.scaling_concurrency, plan.duration)


def warm_up(gateway: Target) -> None:
    """First requests pay for imports, connection pools and caches; keep them out of figures.

    The bench's own client waits for every warm-up request to finish: a stream that wrk
    abandons keeps LiteLLM busy for seconds after wrk has gone, starving the next step.
    """
    bench_client.closed_loop(gateway.port, gateway.request("bench"), 8, 1.0)
    bench_client.closed_loop(gateway.port, gateway.request("bench-fast", stream=True), 2, 0.1)


COUNTED_CONCURRENCY = 4


def instructions(server: Server, target: Target, plan: Plan, workdir: Path, name: str) -> Figures:
    """(i) CPU instructions per non-stream request, counted by callgrind in the gateway's
    processes: unlike wall-clock figures, the count does not move with whatever else the
    machine is doing. User space only; the kernel's share of each request is not in it.
    Every request sent is waited for, so the count covers exactly the requests counted."""
    request = target.request("bench")
    # Under callgrind a request takes some 50 times longer: a long warm-up and count.
    bench_client.closed_loop(target.port, request, COUNTED_CONCURRENCY, plan.duration / 2)
    _callgrind(server, "-i", "on")
    run = bench_client.closed_loop(target.port, request, COUNTED_CONCURRENCY, plan.duration * 3)
    _callgrind(server, "-i", "off")
    _callgrind(server, "-d")
    total = sum(_callgrind_total(path) for path in workdir.glob(f"callgrind-{name}.*"))
    ok = sum(outcome.ok for outcome in run.outcomes)
    return {
        "requests": ok,
        **_errors(run.outcomes),
        "instructions": total,
        "instructions_per_request_m": total / ok / 1e6 if ok else 0.0,
    }


def _callgrind(server: Server, *command: str) -> None:
    for pid in group_pids(server):
        subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True)


def _callgrind_total(path: Path) -> int:
    """The instructions a dump counted (its `totals:` line; 0 for a dump of nothing)."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
