"""What the guardrail benches share (`scripts/bench_guardrails.py`,
`scripts/bench_passthrough_guard.py`): the instructions a worker script's requests cost,
counted by callgrind as `scripts/bench --check` counts them.

A worker is a `python -c` script whose first argument is how many requests to make
after its warm-up. A figure is the difference of two runs under callgrind, with `runs`
requests and with none, divided by `runs`: start-up, imports and warm-up cancel out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The prompt the content filter is counted on (`bench_guardrails.py` and
# `bench_guardrail_parts.py` import it in their workers): some 2,000 tokens of prose with
# an email and a phone number in it, issue 23's "2,000-token prompt".
SENTENCE = (
    "The committee reviewed the quarterly figures and agreed that the migration of the "
    "billing service should wait until the new storage cluster has been load tested. "
)
PROMPT = SENTENCE * 70 + "Reach me at ada@example.com or +44 20 7946 0958. " + SENTENCE * 5
# A prompt of the same length as an agent's or a system prompt reads: the words the
# prompt-injection phrasings end with (rules, system prompt, context, instructions) and a
# key's prefix (`sk-`), again and again, and no phrasing nor key.
AGENT_PROMPT = (
    SENTENCE
    * 10
    + "You are a coding agent. Follow the rules in the system prompt and keep the context "
    "short; the instructions below are the user's. Set OPENAI_API_KEY to your sk- key first. "
) * 7
# The filter's prebuilt patterns and their actions: every one, or the PII ones alone.
PATTERNS = {
    "all": (("pii", "MASK"), ("secrets", "BLOCK"), ("prompt_injection", "BLOCK")),
    "pii": (("pii", "MASK"),),
}


def content_filter_entry(patterns: str) -> dict[str, Any]:
    """The config entry of the content filter counted: `PATTERNS[patterns]` and a keyword,
    on the request and its answer."""
    return {
        "guardrail_name": "cf",
        "litellm_params": {
            "guardrail": "litellm_content_filter",
            "mode": ["pre_call", "post_call"],
            "patterns": [
                {"pattern_type": "prebuilt", "pattern_name": name, "action": action}
                for name, action in PATTERNS[patterns]
            ],
            "blocked_words": [{"keyword": "confidential", "action": "BLOCK"}],
        },
    }


def instructions(worker: str, count: int, args: list[str], workdir: Path, tree: Path = ROOT) -> int:
    """The instructions of one run of `worker` making `count` requests, in `tree` (its
    `trigate` is the one imported); a tree other than this one writes no `.pyc`."""
    out = workdir / f"callgrind.{'.'.join(args)}.{count}"
    env = {"PYTHONHASHSEED": "0", "PATH": "", "PYTHONPATH": str(ROOT / "scripts"),
           "PYTHONDONTWRITEBYTECODE": "1" if tree != ROOT else ""}  # fmt: skip
    # Once outside callgrind first: any module not yet compiled is, and its .pyc written,
    # so that neither counted run pays for it.
    subprocess.run([sys.executable, "-c", worker, "0", *args], check=True, cwd=tree, env=env)
    subprocess.run(
        ["/usr/bin/valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         "-c", worker, str(count), *args],
        check=True, capture_output=True, cwd=tree, env=env,
    )  # fmt: skip
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


def per_request(worker: str, runs: int, args: list[str], workdir: Path, tree: Path = ROOT) -> float:
    """The instructions one request costs: two runs' difference, over `runs`."""
    base = instructions(worker, 0, args, workdir, tree)
    more = instructions(worker, runs, args, workdir, tree)
    return (more - base) / runs
