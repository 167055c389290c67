"""CPU time per request of trigate in two set-ups side by side, for the figures issues
state as a share of a proxied call's CPU:

    python scripts/bench_pair.py [hit|guard] [--rounds 4] [--duration 5] [--out PATH]

- `hit` (issue 22): a proxied chat request (model `bench`, the bench's tiny prompt) beside
  the same request answered from the local response cache (`litellm_settings.cache: true`,
  `cache_params: {type: local}`), warmed so that every measured request is a hit.
- `guard` (issue 23): a chat request whose prompt is `bench_callgrind.PROMPT` (some 2,000
  tokens, 12 KB, with an email and a phone number) proxied with no guardrail beside the
  same through the content filter (`content_filter_entry("all")`, `default_on`).

Measured as scenario p measures (scripts/bench_percore.py): each trigate serves on CPU 1
alone (one worker); nginx (the mock), wrk and this process run on CPU 0. Both gateways of
a pair start once and the runs alternate, A, B, A, B, so that drift in the machine's load
touches both alike. A run's figure is the CPU time of the gateway's processes over it
(user and system apart, from /proc), divided by the requests served. CPU time, not
wall-clock: the machine's other load moves it least. Before measuring, probes check that
each set-up does what it says; after, the gateway's own counters (/metrics) must show that
every measured request was a hit, or met the filter.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_client
import bench_measure as measure
import yaml
from bench_callgrind import PROMPT, content_filter_entry
from bench_percore import HARNESS_CPU, SYSTEM_CPU, check_cpus, harness_pinned
from bench_systems import (
    MASTER_KEY,
    ROOT,
    Gateway,
    Server,
    cpu_times,
    ensure_apt_packages,
    group_pids,
    mock_server,
    raise_fd_limit,
    write_gateway_config,
)

MODEL = "bench"
UPSTREAM_MODELS = {MODEL: "bench-model"}
CACHE_HEADER = "x-trigate-cache"
APPLIED_HEADER = "x-litellm-applied-guardrails"
# A keyword the content filter blocks (`content_filter_entry`): the probe that it ran.
BLOCKED_WORD = "confidential"
FIGURES = ("cpu_ms_per_request", "user_ms_per_request", "system_ms_per_request", "rps")


def chat_body(prompt: str) -> bytes:
    """A non-stream chat request to the bench's model with `prompt` as its user message."""
    payload = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SetUp:
    """One trigate of a pair: its name in the report and what its config adds."""

    name: str
    cache: dict[str, Any] | None = None
    guardrails: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Load:
    """What each run sends: wrk's connections, for this long, this many rounds."""

    rounds: int
    duration: float
    concurrency: int


@dataclass(frozen=True)
class Probe:
    """A request's status and response headers (names lowered)."""

    status: int
    headers: dict[str, str]


# What a pair checks of its two gateways before measuring: the problems found.
Check = Callable[[measure.Target, measure.Target], list[str]]


@dataclass(frozen=True)
class Pair:
    """Two set-ups measured against each other: `base` (the proxied call) and `other`."""

    name: str
    issue: str
    base: SetUp
    other: SetUp
    body: bytes
    check: Check
    # The Prometheus counter (its name, then label substrings) that counts `other`'s
    # measured requests, and one that must not move while they are measured (() for none).
    tally: tuple[str, ...]
    must_not_move: tuple[str, ...] = ()


def probe(target: measure.Target, body: bytes) -> Probe:
    """One request, read whole, with the bench's master key."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        headers = {"authorization": f"Bearer {target.auth}", "content-type": "application/json"}
        conn.request("POST", target.path, body, headers)
        response = conn.getresponse()
        response.read()
        return Probe(response.status, {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


def check_hit(proxied: measure.Target, cached: measure.Target) -> list[str]:
    """The proxied gateway answers without a cache; the cached one answers a repeat from it."""
    body = chat_body("hi")
    problems = []
    plain = probe(proxied, body)
    if plain.status != 200 or CACHE_HEADER in plain.headers:
        problems.append(f"proxied: {plain}")
    probe(cached, body)  # the miss that fills the cache
    hit = probe(cached, body)
    if hit.status != 200 or hit.headers.get(CACHE_HEADER) != "hit":
        problems.append(f"cache hit: a repeat answered {hit}")
    return problems


def check_guard(plain: measure.Target, guarded: measure.Target) -> list[str]:
    """Both answer the prompt; only the guarded one names the filter, and refuses the prompt
    with a blocked keyword in it (so the filter read the request, not just met it)."""
    problems = []
    body, blocked = chat_body(PROMPT), chat_body(f"{PROMPT} {BLOCKED_WORD}")
    unguarded = probe(plain, body)
    if unguarded.status != 200 or APPLIED_HEADER in unguarded.headers:
        problems.append(f"no guardrail: {unguarded}")
    if (status := probe(plain, blocked).status) != 200:
        problems.append(f"no guardrail: the blocked keyword answered {status}")
    filtered = probe(guarded, body)
    if filtered.status != 200 or filtered.headers.get(APPLIED_HEADER) != "cf":
        problems.append(f"content filter: {filtered}")
    if (status := probe(guarded, blocked).status) != 400:
        problems.append(f"content filter: the blocked keyword answered {status}, not 400")
    return problems


def guarded_entry() -> dict[str, Any]:
    """The content filter, on every request (`default_on`)."""
    entry = content_filter_entry("all")
    entry["litellm_params"]["default_on"] = True
    return entry


PAIRS = {
    "hit": Pair(
        "hit",
        "issue 22",
        SetUp("proxied"),
        SetUp("cache hit", cache={"type": "local"}),
        chat_body("hi"),
        check_hit,
        tally=("litellm_cache_hits_metric_total",),
        must_not_move=("litellm_cache_misses_metric_total",),
    ),
    "guard": Pair(
        "guard",
        "issue 23",
        SetUp("no guardrail"),
        SetUp("content filter", guardrails=(guarded_entry(),)),
        chat_body(PROMPT),
        check_guard,
        tally=("litellm_guardrail_requests_total{", 'guardrail_name="cf"', 'hook_type="pre_call"'),
    ),
}


def write_config(path: Path, mock_port: int, setup: SetUp) -> None:
    """The bench's gateway config for the one model, with the set-up's cache or guardrails."""
    write_gateway_config(path, mock_port, UPSTREAM_MODELS, set(), cache=setup.cache)
    if setup.guardrails:
        config = yaml.safe_load(path.read_text())
        config["guardrails"] = list(setup.guardrails)
        path.write_text(yaml.safe_dump(config, sort_keys=False))


def counter(target: measure.Target, parts: tuple[str, ...]) -> float:
    """A Prometheus counter as the gateway's /metrics shows it now (see `sample_sum`)."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"authorization": f"Bearer {MASTER_KEY}"})
        return sample_sum(conn.getresponse().read().decode(), parts)
    finally:
        conn.close()


def sample_sum(text: str, parts: tuple[str, ...]) -> float:
    """The sum of the samples in Prometheus' text format whose line starts with `parts[0]`
    (a name, with `{` to ask for labels) and holds every other part (a label)."""
    name, *labels = parts
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and all(label in line for label in labels)
    )


def warm_up(target: measure.Target, body: bytes) -> None:
    """Imports, pools, caches settle (and the cache holds the answer) before measuring."""
    bench_client.closed_loop(target.port, target.request(MODEL, body=body), 8, 1.0)


def one_run(
    server: Server, target: measure.Target, body: bytes, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One wrk run against one gateway: its CPU time over the run, per request served."""
    pids = group_pids(server)
    before, preempted_before, load = cpu_times(pids), preemptions(pids), os.getloadavg()[0]
    run = measure.wrk(target, MODEL, concurrency, seconds, body=body)
    pids = group_pids(server)
    used, preempted = cpu_times(pids) - before, preemptions(pids) - preempted_before
    served = run["requests"] + 1  # and the one that settle() sends after wrk
    return {
        "requests": run["requests"],
        # How disturbed the run was: the machine's load, and how often others took the
        # gateway's core from it (each time, its caches are others' when it resumes).
        "load_average": load,
        "preempted": preempted,
        "errors": run["errors"],
        "rps": run["rps"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "cpu_s": used.total,
        "user_s": used.user,
        "system_s": used.system,
        "cpu_ms_per_request": used.total * 1000 / served,
        "user_ms_per_request": used.user * 1000 / served,
        "system_ms_per_request": used.system * 1000 / served,
    }


def preemptions(pids: list[int]) -> int:
    """How often the processes' main threads were taken off their core while they could
    run (`nonvoluntary_ctxt_switches` in /proc/PID/status); a process gone is skipped."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and range over the rounds of the figures the report shows."""
    figures: dict[str, Any] = {"rounds": runs, "errors": sum(run["errors"] for run in runs)}
    for key in FIGURES:
        values = [run[key] for run in runs]
        figures[key] = statistics.fmean(values)
        figures[f"{key}_min"] = min(values)
        figures[f"{key}_max"] = max(values)
    return figures


def compare(base: list[float], other: list[float]) -> dict[str, float]:
    """`other`'s CPU per request against `base`'s: the ratio and the difference of the
    means, with their ranges and medians over the rounds (each round's two runs taken
    together). On a loaded machine a round's two runs share its load, and the median of
    the rounds' ratios is the figure a disturbed round moves least."""
    base_mean, other_mean = statistics.fmean(base), statistics.fmean(other)
    ratios = [o / b for b, o in zip(base, other, strict=True)]
    differences = [o - b for b, o in zip(base, other, strict=True)]
    return {
        "ratio": other_mean / base_mean if base_mean else 0.0,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_median": statistics.median(ratios),
        "difference_ms": other_mean - base_mean,
        "difference_ms_min": min(differences),
        "difference_ms_max": max(differences),
        "difference_ms_median": statistics.median(differences),
        "difference_fraction": (other_mean - base_mean) / base_mean if base_mean else 0.0,
    }


@contextmanager
def started(
    pair: Pair, gateway: Gateway, mock_port: int, workdir: Path
) -> Iterator[list[tuple[Server, measure.Target]]]:
    """Both gateways of a pair serving on SYSTEM_CPU, each in a directory of its own (its
    config, log and store), stopped on exit."""
    with ExitStack() as stack:
        serving = []
        for setup in (pair.base, pair.other):
            home = workdir / f"{pair.name}-{setup.name.replace(' ', '-')}"
            home.mkdir()
            config = home / "config.yaml"
            write_config(config, mock_port, setup)
            server = stack.enter_context(gateway.run(config, 1, home, pair.name, SYSTEM_CPU))
            serving.append((server, measure.Target(server.port, {MODEL: MODEL})))
        yield serving


def run_pair(
    pair: Pair, gateway: Gateway, mock_port: int, workdir: Path, load: Load
) -> dict[str, Any]:
    """Both set-ups started, checked and warmed, then measured in alternate runs."""
    with started(pair, gateway, mock_port, workdir) as serving:
        (_, base), (_, other) = serving
        problems = pair.check(base, other)
        if problems:
            raise SystemExit(f"bench_pair: {pair.name}: " + "; ".join(problems))
        for _, target in serving:
            warm_up(target, pair.body)
        before = counts(pair, other)
        runs = alternate(pair, serving, load)
        tally, moved = (after - was for after, was in zip(counts(pair, other), before, strict=True))
    served = sum(run["requests"] + 1 for run in runs[1])
    if tally < served or moved:
        raise SystemExit(
            f"bench_pair: {pair.name}: {pair.other.name} served {served} requests, but "
            f"{' '.join(pair.tally)} counted {tally:.0f} and {' '.join(pair.must_not_move)} "
            f"moved by {moved:.0f}"
        )
    return {
        "issue": pair.issue,
        "setups": {pair.base.name: summarise(runs[0]), pair.other.name: summarise(runs[1])},
        "compared": compare(
            [run["cpu_ms_per_request"] for run in runs[0]],
            [run["cpu_ms_per_request"] for run in runs[1]],
        ),
        # Beside the requests wrk saw answered: those the gateway finished after wrk left.
        "counted": {"served": served, "counter": " ".join(pair.tally), "tallied": tally},
    }


def counts(pair: Pair, target: measure.Target) -> tuple[float, float]:
    """The pair's tally and the counter that must not move (0 for none), as they stand."""
    still = counter(target, pair.must_not_move) if pair.must_not_move else 0.0
    return counter(target, pair.tally), still


def alternate(
    pair: Pair, serving: list[tuple[Server, measure.Target]], load: Load
) -> list[list[dict[str, Any]]]:
    """`load.rounds` rounds, each a run of the base set-up then one of the other."""
    runs: list[list[dict[str, Any]]] = [[] for _ in serving]
    for round_ in range(load.rounds):
        for index, (setup, (server, target)) in enumerate(
            zip((pair.base, pair.other), serving, strict=True)
        ):
            log(f"{pair.name}, round {round_ + 1} of {load.rounds}: {setup.name}")
            run = one_run(server, target, pair.body, load.concurrency, load.duration)
            runs[index].append(run)
    return runs


def span(figures: dict[str, Any], key: str, digits: int) -> str:
    """A figure's mean and its range over the rounds."""
    mean, low, high = figures[key], figures[f"{key}_min"], figures[f"{key}_max"]
    return f"{mean:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"


# A pair's comparison under the table (the keys are `compare`'s).
COMPARED = (
    "- {name}: {other} ÷ {base}, CPU per request: {ratio:.3f} of the means (rounds "
    "{ratio_min:.3f} to {ratio_max:.3f}, median {ratio_median:.3f}); difference "
    "{difference_ms:+.3f} ms ({difference_ms_min:+.3f} to {difference_ms_max:+.3f}, median "
    "{difference_ms_median:+.3f}), {difference_fraction:+.1%} of {base}'s"
)


def render(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: each set-up's figures, then each pair's comparison."""
    lines = [
        "| pair | set-up | CPU-ms per request | user ms | system ms | req/s | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for setup, figures in result["setups"].items():
            lines.append(
                f"| {name} ({result['issue']}) | {setup} | "
                f"{span(figures, 'cpu_ms_per_request', 3)} | "
                f"{span(figures, 'user_ms_per_request', 3)} | "
                f"{span(figures, 'system_ms_per_request', 3)} | "
                f"{span(figures, 'rps', 0)} | {figures['errors']} |"
            )
    lines.append("")
    for name, result in results.items():
        base, other = result["setups"]
        lines.append(COMPARED.format(name=name, base=base, other=other, **result["compared"]))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_pair.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "pair", nargs="?", choices=[*PAIRS, "both"], default="both", help="(default both)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="runs of each set-up (default 4)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds a run (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--out", type=Path, help="JSON path (default /tmp/bench-pair-*.json)")
    parser.add_argument(
        "--trigate",
        type=Path,
        default=ROOT / ".venv" / "bin" / "trigate",
        help="the trigate executable to bench (default the project venv's)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check_cpus()
    raise_fd_limit()
    bench_client.tighten_timer_slack()
    ensure_apt_packages()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(tempfile.gettempdir()) / f"bench-pair-{stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-pair-{stamp}-"))
    log(f"logs in {workdir}")
    gateway = Gateway("trigate", args.trigate)
    load_before = os.getloadavg()
    with mock_server(workdir) as mock, harness_pinned(mock):
        load = Load(args.rounds, args.duration, args.concurrency)
        names = list(PAIRS) if args.pair == "both" else [args.pair]
        results = {name: run_pair(PAIRS[name], gateway, mock.port, workdir, load) for name in names}
    markdown = render(results)
    data = {
        "timestamp": stamp,
        "trigate": gateway.version(),
        "system_cpu": SYSTEM_CPU,
        "harness_cpu": HARNESS_CPU,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "pairs": results,
        "markdown": markdown,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(
        f"trigate {data['trigate']} on CPU {SYSTEM_CPU}, harness on CPU {HARNESS_CPU}; "
        f"{args.rounds} alternate rounds of {args.duration:g} s at c={args.concurrency}; "
        f"mean (range over the rounds). Load average before and after: "
        f"{load_before[0]:.2f}, {data['load_after'][0]:.2f}.\n"
    )
    print(markdown)
    print(f"JSON: {out}")
    return 0


def log(message: str) -> None:
    print(f"bench_pair: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
