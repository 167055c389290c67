"""Which of the content filter's detectors may match a text, found in one pass in C.

Each detector has a prefilter: a Hyperscan pattern over the text's UTF-8 bytes that
matches wherever the detector's own regex could (a necessary condition, looser than the
regex: no word boundary, no lookaround, often only the literal the regex holds). One scan
of a text by all of them (Hyperscan's literal matcher, a few instructions a byte, where
each detector's search in Python cost more than the scan) says which detectors to run;
those run their own regex and checks as before, so what matches is what the regex matches.

A prefilter is written as a regex of bytes in which:
- `\\d` is an ASCII digit: a text with a decimal digit of another script (which a str
  regex's `\\d` matches) fires every prefilter with a `\\d`;
- `(?i)` at its start ignores the case of ASCII letters only: a text with a letter that
  is not ASCII which a regex ignoring case reads as an ASCII one (`CASE_FOLDS`) fires
  every such prefilter;
- `\\w` and `[\\w-]` match a byte of any character that is not ASCII as well (which may
  be a word's), each of them: a count of them is written `{m,}`.
Literals and classes of ASCII, and these, keep Hyperscan on its literal matcher: a
pattern without a literal (a run of digits, of letters) is run as an automaton over the
whole text, several times the cost of all the literals.

An anchored detector's prefilter reports every match (not the first alone), and in an
ASCII text (where a byte's offset is its character's) the last character of each is an
anchor: the detector's regex runs only in windows around its anchors. This costs the scan
nothing measurable (Hyperscan looks for the literals either way), where finding the same
places again in Python (a search for each digit, lowering the text for an injection word)
cost more than the scan.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Sequence

import hyperscan

WORD = rb"[0-9A-Za-z_\x80-\xff]"  # \w
WORD_OR_DASH = rb"[0-9A-Za-z_\x80-\xff\-]"  # [\w-]
IGNORE_CASE = b"(?i)"

# The characters that are not ASCII which a regex ignoring case takes for an ASCII one
# (tests/test_content_filter_reference.py finds them all among every code point): dotted
# capital I and dotless i are an `i`, long s an `s`, the Kelvin sign a `k`.
CASE_FOLDS = {"i": "\u0130\u0131", "s": "\u017f", "k": "\u212a"}


def caseless(*literals: str) -> bytes:
    """A pattern that matches any of `literals` wherever a regex of it that ignores case
    does (Python's `re.I`: one character for each)."""
    if all(literal.isascii() for literal in literals):
        return IGNORE_CASE + b"|".join(_escaped(literal) for literal in literals)
    return b"|".join(b"".join(map(_caseless_char, literal)) for literal in literals)


def _caseless_char(char: str) -> bytes:
    if not char.isascii():
        # Whatever it matches that is not ASCII is some bytes of those; an ASCII letter it
        # matches (the Kelvin sign matches `k`) is named.
        ascii_ = "".join(c for c in map(chr, range(128)) if _same_ignoring_case(char, c))
        return b"(?:" + b"".join(_escaped(c) + b"|" for c in ascii_) + rb"[\x80-\xff]+)"
    variants = {char, char.lower(), char.upper(), *CASE_FOLDS.get(char.lower(), "")}
    return b"(?:" + b"|".join(_escaped(v) for v in sorted(variants)) + b")"


def _same_ignoring_case(pattern_char: str, char: str) -> bool:
    return re.fullmatch(re.escape(pattern_char), char, re.IGNORECASE) is not None


def _escaped(text: str) -> bytes:
    """`text`'s UTF-8, each byte but a letter or a digit escaped (a metacharacter too)."""
    return b"".join(
        bytes([byte]) if chr(byte).isalnum() and byte < 128 else b"\\x%02x" % byte
        for byte in text.encode("utf-8")
    )


@functools.cache
def foreign_digits() -> bytes:
    """Every decimal digit that is not ASCII (a `\\d` of a str regex, Python's own list),
    as an alternation of their UTF-8 bytes: a text without one is scanned for ASCII
    digits alone (`Scanned.gated`)."""
    digits = [char for char in map(chr, range(0x80, 0x110000)) if char.isdecimal()]
    return b"|".join(_escaped(digit) for digit in digits)


class Prefilter:
    """One Hyperscan database of the prefilters of a list of detectors (None: one
    without a prefilter, always run). A scan's mask: bit 0, the text has a digit that is
    not ASCII; bit i + 1, the i-th detector may match. `anchors[i]`: the pattern whose
    matches anchor the i-th detector (None: none; most often its prefilter itself)."""

    def __init__(
        self, prefilters: Sequence[bytes | None], anchors: Sequence[bytes | None] = ()
    ) -> None:
        self.always = 0
        by_digits, by_case = 1, 0  # what a foreign digit fires, and a folding letter
        patterns: dict[tuple[bytes, int], int] = {}
        anchor_keys: list[tuple[bytes, int] | None] = []
        for index, prefilter in enumerate(prefilters):
            bit = 1 << (index + 1)
            anchor = anchors[index] if index < len(anchors) else None
            if prefilter is None:
                self.always |= bit
                anchor_keys.append(None)
                continue
            if rb"\d" in prefilter:
                by_digits |= bit
            if prefilter.startswith(IGNORE_CASE):
                by_case |= bit
            # Once it matched, a pattern is not looked for again, unless its every
            # match is an anchor.
            key = _key(prefilter, single=anchor != prefilter)
            patterns[key] = patterns.get(key, 0) | bit
            anchor_keys.append(None if anchor is None else _key(anchor, single=False))
        # An ASCII text cannot match the two patterns of bytes that are not ASCII (a
        # foreign digit, a folding letter): it is scanned by a database without them,
        # whose literal matcher has hundreds fewer literals (about half the scan's cost).
        # It alone has the anchors that are not a prefilter (they fire nothing).
        ascii_patterns = dict(patterns)
        for anchor_key in anchor_keys:
            if anchor_key is not None:
                ascii_patterns.setdefault(anchor_key, 0)
        extra = {(foreign_digits(), SINGLE): by_digits}
        if by_case:
            folding = "".join(CASE_FOLDS.values())
            extra[(b"|".join(map(_escaped, folding)), SINGLE)] = by_case
        for key, mask in extra.items():
            patterns[key] = patterns.get(key, 0) | mask
        # The database's pattern ids in one order for every list of the same patterns:
        # filters with the same detectors (in any order, with any actions) share one.
        compiled = tuple(sorted(patterns))
        self._masks = [patterns[key] for key in compiled]
        # What a scan that failed fires: every detector, and the digits' bit (fail closed).
        self._every = functools.reduce(operator.or_, self._masks, self.always | 1)
        self._database = _database(compiled)
        ascii_compiled = tuple(sorted(ascii_patterns))
        self._ascii_masks = [ascii_patterns[key] for key in ascii_compiled]
        # (None: no detector has a prefilter, and Hyperscan compiles no empty database.)
        self._ascii_database = _database(ascii_compiled) if ascii_compiled else None
        # Each detector's anchors in a scan of an ASCII text: its pattern's id there.
        ids = {key: id_ for id_, key in enumerate(ascii_compiled)}
        self.anchor_of: tuple[int | None, ...] = tuple(
            None if key is None else ids[key] for key in anchor_keys
        )
        self._anchor_ids = frozenset(id_ for id_ in self.anchor_of if id_ is not None)

    def fired(self, text: str) -> int:
        """The detectors that may match `text` (`scan`'s mask)."""
        return self.scan(text)[0]

    def scan(self, text: str) -> tuple[int, dict[int, list[int]] | None]:
        """The detectors that may match `text`, and, if it is ASCII, the anchors found in
        it (by their pattern's id, `anchor_of`): the offsets of the last characters of
        the anchor patterns' matches, in order (a pattern without a match has none).
        A database's scratch space serves one scan at a time: scans run on the Trio
        thread only (a filter built in a worker thread, as a config check may, is never
        scanned there). A scan Hyperscan cannot finish, or that finds too many matches
        (`_Hits`), runs every detector without anchors: the filter is slower then,
        never blind."""
        if not text:  # (Hyperscan refuses no data)
            return self.always, None
        if text.isascii():
            database, masks = self._ascii_database, self._ascii_masks
            if database is None:
                return self.always, None
            data = text.encode("ascii")
        else:
            database, masks = self._database, self._masks
            data = text.encode("utf-8", "surrogatepass")  # a lone surrogate is 3 bytes
        hits = _Hits(HITS + len(data) // HITS_BYTES)
        try:
            database.scan(data, match_event_handler=_hit, context=hits)
        except hyperscan.error:  # (a scan stopped at its limit too: ScanTerminated)
            return self._every, None
        mask = self.always
        if masks is not self._ascii_masks:  # offsets of bytes, not of characters
            for pattern, _ in hits:
                mask |= masks[pattern]
            return mask, None
        anchors: dict[int, list[int]] = {}
        anchor_ids = self._anchor_ids
        for pattern, end in hits:
            mask |= masks[pattern]
            if pattern not in anchor_ids:  # (a prefilter's first match alone: no anchor)
                continue
            places = anchors.get(pattern)
            if places is None:
                anchors[pattern] = [end - 1]
            else:
                places.append(end - 1)
        for places in anchors.values():
            places.sort()  # (Hyperscan reports by end offset, mostly: made certain)
        return mask, anchors


SINGLE = hyperscan.HS_FLAG_SINGLEMATCH
# How many matches a scan notes before it stops: some, and one for each `HITS_BYTES` of
# the text (a prompt's few dozen; a text of code's every version number, and `print`,
# an injection's starting word, on each line).
HITS = 64
HITS_BYTES = 8


class _Hits(list[tuple[int, int]]):
    """A scan's matches (pattern id, end), up to `limit` of them: a text dense with
    them (a run of digits, which a card's prefilter matches at each from the 13th) stops
    its scan rather than hold a tuple and an anchor for each."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit


def _key(pattern: bytes, *, single: bool) -> tuple[bytes, int]:
    """A prefilter as it is compiled: its pattern over bytes and its flags."""
    flags = SINGLE if single else 0
    if pattern.startswith(IGNORE_CASE):
        pattern = pattern.removeprefix(IGNORE_CASE)
        flags |= hyperscan.HS_FLAG_CASELESS
    return _over_bytes(pattern), flags


@functools.lru_cache(maxsize=64)
def _database(patterns: tuple[tuple[bytes, int], ...]) -> hyperscan.Database:
    """The patterns (each with its flags) compiled, id i the i-th: some 0.2 s of
    Hyperscan's compiler for the prebuilt detectors, paid once a process for each set,
    not at every filter a reload or a team's guardrails build."""
    database = hyperscan.Database()
    database.compile(
        expressions=[pattern for pattern, _ in patterns],
        ids=list(range(len(patterns))),
        flags=[flags for _, flags in patterns],
    )
    return database


def _over_bytes(pattern: bytes) -> bytes:
    """A prefilter as Hyperscan reads it (`\\d`, `\\w` and `[\\w-]` as above)."""
    return pattern.replace(rb"[\w-]", WORD_OR_DASH).replace(rb"\w", WORD).replace(rb"\d", b"[0-9]")


def _hit(pattern: int, start: int, end: int, flags: int, hits: object) -> bool:
    """Hyperscan's callback on a prefilter's match: its id and end noted (`scan`'s
    list); true, which stops the scan, once they are more than its limit."""
    if not isinstance(hits, list):
        return False
    hits.append((pattern, end))
    return isinstance(hits, _Hits) and len(hits) > hits.limit


@functools.cache
def prefilter_of(pattern: bytes, anchor: bytes | None) -> Prefilter:
    """One pattern's prefilter (and its anchors'), for a detector run alone
    (`Detector.find`)."""
    return Prefilter([pattern], [anchor])
