"""Who may call which admin route: LiteLLM's user roles, and the one table of what each
admin route needs and which roles have it.

A caller's role is its key's user's `user_role` (LiteLLM's `LitellmUserRoles`); the
master key is above every role. LiteLLM's matrix, as its docs and route checks give it:

- `proxy_admin` may do all the master key may;
- `proxy_admin_viewer` reads everything (keys, users, teams, spend, models) and writes
  nothing;
- `internal_user` (and `org_admin`, whose organization powers are the organization
  routes' own) makes, changes and deletes its own keys within its user's limits, and a
  team's keys where it is the team's admin; it reads only its own;
- `internal_user_viewer`, `team`, `customer` and a key with no user role read only their
  own.

A team's `admin` member (any role but `proxy_admin_viewer`, who writes nothing) manages
the team's members; `internal_user` team admins also its keys.

Each admin route names one `Access` in `ROUTES`; `GRANTS` says which roles have it. The
route's handler narrows further where the access is to the caller's own objects
(`reads_all`, `writes_all`). A route missing from `ROUTES` is the master's and
`proxy_admin`'s alone: a new route is never opened by omission.
"""

from __future__ import annotations

from enum import StrEnum

from trigate.errors import GatewayError
from trigate.store import Row


class Role(StrEnum):
    """LiteLLM's user roles, by the names its API and database use."""

    PROXY_ADMIN = "proxy_admin"
    PROXY_ADMIN_VIEWER = "proxy_admin_viewer"
    ORG_ADMIN = "org_admin"
    INTERNAL_USER = "internal_user"
    INTERNAL_USER_VIEWER = "internal_user_viewer"
    TEAM = "team"
    CUSTOMER = "customer"


class Access(StrEnum):
    """What an admin route needs of its caller."""

    # Any valid key; the handler shows only what the key may use (models, health).
    ANY_KEY = "any_key"
    # Any valid key; the handler shows its own objects, or any to a reader of all.
    OWN_READ = "own_read"
    # A team's admin, for its team (`/team/member_*`); the handler checks the team.
    TEAM_MEMBERS = "team_members"
    # Its own keys, and the keys of teams it is the admin of; the handler checks which.
    KEY_WRITE = "key_write"
    # Every object, read only.
    ADMIN_READ = "admin_read"
    # Everything: the master key's powers.
    ADMIN_WRITE = "admin_write"


# What every role has: its own objects, and its teams' members where it is their admin.
_OWN = frozenset({Access.ANY_KEY, Access.OWN_READ, Access.TEAM_MEMBERS})

GRANTS: dict[Role | None, frozenset[Access]] = {
    Role.PROXY_ADMIN: frozenset(Access),
    # LiteLLM's admin viewer reads as the admin does and may not write, not even as a
    # team's admin.
    Role.PROXY_ADMIN_VIEWER: frozenset({Access.ANY_KEY, Access.OWN_READ, Access.ADMIN_READ}),
    Role.ORG_ADMIN: _OWN | {Access.KEY_WRITE},
    Role.INTERNAL_USER: _OWN | {Access.KEY_WRITE},
    Role.INTERNAL_USER_VIEWER: _OWN,
    Role.TEAM: _OWN,
    Role.CUSTOMER: _OWN,
    # A key without a user, or whose user has no role: LiteLLM's info and self-managed routes.
    None: _OWN,
}

# Every admin route trigate serves, by its Quart rule. Other helpers' routes join here.
ROUTES: dict[str, Access] = {
    # Keys.
    "/key/generate": Access.KEY_WRITE,
    "/key/update": Access.KEY_WRITE,
    "/key/delete": Access.KEY_WRITE,
    "/key/regenerate": Access.KEY_WRITE,
    # A blocked key stays blocked until an admin says otherwise: its owner may not unblock it.
    "/key/block": Access.ADMIN_WRITE,
    "/key/unblock": Access.ADMIN_WRITE,
    "/key/info": Access.OWN_READ,
    "/key/list": Access.OWN_READ,
    # Teams.
    "/team/new": Access.ADMIN_WRITE,
    "/team/update": Access.ADMIN_WRITE,
    "/team/delete": Access.ADMIN_WRITE,
    "/team/info": Access.OWN_READ,
    "/team/list": Access.OWN_READ,
    "/team/member_add": Access.TEAM_MEMBERS,
    "/team/member_delete": Access.TEAM_MEMBERS,
    "/team/member_update": Access.TEAM_MEMBERS,
    # Users.
    "/user/new": Access.ADMIN_WRITE,
    "/user/update": Access.ADMIN_WRITE,
    "/user/delete": Access.ADMIN_WRITE,
    "/user/info": Access.OWN_READ,
    "/user/list": Access.ADMIN_READ,
    # Models.
    "/model/info": Access.ANY_KEY,
    "/v1/model/info": Access.ANY_KEY,
    "/model_group/info": Access.ANY_KEY,
    "/model/new": Access.ADMIN_WRITE,
    "/model/update": Access.ADMIN_WRITE,
    "/model/<model_id>/update": Access.ADMIN_WRITE,
    "/model/delete": Access.ADMIN_WRITE,
    "/config/reload": Access.ADMIN_WRITE,
    # The response cache (trigate.cache): its state and its entries, an admin's.
    "/cache/ping": Access.ADMIN_READ,
    "/cache/delete": Access.ADMIN_WRITE,
    "/cache/flushall": Access.ADMIN_WRITE,
    # MCP servers: any key reads those it may use; the handlers let only an admin write.
    "/v1/mcp/server": Access.ANY_KEY,
    "/v1/mcp/server/<server_id>": Access.ANY_KEY,
    # Spend: every tenant's rows, so a reader of all only.
    "/spend/logs": Access.ADMIN_READ,
    "/global/spend/report": Access.ADMIN_READ,
    # Organizations, customers (end users) and budgets: an admin's to write, a reader of
    # all's to read. LiteLLM's `org_admin` powers over its own organization are not
    # given here: the organization routes are the admins' alone (fail closed).
    "/organization/new": Access.ADMIN_WRITE,
    "/organization/update": Access.ADMIN_WRITE,
    "/organization/delete": Access.ADMIN_WRITE,
    "/organization/member_add": Access.ADMIN_WRITE,
    "/organization/member_delete": Access.ADMIN_WRITE,
    "/organization/list": Access.ADMIN_READ,
    "/organization/info": Access.ADMIN_READ,
    **{
        f"/{prefix}/{action}": Access.ADMIN_WRITE
        for prefix in ("customer", "end_user")
        for action in ("new", "update", "delete", "block", "unblock")
    },
    **{
        f"/{prefix}/{action}": Access.ADMIN_READ
        for prefix in ("customer", "end_user")
        for action in ("info", "list")
    },
    "/budget/new": Access.ADMIN_WRITE,
    "/budget/update": Access.ADMIN_WRITE,
    "/budget/delete": Access.ADMIN_WRITE,
    "/budget/info": Access.ADMIN_READ,
    "/budget/list": Access.ADMIN_READ,
    "/budget/settings": Access.ADMIN_READ,
    # Health and metrics: `/health` shows a key only its own models' deployments;
    # `/metrics`, when it needs a key at all, names every tenant.
    "/health": Access.ANY_KEY,
    "/metrics": Access.ADMIN_READ,
    # Guardrails: their names and settings (credentials redacted), as LiteLLM lists them.
    "/guardrails/list": Access.ANY_KEY,
    "/v2/guardrails/list": Access.ANY_KEY,
}


# The user id the master key acts as where LiteLLM records one: LiteLLM makes the creator
# of a team its admin member, and the master key's creator id is this name. No key or user
# may take it, so a membership under it gives no one any power.
MASTER_USER_ID = "default_user_id"


class NotPermitted(GatewayError):
    """A caller asking for what its role or ownership does not give it: LiteLLM's 403."""

    status = 403
    type = "permission_error"
    code = "not_allowed"


def role_of(is_master: bool, user: Row | None) -> Role | None:
    """The caller's role: the master key is `proxy_admin`; a virtual key has its user's
    `user_role`, or none. A role the store holds that LiteLLM does not name (written by
    hand) counts as none: fail closed."""
    if is_master:
        return Role.PROXY_ADMIN
    name = user.get("user_role") if user else None
    return Role(name) if name in _ROLE_NAMES else None


_ROLE_NAMES = frozenset(role.value for role in Role)


def access_of(rule: str) -> Access:
    return ROUTES.get(rule, Access.ADMIN_WRITE)


def require(role: Role | None, access: Access, what: str) -> None:
    """403 unless `role` has `access`; `what` names the route in the message."""
    if access not in GRANTS[role]:
        shown = role.value if role is not None else "none"
        raise NotPermitted(f"Your role ({shown}) may not call {what}.")


def reads_all(role: Role | None) -> bool:
    """Whether the caller reads every key, user, team and deployment, not only its own."""
    return Access.ADMIN_READ in GRANTS[role]


def writes_all(role: Role | None) -> bool:
    """Whether the caller writes as the master key does, not only to its own objects."""
    return Access.ADMIN_WRITE in GRANTS[role]
