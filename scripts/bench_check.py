"""scripts/bench --check: instructions per request against the budget committed in the repo.

A guard against slow erosion: every change that adds a little to the request path passes
review on its own, and the sum shows only in a bench nobody runs. Instruction counts
(valgrind's callgrind) hardly move with the machine's other load, so CI can compare them
with a fixed budget: `scripts/bench-budget.json`. A count more than `tolerance` (3%) over
its budget fails the check; `--update` writes the counts measured as the new budget, for a
deliberate increase (committed with the change, saying why) or to lock in a gain.

What is counted: two trigate workers under callgrind, side by side (instrumentation off
while they start and warm up), one for the master key's cases and one for the virtual
key's; sequential requests on one keep-alive connection to the nginx mock, in four
cases: chat completions non-stream and streamed (21 content chunks in one upstream read),
each with the master key and with a virtual key that has rpm, tpm, parallel-request limits
and a budget. What keeps the figures repeatable (within about 1% from run to run on the
same Python and libraries): trio's scheduler and `random` seeded and PYTHONHASHSEED fixed
(bench_counted.py), every case warmed up before any is counted, one request at a time, and
counting only between the spend ledger's timed writes (see `count`).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_client
from bench_measure import Target, stream_frames
from bench_systems import (
    SCRIPTS,
    SINKS,
    Gateway,
    Server,
    ensure_apt_packages,
    limited_key,
    mock_server,
    sink_environ,
    write_gateway_config,
)

BUDGET_PATH = SCRIPTS / "bench-budget.json"
TOLERANCE = 0.03
WARM_UP_REQUESTS = 30
WINDOWS = 8
RUN_SECONDS = 0.4
# A pass of the cyclic collector adds some 14% to a run (about 5.8 million instructions
# over its requests); runs of one case otherwise differ by 2% or less.
OUTLIER = 1.08
# Runs a spend write may overlap, and be left out, before the check gives up.
MAX_OVERLAPPED = 10 * WINDOWS
STREAM_CHUNKS = 21
# Model names the check's config defines, and what the mock makes of each.
UPSTREAM_MODELS = {"bench": "bench-model", "bench-burst": f"mock-s{STREAM_CHUNKS}-i0"}
STARTED = time.monotonic()
HOW_TO_UPDATE = (
    "Instructions per request (callgrind, trigate workers, sequential requests), checked "
    "by `scripts/bench --check`, which fails when a count exceeds its budget by more than "
    "`tolerance`. Rewrite with `scripts/bench --check --update`. A deliberate increase "
    "updates this file in the same commit and says why in the commit message; a gain is "
    "locked in the same way. Counts depend on the Python and library versions recorded "
    "under `measured_with`: re-measure when they change."
)


@dataclass(frozen=True)
class Case:
    """One counted kind of request."""

    name: str
    stream: bool
    virtual_key: bool
    # A response cache's hit (`local` or `redis`): the gateway runs with that cache, and
    # every counted request is answered from it (the warm-up's first one was its miss).
    cache: str | None = None

    def model(self) -> str:
        return "bench-burst" if self.stream else "bench"


CASES = (
    Case("chat, master key", stream=False, virtual_key=False),
    Case("chat stream, master key", stream=True, virtual_key=False),
    Case("chat, virtual key with limits and budget", stream=False, virtual_key=True),
    Case("chat stream, virtual key with limits and budget", stream=True, virtual_key=True),
    Case("chat, cache hit from local memory, master key", False, False, cache="local"),
    Case("chat, cache hit from Redis, master key", False, False, cache="redis"),
)
REDIS_URL = os.environ.get("TRIGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def cache_params(kind: str) -> dict[str, Any]:
    """The response cache a cache case's gateway runs with."""
    if kind == "local":
        return {"type": "local"}
    # Under callgrind a command takes some 50 times longer than it does: the default
    # 0.05 s timeout would make many of the counted hits misses.
    return {
        "type": "redis",
        "url": REDIS_URL,
        "namespace": f"trigate-bench-{os.getpid()}",
        "socket_timeout": 2.0,
    }


@dataclass(frozen=True)
class Verdict:
    """One case's count against its budget."""

    case: str
    measured: int
    budget: int | None
    tolerance: float

    @property
    def change(self) -> float | None:
        """Measured over budget, as a fraction (+0.05 is 5% more instructions)."""
        if not self.budget:
            return None
        return self.measured / self.budget - 1

    @property
    def passed(self) -> bool:
        """Within budget plus tolerance; a case with no budget yet fails, so that a new case
        cannot slip in unguarded."""
        return self.budget is not None and self.measured <= self.budget * (1 + self.tolerance)


def compare(measured: dict[str, int], budget: dict[str, Any]) -> list[Verdict]:
    """Every measured case against the budget file's figure for it, within the case's own
    tolerance where the file gives one (`tolerances`), else the file's `tolerance`."""
    tolerance = float(budget.get("tolerance", TOLERANCE))
    own: dict[str, float] = budget.get("tolerances", {})
    limits: dict[str, int] = budget.get("instructions_per_request", {})
    return [
        Verdict(case, count, limits.get(case), float(own.get(case, tolerance)))
        for case, count in measured.items()
    ]


def render(verdicts: list[Verdict]) -> str:
    """The markdown table the check prints, with its outcome underneath."""
    lines = [
        "| case | instructions per request | budget | change | verdict |",
        "|---|---|---|---|---|",
    ]
    for verdict in verdicts:
        change = verdict.change
        lines.append(
            f"| {verdict.case} | {verdict.measured:,} | "
            + (f"{verdict.budget:,}" if verdict.budget else "none")
            + " | "
            + ("-" if change is None else f"{change:+.1%}")
            + f" | {verdict_word(verdict)} |"
        )
    failed = [v for v in verdicts if not v.passed]
    if failed:
        lines.append(
            f"\n{len(failed)} case(s) without a budget or over it by more than their "
            "tolerance. If the increase is deliberate, run `scripts/bench --check "
            "--update` and commit the new budget with the change, saying why."
        )
    else:
        tolerances = sorted({f"{v.tolerance:.0%}" for v in verdicts})
        lines.append(f"\nEvery case within its tolerance ({', '.join(tolerances)}) of its budget.")
        gains = [v for v in verdicts if (v.change or 0.0) < -v.tolerance]
        if gains:
            lines.append(
                "Some counts are well under budget: `scripts/bench --check --update` locks "
                "the gain in."
            )
    return "\n".join(lines) + "\n"


def verdict_word(verdict: Verdict) -> str:
    if verdict.budget is None:
        return "NO BUDGET"
    return "ok" if verdict.passed else "OVER BUDGET"


def updated_budget(
    measured: dict[str, int], previous: dict[str, Any], versions: dict[str, str]
) -> dict[str, Any]:
    """The budget file rewritten with the counts measured now."""
    kept = {key: previous[key] for key in ("tolerances", "tolerances_why") if key in previous}
    return {
        "comment": HOW_TO_UPDATE,
        "tolerance": float(previous.get("tolerance", TOLERANCE)),
        **kept,
        "requests_counted": f"{WINDOWS} runs of {RUN_SECONDS} s between spend writes",
        "measured_with": versions,
        "instructions_per_request": dict(measured),
    }


def load_budget(path: Path) -> dict[str, Any]:
    """The committed budget, or an empty one (every case then fails until --update)."""
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def version_drift(budget: dict[str, Any], versions: dict[str, str]) -> list[str]:
    """Versions that differ from those the budget was measured with: counts then move."""
    recorded: dict[str, str] = budget.get("measured_with", {})
    return [
        f"{name}: budget measured with {recorded[name]}, now {version}"
        for name, version in versions.items()
        if name in recorded and recorded[name] != version
    ]


def run_check(
    measure: Callable[[], tuple[dict[str, int], dict[str, str]]],
    *,
    update: bool,
    budget_path: Path = BUDGET_PATH,
    out: Callable[[str], None] = print,
) -> int:
    """Measure, print the table, and return the exit code: 0 when every case is within budget
    (or the budget was rewritten), 1 otherwise."""
    budget = load_budget(budget_path)
    measured, versions = measure()
    verdicts = compare(measured, budget)
    out(render(verdicts))
    for drift in version_drift(budget, versions):
        out(f"note: {drift}")
    if update:
        budget_path.write_text(
            json.dumps(updated_budget(measured, budget, versions), indent=2) + "\n"
        )
        out(f"Budget written to {budget_path}; commit it, saying why it changed.")
        return 0
    return 0 if all(verdict.passed for verdict in verdicts) else 1


# What follows does the counting itself.


def measure_all(
    trigate: Path, workdir: Path, *, sinks: bool = False
) -> tuple[dict[str, int], dict[str, str]]:
    """Every case's instructions per request, and the versions they were counted with.

    Two workers count at once, one for the master key's cases and one for the virtual
    key's, each under callgrind in a directory (and database) of its own: on two cores
    that halves the check's time, and counts do not depend on what else runs. With
    `sinks`, two logging callbacks are on (`SINKS`, sent to the mock): the counts then
    say what they cost a request, beside the budget's without them."""
    # Two at a time: the plain cases, then the local cache's hits (a config of their own).
    # The Redis hits count alone, with a core free for Redis: a reply not yet there when
    # the worker reads (Redis waiting for a core the two workers hold) costs a wait and a
    # pass of the scheduler, so with both cores busy their count followed the machine's
    # load (0.71 to 0.77 million a hit in one day's runs).
    rounds = [
        {
            "master": [c for c in CASES if not c.virtual_key and c.cache is None],
            "limited": [c for c in CASES if c.virtual_key],
        },
        {f"cached-{c.cache}": [c] for c in CASES if c.cache == "local"},
        {f"cached-{c.cache}": [c] for c in CASES if c.cache == "redis"},
    ]
    measured: dict[str, int] = {}
    with mock_server(workdir) as mock:
        callbacks = SINKS if sinks else None
        environ = sink_environ(mock.port) if sinks else ()
        gateway = Gateway("trigate", trigate, environ=environ)
        for groups in rounds:
            with ThreadPoolExecutor(len(groups)) as pool:
                futures = []
                for name, cases in groups.items():
                    config = workdir / f"trigate-{name}.yaml"
                    cache = cases[0].cache
                    write_gateway_config(
                        config, mock.port, UPSTREAM_MODELS, set(), callbacks=callbacks,
                        cache=cache_params(cache) if cache else None,
                    )  # fmt: skip
                    futures.append(
                        pool.submit(measure_group, gateway, config, cases, workdir / name)
                    )
                for future in futures:
                    measured |= future.result()
        versions = {"trigate": gateway.version(), **library_versions(trigate)}
    return {case.name: measured[case.name] for case in CASES}, versions


def measure_group(gateway: Gateway, config: Path, cases: list[Case], home: Path) -> dict[str, int]:
    """Some cases' counts, from one worker started under callgrind in `home`."""
    home.mkdir()
    measured: dict[str, int] = {}
    with gateway.run_counted(config, home, seeded=True) as server:
        log(f"{home.name}: trigate started under callgrind ({time.monotonic() - STARTED:.0f} s)")
        target = Target(server.port, {name: name for name in UPSTREAM_MODELS})
        if any(case.virtual_key for case in cases):
            target = Target(server.port, target.models, auth=limited_key(server.port))
        # Every case warms up before any is counted: what one case leaves behind (caches,
        # the interpreter's specialised code, survivors for the collector) then no longer
        # lands in the next one's count.
        for case in cases:
            sequential(
                target, target.request(case.model(), stream=case.stream), WARM_UP_REQUESTS, case
            )
        for case in cases:
            measured[case.name] = count(server, target, case, home)
            log(f"{case.name}: {measured[case.name]:,} ({time.monotonic() - STARTED:.0f} s)")
    return measured


def count(server: Server, target: Target, case: Case, workdir: Path) -> int:
    """Instructions per request of one case, over WINDOWS counted runs of sequential
    requests on one keep-alive connection, each run between two writes of the spend ledger.

    Why so: the worker also works on timers, and under callgrind a request takes some
    80 ms, so that work would land in the count in proportion to the wall-clock time the
    requests took, which the machine's load decides. The biggest is the spend ledger's
    write of the rows queued, 0.5 s after the first (some 1.3 million instructions, mostly
    SQLAlchemy's; at production rates one such write serves hundreds of requests). So each
    run starts right after a write, sends requests for RUN_SECONDS after the first answer
    (well within the 0.5 s), stops counting, and waits for the write of its rows (the
    database file changes) before the next run. A run that a write overlapped anyway is
    left out, as are runs beyond OUTLIER times the median (a pass of the garbage collector,
    say: bench_counted.py puts off the periodic duties).
    """
    request = target.request(case.model(), stream=case.stream)
    database = workdir / "trigate.db"
    with KeepAlive(target.port) as connection:
        state = database_state(database)
        connection.exchange(request, case)  # the connection is open and its row written
        settled(database, state)  # before anything is counted
        counts: list[int] = []
        requests: list[int] = []
        overlapped = 0
        while len(counts) < WINDOWS:
            state = database_state(database)
            before = set(workdir.glob("callgrind-trigate.*"))
            vgdb(server, "instrumentation", "on")
            sent = counted_run(connection, request, case)
            vgdb(server, "instrumentation", "off")
            # Whether a write came while counting is judged here, not after the dump: a
            # write during the dump is not counted, and on a loaded machine the dump
            # takes long enough that most runs would meet one.
            clean = database_state(database) == state
            vgdb(server, "dump")
            dumps = set(workdir.glob("callgrind-trigate.*")) - before
            if clean:
                counts.append(sum(callgrind_total(path) for path in dumps))
                requests.append(sent)
            else:
                overlapped += 1  # the write came before the requests were done
                # A loaded machine (another process's callgrind) slows the worker enough
                # that many runs meet a write; only a run that never ends between two is
                # a failure of the setup.
                if overlapped > MAX_OVERLAPPED:
                    raise RuntimeError(f"{case.name}: spend writes keep overlapping the runs")
            settled(database, state)
    per_run = [n / sent for n, sent in zip(counts, requests, strict=True)]
    middle = statistics.median(per_run)
    kept = [i for i, n in enumerate(per_run) if n <= OUTLIER * middle]
    log(
        f"{case.name}: {sum(requests)} requests in {WINDOWS} runs, "
        f"{min(per_run) / 1e6:.3f}M to {max(per_run) / 1e6:.3f}M per request; "
        f"{WINDOWS - len(kept)} left out, {overlapped} overlapped by a write"
    )
    if not all(counts):
        raise RuntimeError(f"callgrind counted nothing for {case.name}; see {server.log}")
    return round(sum(counts[i] for i in kept) / sum(requests[i] for i in kept))


def counted_run(connection: KeepAlive, request: bytes, case: Case) -> int:
    """Requests one after another while the next one should still be answered within
    RUN_SECONDS of the first answer (whose row starts the ledger's 0.5 s); returns how
    many were sent. The first is slow (callgrind translates the code again once counting
    is on), so the next is judged by the one before it. On a slow machine that may be
    two requests."""
    connection.exchange(request, case)
    first = last = time.monotonic()
    sent = 1
    while True:
        now = time.monotonic()
        if now - first + 1.5 * (now - last) > RUN_SECONDS:
            return sent
        last = now
        connection.exchange(request, case)
        sent += 1


class KeepAlive:
    """One blocking keep-alive connection: a request, then its whole answer, checked."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def exchange(self, request: bytes, case: Case) -> None:
        self.sock.sendall(request)
        response = bench_client.Response(keep_body=True)
        while True:
            data = self.sock.recv(262144)
            if not data:
                raise RuntimeError(f"{case.name}: the gateway closed the connection")
            if response.feed(data, 0.0):
                break
        if response.status != 200 or response.close:
            raise RuntimeError(f"{case.name}: answered {response.status}: {response.body!r}")
        expected = stream_frames(STREAM_CHUNKS) if case.stream else 0
        if response.frames() != expected and case.stream:
            raise RuntimeError(f"{case.name}: {response.frames()} frames, not {expected}")


def database_state(path: Path) -> tuple[int, ...]:
    """What changes when the spend ledger commits its rows: SQLite's file and its
    write-ahead log (the store runs in WAL mode)."""
    state: list[int] = []
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            stat = file.stat()
        except FileNotFoundError:
            state += (0, 0)
            continue
        state += (stat.st_mtime_ns, stat.st_size)
    return tuple(state)


def settled(path: Path, state: tuple[int, ...], timeout: float = 10.0) -> None:
    """Wait until the database differs from `state` (the rows just sent are written),
    then a little longer for the writer to finish its round."""
    deadline = time.monotonic() + timeout
    while database_state(path) == state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no spend write to {path} within {timeout:.0f} s")
        time.sleep(0.01)
    time.sleep(0.05)


def sequential(target: Target, request: bytes, requests: int, case: Case) -> None:
    """`requests` requests one after another on one connection, each checked."""
    run = bench_client.open_loop(
        target.port, request, 1e9, requests / 1e9, max_conns=1, timeout=300, keep_body=True
    )
    expected = stream_frames(STREAM_CHUNKS) if case.stream else None
    for outcome in run.outcomes:
        if not outcome.ok:
            raise RuntimeError(f"{case.name}: a request failed ({outcome.error or outcome.status})")
        if expected is not None and outcome.frames != expected:
            raise RuntimeError(f"{case.name}: {outcome.frames} frames, expected {expected}")
    if len(run.outcomes) != requests:
        raise RuntimeError(f"{case.name}: {len(run.outcomes)} of {requests} requests sent")


def vgdb(server: Server, *command: str) -> None:
    """One callgrind monitor command to the counted worker (what callgrind_control sends,
    without its process listing); a failure stops the check."""
    # The worker idles in epoll_wait between requests; vgdb waits --max-invoke-ms (100 by
    # default) before it interrupts a blocked process, a fifth of the ledger's 0.5 s.
    done = subprocess.run(
        ["vgdb", f"--pid={server.pid}", "--max-invoke-ms=5", *command],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"vgdb {' '.join(command)} failed: {done.stderr}")


def callgrind_total(path: Path) -> int:
    """The instructions a dump counted (its `totals:` line; 0 for a dump of nothing)."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


def library_versions(trigate: Path) -> dict[str, str]:
    """Python's and the request path's main libraries' versions in trigate's venv."""
    code = (
        "import importlib.metadata as m, json, platform;"
        "names = ('hypercorn', 'h11', 'trio', 'httpx', 'quart-trio');"
        "print(json.dumps({'python': platform.python_version(),"
        " **{n: m.version(n) for n in names}}))"
    )
    done = subprocess.run(
        [str(trigate.parent / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


@contextmanager
def scratch(out: Path) -> Iterator[Path]:
    """A fresh directory for this check's servers, dumps and logs."""
    workdir = out / f"check-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True)
    yield workdir


def log(message: str) -> None:
    print(f"bench --check: {message}", file=sys.stderr, flush=True)


def main(trigate: Path, out: Path, *, update: bool, sinks: bool = False) -> int:
    """The whole check, as `scripts/bench --check [--update] [--sinks]` runs it. With
    `--sinks` the table's change column is what two logging callbacks cost a request;
    that run never fails nor updates the budget."""
    installed = ensure_apt_packages(with_valgrind=True)
    if installed:
        log(f"installed Debian packages {installed}")
    with scratch(out) as workdir:
        code = run_check(lambda: measure_all(trigate, workdir, sinks=sinks), update=update)
    if sinks:
        code = 0
    log(f"done in {time.monotonic() - STARTED:.0f} s; dumps and logs in {workdir}")
    return code
