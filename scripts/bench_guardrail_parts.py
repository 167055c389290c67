"""Where the content filter's instructions go, piece by piece:
`python scripts/bench_guardrail_parts.py [piece ...]`.

`scripts/bench_guardrails.py` gives one figure for a request; this splits it. Each piece
(the Hyperscan scan alone, the prefilter, the detectors, the mask, a whole verdict, a
whole request through the runner, the runner alone with a guardrail that passes all,
and the pipeline's hook around it) runs
`RUNS` times inside `itertools.starmap`, and callgrind counts only what runs inside
`starmap_next` (`--collect-atstart=no --toggle-collect`): start-up, imports and the
databases' compile are never counted, so one run per piece is enough (no difference of
two). Python 3.11 shows callgrind no Python function names: this is how a Python piece is
named to it. Same prompt as `bench_guardrails.py`, every prebuilt pattern and a keyword.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = 100
ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import dataclasses
import itertools
import sys
import types

import trio
from bench_callgrind import PROMPT, SENTENCE, content_filter_entry

from trigate.guardrails.base import Guardrail, Verdict
from trigate.guardrails.config import parse_guardrails
from trigate.guardrails.content_filter import ContentFilter
from trigate.guardrails.detectors import DIGITS, Scanned, _places, anchored
from trigate.guardrails.masking import Span, apply
from trigate.guardrails.observe import Observer
from trigate.guardrails.hook import GuardrailHook
from trigate.guardrails.runner import GuardrailRun, GuardrailSet
from trigate.guardrails.types import KNOWN_TYPES
from trigate.metrics import Metrics

ANSWER = SENTENCE * 3
[config] = parse_guardrails([content_filter_entry("all")], KNOWN_TYPES)
guard = ContentFilter(config)
prefilter = guard._prefilter
fired, anchors = prefilter.scan(PROMPT)
plan = guard._plan(fired)
data = PROMPT.encode("ascii")
database = prefilter._ascii_database
at = PROMPT.index("ada@")
spans = [Span(at, at + 15, "EMAIL", "[EMAIL_REDACTED]")]


def _ignore(*_: object) -> None:
    pass


def _rules() -> None:
    scanned = Scanned(PROMPT, foreign_digits=False)
    for rule, pattern in plan:
        rule.detector.scan(scanned, anchored(anchors, pattern))


observer = Observer(Metrics())


class Passing(Guardrail):
    # What the runner costs alone: an immediate guardrail that passes every text.
    immediate = True
    reads_step = False

    async def check(self, texts, step):
        return Verdict()

    def check_now(self, texts, step):
        return Verdict(response={"detected": {}})


passing = Passing(config)


# One request as bench_guardrails.py runs it: the runner's pre_call and post_call. The
# guardrail is immediate, so neither coroutine ever suspends: each is driven to its end
# here, inside `trio.run` (the runner reads Trio's clock).
def _request(guardrail: Guardrail = guard) -> None:
    run = GuardrailRun([guardrail], observer, "gpt-4o", None, {})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
    answer = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
    for step in (run.pre_call(body), run.post_call(answer)):
        try:
            step.send(None)
        except StopIteration:
            continue
        raise RuntimeError("a guardrail step suspended")


# One request as the pipeline's hook meets it (`GuardrailHook`): the request's guardrails
# chosen (`default_on`: nothing named), its run made, pre_call, the answer's post_call.
on = Passing(dataclasses.replace(config, default_on=True))
guardrail_set = GuardrailSet((on.config,), {config.name: on}, observer)
hook = GuardrailHook(guardrail_set)
caller = types.SimpleNamespace(
    key=None, team=None, key_hash="h", key_alias=None, user_id=None, team_id=None,
    end_user_id=None, organization_id=None)


telemetry = types.SimpleNamespace(span=None)


def _no_native() -> None:  # a chat request's surface offers no other form
    return None


def _hooked() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
    answer = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
    context = types.SimpleNamespace(headers={}, request_id="req-1")
    request = types.SimpleNamespace(
        caller=caller, body=body, context=context, model_group="gpt-4o",
        requested_guardrails=[], telemetry=telemetry, native_request=_no_native)
    for step in (hook.before_route(request), hook.after_answer(request, answer, None)):
        try:
            step.send(None)
        except StopIteration:
            continue
        raise RuntimeError("a guardrail step suspended")


PIECES = {
    "hs_scan_prompt": lambda: database.scan(data, match_event_handler=_ignore),
    "fired_prompt": lambda: prefilter.scan(PROMPT),
    "fired_answer": lambda: prefilter.scan(ANSWER),
    "digit_places": lambda: _places(PROMPT, DIGITS),
    "digit_windows": lambda: Scanned(PROMPT, foreign_digits=False).windows(DIGITS, 0),
    "detectors_prompt": _rules,
    "mask_prompt": lambda: apply(PROMPT, spans),
    "verdict_prompt": lambda: guard.verdict([PROMPT]),
    "verdict_answer": lambda: guard.verdict([ANSWER]),
    "request": _request,
    "runner": lambda: _request(passing),
    "hook": _hooked,
}
piece = PIECES[sys.argv[1]]


async def _all() -> None:
    for _ in range(3):  # warm: regex caches, the filter's plans, metric children
        piece()
    list(itertools.starmap(piece, [()] * int(sys.argv[2])))


trio.run(_all)
"""

PIECES = (
    "hs_scan_prompt", "fired_prompt", "fired_answer", "digit_places", "digit_windows",
    "detectors_prompt", "mask_prompt", "verdict_prompt", "verdict_answer", "request",
    "runner", "hook",
)  # fmt: skip


def instructions(piece: str, workdir: Path) -> float:
    """What one run of `piece` costs, counted inside `starmap_next` alone."""
    out = workdir / f"callgrind.{piece}"
    env = {"PYTHONHASHSEED": "0", "PATH": "", "PYTHONPATH": str(ROOT / "scripts")}
    subprocess.run(
        ["/usr/bin/valgrind", "--tool=callgrind", "--collect-atstart=no",
         "--toggle-collect=starmap_next", f"--callgrind-out-file={out}", sys.executable,
         "-c", WORKER, piece, str(RUNS)],
        check=True, capture_output=True, cwd=ROOT, env=env,
    )  # fmt: skip
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]) / RUNS
    raise SystemExit(f"no totals in {out}")


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        for piece in sys.argv[1:] or PIECES:
            print(f"{piece}: {instructions(piece, Path(directory)):,.0f} instructions")


if __name__ == "__main__":
    main()
