"""What a request's export sinks read beyond its spend row (`RecordDetails`): its
messages and answer, parameters, provider, and the key's and team's own `logging`
callbacks. Filled by the record stage only when a sink could read it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trigate.auth import Caller
from trigate.errors import GatewayError
from trigate.metrics import public_api_base
from trigate.spend import RecordDetails

if TYPE_CHECKING:
    from trigate.api.pipeline import Call

# Request fields that are not model parameters (LiteLLM's `model_parameters` hold the rest).
_NOT_PARAMETERS = frozenset({"model", "messages", "input", "prompt", "stream", "user"})
_CONTENT = ("messages", "input", "prompt")


def own_logging(caller: Caller) -> list[dict[str, Any]] | None:
    """The key's, then the team's, LiteLLM `logging` callbacks (their metadata's)."""
    if caller.key is None and caller.team is None:
        return None  # the master key's, on every request it makes: no rows to read
    found: list[dict[str, Any]] = []
    for row in (caller.key, caller.team):
        metadata = row.get("metadata") if row else None
        entries = metadata.get("logging") if isinstance(metadata, dict) else None
        if isinstance(entries, list):
            found += (entry for entry in entries if isinstance(entry, dict))
    return found or None


def record_details(
    call: Call, answer: Any, error: GatewayError | None, logging: list[dict[str, Any]] | None
) -> RecordDetails:
    body = call.body
    deployment = call.progress.deployment
    caller = call.caller
    messages = next((body[name] for name in _CONTENT if name in body), None)
    if answer is None and call.stream and error is None:
        answer = call.meter.text()
    params = deployment.params if deployment else None
    return RecordDetails(
        call_type=call.call_type,
        messages=messages,
        response=answer,
        model_parameters={k: v for k, v in body.items() if k not in _NOT_PARAMETERS},
        provider=params.provider if params else None,
        api_base=public_api_base(params.api_base) if params else None,
        error_class=type(error).__name__ if error else None,
        team_alias=caller.team.get("team_alias") if caller.team else None,
        user_email=caller.user.get("user_email") if caller.user else None,
        route=call.context.path,
        logging=logging,
    )
