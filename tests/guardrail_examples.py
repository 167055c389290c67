"""Guardrail classes the tests name by dotted path as a guardrail's type
(`guardrail: guardrail_examples.Broken`), as a user's config names its own."""

from __future__ import annotations

from typing import Any

import trio

from trigate.guardrails import Guardrail, Step, Verdict


class Broken(Guardrail):
    """A guardrail with a bug: it raises on every text."""

    async def check(self, texts: list[str], step: Step) -> Verdict:
        raise RuntimeError("a bug in the guardrail")


class Slow(Guardrail):
    """A guardrail whose service never answers in time."""

    async def check(self, texts: list[str], step: Step) -> Verdict:
        await trio.sleep(30)
        return Verdict()


class Garbage(Guardrail):
    """A guardrail that answers what cannot be read: one text for many."""

    async def check(self, texts: list[str], step: Step) -> Verdict:
        return Verdict(texts=[*texts, "extra"])


class Counting(Guardrail):
    """Counts its runs by mode: each mode runs once per request, retries or not."""

    runs: list[str] = []

    async def check(self, texts: list[str], step: Step) -> Verdict:
        Counting.runs.append(step.mode.value)
        return Verdict()


class _HTTPException(Exception):
    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class NoPasswords:
    """LiteLLM's custom guardrail shape: `apply_guardrail` returns the text, masked or
    not, or raises an HTTPException to block."""

    def __init__(self, guardrail_name: str, event_hook: Any, default_on: bool, **kwargs: Any):
        self.word = kwargs.get("word", "password")

    async def apply_guardrail(
        self,
        text: str,
        language: str | None = None,
        entities: list[str] | None = None,
        request_data: dict[str, Any] | None = None,
    ) -> str:
        if "open sesame" in text:
            raise _HTTPException(status_code=400, detail="No magic words.")
        return text.replace(self.word, "*" * len(self.word))


class SlowBlock(Guardrail):
    """A moderation service that takes `delay` seconds, and blocks text saying "card"."""

    async def check(self, texts: list[str], step: Step) -> Verdict:
        await trio.sleep(float(self.config.settings.get("delay", 0.3)))
        if any("card" in text for text in texts):
            return Verdict(blocked="it mentions a card")
        return Verdict()
