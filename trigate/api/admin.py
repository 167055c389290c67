"""What the admin endpoints share: who may call them, body validation, row shaping.

The admin API keeps LiteLLM's paths and field names so that scripts and UIs
written for LiteLLM's proxy keep working. Unknown fields are ignored, as
LiteLLM's own clients send many. Who may call which route is LiteLLM's role
matrix, kept in one table (trigate/roles.py) and checked here, by `authorized`,
before anything else a handler does.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from quart import request

from trigate.api.jsonio import json_body
from trigate.auth import Caller, hash_key
from trigate.clock import wall_time
from trigate.durations import parse_duration
from trigate.errors import InvalidRequest, NotFound
from trigate.gateway import Gateway
from trigate.roles import MASTER_USER_ID, access_of, reads_all, require
from trigate.roles import NotPermitted as NotPermitted
from trigate.store import OWNER_OF_KIND, USERS, Conflict, Row

M = TypeVar("M", bound=BaseModel)


def _valid_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


# "30s", "15m", "12h", "30d", checked when the request arrives.
Duration = Annotated[str | None, AfterValidator(_valid_duration)]


class Limits(BaseModel):
    """The limits keys, teams and users share."""

    model_config = ConfigDict(extra="ignore")

    models: list[str] | None = None
    max_budget: float | None = Field(default=None, ge=0)
    soft_budget: float | None = Field(default=None, ge=0)
    budget_duration: Duration = None
    rpm_limit: int | None = Field(default=None, ge=0)
    tpm_limit: int | None = Field(default=None, ge=0)
    # 0 is LiteLLM's too: every request of the key (or team) is refused with 429.
    max_parallel_requests: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    blocked: bool | None = None


class NamedUser(BaseModel):
    """A user named by id or by email, as LiteLLM's member routes (teams' and
    organizations') take one: at least one of the two."""

    model_config = ConfigDict(extra="ignore")

    user_id: str | None = None
    user_email: str | None = None

    @model_validator(mode="after")
    def _named(self) -> NamedUser:
        if self.user_id is None and self.user_email is None:
            raise ValueError("a member needs a `user_id` or a `user_email`")
        return self

    async def user(self, gateway: Gateway) -> Row | None:
        """The user this names: by its id, else by its email."""
        if self.user_id is not None:
            return await gateway.store.get(USERS.kind, self.user_id)
        found = await gateway.store.select(USERS.kind, {"user_email": self.user_email}, limit=1)
        return found[0] if found else None

    async def made_user(self, gateway: Gateway, now: float) -> Row:
        """The user this names, made (`new_user`) if it is none yet. Another call may make
        the same user meanwhile (LiteLLM's clients create teams and organizations naming
        one new member concurrently): that user is the one named."""
        user = await self.user(gateway)
        if user is not None:
            return user
        user = self.new_user(now)
        try:
            await gateway.store.insert(USERS.kind, user)
        except Conflict:
            made = await gateway.store.get(USERS.kind, user["user_id"])
            if made is None:  # deleted again since
                raise
            return made
        return {**user, "spend": 0.0}

    def new_user(self, now: float) -> Row:
        """The user to make for a member who is none yet, as LiteLLM makes one."""
        return {
            "user_id": self.user_id or str(uuid.uuid4()),
            "user_email": self.user_email,
            "models": [],
            "metadata": {},
            "created_at": now,
            "updated_at": now,
        }


async def authorized(gateway: Gateway) -> Caller:
    """The one permission check of the admin API: authenticate the caller (401), then
    refuse it (403) unless its role has the access this route needs, by the route's
    entry in `trigate.roles.ROUTES` (a route not listed there is the admins' alone).
    A handler whose access is to the caller's own objects narrows further itself."""
    caller = await authenticated(gateway)
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    require(caller.role, access_of(rule), rule)
    return caller


async def admin_call(gateway: Gateway, model: type[M]) -> tuple[Caller, M]:
    """`authorized`, then the JSON body validated against `model`."""
    caller = await authorized(gateway)
    return caller, validated(model, await json_body())


async def admin_body(gateway: Gateway, model: type[M]) -> M:
    """`admin_call` for a handler that needs only the body."""
    return (await admin_call(gateway, model))[1]


async def require_master(gateway: Gateway) -> None:
    """`authorized`, under the name it had when every such route needed the master
    key: kept for modules written before roles (the check is the route's entry in
    `trigate.roles.ROUTES`)."""
    await authorized(gateway)


async def authenticated(gateway: Gateway) -> Caller:
    return await gateway.auth.authenticate(request.headers)


def permit(caller: Caller, own: bool, what: str) -> None:
    """A reader of all (an admin or admin viewer) reads anything; any other caller only
    what is its own. Checked before any lookup, so that a refusal never tells whether
    someone else's object exists."""
    if not (own or reads_all(caller.role)):
        raise NotPermitted(f"This key may read only its own {what}.")


async def is_team_admin(gateway: Gateway, caller: Caller, team_id: str) -> bool:
    """Whether the caller's user is an `admin` member of the team. The master key's
    recorded membership (`MASTER_USER_ID`) makes no key a team's admin."""
    if caller.user_id is None or caller.user_id == MASTER_USER_ID:
        return False
    members = await gateway.store.team_members(team_id)
    return any(m["user_id"] == caller.user_id and m["role"] == "admin" for m in members)


def not_reserved(user_id: str | None, param: str = "user_id") -> None:
    """Refuse the user id the master key is recorded under (`roles.MASTER_USER_ID`)."""
    if user_id == MASTER_USER_ID:
        raise InvalidRequest(
            f"`{param}`: `{MASTER_USER_ID}` is reserved for the master key.", param=param
        )


def validated(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        # A check of the whole body (a model validator) names its fields itself.
        text = f"`{where}`: {message}" if where else message[:1].upper() + message[1:] + "."
        raise InvalidRequest(text, param=where) from None


# Fields with a value always (an empty list or object, false): a null sent for one of
# them means "not given", as LiteLLM's clients send it, never "clear it".
_NEVER_NULL = {"models", "metadata", "blocked"}


def limit_fields(body: Limits) -> Row:
    """The fields a create or update sets, with the budget window's first reset."""
    fields = {
        name: getattr(body, name)
        for name in body.model_fields_set
        if name in Limits.model_fields and not (name in _NEVER_NULL and getattr(body, name) is None)
    }
    if "budget_duration" in fields:
        duration = fields["budget_duration"]
        fields["budget_reset_at"] = wall_time() + parse_duration(duration) if duration else None
    return fields


def created_fields(body: Limits) -> Row:
    now = wall_time()
    fields = limit_fields(body)
    fields.setdefault("models", [])
    fields.setdefault("metadata", {})
    return {**fields, "created_at": now, "updated_at": now}


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def shaped(row: Row) -> Row:
    """A row as the API shows it: times as ISO 8601, never a key."""
    shown = {
        k: v
        for k, v in row.items()
        if k not in ("created_at", "updated_at", "budget_reset_at", "expires")
    }
    for column in ("created_at", "updated_at", "budget_reset_at", "expires"):
        if column in row:
            shown[column] = iso(row[column])
    return shown


def token_hash_of(value: str) -> str:
    """Admin calls name a key by the key itself or by its hash (LiteLLM's `token`)."""
    return hash_key(value) if value.startswith("sk-") else value


async def insert_new(gateway: Gateway, kind: str, row: Row) -> None:
    """Insert a team or user row whose id the caller may have chosen."""
    primary = OWNER_OF_KIND[kind].primary
    if await gateway.store.get(kind, row[primary]) is not None:
        what = kind.removesuffix("s").capitalize()
        raise InvalidRequest(f"{what} `{row[primary]}` exists already.", param=primary)
    await gateway.store.insert(kind, row)


def not_found(what: str, name: str) -> NotFound:
    return NotFound(f"No {what} `{name}` exists.", code=f"{what}_not_found")


def query_arg(name: str) -> str | None:
    value = request.args.get(name)
    return value if value else None
