"""What a user the gateway makes by itself starts with: LiteLLM's
`litellm_settings.default_internal_user_params`.

Two paths make users no admin asked for: SSO sign-in (trigate/ui/signin.py) and JWT
auth's `user_id_upsert` (trigate/jwt_auth.py). LiteLLM gives both the same defaults
(its `get_user_object` updates a JWT user's new row with them, as its SSO sign-in
does), and so does trigate, from the one mapping read here. The defaults are checked
whole at start-up: a field trigate would not give, or a value `/user/new` would refuse,
stops it, rather than be dropped or fail every sign-in. Without `models` a new user gets
LiteLLM's `no-default-models`: no model outside a team until an admin grants some,
since any account the identity provider knows could otherwise spend on every model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.config import ConfigError
from trigate.durations import parse_duration
from trigate.limits import NO_DEFAULT_MODELS
from trigate.roles import Role
from trigate.store import Row

# The fields of LiteLLM's `default_internal_user_params` a new user is given.
NEW_USER_FIELDS = frozenset(
    {"user_role", "models", "max_budget", "budget_duration", "rpm_limit", "tpm_limit"}
)
WHERE = "litellm_settings.default_internal_user_params"
_ROLE_NAMES = frozenset(role.value for role in Role)


def new_user_defaults(litellm_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The checked defaults, `models` always among them."""
    given = litellm_settings.get("default_internal_user_params") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{WHERE}: expected a mapping")
    unknown = sorted(set(given) - NEW_USER_FIELDS)
    if unknown:
        raise ConfigError(f"{WHERE}: trigate does not act on {', '.join(unknown)}; remove it")
    if "user_role" in given and given["user_role"] not in _ROLE_NAMES:
        raise ConfigError(f"{WHERE}.user_role: {given['user_role']!r} is not a LiteLLM role")
    models = given.get("models")
    if "models" in given and (
        not isinstance(models, list) or not all(isinstance(m, str) for m in models)
    ):
        raise ConfigError(f"{WHERE}.models: expected a list of model names")
    _check_limits(given)
    return {"models": [NO_DEFAULT_MODELS], **given}


def _check_limits(given: Mapping[str, Any]) -> None:
    """The budget and rate limits, as `/user/new` would take them."""
    budget = given.get("max_budget")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0
    ):
        raise ConfigError(f"{WHERE}.max_budget: expected a number of at least 0")
    for name in ("rpm_limit", "tpm_limit"):
        limit = given.get(name)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ConfigError(f"{WHERE}.{name}: expected a whole number of at least 0")
    duration = given.get("budget_duration")
    if duration is not None:
        try:
            parse_duration(str(duration))
        except ValueError as error:
            raise ConfigError(f"{WHERE}.budget_duration: {error}") from None


def new_user_row(defaults: Mapping[str, Any], user_id: str, email: str | None, now: float) -> Row:
    """The stored row of a user made with `defaults`, as `/user/new` would store it: its
    budget window's first reset `budget_duration` from now."""
    row: Row = {
        **defaults,
        "user_id": user_id,
        "user_email": email,
        "metadata": {},
        "created_at": now,
        "updated_at": now,
    }
    duration = defaults.get("budget_duration")
    if duration:
        row["budget_reset_at"] = now + parse_duration(str(duration))
    return row
