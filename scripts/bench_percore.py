"""Scenario p: per core, against the peers a user would pick instead.

Each system serves on one pinned CPU (`taskset -c 1`); nginx (the mock upstream), wrk and
this process share the other, so no system competes with its own load for a core. The
systems: trigate, Portkey's gateway and LiteLLM's proxy when compared, and hypercorn's Trio
worker alone answering as the mock does (the least anything served by hypercorn costs).
Three kinds of request: non-stream chat; a 21-chunk stream the mock writes at once, so a
gateway reads it in one go ("burst"); the same stream with each frame flushed on its own
2 ms after the last, as a model's tokens arrive ("paced"), which shows the cost per chunk
that a burst hides.

Two figures per run: CPU time per request (utime + stime of the system's processes and
their children, from /proc, over the run, divided by the requests served), which the
machine's other load moves least, and requests (or streams) per second. Every system is
started once and the runs are interleaved, round after round, so that drift in the machine's
load touches every system alike; the report gives the mean and the range over the rounds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_client
import bench_measure as measure
from bench_systems import (
    MASTER_KEY,
    PORTKEY_VERSION,
    UPSTREAM_KEY,
    Gateway,
    Server,
    cpu_seconds,
    ensure_portkey,
    floor_server,
    group_pids,
    portkey_server,
)

SYSTEM_CPU = "1"  # where each system under test runs
HARNESS_CPU = 0  # where nginx, wrk and this process run


@dataclass(frozen=True)
class Kind:
    """One kind of request the scenario sends."""

    name: str
    model: str
    stream: bool
    concurrency: int
    unit: str  # what one request is called in the report: "request" or "stream"


KINDS = (
    Kind("chat", "bench", stream=False, concurrency=32, unit="request"),
    Kind("burst stream", "bench-burst", stream=True, concurrency=32, unit="stream"),
    # Paced streams wait on the mock 2 ms a frame: 16 at once keep every system below a
    # full core, where chunks arrive one per read as they would from a model.
    Kind("paced stream", "bench-paced", stream=True, concurrency=16, unit="stream"),
)


@dataclass(frozen=True)
class System:
    """A system under test, started and pinned, with how to address it."""

    name: str
    version: str
    server: Server
    target: measure.Target


def check_cpus() -> None:
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        raise SystemExit("bench: scenario p pins systems to CPU 1 and the harness to CPU 0")


@contextmanager
def harness_pinned(mock: Server) -> Iterator[None]:
    """This process (so wrk, which it starts) and nginx on HARNESS_CPU for the scenario."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {HARNESS_CPU})
    os.sched_setaffinity(mock.pid, {HARNESS_CPU})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)
        os.sched_setaffinity(mock.pid, everywhere)


@contextmanager
def started(
    compare: list[str],
    trigate: Gateway,
    litellm: Gateway | None,
    config: Path,
    mock: measure.Target,
    workdir: Path,
) -> Iterator[list[System]]:
    """Every system of the scenario serving on SYSTEM_CPU, stopped on exit."""
    with ExitStack() as stack:
        systems = []
        server = stack.enter_context(trigate.run(config, 1, workdir, "p", SYSTEM_CPU))
        models = {name: name for name in mock.models}
        systems.append(
            System("trigate", trigate.version(), server, measure.Target(server.port, models))
        )
        if "portkey" in compare:
            server = stack.enter_context(portkey_server(ensure_portkey(), workdir, SYSTEM_CPU))
            route = (
                ("x-portkey-provider", "openai"),
                ("x-portkey-custom-host", f"http://127.0.0.1:{mock.port}/v1"),
            )
            target = measure.Target(server.port, mock.models, UPSTREAM_KEY, headers=route)
            systems.append(System("portkey", PORTKEY_VERSION, server, target))
        if litellm is not None:
            server = stack.enter_context(litellm.run(config, 1, workdir, "p", SYSTEM_CPU))
            systems.append(
                System("litellm", litellm.version(), server, measure.Target(server.port, models))
            )
        server = stack.enter_context(floor_server(workdir, SYSTEM_CPU))
        systems.append(
            System(
                "hypercorn",
                hypercorn_version(),
                server,
                measure.Target(server.port, mock.models, MASTER_KEY),
            )
        )
        yield systems


def hypercorn_version() -> str:
    from importlib.metadata import version

    return f"hypercorn {version('hypercorn')}"


def answers(system: System, plan: measure.Plan) -> dict[str, Any]:
    """One request of each kind, read whole: a system that answers wrongly (a stream cut
    short, an error) is reported as such, not measured as fast."""
    found: dict[str, Any] = {}
    for kind in KINDS:
        request = system.target.request(kind.model, stream=kind.stream)
        run = bench_client.closed_loop(system.target.port, request, 1, 0.2, keep_body=True)
        outcome = run.outcomes[0]
        expected = measure.stream_frames(plan.percore_chunks) if kind.stream else 0
        found[kind.name] = {
            "ok": outcome.ok,
            "status": outcome.status,
            "error": outcome.error,
            "frames": outcome.frames,
            "frames_expected": expected,
        }
    return found


def warm_up(system: System) -> None:
    """Imports, pools, caches and JITs settle before anything is measured."""
    for kind in KINDS:
        request = system.target.request(kind.model, stream=kind.stream)
        bench_client.closed_loop(system.target.port, request, 8, 1.0)


def one_run(system: System, kind: Kind, seconds: float) -> dict[str, Any]:
    """One wrk run against one system: its CPU time over the run, per request served."""
    pids = group_pids(system.server)
    before = cpu_seconds(pids)
    started_at = time.monotonic()
    run = measure.wrk(system.target, kind.model, kind.concurrency, seconds, stream=kind.stream)
    wall = time.monotonic() - started_at
    cpu = cpu_seconds(group_pids(system.server)) - before
    served = run["requests"] + 1  # and the one that settle() sends after wrk
    return {
        "requests": run["requests"],
        "errors": run["errors"],
        "rps": run["rps"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_ms_per_request": cpu * 1000 / served if served else 0.0,
        # What one core would serve if nothing else ran on it: 1 / CPU time per request.
        "per_cpu_second": served / cpu if cpu else 0.0,
        "core_busy": cpu / wall if wall else 0.0,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and range over the rounds of the figures the report shows."""
    figures: dict[str, Any] = {"rounds": runs, "errors": sum(run["errors"] for run in runs)}
    for key in ("cpu_ms_per_request", "per_cpu_second", "rps", "core_busy"):
        values = [run[key] for run in runs]
        figures[key] = statistics.fmean(values)
        figures[f"{key}_min"] = min(values)
        figures[f"{key}_max"] = max(values)
    return figures


def scenario_p(
    compare: list[str],
    trigate: Gateway,
    litellm: Gateway | None,
    config: Path,
    mock_server: Server,
    mock: measure.Target,
    plan: measure.Plan,
    workdir: Path,
) -> dict[str, Any]:
    """(p) Every system, every kind, interleaved round after round."""
    check_cpus()
    with (
        harness_pinned(mock_server),
        started(compare, trigate, litellm, config, mock, workdir) as systems,
    ):
        result: dict[str, Any] = {
            "system_cpu": SYSTEM_CPU,
            "harness_cpu": HARNESS_CPU,
            "chunks": plan.percore_chunks,
            "paced_interval_ms": plan.paced_interval_ms,
            "kinds": {
                kind.name: {"concurrency": kind.concurrency, "unit": kind.unit} for kind in KINDS
            },
            "versions": {system.name: system.version for system in systems},
            "answers": {},
            "load_before": os.getloadavg(),
        }
        for system in systems:
            log(f"(p) {system.name}: checking answers and warming up")
            result["answers"][system.name] = answers(system, plan)
            warm_up(system)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            system.name: {kind.name: [] for kind in KINDS} for system in systems
        }
        for round_ in range(plan.percore_rounds):
            for kind in KINDS:
                for system in systems:
                    log(f"(p) round {round_ + 1}: {kind.name}, {system.name}")
                    runs[system.name][kind.name].append(one_run(system, kind, plan.duration))
        result["load_after"] = os.getloadavg()
        result["systems"] = {
            name: {kind: summarise(kind_runs) for kind, kind_runs in by_kind.items()}
            for name, by_kind in runs.items()
        }
        return result


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
