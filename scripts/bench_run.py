"""scripts/bench: measure trigate (and optionally LiteLLM's proxy and Portkey's gateway).

One command starts the mock and the gateway(s), measures, stops everything and prints a
markdown report; every figure also goes to a JSON file, and latency against offered load to
a PNG. Scenarios: (a) non-stream throughput at fixed concurrency, (b) added latency at half
the maximum rate plus a latency/offered-load sweep, (c) streaming: added time to first byte,
relayed chunks/s, 1,000 held slow streams and the worker's RSS, (d) 1 versus 2 workers.
Asked for only: (i) CPU instructions per non-stream request, counted under valgrind's
callgrind, which the machine's other load does not move (a few minutes per gateway);
(p) per core against the peers (scripts/bench_percore.py): each system pinned to one CPU,
CPU time per request and req/s for non-stream chat, burst streams and paced streams, runs
interleaved; the default with --compare portkey. --check counts instructions per request
against the budget in scripts/bench-budget.json (scripts/bench_check.py).
With --otlp trigate traces every request to a local receiver that discards the spans, so
any scenario measures what tracing costs.

Tools, installed from Debian when missing (needs root): nginx with libnginx-mod-http-lua is
the mock (scripts/bench_mock.lua: bodies built once, then served by nginx; tens of thousands
of req/s on one core); wrk drives the closed-loop throughput runs; the bench's own epoll client
(scripts/bench_client.py) does the open-loop and streaming runs. --compare litellm installs
litellm[proxy] from PyPI into ~/.cache/trigate-bench/litellm-venv once; --compare portkey
installs @portkey-ai/gateway (pinned) from npm into ~/.cache/trigate-bench/portkey-<version>.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bench_check
import bench_client
import bench_measure as measure
import bench_report as report
from bench_client import tighten_timer_slack
from bench_percore import scenario_p
from bench_systems import (
    ROOT,
    Gateway,
    ensure_apt_packages,
    ensure_litellm,
    floor_server,
    mock_server,
    otlp_receiver,
    raise_fd_limit,
    tool_versions,
    write_gateway_config,
)

FULL_LEVELS = (1, 8, 32, 128)
QUICK_LEVELS = (1, 32)
FULL_SWEEP = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1)
QUICK_SWEEP = (0.5, 1.0)
STARTED = time.monotonic()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway worker processes for scenarios a-c (default 1)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds per measurement step (default 10, or 2 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of about 30-40 s: fewer levels and sweep points",
    )
    parser.add_argument(
        "--compare",
        action="append",
        choices=["litellm", "portkey"],
        default=[],
        help="also bench LiteLLM's proxy (installed into its own cached venv) or Portkey's "
        "gateway (from npm, into its own cached directory; scenario p only); repeatable",
    )
    parser.add_argument(
        "--scenarios",
        help="which of a, b, c, d, i, p, r to run (default abcd, or p with --compare "
        "portkey; b needs a)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="scenario p: interleaved rounds, every system and kind once a round (default 2)",
    )
    parser.add_argument(
        "--virtual-key",
        action="store_true",
        help="send requests with a virtual key that has rpm, tpm, parallel and budget limits",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share limits through this Redis (router_settings.redis_url)",
    )
    parser.add_argument(
        "--otlp",
        action="store_true",
        help="trace every request to a local OTLP/HTTP receiver that discards the spans",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-results",
        help="directory for the JSON, PNG and logs (default bench-results/)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="count instructions per request under callgrind and compare them with "
        "scripts/bench-budget.json; exits 1 when one is more than 3%% over (under a minute)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --check: write the counts measured as the new budget",
    )
    parser.add_argument(
        "--sinks",
        action="store_true",
        help="with --check: count with two logging callbacks on (generic_api and datadog, "
        "sent to the mock); reports their cost beside the budget, never fails",
    )
    parser.add_argument(
        "--trigate",
        type=Path,
        default=ROOT / ".venv" / "bin" / "trigate",
        help="the trigate executable to bench (default the project venv's)",
    )
    args = parser.parse_args(argv)
    if args.scenarios is None:
        args.scenarios = "p" if "portkey" in args.compare else "abcd"
    if set(args.scenarios) - set("abcdipr") or not args.scenarios:
        parser.error("--scenarios takes letters from abcdipr")
    if args.update and not args.check:
        parser.error("--update goes with --check")
    if args.sinks and (not args.check or args.update):
        parser.error("--sinks goes with --check, without --update")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.out = args.out.resolve()  # servers run in its subfolder, so paths must not be relative
    return args


def make_plan(args: argparse.Namespace) -> measure.Plan:
    """b needs a's maximum rate, so asking for b runs a too."""
    scenarios = "".join(sorted(set(args.scenarios) | ({"a"} if "b" in args.scenarios else set())))
    duration = args.duration or (2.0 if args.quick else 10.0)
    return measure.Plan(
        duration=duration,
        levels=QUICK_LEVELS if args.quick else FULL_LEVELS,
        sweep=QUICK_SWEEP if args.quick else FULL_SWEEP,
        scenarios=scenarios,
        workers=args.workers,
        virtual_key=args.virtual_key,
        redis=args.redis,
        percore_rounds=args.rounds,
    )


def bench_gateway(
    gateway: Gateway, mock: measure.Target, plan: measure.Plan, workdir: Path
) -> dict[str, Any]:
    """Every selected scenario against one gateway."""
    config = workdir / f"{gateway.name}.yaml"
    translated = set(plan.translated_models())
    write_gateway_config(config, mock.port, plan.upstream_models(), translated, plan.redis)
    result: dict[str, Any] = {"version": gateway.version(), "workers": plan.workers}
    if not set(plan.scenarios) & set("abcdir"):
        return result
    if set(plan.scenarios) & set("abcr"):
        log(f"{gateway.name}: starting with {plan.workers} worker(s)")
        with gateway.run(config, plan.workers, workdir, "abc") as server:
            target = measure.gateway_target(server, plan)
            measure.warm_up(target)
            if "a" in plan.scenarios:
                log(f"{gateway.name}: (a) concurrency levels {plan.levels}")
                result["a"] = measure.scenario_a(target, plan)
            if "b" in plan.scenarios:
                log(f"{gateway.name}: (b) open loop at half max and the sweep")
                result["b"] = measure.scenario_b(target, mock, result["a"]["max_rps"], plan)
                if gateway.name == "trigate" and "rate_rps" in result["b"]:
                    result["b"]["floor"] = floor(result["b"], plan, workdir)
            if "c" in plan.scenarios:
                log(f"{gateway.name}: (c) streaming")
                result["c"] = measure.scenario_c(server, mock, plan)
            if "r" in plan.scenarios:
                log(f"{gateway.name}: (r) the Responses API beside chat completions")
                result["r"] = measure.scenario_r(target, plan)
    if "d" in plan.scenarios:
        result["d"] = scaling(gateway, config, plan, workdir)
    if "i" in plan.scenarios:
        log(f"{gateway.name}: (i) instructions per request, under callgrind")
        with gateway.run_counted(config, workdir) as server:
            target = measure.gateway_target(server, plan)
            result["i"] = measure.instructions(server, target, plan, workdir, gateway.name)
    return result


def floor(b: dict[str, Any], plan: measure.Plan, workdir: Path) -> dict[str, Any]:
    """(b) again for hypercorn alone, at trigate's rate: the least a gateway on it adds."""
    log("hypercorn alone: (b) at trigate's half-max rate")
    with floor_server(workdir) as server:
        target = measure.Target(server.port, plan.upstream_models())
        bench_client.closed_loop(target.port, target.request("bench"), 8, 1.0)
        return measure.server_floor(target, b["direct"], b["rate_rps"], plan)


def scaling(gateway: Gateway, config: Path, plan: measure.Plan, workdir: Path) -> dict[str, Any]:
    """(d) 1 versus 2 workers, each on a fresh instance so neither inherits earlier load."""
    runs = {}
    for workers in (1, 2):
        log(f"{gateway.name}: (d) {workers} worker(s)")
        with gateway.run(config, workers, workdir, "d") as server:
            target = measure.gateway_target(server, plan)
            measure.warm_up(target)
            runs[workers] = measure.throughput(target, plan)
    one, two = runs[1]["rps"], runs[2]["rps"]
    return {
        "one_worker": runs[1],
        "two_workers": runs[2],
        "rps_1_worker": one,
        "rps_2_workers": two,
        "speedup": two / one if one else 0.0,
    }


def log(message: str) -> None:
    """Progress goes to stderr, with seconds since start, so stdout carries only the report."""
    print(f"bench: [{time.monotonic() - STARTED:5.1f}s] {message}", file=sys.stderr, flush=True)


def gateways(args: argparse.Namespace, otlp_endpoint: str | None) -> list[Gateway]:
    """The gateways scenarios a-d, i and r run against (Portkey takes part in p only)."""
    found = [Gateway("trigate", args.trigate, otlp_endpoint)]
    if "litellm" in args.compare:
        found.append(Gateway("litellm", ensure_litellm()))
    return found


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
    }


def render(data: dict[str, Any], rows: list[report.Row], png: Path | None) -> str:
    """The whole markdown report."""
    plan, systems, percore = data["plan"], data["systems"], data["percore"]
    parts = [
        f"# trigate bench {data['meta']['timestamp']}",
        f"{plan['workers']} worker(s), {plan['duration']:g} s per step, scenarios "
        f"{plan['scenarios']}, {data['meta']['machine']['cores']} cores"
        + (", every request traced over OTLP" if data["meta"]["traced"] else "")
        + "; "
        + ", ".join(f"{name} {result['version']}" for name, result in systems.items()),
    ]
    if data["ceilings"]:
        ceilings, ceilings_ok = report.ceilings_table(data["ceilings"], systems)
        parts += [
            "## Harness ceilings (the mock and load generators must outrun the gateways)",
            ceilings,
            "" if ceilings_ok else "**A ceiling is too low: the figures below are bounded by it.**",
        ]
    if rows:
        parts += ["## Results", report.results_table(rows, list(systems))]
    issues = report.problems(systems)
    if percore:
        parts += [
            "## Per core (scenario p)",
            f"Each system on CPU {percore['system_cpu']} alone; nginx, wrk and the bench on "
            f"CPU {percore['harness_cpu']}. {plan['percore_rounds']} interleaved rounds of "
            f"{plan['duration']:g} s per system and kind; mean (range). Streams: "
            f"{percore['chunks']} content chunks, paced ones {percore['paced_interval_ms']} ms "
            f"a frame. Load average before and after: "
            f"{percore['load_before'][0]:.2f}, {percore['load_after'][0]:.2f}.",
            report.percore_table(percore),
        ]
        issues += report.percore_problems(percore)
    if issues:
        parts += ["## Errors seen", "\n".join(f"- {issue}" for issue in issues)]
    parts.append(f"JSON: {data['json']}" + (f"  \nPlot: {png}" if png else ""))
    return "\n\n".join(part for part in parts if part) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.check:
        return bench_check.main(args.trigate, args.out, update=args.update, sinks=args.sinks)
    plan = make_plan(args)
    raise_fd_limit()
    tighten_timer_slack()
    installed = ensure_apt_packages(with_valgrind="i" in plan.scenarios)
    if installed:
        log(f"installed Debian packages {installed}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / f"bench-{stamp}-logs"
    workdir.mkdir()
    json_path, png_path = args.out / f"bench-{stamp}.json", args.out / f"bench-{stamp}.png"
    with ExitStack() as stack:
        mock_proc = stack.enter_context(mock_server(workdir))
        otlp = stack.enter_context(otlp_receiver(workdir)) if args.otlp else None
        systems = gateways(args, f"http://127.0.0.1:{otlp.port}" if otlp else None)
        mock = measure.mock_target(mock_proc, plan)
        ceilings = None
        if set(plan.scenarios) - {"p"}:
            log("measuring the mock's and the load generators' ceilings")
            ceilings = measure.ceilings(mock, plan)
        results = {gateway.name: bench_gateway(gateway, mock, plan, workdir) for gateway in systems}
        percore = None
        if "p" in plan.scenarios:
            config = workdir / "percore.yaml"
            write_gateway_config(
                config, mock.port, plan.upstream_models(), set(plan.translated_models())
            )
            litellm = next((g for g in systems if g.name == "litellm"), None)
            log("(p) per core: every system pinned to one CPU, runs interleaved")
            percore = scenario_p(
                args.compare, systems[0], litellm, config, mock_proc, mock, plan, workdir
            )
    rows = report.build_rows(results, plan.levels, plan.slow_streams)
    png = png_path if report.plot(results, png_path) else None
    data: dict[str, Any] = {
        "meta": {
            "timestamp": stamp,
            "machine": machine(),
            "tools": tool_versions(),
            "traced": args.otlp,
            "logs": str(workdir),
        },
        "plan": asdict(plan),
        "json": str(json_path),
        "png": str(png) if png else None,
        "ceilings": ceilings,
        "systems": results,
        "percore": percore,
        "rows": [asdict(row) for row in rows],
    }
    markdown = render(data, rows, png)
    data["markdown"] = markdown
    measure.write_json(json_path, data)
    sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
