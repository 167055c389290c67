"""The runner's lean path (an immediate guardrail given no `Step`, on a plain chat
request's or answer's texts read without their slots) against its general one: the same
texts read, the same verdicts written, the same `guardrail_information`, metrics and
errors, whichever path runs."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trigate.guardrails.base import Guardrail, GuardrailBlocked, Step, Verdict
from trigate.guardrails.config import parse_guardrails
from trigate.guardrails.observe import Observer
from trigate.guardrails.runner import GuardrailRun, GuardrailUnavailable
from trigate.guardrails.text import (
    answer_slots,
    plain_answer_texts,
    plain_request_texts,
    request_slots,
)
from trigate.guardrails.types import KNOWN_TYPES
from trigate.metrics import Metrics

PLAIN_REQUESTS: list[dict[str, Any]] = [
    {"model": "m", "messages": [{"role": "user", "content": "hi a@b.co"}]},
    {"model": "m", "stream": True, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "x"},
        {"role": "tool", "content": "result", "tool_call_id": "c1"},
        {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": []},
    ]},
    {"model": "m", "messages": []},
]  # fmt: skip
OTHER_REQUESTS: list[dict[str, Any]] = [
    {"model": "m", "system": "s", "messages": [{"role": "user", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": "x", "refusal": "no"}]},
    {"model": "m", "messages": [{"role": "assistant", "content": "x", "reasoning": "r"}]},
    {"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": "b"}'}}]}]},
    {"model": "m", "messages": [{"role": "user", "content": None}]},
    {"model": "m", "messages": ["not a message"]},
    {"model": "m", "messages": "not a list"},
    {"model": "m", "input": "embed me"},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "contents": []},
]  # fmt: skip
PLAIN_ANSWERS: list[dict[str, Any]] = [
    {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello a@b.co"}}]},
    {"object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "x", "refusal": None, "annotations": []}}]},
    {"object": "text_completion", "choices": [{"index": 0, "text": "once"}]},
    {"object": "chat.completion", "choices": []},
]  # fmt: skip
OTHER_ANSWERS: list[dict[str, Any]] = [
    {"object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "f", "arguments": '{"q": "a@b.co"}'}}]}}]},
    {"object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "x", "reasoning_content": "thought"}}]},
    {"type": "message", "content": [{"type": "text", "text": "x"}]},
    {"object": "response", "output": [{"type": "message", "content": [
        {"type": "output_text", "text": "x"}]}]},
    {"candidates": [{"content": {"parts": [{"text": "x"}]}}]},
    {"object": "chat.completion", "choices": ["odd"]},
]  # fmt: skip


@pytest.mark.parametrize("body", PLAIN_REQUESTS)
def test_a_plain_request_is_read_as_its_slots_read_it(body: dict[str, Any]) -> None:
    assert plain_request_texts(body) == [slot.text for slot in request_slots(body)]


@pytest.mark.parametrize("body", OTHER_REQUESTS)
def test_any_other_request_is_left_to_its_slots(body: dict[str, Any]) -> None:
    assert plain_request_texts(body) is None


@pytest.mark.parametrize("answer", PLAIN_ANSWERS)
def test_a_plain_answer_is_read_as_its_slots_read_it(answer: dict[str, Any]) -> None:
    assert plain_answer_texts(answer) == [slot.text for slot in answer_slots(answer)]


@pytest.mark.parametrize("answer", OTHER_ANSWERS)
def test_any_other_answer_is_left_to_its_slots(answer: dict[str, Any]) -> None:
    assert plain_answer_texts(answer) is None


class Scripted(Guardrail):
    """An immediate guardrail that answers as told, and records what it was given; it
    reads no step (the lean path)."""

    immediate = True
    reads_step = False

    def __init__(self, config: Any, outcome: str) -> None:
        super().__init__(config)
        self.outcome = outcome
        self.given: list[tuple[list[str], Step | None]] = []

    async def check(self, texts: list[str], step: Step) -> Verdict:
        raise AssertionError("an immediate guardrail is checked at once")

    def check_now(self, texts: list[str], step: Step | None) -> Verdict:
        self.given.append((list(texts), step))
        if self.outcome == "mask":
            masked = [t.replace("a@b.co", "[EMAIL]") for t in texts]
            return Verdict(texts=masked, masked_entity_count={"email": 1}, response="masked")
        if self.outcome == "block":
            return Verdict(blocked="no", response="blocked")
        if self.outcome == "raise_block":
            raise GuardrailBlocked("refused")
        if self.outcome == "error":
            raise ValueError("broken")
        if self.outcome == "miscount":
            return Verdict(texts=[*texts, "extra"])
        return Verdict(response={"detected": {}})


class Stepped(Scripted):
    """The same guardrail, asking for its step: run by the general path."""

    reads_step = True


def _guardrails(kind: type[Scripted], outcomes: list[str], fail_open: bool) -> list[Scripted]:
    entries = [
        {"guardrail_name": f"g{index}", "litellm_params": {
            "guardrail": "litellm_content_filter", "mode": ["pre_call", "post_call"],
            "fail_open": fail_open, "blocked_words": [{"keyword": "zzz"}]}}
        for index in range(len(outcomes))
    ]  # fmt: skip
    configs = parse_guardrails(entries, KNOWN_TYPES)
    return [kind(config, outcome) for config, outcome in zip(configs, outcomes, strict=True)]


def _request(kind: type[Scripted], outcomes: list[str], fail_open: bool) -> dict[str, Any]:
    """One request through the runner (a plain chat request and answer), and all it left."""
    guardrails = _guardrails(kind, outcomes, fail_open)
    metrics = Metrics()
    body = {"model": "m", "messages": [{"role": "user", "content": "mail a@b.co"}]}
    answer = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "to a@b.co"}}]}  # fmt: skip
    errors: list[str] = []
    changed = None
    run = GuardrailRun(guardrails, Observer(metrics), "m", None, {"litellm_call_id": "id"})

    async def main() -> None:
        nonlocal changed
        try:
            await run.pre_call(body)
            changed = await run.post_call(answer)
        except (GuardrailBlocked, GuardrailUnavailable) as error:
            errors.append(f"{type(error).__name__}: {error.message}")

    trio.run(main, clock=trio.testing.MockClock())  # a still clock: every duration is 0
    samples = sorted(
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in metrics.registry.collect()
        if family.name.startswith("litellm_guardrail")
        for sample in family.samples
        if not sample.name.endswith("_created")
    )
    information = [
        {k: v for k, v in entry.items() if k not in ("start_time", "end_time")}
        for entry in run.information
    ]
    steps = [step for guardrail in guardrails for _, step in guardrail.given]
    given = [texts for guardrail in guardrails for texts, _ in guardrail.given]
    return {
        "body": body, "answer": answer, "changed": changed, "errors": errors,
        "information": information, "metrics": samples, "given": given, "steps": steps,
    }  # fmt: skip


OUTCOMES = [
    ["pass"], ["mask"], ["mask", "pass"], ["pass", "mask"], ["block"], ["raise_block"],
    ["error"], ["miscount"], ["pass", "error"],
]  # fmt: skip


@pytest.mark.parametrize("outcomes", OUTCOMES)
@pytest.mark.parametrize("fail_open", [False, True])
def test_the_lean_path_reports_as_the_general_one(outcomes: list[str], fail_open: bool) -> None:
    """Each outcome (a pass, a mask read by the next guardrail, a block, a failure, closed
    and open), run lean and run with a step: everything the request leaves is alike."""
    lean = _request(Scripted, outcomes, fail_open)
    general = _request(Stepped, outcomes, fail_open)
    assert lean["steps"] and all(step is None for step in lean["steps"])  # it ran lean
    assert all(isinstance(step, Step) for step in general["steps"])
    for what in ("body", "answer", "changed", "errors", "information", "metrics", "given"):
        assert lean[what] == general[what], what
    assert lean["information"]  # (something was reported)


class _ReadsStep(Guardrail):
    """A user's immediate guardrail as one was written before `reads_step`: its
    `check_now` reads its step, and it says nothing of it."""

    immediate = True

    async def check(self, texts: list[str], step: Step) -> Verdict:
        return self.check_now(texts, step)

    def check_now(self, texts: list[str], step: Step | None) -> Verdict:
        assert step is not None
        if step.reads_input and any("secret" in text for text in texts):
            return Verdict(blocked="no secrets")
        return Verdict()


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_guardrail_that_says_nothing_of_its_step_is_given_one(fail_open: bool) -> None:
    """A user's immediate guardrail is given its step unless it says it reads none: it
    blocks as it did, fail_open or not, never failing for a step it was not given (and,
    fail_open, letting the request through unchecked)."""
    [guardrail] = _guardrails(Scripted, ["pass"], fail_open)
    user = _ReadsStep(guardrail.config)
    run = GuardrailRun([user], Observer(Metrics()), "gpt-4o", None, {})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "the secret is 42"}]}
    with pytest.raises(GuardrailBlocked, match="no secrets"):
        await run.pre_call(body)


async def test_a_mode_that_never_ran_has_no_series() -> None:
    """A guardrail blocked in pre_call counts its intervention alone: no zero series of
    a success in pre_call or post_call appears at `/metrics` (as LiteLLM's)."""
    [guardrail] = _guardrails(Scripted, ["block"], False)
    metrics = Metrics()
    run = GuardrailRun([guardrail], Observer(metrics), "gpt-4o", None, {})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
    with pytest.raises(GuardrailBlocked):
        await run.pre_call(body)
    statuses = {
        sample.labels.get("status")
        for metric in metrics.registry.collect()
        if metric.name == "litellm_guardrail_requests"
        for sample in metric.samples
    }
    assert statuses == {"guardrail_intervened"}
