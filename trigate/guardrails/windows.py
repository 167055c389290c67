"""A window of stream text, changed as a whole, given back to the chunks it came in."""

from __future__ import annotations

import difflib


def redistribute(parts: list[str], changed: str) -> list[str]:
    """`changed` (the join of `parts`, with some spans replaced) cut back into as many
    parts: unchanged text stays in its part, and a replacement goes to the part where
    the text it replaced began, so the parts joined are `changed` and each chunk keeps
    what it carried."""
    original = "".join(parts)
    # The part each original character is in; the end belongs to the last part.
    owner: list[int] = []
    for index, part in enumerate(parts):
        owner.extend([index] * len(part))
    last = len(parts) - 1
    out = [""] * len(parts)
    matcher = difflib.SequenceMatcher(None, original, changed, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            for offset in range(a2 - a1):
                out[owner[a1 + offset]] += changed[b1 + offset]
        else:
            where = owner[a1] if a1 < len(owner) else max(last, 0)
            out[where] += changed[b1:b2]
    return out
