"""Credentials taken out of what admin and key routes show: fields named as one, the
process's known credentials, key-shaped text, and the credentials a URL or a command
line can carry. Model management (trigate/api/model_admin.py), the MCP server routes
and the guardrail listings all show configuration through it, so that a credential
nested anywhere in it never leaves."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from trigate.errors import secrets

REDACTED = "[redacted]"
# A field whose name says it holds a credential. Not `key` alone (LiteLLM's
# `model_info.key` names the price-table entry) nor `*_per_token` (a price).
SECRET_NAME = re.compile(
    r"api[_-]?key|secret|password|passwd|credential|private[_-]key|authorization"
    r"|(?:access|refresh|session|ad|auth|bearer|id)[_-]token$",
    re.IGNORECASE,
)
# A command-line flag whose value is a credential (`--api-key X`, `--token=X`).
_SECRET_FLAG = re.compile(
    r"^--?[\w-]*(?:key|token|secret|password|passwd|credential|auth)", re.IGNORECASE
)


def is_secret_field(name: Any, hidden: Collection[str] = ()) -> bool:
    """Whether a field named `name` holds a credential (or is one of `hidden`, whose
    values may carry one, say a mapping of headers)."""
    return isinstance(name, str) and (name in hidden or bool(SECRET_NAME.search(name)))


def without_secrets(value: Any, hidden: Collection[str] = (), *, urls: bool = False) -> Any:
    """`value` with each field named as a credential, and each whole string that is one
    of the process's credentials, replaced by `[redacted]`; in other strings, what
    `secrets.redact` takes (a credential standing alone, anything shaped like an API
    key). With `urls`, a URL's password and query values too."""
    if isinstance(value, dict):
        return {
            name: REDACTED
            if is_secret_field(name, hidden) and field is not None
            else without_secrets(field, hidden, urls=urls)
            for name, field in value.items()
        }
    if isinstance(value, list):
        return [without_secrets(item, hidden, urls=urls) for item in value]
    if isinstance(value, str):
        if secrets.known(value):
            return REDACTED
        return secrets.redact(url_without_credentials(value) if urls else value)
    return value


def url_without_credentials(text: str) -> str:
    """An http(s) URL without its password and its query's values (an API key often
    rides in `?key=`); any other text as it is."""
    if not text.startswith(("http://", "https://")):
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        query = urlencode([(name, REDACTED) for name, _ in parse_qsl(query, True)], safe="[]")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def args_without_secrets(args: Sequence[str]) -> list[str]:
    """A command line without the values of its credential flags (`--token X`,
    `--api-key=X`), URLs' credentials, or key-shaped text."""
    shown: list[str] = []
    after_flag = False
    for arg in args:
        flag, equals, _ = arg.partition("=")
        if after_flag and not arg.startswith("-"):
            shown.append(REDACTED)
        elif equals and _SECRET_FLAG.match(flag):
            shown.append(f"{flag}={REDACTED}")
        else:
            shown.append(without_secrets(arg, urls=True))
        after_flag = not equals and bool(_SECRET_FLAG.match(arg))
    return shown
