"""The embedded content filter (LiteLLM's `litellm_content_filter`): keywords, regexes,
PII, secrets and prompt injection found in-process, each with its action.

    guardrails:
      - guardrail_name: content-filter
        litellm_params:
          guardrail: litellm_content_filter
          mode: [pre_call, post_call]
          default_on: true
          patterns:
            - {pattern_type: prebuilt, pattern_name: email, action: MASK}
            - {pattern_type: prebuilt, pattern_name: secrets, action: BLOCK}
            - {pattern_type: regex, name: ticket, pattern: 'TCK-\\d{6}', action: LOG}
          blocked_words:
            - {keyword: confidential, action: BLOCK}

Actions: BLOCK refuses, MASK replaces the match by a tag (`[EMAIL_REDACTED]`, by
`pattern_redaction_format`; `keyword_redaction_tag` for keywords), LOG only counts it in
the request's `guardrail_information`. A prebuilt name may be a family: `pii`, `secrets`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trigate.guardrails.base import Guardrail, Step, Verdict
from trigate.guardrails.config import ConfigProblem, GuardrailConfig
from trigate.guardrails.detectors import GROUPS, PREBUILT, Detector, Scanned, anchored, fold
from trigate.guardrails.masking import Span, apply
from trigate.guardrails.prefilter import Prefilter, caseless

ACTIONS = ("BLOCK", "MASK", "LOG")
# How many of the prefilter's masks a filter keeps the plan of.
PLANS = 256


@dataclass(frozen=True, slots=True)
class Rule:
    detector: Detector
    action: str
    tag: str


class ContentFilter(Guardrail):
    immediate = True
    reads_step = False  # (but for the vault, where it unmasks: given one then)

    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        self.rules = rules_of(config.name, config.settings)
        self._prefilter = Prefilter(
            [rule.detector.prefilter for rule in self.rules],
            [rule.detector.anchors for rule in self.rules],
        )
        # The rules worth running on a text, in order, each with its anchors' pattern id,
        # by the prefilter's mask of it: the masks met (few: most texts fire none or the
        # same few) up to `PLANS` of them.
        self._plans: dict[int, tuple[tuple[Rule, int | None], ...]] = {}

    async def check(self, texts: list[str], step: Step) -> Verdict:
        return self.verdict(texts, step)

    def check_now(self, texts: list[str], step: Step | None) -> Verdict:
        return self.verdict(texts, step)

    def verdict(self, texts: list[str], step: Step | None = None) -> Verdict:
        """The filter's verdict, at once: it needs no checkpoint."""
        counts: dict[str, int] = {}
        masked: list[str] | None = None
        for index, text in enumerate(texts):
            fired, anchors = self._prefilter.scan(text)
            plan = self._plans.get(fired)
            if plan is None:
                plan = self._plan(fired)
            if not plan:
                continue
            spans: list[Span] = []
            # What the detectors' gates ask, computed once for them all.
            scanned = Scanned(text, foreign_digits=bool(fired & 1))
            for rule, pattern in plan:
                for start, end in rule.detector.scan(scanned, anchored(anchors, pattern)):
                    counts[rule.detector.name] = counts.get(rule.detector.name, 0) + 1
                    if rule.action == "BLOCK":
                        return Verdict(
                            blocked=f"Content blocked: {rule.detector.name} detected",
                            masked_entity_count=counts,
                            response={"detected": rule.detector.name, "action": "BLOCK"},
                        )
                    if rule.action == "MASK":
                        spans.append(Span(start, end, rule.detector.name.upper(), rule.tag))
            if spans:
                if masked is None:
                    masked = list(texts)
                vault = step.vault if step is not None and self.unmasks else None
                masked[index] = apply(text, spans, vault)
        return Verdict(texts=masked, masked_entity_count=counts, response={"detected": counts})

    def _plan(self, fired: int) -> tuple[tuple[Rule, int | None], ...]:
        """The rules whose prefilter `fired` (bit i + 1 for the i-th rule), in order, each
        with the id its anchors are found by (None: it has none)."""
        anchor_of = self._prefilter.anchor_of
        plan = tuple(
            (rule, anchor_of[index])
            for index, rule in enumerate(self.rules)
            if fired >> (index + 1) & 1
        )
        if len(self._plans) < PLANS:  # a text crafted for a new mask each grows nothing
            self._plans[fired] = plan
        return plan


def rules_of(name: str, settings: Mapping[str, Any]) -> list[Rule]:
    """The filter's rules from its settings; a ValueError names what is wrong."""
    where = f"guardrails `{name}`"
    pattern_format = settings.get("pattern_redaction_format", "[{pattern_name}_REDACTED]")
    if not isinstance(pattern_format, str) or "{pattern_name}" not in pattern_format:
        raise ConfigProblem(f"{where}: `pattern_redaction_format` must contain {{pattern_name}}")
    keyword_tag = settings.get("keyword_redaction_tag", "[KEYWORD_REDACTED]")
    if not isinstance(keyword_tag, str):
        raise ConfigProblem(f"{where}: `keyword_redaction_tag` must be a string")
    rules: list[Rule] = []
    for entry in _list(settings.get("patterns"), "patterns", where):
        action = _action(entry, where)
        for detector in _detectors(entry, where):
            tag = pattern_format.replace("{pattern_name}", detector.name.upper())
            rules.append(Rule(detector, action, tag))
    words = list(_list(settings.get("blocked_words"), "blocked_words", where))
    file = settings.get("blocked_words_file")
    if file is not None:
        words.extend(_words_file(file, where))
    for entry in words:
        keyword = entry.get("keyword")
        if not isinstance(keyword, str) or not keyword:
            raise ConfigProblem(f"{where}: each of `blocked_words` needs a `keyword`")
        detector = Detector(
            f"keyword '{keyword}'",
            re.compile(rf"(?<!\w){re.escape(keyword)}(?!\w)", re.I),
            gate=_has_word(fold(keyword)),
            # Its match is as long as it is, and holds its prefilter's.
            margin=len(keyword),
            prefilter=caseless(keyword),
            anchored=True,
        )
        rules.append(Rule(detector, _action(entry, where), keyword_tag))
    if not rules:
        raise ConfigProblem(f"{where}: a content filter needs `patterns` or `blocked_words`")
    # A block is found before a mask is made for nothing.
    return sorted(rules, key=lambda rule: ACTIONS.index(rule.action))


def _has_word(lowered: str) -> Callable[[Scanned], bool]:
    """A keyword's gate: the text, folded as its regex reads it, holds it (C's string
    search)."""
    return lambda scanned: lowered in scanned.lower


def _list(value: Any, key: str, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigProblem(f"{where}: `{key}` must be a list of mappings")
    return value


def _action(entry: Mapping[str, Any], where: str) -> str:
    action = str(entry.get("action", "BLOCK")).upper()
    if action not in ACTIONS:
        raise ConfigProblem(f"{where}: action `{entry.get('action')}` is not one of {ACTIONS}")
    return action


def _detectors(entry: Mapping[str, Any], where: str) -> list[Detector]:
    kind = entry.get("pattern_type", "prebuilt")
    if kind == "prebuilt":
        name = entry.get("pattern_name")
        names = GROUPS.get(name, (name,)) if isinstance(name, str) else ()
        if not names or any(n not in PREBUILT for n in names):
            known = ", ".join([*sorted(PREBUILT), *sorted(GROUPS)])
            raise ConfigProblem(f"{where}: no prebuilt pattern `{name}` (there are: {known})")
        return [PREBUILT[n] for n in names]
    if kind == "regex":
        pattern, name = entry.get("pattern"), entry.get("name")
        if not isinstance(pattern, str) or not isinstance(name, str):
            raise ConfigProblem(f"{where}: a regex pattern needs `pattern` and `name`")
        try:
            return [Detector(name, re.compile(pattern))]
        except re.error as error:
            raise ConfigProblem(f"{where}: pattern `{name}` is not a regex: {error}") from None
    raise ConfigProblem(f"{where}: `pattern_type` must be prebuilt or regex, not `{kind}`")


def _words_file(path: Any, where: str) -> list[dict[str, Any]]:
    try:
        loaded = yaml.safe_load(Path(str(path)).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigProblem(f"{where}: `blocked_words_file` cannot be read: {error}") from None
    words = loaded.get("blocked_words") if isinstance(loaded, dict) else None
    return _list(words, "blocked_words_file", where)
