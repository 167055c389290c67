"""The cache key: a stable hash of a canonical form of what shapes an answer.

It covers the surface (chat, text completions, embeddings, Messages, Responses), the
model group as resolved, the scope's tenant, and the request body in OpenAI's shapes
(messages, tools, sampling parameters, response format, ...), serialized with sorted
keys at every depth, so that a client's JSON key order never changes it. It leaves out
what does not change the answer: `stream` and `stream_options` (a stream and a whole
answer serve each other), `user`, `metadata`, `store` and the request's ids (LiteLLM's
own fields are gone before this).

A Responses or Messages request is keyed on more than its chat form (`native_form`): a
native upstream is sent the request as its client sent it, and much of that has no
chat form (an image given by `file_id`, reasoning items, custom tools' calls, Anthropic's
`top_k` or a tool result's `is_error`), so two requests that differ only there must not
share an answer.
"""

from __future__ import annotations

import hashlib
from sys import getsizeof
from typing import Any

import orjson

# Body fields that never shape an answer's content.
UNKEYED = frozenset({
    "stream", "stream_options", "user", "metadata", "store", "safety_identifier",
    "prompt_cache_key", "request_id",
})  # fmt: skip
KEY_VERSION = 1
# What a Responses request's own form leaves out: only the stream flag, since a stream
# and a whole answer serve each other. A native upstream's Response echoes the rest
# (`metadata`, `user`, `store`, `safety_identifier`, `prompt_cache_key`), and a native
# entry is served as it came: another request's values would be handed out with it.
RESPONSES_UNKEYED = frozenset({"stream", "stream_options"})


def canonical(surface: str, group: str, tenant: str, body: dict[str, Any]) -> bytes:
    """The canonical form hashed: `{"v": KEY_VERSION, "surface": ..., "model": ...,
    "scope": ..., "body": ...}` with sorted keys at every depth and no whitespace."""
    return _form(surface, group, tenant, sorted_body(body))


def sorted_body(body: dict[str, Any]) -> bytes:
    """The body's part of the form: its keyed fields, sorted at every depth."""
    shaped = body if UNKEYED.isdisjoint(body) else _keyed(body, UNKEYED)
    try:
        return orjson.dumps(shaped, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # A key that is not a string (a hook's): written as one, by orjson's slower
        # option, which writes string keys alike (so a body's key is the same either way).
        return orjson.dumps(shaped, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _form(surface: str, group: str, tenant: str, written: bytes) -> bytes:
    """The form with the body's part already written: its keys sort as `body`, `model`,
    `scope`, `surface`, `v`, so the body comes first, then the rest as orjson sorts it."""
    rest = {"model": group, "scope": tenant, "surface": surface, "v": KEY_VERSION}
    return b'{"body":%b,%b' % (written, orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)[1:])


def _keyed(body: dict[str, Any], unkeyed: frozenset[str]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name not in unkeyed}


def native_form(surface: str, native: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """What keys a request in another API: the request in the client's own API (what a
    native upstream is sent; a Responses request's with the conversation it continues,
    as hooks left it), and its chat form as hooks left it (what any other deployment is
    sent: a hook may have changed it alone)."""
    unkeyed = RESPONSES_UNKEYED if surface == "responses" else UNKEYED
    return {surface: _keyed(native, unkeyed), "chat": _keyed(chat, UNKEYED)}


# The canonical forms whose digests are kept (`_Digests`), in bytes all told (each
# body's part, its digest's and its place in the dictionary: `KEPT_OVERHEAD`), and the
# largest body kept: a larger one's hashing is mostly its length, not its setup.
DIGESTS_KEPT_BYTES = 1 << 20
LARGEST_FORM_KEPT = 16 << 10
# What a kept form costs beyond its body's length and its group's and tenant's strings:
# the bytes object's header, the tuple holding them, the digest's 64-character string,
# and the dictionary's slot (measured: some 250 bytes).
KEPT_OVERHEAD = 300


class _Digests:
    """SHA-256 digests of the canonical forms hashed lately, by what they are made of:
    the surface, group and tenant, and the body's part (`sorted_body`). A hit is a
    request made again, so its form has been hashed before: a look-up (one pass of the
    interpreter's hash over the body's part) replaces OpenSSL's SHA-256, whose setup for
    each call costs a small request's key some 10 thousand instructions, and the rest
    of the form is written only for a digest not kept (some 4 thousand more).
    Bounded in bytes; once full it starts over, which costs a hashing each. A body's
    part is kept as a copy of its own length: orjson's bytes keep the buffer they were
    written in, some 4 KiB for a hundred bytes. It holds requests' text, in this
    worker's memory only, as the requests themselves did."""

    __slots__ = ("_bytes", "_kept")

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, str, bytes], str] = {}
        self._bytes = 0

    def hexdigest(self, surface: str, group: str, tenant: str, written: bytes) -> str:
        digest = self._kept.get((surface, group, tenant, written))
        if digest is None:
            digest = hashlib.sha256(_form(surface, group, tenant, written)).hexdigest()
            # The group and tenant may be strings of this request's own (a model name a
            # wildcard matched, a key's tenant), kept alive by the tuple: counted too.
            size = len(written) + getsizeof(group) + getsizeof(tenant) + KEPT_OVERHEAD
            if len(written) <= LARGEST_FORM_KEPT:
                if self._bytes + size > DIGESTS_KEPT_BYTES:
                    self._kept.clear()
                    self._bytes = 0
                self._kept[(surface, group, tenant, bytes(memoryview(written)))] = digest
                self._bytes += size
        return digest


_digests = _Digests()


def cache_key(
    surface: str, group: str, tenant: str, body: dict[str, Any], namespace: str | None
) -> str:
    """LiteLLM's form of a key: the hash in hex, after `namespace:` when there is one."""
    digest = _digests.hexdigest(surface, group, tenant, sorted_body(body))
    return f"{namespace}:{digest}" if namespace else digest
