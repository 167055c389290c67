"""What a guardrail is to the runner: text in, a verdict out.

A guardrail is given the texts of a request or an answer (`trigate.guardrails.text`)
and answers with a `Verdict`: pass, block with a reason, or the texts masked. Everything
else (which guardrails run for a request, in which mode, their timeouts, failing closed,
what is recorded, measured and traced) is the runner's (`trigate.guardrails.runner`), so
a guardrail type is only its check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trigate.errors import GatewayError
from trigate.guardrails.config import GuardrailConfig, Mode
from trigate.guardrails.masking import Vault


class GuardrailBlocked(GatewayError):
    """A guardrail's block, answered as LiteLLM answers one: a 400 whose code is "400",
    its message naming the guardrail and why."""

    status = 400
    type = "invalid_request_error"
    code = "400"


class GuardrailFailed(Exception):
    """A guardrail that could not give a verdict (its service down, slow, or answering
    what cannot be read): the request is blocked unless the guardrail is `fail_open`."""


@dataclass(slots=True)
class Step:
    """One run of one guardrail: its mode, whether it reads the request or the answer,
    and the request's own state for it (the placeholders its masks minted)."""

    mode: Mode
    reads_input: bool
    vault: Vault
    model: str
    kinds: Sequence[str] = ()
    # Who asked, by LiteLLM's names (`user_api_key_hash`, `user_api_key_team_id`, ...,
    # `litellm_call_id`): what LiteLLM tells a guardrail service of the request.
    request_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Verdict:
    """A guardrail's answer: `blocked` with a reason, or `texts` (one per text given, some
    masked), or neither: it passes."""

    blocked: str | None = None
    texts: list[str] | None = None
    masked_entity_count: dict[str, int] = field(default_factory=dict)
    # What the guardrail's service said, for `guardrail_information` (never the text).
    response: Any = None


class Guardrail(ABC):
    """One configured guardrail. `unmasks`: its masks are given back in the answer
    (Presidio's `output_parse_pii`)."""

    unmasks = False
    # Whether `check_now` gives the verdict without waiting on anything (an in-process
    # check, which has no checkpoint): the runner calls it directly, with no timeout,
    # which could never fire, and whose cancel scope costs more than the filter's scan.
    immediate = False
    # Whether an `immediate` guardrail's `check_now` reads its `Step` (the mode, the
    # request's vault, who asked): one is made for it unless it says it does not (and
    # does not `unmask`: its masks mint placeholders in the request's vault). A user's
    # class is given one as ever; the content filter reads only the texts, and making a
    # step on every run costs more than a pass of the runner does.
    reads_step = True

    def __init__(self, config: GuardrailConfig) -> None:
        self.config = config
        # The runner's plans of the lists of guardrails this one starts
        # (`trigate.guardrails.runner`): kept here, they go when the configuration does.
        self.plans: dict[tuple[Guardrail, ...], Any] = {}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def provider(self) -> str:
        return self.config.type

    @abstractmethod
    async def check(self, texts: list[str], step: Step) -> Verdict:
        """The verdict on `texts`; raises `GuardrailFailed` (or anything) when it has none."""

    def check_now(self, texts: list[str], step: Step | None) -> Verdict:
        """The verdict at once, for an `immediate` guardrail; `step` is None where it
        says it does not read one (`reads_step` false) and does not `unmask`."""
        raise NotImplementedError(f"{type(self).__name__} is not immediate")

    async def aclose(self) -> None:  # noqa: B027 (most guardrails hold nothing)
        """Release what the guardrail holds (an HTTP client)."""
