"""Masks: spans of text replaced by a tag, and, where a guardrail asks for the answer to
be unmasked (Presidio's `output_parse_pii`), by a placeholder that the answer's text is
given back through.

A placeholder is minted per request and never one that already occurs in the text it
masks, so unmasking gives back exactly the original text, whatever that text was.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """What a detector found: `text[start:end]`, an entity type, the tag it masks to."""

    start: int
    end: int
    entity: str
    tag: str


def merged(spans: Iterable[Span]) -> list[Span]:
    """The spans in order, an overlapping one dropped (the earlier, longer one wins)."""
    ordered = sorted(spans, key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in ordered:
        if span.end <= span.start:
            continue
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return kept


def apply(text: str, spans: Sequence[Span], vault: Vault | None = None) -> str:
    """`text` with each span replaced by its tag, or by a placeholder `vault` mints."""
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for span in merged(spans):
        parts.append(text[position : span.start])
        original = text[span.start : span.end]
        parts.append(vault.placeholder(span.entity, original, text) if vault else span.tag)
        position = span.end
    parts.append(text[position:])
    return "".join(parts)


@dataclass(slots=True)
class Vault:
    """One request's placeholders and what they stand for."""

    originals: dict[str, str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)

    def placeholder(self, entity: str, original: str, text: str) -> str:
        for known, value in self.originals.items():
            if value == original and known.startswith(f"<{entity}_"):
                return known
        count = self._counts.get(entity, 0)
        while True:
            count += 1
            candidate = f"<{entity}_{count}>"
            if candidate not in text and candidate not in self.originals:
                break
        self._counts[entity] = count
        self.originals[candidate] = original
        return candidate

    def unmask(self, text: str) -> str:
        """`text` with every placeholder given back its original, longest first (so that
        `<EMAIL_12>` is never read as `<EMAIL_1>` followed by `2>`)."""
        if not self.originals or "<" not in text:
            return text
        for placeholder in sorted(self.originals, key=len, reverse=True):
            if placeholder in text:
                text = text.replace(placeholder, self.originals[placeholder])
        return text


def replacements(original: str, masked: str) -> list[tuple[str, str]]:
    """What a guardrail that answers with masked text replaced, as (original, mask)
    pairs: used to mask the same text wherever it is logged."""
    if original == masked:
        return []
    matcher = difflib.SequenceMatcher(None, original, masked, autojunk=False)
    return [
        (original[a1:a2], masked[b1:b2])
        for op, a1, a2, b1, b2 in matcher.get_opcodes()
        if op in ("replace", "delete") and a2 > a1
    ]
