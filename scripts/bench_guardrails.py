"""Instructions a guardrail costs a request, counted by callgrind as `scripts/bench
--check` counts them: `python scripts/bench_guardrails.py`.

The embedded content filter (every prebuilt pattern: PII, secrets, prompt injection,
and a keyword), run by the guardrail runner as a request meets it (pre_call on the
request, post_call on the answer, the spend row's `guardrail_information`, LiteLLM's
metrics), on a chat request of about 2,000 tokens of prose with an email and a phone
number in it, and on an agent's prompt as long (`bench_callgrind.AGENT_PROMPT`: the
words prompt injections end with, and a key's prefix, again and again). Each figure is
a difference of two runs of one script under callgrind, with and without `RUNS` more
requests, divided by `RUNS`: start-up, imports and warm-up cancel out. Compare it with
`scripts/bench-budget.json`, the instructions a whole proxied call costs (about 1.09
million for a chat completion with the master key, by `scripts/bench --check`): issue
23 asks for the filter to cost less than a tenth of that.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# Enough requests that what else differs between two runs (start-up) is a rounding error.
RUNS = 200
ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import random
import sys
import trio
from bench_callgrind import AGENT_PROMPT, PROMPT, SENTENCE, content_filter_entry
from bench_counted import seed_scheduler
from trigate.guardrails.config import Mode
from trigate.guardrails.content_filter import ContentFilter
from trigate.guardrails.config import parse_guardrails
from trigate.guardrails.types import KNOWN_TYPES
from trigate.guardrails.observe import Observer
from trigate.guardrails.runner import GuardrailRun
from trigate.metrics import Metrics

[config] = parse_guardrails([content_filter_entry(sys.argv[2])], KNOWN_TYPES)
guard = ContentFilter(config)
observer = Observer(Metrics())


async def one() -> None:
    run = GuardrailRun([guard], observer, "gpt-4o", None, {})
    prompt = AGENT_PROMPT if sys.argv[3] == "agent" else PROMPT
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    await run.pre_call(body)
    await run.post_call({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": SENTENCE * 3}}]})


async def main(count: int) -> None:
    for _ in range(3):  # warm: regex caches, metric children
        await one()
    for _ in range(count):
        await one()

seed_scheduler()
random.seed(20)
trio.run(main, int(sys.argv[1]))
"""


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_callgrind import per_request

    from trigate.tokens import TokenCounter

    print(f"prompt: {_prompt_tokens(TokenCounter)} tokens (o200k)")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        for patterns, prompt, what in (
            ("all", "prose", "every prebuilt pattern (PII, secrets, prompt injection), a keyword"),
            ("pii", "prose", "the PII patterns and a keyword"),
            ("all", "agent", "every prebuilt pattern and a keyword, an agent's prompt"),
        ):
            cost = per_request(WORKER, RUNS, [patterns, prompt], workdir)
            print(f"content filter, {what}, pre_call + post_call: {cost:,.0f} "
                  "instructions per request")  # fmt: skip


def _prompt_tokens(counter_class: type) -> int:
    from bench_callgrind import PROMPT

    counter = counter_class.load()
    return int(counter.count_text("gpt-4o", PROMPT))


if __name__ == "__main__":
    main()
