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
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    pattern: re.Pattern[str]
    # A check of a match's text; None: the shape is enough.
    valid: Callable[[str], bool] | None = None

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        valid = self.valid
        for match in self.pattern.finditer(text):
            if valid is None or valid(match.group()):
                yield match.start(), match.end()


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
_INJECTION = (
    r"\b(?:ignore|disregard|forget|override|bypass)\b[\w\s,]{0,30}?\b(?:previous|prior|above|"
    r"earlier|preceding|all|any|your|system)\b[\w\s]{0,20}?\b(?:instructions?|prompts?|rules|"
    r"directions|guidelines|context)\b"
    r"|\byou are now (?:in )?(?:DAN|developer mode|jailbroken|unrestricted)\b"
    r"|\b(?:reveal|print|show|repeat|output)\b[\w\s]{0,20}?\b(?:your|the) (?:system|hidden|"
    r"initial) (?:prompt|instructions)\b"
    r"|\bjailbreak\b|\bdo anything now\b"
    r"|\bpretend (?:that )?you (?:are|have) no (?:rules|restrictions|guidelines)\b"
)

PREBUILT: dict[str, Detector] = {
    detector.name: detector
    for detector in (
        Detector("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")),
        Detector(
            "phone",
            re.compile(
                r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}"
                r"[ .-]\d{3,4}\b"
            ),
        ),
        Detector("credit_card", re.compile(_CARD), luhn),
        Detector("visa", re.compile(r"\b4\d{3}(?:[ -]?\d{4}){3}\b"), luhn),
        Detector("mastercard", re.compile(r"\b5[1-5]\d{2}(?:[ -]?\d{4}){3}\b"), luhn),
        Detector("amex", re.compile(r"\b3[47]\d{2}[ -]?\d{6}[ -]?\d{5}\b"), luhn),
        Detector(
            "iban",
            re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
            iban,
        ),
        Detector("ipv4", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), ip_address),
        Detector(
            "ipv6",
            re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
            ipv6_address,
        ),
        Detector("us_ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")),
        Detector("aws_access_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
        Detector(
            "aws_secret_key",
            re.compile(r"(?i)\baws_?secret_?(?:access_?)?key\b[\s\"':=]{1,5}[A-Za-z0-9/+=]{40}\b"),
        ),
        Detector(
            "github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{40,})")
        ),
        Detector("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
        Detector("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
        Detector("stripe_key", re.compile(r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}\b")),
        Detector("api_key", re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}")),
        Detector(
            "private_key",
            re.compile(
                r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?"
                r"-----END (?:[A-Z]+ )*PRIVATE KEY-----"
            ),
        ),
        Detector("bearer_token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*")),
        Detector("jwt", re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}")),
        Detector(
            "high_entropy",
            re.compile(r"(?<![\w/+=-])[A-Za-z0-9/+_=-]{24,}(?![\w/+=-])"),
            high_entropy,
        ),
        Detector("prompt_injection", re.compile(_INJECTION, re.IGNORECASE)),
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
