"""What two logging callbacks cost a request, in CPU instructions, background included.

`scripts/bench --check --sinks` counts only the request path, between spend writes,
and needs a machine quiet enough that a request under callgrind ends within its
window. This counts everything a worker does over `N` sequential requests on one
connection (the spend writes, and the callbacks' batched sends, land in the count)
for two workers under callgrind side by side: one without callbacks, one with
generic_api and datadog on (sent to the mock). Their difference per request is what
the two callbacks cost, their sends amortised over the batches the request rate
makes (every 5 s at this rate; full batches of 100 rows at higher rates cost less).

    .venv/bin/python scripts/bench_sinks.py [N]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_check import (
    CASES,
    UPSTREAM_MODELS,
    WARM_UP_REQUESTS,
    KeepAlive,
    callgrind_total,
    sequential,
    vgdb,
)
from bench_measure import Target
from bench_systems import SINKS, Gateway, Server, mock_server, sink_environ, write_gateway_config

ROOT = Path(__file__).resolve().parent.parent


def measure(work: Path, mock: Server, sinks: bool, requests: int) -> dict[str, float]:
    """Instructions per request of each master-key case, with or without the sinks."""
    home = work / ("sinks" if sinks else "base")
    home.mkdir()
    config = home / "trigate.yaml"
    callbacks = SINKS if sinks else None
    write_gateway_config(config, mock.port, UPSTREAM_MODELS, set(), callbacks=callbacks)
    environ = sink_environ(mock.port) if sinks else ()
    gateway = Gateway("trigate", ROOT / ".venv" / "bin" / "trigate", environ=environ)
    counted: dict[str, float] = {}
    with gateway.run_counted(config, home, seeded=True) as server:
        target = Target(server.port, {name: name for name in UPSTREAM_MODELS})
        for case in (case for case in CASES if not case.virtual_key):
            request = target.request(case.model(), stream=case.stream)
            sequential(target, request, WARM_UP_REQUESTS, case)
            time.sleep(6)  # the warm-up's spend write and sends are done
            before = set(home.glob("callgrind-trigate.*"))
            vgdb(server, "instrumentation", "on")
            with KeepAlive(target.port) as connection:
                for _ in range(requests):
                    connection.exchange(request, case)
            time.sleep(6)  # the last spend write and batch land in the count
            vgdb(server, "instrumentation", "off", "-c", "dump")
            dumps = set(home.glob("callgrind-trigate.*")) - before
            counted[case.name] = sum(callgrind_total(path) for path in dumps) / requests
    return counted


def main(requests: int) -> None:
    work = ROOT / "bench-results" / f"sinks-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    with mock_server(work) as mock, ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(measure, work, mock, sinks, requests) for sinks in (False, True)]
        base, sinks = (run.result() for run in runs)
    print("| case | without callbacks | generic_api + datadog | cost |")
    print("|---|---|---|---|")
    for case, without in base.items():
        added = sinks[case] - without
        share = f"{added / without:+.1%}"
        print(f"| {case} | {without:,.0f} | {sinks[case]:,.0f} | +{added:,.0f} ({share}) |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
