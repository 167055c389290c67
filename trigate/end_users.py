"""End users (LiteLLM's customers): whom a model request is for, and what binds them.

A request names its end user where LiteLLM looks for one, the first found winning: the
`x-litellm-customer-id` or `x-litellm-end-user-id` header; the body's `user` (OpenAI's
field), `litellm_metadata.user`, `metadata.user_id` (Anthropic's) or
`safety_identifier` (the Responses API's). The name is read from the body as the client
sent it, before any surface translates it, so every model route reads it alike.

A customer configured under that name (`/customer/*`) joins the request's caller:
`blocked` refuses the request, and its budget and rate limits are admitted together with
the key's, team's and user's, in the same step and through the same shared state
(`trigate.limits`: one Redis script across workers and instances, spend from the
store). Its cost is billed to it through the spend log's `end_user` column. A name no
customer has binds nothing, but is still written to the spend log. The master key's
requests are bound too: a customer's budget is its own, whoever calls for it.

Looking a customer up costs a cache lookup (the authenticator's, invalidated fleet-wide
when a customer changes). While no customer is configured at all, not even that: whether
any is, is read from the store at most every `RECHECK` seconds, and is known at once
when any process of the fleet writes one (with Redis; without it, within `RECHECK`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from trigate.auth import Authenticator, Caller
from trigate.errors import GatewayError, InvalidRequest, echoed
from trigate.store import CUSTOMERS, Store, StoreUnavailable

# Headers LiteLLM reads an end user from, before the body.
END_USER_HEADERS = ("x-litellm-customer-id", "x-litellm-end-user-id")
# Body fields, (container, field) or (field, None), in LiteLLM's order after `user`.
_NESTED = (("litellm_metadata", "user"), ("metadata", "user_id"))
# How long "no customer is configured" is believed before the store is asked again.
RECHECK = 5.0


class EndUserBlocked(GatewayError):
    """LiteLLM's answer to a blocked customer: a 400, which no SDK retries."""

    status = 400
    type = "invalid_request_error"
    code = "end_user_blocked"


def end_user_of(body: dict[str, Any], headers: Mapping[str, str]) -> str | None:
    """The end user a request names, where LiteLLM looks for one; None if none. Every
    model request asks, so a request naming none is answered in a few lookups."""
    if "x-litellm-customer-id" in headers or "x-litellm-end-user-id" in headers:
        for name in END_USER_HEADERS:
            value = headers.get(name, "").strip()
            if value:
                return value
    user = body.get("user")
    if isinstance(user, str):
        if user:
            return user
    elif user is not None:
        raise InvalidRequest("`user` must be a string.", param="user")
    if "metadata" in body or "litellm_metadata" in body or "safety_identifier" in body:
        return _named_in_body(body)
    return None


def _named_in_body(body: dict[str, Any]) -> str | None:
    """LiteLLM's places after `user`: `litellm_metadata.user`, `metadata.user_id`,
    `safety_identifier`."""
    for container, field in _NESTED:
        holder = body.get(container)
        if isinstance(holder, dict):
            value = holder.get(field)
            if isinstance(value, str) and value:
                return value
    identifier = body.get("safety_identifier")
    if isinstance(identifier, str) and identifier:
        return identifier
    return None


class EndUsers:
    """One worker's view of the configured customers."""

    def __init__(self, auth: Authenticator, store: Store) -> None:
        self._auth = auth
        self._store = store
        self._configured: bool | None = None
        self._known_until = -float("inf")

    def written(self, kind: str, key: str) -> None:
        """A customer was written, here (`Store.watch`) or by another process of the
        fleet (`Changes.listen`): it exists from now on."""
        if kind == CUSTOMERS.kind:
            self._configured = True
            self._known_until = trio.current_time() + RECHECK

    def resync(self) -> None:
        """Changes may have gone unheard: ask the store again at the next request."""
        self._known_until = -float("inf")

    async def bind(self, caller: Caller) -> None:
        """Attach the customer row of the caller's end user (`caller.end_user_id`, named
        by `end_user_of`) when one is configured; a blocked customer is refused here,
        before anything is admitted. An id with a NUL is no customer's (`/customer/new`
        refuses one) and one PostgreSQL could not be asked for."""
        end_user_id = caller.end_user_id
        if end_user_id is None or "\x00" in end_user_id or not await self._any_configured():
            return
        row = await self._auth.row(CUSTOMERS.kind, end_user_id)
        if row is None:
            return
        if row["blocked"]:
            raise EndUserBlocked(
                f"User blocked from making LLM API Calls. User={echoed(end_user_id)}",
                param="user",
            )
        caller.end_user = row

    async def _any_configured(self) -> bool:
        now = trio.current_time()
        if self._configured is not None and now < self._known_until:
            return self._configured
        try:
            configured = bool(await self._store.select(CUSTOMERS.kind, {}, limit=1))
        except StoreUnavailable:
            # Fail closed: a database that cannot say keeps the last answer, and with none
            # yet the request waits for one (503) rather than escape a customer's limits.
            if self._configured is None:
                raise
            configured = self._configured
        self._configured = configured
        self._known_until = now + RECHECK
        return configured
