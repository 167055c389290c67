"""The embedded content filter's detectors: patterns that need no service.

PII (email, phone, credit cards checked by Luhn, IBANs checked by mod 97, IP addresses,
US SSNs), secrets (cloud keys, private keys, bearer tokens, API keys, JWTs, and any long
high-entropy token), and a prompt-injection heuristic. Each is a regular expression with,
where the shape alone says too little, a check of the match.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from trigate.guardrails.prefilter import caseless, prefilter_of


class Scanned:
    """One text as the detectors scan it, with what their gates ask computed once: its
    lower case, and the windows around its digits and its `@`s. Scanning a 2,000-token
    prompt with every regex costs many times a proxied call; most detectors need a
    digit, an `@` or a literal, which C's string search finds at a fraction of that."""

    __slots__ = ("_around", "_found", "_gated", "_lower", "_places", "_windows", "text")

    def __init__(self, text: str, *, foreign_digits: bool = True) -> None:
        self.text = text
        # Without a digit that is not ASCII (the prefilter says), the text is its own.
        self._gated: str | None = None if foreign_digits else text
        self._lower: str | None = None
        self._found: dict[str, list[int]] = {}
        self._places: dict[Near, tuple[list[int], int]] = {}
        self._windows: dict[tuple[Near, int], list[tuple[int, int]]] = {}
        self._around: dict[tuple[int, int, int], list[tuple[int, int]]] = {}

    @property
    def lower(self) -> str:
        """The text in lower case as a regex that ignores case reads it (`fold`)."""
        if self._lower is None:
            self._lower = fold(self.text)
        return self._lower

    @property
    def gated(self) -> str:
        """The text as the gates and the windows search it: each decimal digit that is not
        ASCII made a `0`, character for character. A detector's `\\d` matches every
        script's digits (Arabic-Indic, fullwidth...), while the gates search for ASCII
        ones: without this, a card or an SSN written in other digits had no window, and
        a window cut into a run of them could start a match where a whole-text scan
        would not."""
        if self._gated is None:
            text = self.text
            self._gated = text if text.isascii() else _DIGIT.sub("0", text)
        return self._gated

    def found(self, char: str) -> list[int]:
        """Where `char` is, found once for every gate that asks (`starts_near`)."""
        found = self._found.get(char)
        if found is None:
            found = self._found[char] = []
            at = self.text.find(char)
            while at != -1:
                found.append(at)
                at = self.text.find(char, at + 1)
        return found

    def windows(self, near: Near, margin: int) -> list[tuple[int, int]]:
        """The spans of text within `margin` of any of the characters `near` (or of the
        places `near` finds), merged and widened to whitespace, so that a match (and its
        word boundaries) lies whole in one of them."""
        found = self._windows.get((near, margin))
        if found is None:
            places = self._places.get(near)
            if places is None:
                # One place found for characters stands for those up to `STRIDE` after
                # it: its window reaches that much further.
                places = self._places[near] = (
                    (_places(self.gated, near), STRIDE)
                    if isinstance(near, str)
                    else (near(self), 0)
                )
                places[0].sort()  # once, for every margin's windows
            positions, stride = places
            found = _windows(self.text, positions, margin, margin + stride)
            self._windows[(near, margin)] = found
        return found

    def around(self, anchors: list[int], before: int, after: int) -> list[tuple[int, int]]:
        """The windows from `before` characters before each anchor (they are sorted) to
        `after` after it, as `windows` makes them: found once for the detectors that
        share a prefilter (the cards) and their reach."""
        key = (id(anchors), before, after)  # (the scan's anchors outlive this text's scan)
        found = self._around.get(key)
        if found is None:
            found = self._around[key] = _windows(self.text, anchors, before, after)
        return found


# The letters other than their own that a regex ignoring case takes for an ASCII one,
# and whose lower case is not it: dotless i (U+0131) is an `i` to it, long s (U+017F) an `s`.
_FOLDS = str.maketrans({"\u0131": "i", "\u017f": "s"})


def fold(text: str) -> str:
    """`text` in lower case, character for character (a position in it is the same
    position in the text, which the gates' windows rely on), with each letter a regex
    ignoring case matches an ASCII letter by made that letter: a gate searching the
    folded text for a word finds every spelling the detector's regex would match."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered
    if len(lowered) != len(text):
        # A character whose lower case is longer (Turkish "İ" lowers to "i" and a dot)
        # would shift every position after it: each keeps its first letter.
        lowered = "".join([char.lower()[0] for char in text])
    return lowered.translate(_FOLDS)


# How far a detector's match may reach from the character that gates it, by default
# (an IBAN with its spaces is the longest: 44 characters). A match without whitespace
# needs none: its window is widened to the whitespace around it. The detectors near a
# digit take one of three margins (0, 21, 44), each the longest its detectors' matches
# need: each margin's windows are found once, for all of its detectors. (One margin for
# all costs the regexes more in their wider windows than the Python it saves.)
MARGIN = 48
# Characters found one in each `STRIDE` of each: a window covers the rest.
STRIDE = 16
DIGITS = "0123456789"
# Any script's decimal digit, as `\d` matches in a str pattern (`Scanned.gated`).
_DIGIT = re.compile(r"\d")


# Where a detector may match: near some characters, or near the places a function finds.
Near = str | Callable[[Scanned], list[int]]


def _places(text: str, chars: str) -> list[int]:
    """Where the characters are: one in each `STRIDE` of each, the rest lying within
    `STRIDE` after it (its window reaches that much further)."""
    positions: list[int] = []
    for char in chars:
        at = text.find(char)
        while at != -1:
            positions.append(at)
            at = text.find(char, at + STRIDE)
    return positions


def _windows(text: str, positions: list[int], margin: int, reach: int) -> list[tuple[int, int]]:
    """The text from `margin` before each position to `reach` after it, widened to
    whitespace, then merged (windows merged before widening may overlap after it, and
    a match in both would be found twice). Spans that overlap are joined before they are
    widened, which widens the same text as widening each: a cluster of digits is
    widened once, not once for each digit in it."""
    if not positions:
        return []
    merged: list[tuple[int, int]] = []
    size = len(text)
    start, end = positions[0] - margin, positions[0] + reach + 1
    for at in positions:  # in order (`Scanned.windows`)
        if at - margin <= end:  # joins the span before
            if at + reach + 1 > end:
                end = at + reach + 1
            continue
        _add_window(merged, text, start, min(size, end))
        start, end = at - margin, at + reach + 1
    _add_window(merged, text, start, min(size, end))
    return merged


def _add_window(merged: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    """A span widened to whitespace after the windows before it, joined to the last of
    them where the two meet. A span that starts within the last is widened to the right
    alone: a text without whitespace is searched end to end once, not once for each of
    many windows (an anchor at every few characters)."""
    start = max(0, start)
    if merged and start <= merged[-1][1]:
        last_start, last_end = merged[-1]
        if end > last_end:  # (else it ends where the last does: the ends grow in order)
            merged[-1] = (last_start, _right_edge(text, end))
        return
    start, end = _left_edge(text, start), _right_edge(text, end)
    if merged and start <= merged[-1][1]:
        start = merged.pop()[0]
    merged.append((start, end))


def _left_edge(text: str, start: int) -> int:
    """Where the window that starts at `start` starts once widened to the whitespace
    before it (or the text's start), so that a regex's word boundary there is a real one.
    A newline is looked for only back to the nearest space."""
    space = text.rfind(" ", 0, start)
    return max(space, text.rfind("\n", space + 1, start)) + 1


def _right_edge(text: str, end: int) -> int:
    """Where the window that ends at `end` ends once widened to the whitespace after it
    (or the text's end). A newline is looked for only up to the nearest space."""
    space = text.find(" ", end)
    newline = text.find("\n", end, len(text) if space == -1 else space)
    after = newline if newline != -1 else space
    return len(text) if after == -1 else after


def starts_near(text: Scanned, char: str, prefixes: tuple[str, ...], offset: int = 0) -> bool:
    """Whether one of `prefixes` starts `offset` characters before an occurrence of
    `char` in `text` (the prefixes hold it there). A search for one character is C's
    `memchr`, several times faster than a search for a string, and the character is
    chosen rare in prose: an uppercase letter, `x`, `-`, `_`."""
    whole = text.text
    for at in text.found(char):  # noqa: SIM110 (any() over a generator costs its frame)
        if at >= offset and whole.startswith(prefixes, at - offset):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Detector:
    """A pattern, the check of what it matched, and what a text must have for the
    pattern to be tried at all: `prefilter` (None: none known), `gate` (None: always),
    and `near`, characters around which alone it can match (None: anywhere); or, where
    `anchored`, the places of its prefilter's matches."""

    name: str
    pattern: re.Pattern[str]
    # A check of a match's text; None: the shape is enough.
    valid: Callable[[str], bool] | None = None
    gate: Callable[[Scanned], bool] | None = None
    near: Near | None = None
    margin: int = MARGIN
    # A Hyperscan pattern over the text's UTF-8 that matches wherever `pattern` can
    # (`trigate.guardrails.prefilter`): the content filter scans a text once for all its
    # detectors' and runs only those whose prefilter matched.
    prefilter: bytes | None = None
    # The same regex written to start with what its match starts with, a literal or a
    # set, so that `re` skips to each candidate in C, where a leading `\b` makes it try
    # a match at every position of a window: what `scan` runs. A `\b` before a word
    # character X is written `X(?<!\wX)` (the character before X is not a word's).
    # tests/test_content_filter_reference.py checks it finds what `pattern` finds.
    fast: re.Pattern[str] | None = None
    # Whether each of its matches holds a match of its prefilter and lies within `margin`
    # of that match's last character (its prefilter is a part of its regex; a match
    # without whitespace has a margin of 0, its window widened to the whitespace around):
    # it then runs only around its prefilter's matches in an ASCII text (`Prefilter.scan`).
    anchored: bool = False
    # Where anchored: a pattern other than its prefilter whose matches anchor it (None:
    # its prefilter), which each of its matches holds (the words an injection's phrasing
    # starts with, where its prefilter is the words they end with).
    anchor: bytes | None = None
    # How far before and after an anchor its match may reach, where that differs from
    # `margin` either way (a phrasing that starts at its gating word).
    around: tuple[int, int] | None = None
    # How long its shortest match is: a window shorter cannot hold one (a window of
    # margin 0 is a word, most words are short, and a regex costs a call each).
    shortest: int = 0

    @property
    def anchors(self) -> bytes | None:
        """The pattern whose matches anchor it (None: it is not anchored)."""
        return (self.anchor or self.prefilter) if self.anchored else None

    def find(self, text: str) -> list[tuple[int, int]]:
        """The spans it matches, run alone (a list, not a generator: most texts give none,
        and a generator costs its frame even then)."""
        if self.prefilter is None:
            return self.scan(Scanned(text))
        prefilter = prefilter_of(self.prefilter, self.anchors)
        fired, anchors = prefilter.scan(text)
        if not fired & 2:
            return []
        scanned = Scanned(text, foreign_digits=bool(fired & 1))
        return self.scan(scanned, anchored(anchors, prefilter.anchor_of[0]))

    def scan(self, scanned: Scanned, anchors: list[int] | None = None) -> list[tuple[int, int]]:
        """The spans it matches in a text its prefilter matched (the content filter scans
        a text once for all its detectors'), around `anchors` where the scan found them."""
        whole = scanned.text
        if anchors is not None:
            before, after = self.around or (self.margin, self.margin)
            spans = scanned.around(anchors, before, after)
        elif self.gate is not None and not self.gate(scanned):
            return []
        elif self.near is None:
            spans = [(0, len(whole))]
        else:
            spans = scanned.windows(self.near, self.margin)
            if not spans:
                return []
        if self.shortest:
            spans = [span for span in spans if span[1] - span[0] >= self.shortest]
        valid = self.valid
        pattern = self.fast or self.pattern
        return [
            (match.start(), match.end())
            for start, end in spans
            for match in pattern.finditer(whole, start, end)
            if valid is None or valid(match.group())
        ]


# The anchors of a pattern without a match in an ASCII text (read only).
NO_PLACES: list[int] = []


def anchored(anchors: dict[int, list[int]] | None, pattern: int | None) -> list[int] | None:
    """A detector's anchors from a scan's (`Prefilter.scan`), by its anchor pattern's id:
    None where it has none to go by (not anchored; a text not ASCII; a failed scan)."""
    if pattern is None or anchors is None:
        return None
    return anchors.get(pattern, NO_PLACES)


def luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def ipv6_address(text: str) -> bool:
    """An IPv6 address with a digit in it: `add::b` in a program's text is not one."""
    return any(c.isdigit() for c in text) and ip_address(text)


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    length = len(text)
    return -sum(n / length * math.log2(n / length) for n in counts.values())


def high_entropy(text: str) -> bool:
    """A token that looks random: long, of letters and digits mixed, and of high entropy
    (a word, a path or a number is not)."""
    has_digit = any(c.isdigit() for c in text)
    has_upper = any(c.isupper() for c in text)
    has_lower = any(c.islower() for c in text)
    return has_digit and has_upper and has_lower and entropy(text) >= 4.0


_CARD = r"\b(?:\d[ -]?){12,18}\d\b"
# The prompt-injection heuristic's phrasings, each a regex that starts at a word.
_INJECTION_PHRASINGS = (
    r"(?:ignore|disregard|forget|override|bypass)\b[\w\s,]{0,30}?\b(?:previous|prior|above|"
    r"earlier|preceding|all|any|your|system)\b[\w\s]{0,20}?\b(?:instructions?|prompts?|rules|"
    r"directions|guidelines|context)\b",
    r"you are now (?:in )?(?:DAN|developer mode|jailbroken|unrestricted)\b",
    r"(?:reveal|print|show|repeat|output)\b[\w\s]{0,20}?\b(?:your|the) (?:system|hidden|"
    r"initial) (?:prompt|instructions)\b",
    r"jailbreak\b",
    r"do anything now\b",
    r"pretend (?:that )?you (?:are|have) no (?:rules|restrictions|guidelines)\b",
)
_INJECTION = "|".join(rf"\b{phrasing}" for phrasing in _INJECTION_PHRASINGS)


def _has_github_prefix(text: Scanned) -> bool:
    """`ghp_` (and its kin) or `github_pat_`, found at their first `_`."""
    return starts_near(text, "_", _GITHUB_PREFIXES, 3) or starts_near(
        text, "_", ("github_pat_",), 6
    )


_GITHUB_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")

# A word or phrase that any phrasing `_INJECTION` matches holds (in lower case): one of
# the first phrasing's nouns (the third's are among them), the second's and fifth's
# `... now`, "jailbreak", the sixth's "pretend"; with a letter of it that is rare in
# prose, found by `memchr` (several times cheaper than a search for the word), or ""
# where it has none and the word is searched for. Either search is C's, in the lowered
# text: one regex over the whole text costs more than all of them. (Where a text is not
# ASCII: an ASCII one's phrasings are found around `INJECTION_STARTERS`, its anchors.)
INJECTION_WORDS = (
    ("instruction", ""), ("prompt", ""), ("rules", ""), ("directions", ""),
    ("guidelines", ""), ("context", "x"), ("you are now", ""), ("jailbreak", "j"),
    ("anything now", ""), ("pretend", ""),
)  # fmt: skip

# How far an injection's phrasing reaches from the word that gates it (`_INJECTION`'s
# longest, its verb up to 30 + 20 characters and two words before its noun).
INJECTION_MARGIN = 128

# The words every phrasing starts with (its anchors in an ASCII text): an anchor, the
# last letter of one, is at most `INJECTION_BEFORE` characters after its match's start
# (the longest word's length less one), and its match ends at most `INJECTION_AFTER`
# after it (the first phrasing's longest: 30 + 9 + 20 + 12 characters after its verb,
# and a margin).
INJECTION_STARTERS = (
    "ignore", "disregard", "forget", "override", "bypass", "you are now", "reveal", "print",
    "show", "repeat", "output", "jailbreak", "do anything now", "pretend",
)  # fmt: skip
INJECTION_BEFORE = max(map(len, INJECTION_STARTERS)) - 1
INJECTION_AFTER = 80
# The phrasings, tried only where a word starts with a letter one of them starts with: a
# regex ignoring case has no literal to skip to, and tried every phrasing at every
# character of a window (some 950 instructions a character).
_FIRST_LETTERS = "".join(sorted({word[0] for word in INJECTION_STARTERS}))
_INJECTION_FAST = rf"\b(?=[{_FIRST_LETTERS}])(?:{'|'.join(_INJECTION_PHRASINGS)})"


def _injection_places(text: Scanned) -> list[int]:
    """Where a phrasing `_INJECTION` matches may be: its gating words."""
    lower = text.lower
    places: list[int] = []
    for word, rare in INJECTION_WORDS:
        if rare:
            offset = word.index(rare)
            at = lower.find(rare, offset)
            while at != -1:
                if lower.startswith(word, at - offset):
                    places.append(at - offset)
                at = lower.find(rare, at + 1)
        else:
            at = lower.find(word)
            while at != -1:
                places.append(at)
                at = lower.find(word, at + 1)
    return places


def _has_key(text: Scanned) -> bool:
    """Whether the text says "key" in any case (an AWS secret key's name ends so): its `k`
    is rare in prose, and found without lowering the text; a text that is not ASCII is
    lowered (a Kelvin sign is a `k` to a regex that ignores case)."""
    whole = text.text
    if not whole.isascii():
        return "key" in text.lower
    return starts_near(text, "k", _KEY_CASES) or starts_near(text, "K", _KEY_CASES)


_KEY_CASES = tuple(a + b + c for a in "kK" for b in "eE" for c in "yY")

# The cards' prefilter: any match of theirs is 13 digits or more, each after the last or
# after a space or a dash.
_CARD_PREFILTER = rb"\d(?:[ \-]?\d){12}"


PREBUILT: dict[str, Detector] = {
    detector.name: detector
    for detector in (
        Detector(
            "email",
            re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"),
            near="@",
            margin=0,
            prefilter=rb"@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2}",
            anchored=True,
        ),
        Detector(
            "phone",
            re.compile(
                r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}"
                r"[ .-]\d{3,4}\b"
            ),
            near=DIGITS,
            margin=21,
            prefilter=rb"\d{3}[ .\-]\d{3}",
            anchored=True,
        ),
        Detector(
            "credit_card",
            re.compile(_CARD),
            luhn,
            near=DIGITS,
            margin=44,
            fast=re.compile(r"\d(?<!\w\d)(?:[ -]?\d){12,18}\b"),
            prefilter=_CARD_PREFILTER,
            anchored=True,
        ),
        Detector(
            "visa",
            re.compile(r"\b4\d{3}(?:[ -]?\d{4}){3}\b"),
            luhn,
            near=DIGITS,
            margin=21,
            fast=re.compile(r"4(?<!\w4)\d{3}(?:[ -]?\d{4}){3}\b"),
            prefilter=_CARD_PREFILTER,
            anchored=True,
        ),
        Detector(
            "mastercard",
            re.compile(r"\b5[1-5]\d{2}(?:[ -]?\d{4}){3}\b"),
            luhn,
            near=DIGITS,
            margin=21,
            fast=re.compile(r"5(?<!\w5)[1-5]\d{2}(?:[ -]?\d{4}){3}\b"),
            prefilter=_CARD_PREFILTER,
            anchored=True,
        ),
        Detector(
            "amex",
            re.compile(r"\b3[47]\d{2}[ -]?\d{6}[ -]?\d{5}\b"),
            luhn,
            near=DIGITS,
            margin=21,
            fast=re.compile(r"3(?<!\w3)[47]\d{2}[ -]?\d{6}[ -]?\d{5}\b"),
            prefilter=_CARD_PREFILTER,
            anchored=True,
        ),
        Detector(
            "iban",
            re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
            iban,
            near=DIGITS,
            margin=44,
            fast=re.compile(
                r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"
            ),
            prefilter=rb"[A-Z]{2}\d{2}",
            anchored=True,
        ),
        Detector(
            "ipv4",
            re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
            ip_address,
            near=DIGITS,
            margin=0,
            fast=re.compile(r"\d(?<!\w\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}\b"),
            prefilter=rb"\d\.\d",
            anchored=True,
        ),
        Detector(
            "ipv6",
            re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
            ipv6_address,
            near=DIGITS,
            margin=0,
            prefilter=rb":[0-9A-Fa-f]{0,4}:",
            anchored=True,
        ),
        Detector(
            "us_ssn",
            re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
            near=DIGITS,
            margin=0,
            prefilter=rb"\d-\d{2}-\d",
            anchored=True,
        ),
        Detector(
            "aws_access_key",
            re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
            gate=lambda text: starts_near(text, "A", ("AKIA", "ASIA", "ABIA", "ACCA")),
            prefilter=rb"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",
            margin=0,
            anchored=True,
        ),
        Detector(
            "aws_secret_key",
            re.compile(r"(?i)\baws_?secret_?(?:access_?)?key\b[\s\"':=]{1,5}[A-Za-z0-9/+=]{40}\b"),
            gate=lambda text: _has_key(text) and "secret" in text.lower,
            prefilter=rb"(?i)aws_?secret_?(?:access_?)?key",
            # Its name's 21 characters before the anchor, 5 and the key's 40 after it.
            margin=48,
            anchored=True,
        ),
        Detector(
            "github_token",
            re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{40,})"),
            gate=_has_github_prefix,
            prefilter=rb"gh[pousr]_|github_pat_",
            margin=0,
            anchored=True,
        ),
        Detector(
            "google_api_key",
            re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
            gate=lambda text: starts_near(text, "A", ("AIza",)),
            prefilter=rb"AIza",
            margin=0,
            anchored=True,
        ),
        Detector(
            "slack_token",
            re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
            gate=lambda text: starts_near(text, "x", ("xox",)),
            prefilter=rb"xox[abposr]-",
            margin=0,
            anchored=True,
        ),
        Detector(
            "stripe_key",
            re.compile(r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}\b"),
            gate=lambda text: starts_near(text, "_", ("k_live_", "k_test_"), 1),
            prefilter=rb"[rs]k_(?:live|test)_",
            margin=0,
            anchored=True,
        ),
        Detector(
            "api_key",
            re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}"),
            gate=lambda text: starts_near(text, "-", ("sk-",), 2),
            prefilter=rb"sk-",
            margin=0,
            anchored=True,
        ),
        Detector(
            "private_key",
            re.compile(
                r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?"
                r"-----END (?:[A-Z]+ )*PRIVATE KEY-----"
            ),
            gate=lambda text: starts_near(text, "-", ("-----BEGIN ",)),
            prefilter=rb"-----BEGIN ",
        ),
        Detector(
            "bearer_token",
            re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*"),
            gate=lambda text: "bearer" in text.lower,
            prefilter=caseless("bearer"),
        ),
        Detector(
            "jwt",
            re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"),
            gate=lambda text: "eyJ" in text.text,
            prefilter=rb"eyJ[\w-]{8,}\.eyJ",
            margin=0,
            anchored=True,
        ),
        Detector(
            "high_entropy",
            re.compile(r"(?<![\w/+=-])[A-Za-z0-9/+_=-]{24,}(?![\w/+=-])"),
            high_entropy,
            near=DIGITS,  # it has a digit, and windows widen to whitespace: it is whole
            margin=0,
            shortest=24,
            prefilter=rb"[0-9]",
        ),
        Detector(
            "prompt_injection",
            re.compile(_INJECTION, re.IGNORECASE),
            fast=re.compile(_INJECTION_FAST, re.IGNORECASE),
            near=_injection_places,
            margin=INJECTION_MARGIN,
            prefilter=caseless(*(word for word, _ in INJECTION_WORDS)),
            anchored=True,
            anchor=caseless(*INJECTION_STARTERS),
            around=(INJECTION_BEFORE, INJECTION_AFTER),
        ),
    )
}

# What `patterns: [{pattern_type: prebuilt, pattern_name: ...}]` may name, grouped so a
# config can turn a family on by one name.
GROUPS: dict[str, tuple[str, ...]] = {
    "pii": ("email", "phone", "credit_card", "iban", "ipv4", "ipv6", "us_ssn"),
    "secrets": (
        "aws_access_key", "aws_secret_key", "github_token", "google_api_key", "slack_token",
        "stripe_key", "api_key", "private_key", "bearer_token", "jwt", "high_entropy",
    ),
}  # fmt: skip
