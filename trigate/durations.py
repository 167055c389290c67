"""LiteLLM's durations: "30s", "15m", "12h", "30d" (and "1w", "1mo")."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mo|s|m|h|d|w)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError names what was expected."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(
            f"invalid duration {text!r}: expected a positive number and a unit, "
            'as in "30s", "15m", "12h", "30d"'
        )
    return float(match.group(1)) * _UNITS[match.group(2)]
