"""trigate's CLI with its randomness seeded, for counting instructions (`scripts/bench --check`).

Trio runs the tasks that are ready in a batch, reversed at random half the time so that no
program comes to depend on an order; which order a batch runs in changes which paths the
request takes (whether a channel's receiver is already waiting, for one), and so the count.
Seeding trio's scheduler and `random` (span ids) makes the same requests take the same
paths from run to run. `PYTHONHASHSEED` does the same for dict and set layouts and is set by
the bench. Run as `python scripts/bench_counted.py serve --config ...`.
"""

from __future__ import annotations

import random
import sys

import trio

from trigate.cli import main

SEED = 20


def seed_scheduler() -> None:
    """Seed trio's scheduler; a trio without that generator fails loudly rather than
    leaving the counts to chance."""
    scheduler = getattr(getattr(trio, "_core")._run, "_r", None)  # noqa: B009 (private)
    if not isinstance(scheduler, random.Random):
        raise SystemExit("bench_counted: trio's scheduler has no random generator to seed")
    scheduler.seed(SEED)


if __name__ == "__main__":
    seed_scheduler()
    random.seed(SEED)
    sys.exit(main(sys.argv[1:]))
