"""trigate's CLI with its randomness seeded, for counting instructions (`scripts/bench --check`).

Trio runs the tasks that are ready in a batch, reversed at random half the time so that no
program comes to depend on an order; which order a batch runs in changes which paths the
request takes (whether a channel's receiver is already waiting, for one), and so the count.
Seeding trio's scheduler and `random` (span ids) makes the same requests take the same
paths from run to run. `PYTHONHASHSEED` does the same for dict and set layouts and is set by
the bench. Run as `python scripts/bench_counted.py serve --config ...`.

The worker's periodic duties that do not scale with requests are put off for an hour: the
catalog's poll of the store for model changes (every 2 s without Redis) and the sampling
of its state for the metrics (every 5 s). Each costs some 0.3 to 0.9 million instructions
when it runs, and how many of them land in a counted run depends on how long the run
took in wall-clock time, which the machine's load decides: under load they added up to
14% to a case's count.
"""

from __future__ import annotations

import random
import sys

import trio

import trigate.gateway
import trigate.router.catalog
from trigate.cli import main

SEED = 20
# Periodic duties put off while counting: (module, constant), each read when it is due.
PUT_OFF = ((trigate.router.catalog, "POLL_INTERVAL"), (trigate.gateway, "SAMPLE_INTERVAL"))


def seed_scheduler() -> None:
    """Seed trio's scheduler; a trio without that generator fails loudly rather than
    leaving the counts to chance."""
    scheduler = getattr(getattr(trio, "_core")._run, "_r", None)  # noqa: B009 (private)
    if not isinstance(scheduler, random.Random):
        raise SystemExit("bench_counted: trio's scheduler has no random generator to seed")
    scheduler.seed(SEED)


def put_off_periodic_duties() -> None:
    """Put off the duties in PUT_OFF for an hour; a constant renamed fails loudly rather
    than leaving its duty in the counts."""
    for module, name in PUT_OFF:
        if not isinstance(getattr(module, name, None), float):
            raise SystemExit(f"bench_counted: {module.__name__}.{name} is gone")
        setattr(module, name, 3600.0)


if __name__ == "__main__":
    put_off_periodic_duties()
    seed_scheduler()
    random.seed(SEED)
    sys.exit(main(sys.argv[1:]))
