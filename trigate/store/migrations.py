"""The schema, as numbered migrations that SQLite and PostgreSQL share.

Types are chosen to mean the same on both: TEXT, INTEGER (also for booleans),
DOUBLE PRECISION for money and epoch seconds, and JSON kept as TEXT.
Migrations only ever append: a released one is never edited.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from trigate.store.backends import Cursor

# A migration's step: SQL both databases run, or, where the change depends on what the
# JSON kept as TEXT holds (which the two read with different functions), a function of
# the migration's cursor.
Step = str | Callable[[Cursor], None]
# What `trigate_managed_objects.billed` holds for a batch: not yet settled; billed (or
# found to have run nothing); settled without a bill (its upstream no longer knows it,
# or it ended before this gateway billed batches that ended so).
UNBILLED, BILLED, SETTLED_UNBILLED = 0, 1, 2
# The states of an ended batch that versions before the `batch_id` migration did not bill.
_ENDED_UNBILLED_BEFORE = frozenset({"failed", "expired", "cancelled"})


def _settle_batches_ended_before(cursor: Cursor) -> None:
    """Mark settled, without a bill, the batches last seen failed, expired or cancelled
    by a version that billed only completed ones: billing them now, at today's prices,
    for what ran long ago, is a surprise bill, not a correction."""
    rows = cursor.query(
        "SELECT object_id, object FROM trigate_managed_objects WHERE kind = 'batch' AND billed = ?",
        [UNBILLED],
    )
    for row in rows:
        batch = orjson.loads(row["object"])
        if isinstance(batch, dict) and batch.get("status") in _ENDED_UNBILLED_BEFORE:
            cursor.execute(
                "UPDATE trigate_managed_objects SET billed = ? "
                "WHERE kind = 'batch' AND object_id = ? AND billed = ?",
                [SETTLED_UNBILLED, row["object_id"], UNBILLED],
            )


_ENTITY_LIMITS = """
    models TEXT NOT NULL DEFAULT '[]',
    max_budget DOUBLE PRECISION,
    soft_budget DOUBLE PRECISION,
    budget_duration TEXT,
    budget_reset_at DOUBLE PRECISION,
    spend DOUBLE PRECISION NOT NULL DEFAULT 0,
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    max_parallel_requests INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    blocked INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
"""

MIGRATIONS: list[list[Step]] = [
    [
        f"""CREATE TABLE trigate_keys (
            token_hash TEXT PRIMARY KEY,
            key_alias TEXT UNIQUE,
            key_name TEXT NOT NULL,
            user_id TEXT,
            team_id TEXT,
            expires DOUBLE PRECISION,
            {_ENTITY_LIMITS}
        )""",
        f"""CREATE TABLE trigate_teams (
            team_id TEXT PRIMARY KEY,
            team_alias TEXT,
            {_ENTITY_LIMITS}
        )""",
        f"""CREATE TABLE trigate_users (
            user_id TEXT PRIMARY KEY,
            user_email TEXT,
            {_ENTITY_LIMITS}
        )""",
        """CREATE TABLE trigate_spend_logs (
            request_id TEXT PRIMARY KEY,
            key_hash TEXT,
            key_alias TEXT,
            team_id TEXT,
            user_id TEXT,
            model_group TEXT NOT NULL,
            deployment TEXT,
            model TEXT,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            status INTEGER NOT NULL,
            stream INTEGER NOT NULL,
            cancelled_by_client INTEGER NOT NULL,
            start_time DOUBLE PRECISION NOT NULL,
            end_time DOUBLE PRECISION NOT NULL,
            ttft_ms DOUBLE PRECISION
        )""",
        "CREATE INDEX trigate_spend_logs_start ON trigate_spend_logs (start_time)",
        "CREATE INDEX trigate_spend_logs_key ON trigate_spend_logs (key_hash, start_time)",
        "CREATE INDEX trigate_spend_logs_team ON trigate_spend_logs (team_id, start_time)",
        "CREATE INDEX trigate_spend_logs_user ON trigate_spend_logs (user_id, start_time)",
        "CREATE INDEX trigate_keys_team ON trigate_keys (team_id)",
    ],
    # request_id is the gateway's own id; a client's x-request-id is kept beside it, since
    # clients may reuse one, which must not merge their requests' spend rows.
    [
        "ALTER TABLE trigate_spend_logs ADD COLUMN client_request_id TEXT",
    ],
    # Stored Responses API responses, so `previous_response_id` works on every provider:
    # the Response object and the request's input items, as JSON; who made it; `native`
    # when the upstream answered it itself, and so holds it under the same id.
    [
        """CREATE TABLE trigate_responses (
            response_id TEXT PRIMARY KEY,
            response TEXT NOT NULL,
            input_items TEXT NOT NULL,
            model_group TEXT NOT NULL,
            deployment TEXT,
            key_hash TEXT,
            team_id TEXT,
            previous_response_id TEXT,
            native INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX trigate_responses_expires ON trigate_responses (expires_at)",
    ],
    # LiteLLM's team members (`members_with_roles`, roles `admin` and `user`): a user's
    # teams are read from here too, so membership lives in one place. A team's
    # `model_aliases` maps a name its keys send to one of the gateway's model groups.
    [
        """CREATE TABLE trigate_team_members (
            team_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            user_email TEXT,
            role TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (team_id, user_id)
        )""",
        "CREATE INDEX trigate_team_members_user ON trigate_team_members (user_id)",
        "ALTER TABLE trigate_teams ADD COLUMN model_aliases TEXT NOT NULL DEFAULT '{}'",
    ],
    # Deployments added through the admin API (`/model/new`), merged with the config
    # file's: `litellm_params` as given (an `os.environ/` reference stays one), as JSON.
    # Every write bumps the one row of `trigate_models_version`, which each process polls.
    [
        """CREATE TABLE trigate_models (
            model_id TEXT PRIMARY KEY,
            model_name TEXT NOT NULL,
            litellm_params TEXT NOT NULL,
            model_info TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE TABLE trigate_models_version (version INTEGER NOT NULL)",
        "INSERT INTO trigate_models_version (version) VALUES (0)",
    ],
    # A stored response is keyed by its id and its owner (the key that made it, '' for
    # the master key): an upstream that reuses a response id for two keys must lose
    # neither's response, and one key's repeat replaces its own older row.
    [
        """CREATE TABLE trigate_responses_owned (
            response_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            response TEXT NOT NULL,
            input_items TEXT NOT NULL,
            model_group TEXT NOT NULL,
            deployment TEXT,
            key_hash TEXT,
            team_id TEXT,
            previous_response_id TEXT,
            native INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (response_id, owner)
        )""",
        """INSERT INTO trigate_responses_owned
            SELECT response_id, COALESCE(key_hash, ''), response, input_items, model_group,
                deployment, key_hash, team_id, previous_response_id, native, created_at,
                expires_at
            FROM trigate_responses""",
        "DROP TABLE trigate_responses",
        "ALTER TABLE trigate_responses_owned RENAME TO trigate_responses",
        "CREATE INDEX trigate_responses_expires ON trigate_responses (expires_at)",
    ],
    # The id the client's answer carried (chatcmpl-..., msg_..., resp_...), by which
    # LiteLLM's users look a request's spend row up (`/spend/logs?request_id=`). Not the
    # key: upstreams reuse ids (a mock, a local server), which must not merge rows.
    [
        "ALTER TABLE trigate_spend_logs ADD COLUMN response_id TEXT",
        "CREATE INDEX trigate_spend_logs_response ON trigate_spend_logs (response_id)",
    ],
    # A user's LiteLLM role (`proxy_admin`, `internal_user`, ...), which its
    # keys act with on the admin API (trigate/roles.py); NULL is no role.
    [
        "ALTER TABLE trigate_users ADD COLUMN user_role TEXT",
    ],
    # LiteLLM's budget table, customers (end users, named by a request's `user`) and
    # organizations (which own teams). A budget is the home of the limits that customers
    # and organizations link to by `budget_id`; each linked row carries a copy of them
    # (written in the same transaction as the budget), so that a request's admission
    # reads one row per owner, as it does for keys, teams and users. `model_max_budget`
    # is kept as LiteLLM's clients send it (JSON). A spend row names its end user and
    # its key's organization, whose spend it adds to.
    [
        """CREATE TABLE trigate_budgets (
            budget_id TEXT PRIMARY KEY,
            max_budget DOUBLE PRECISION,
            soft_budget DOUBLE PRECISION,
            max_parallel_requests INTEGER,
            tpm_limit INTEGER,
            rpm_limit INTEGER,
            model_max_budget TEXT NOT NULL DEFAULT '{}',
            budget_duration TEXT,
            budget_reset_at DOUBLE PRECISION,
            created_by TEXT,
            updated_by TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        f"""CREATE TABLE trigate_customers (
            user_id TEXT PRIMARY KEY,
            alias TEXT,
            budget_id TEXT,
            allowed_model_region TEXT,
            default_model TEXT,
            {_ENTITY_LIMITS}
        )""",
        "CREATE INDEX trigate_customers_budget ON trigate_customers (budget_id)",
        f"""CREATE TABLE trigate_organizations (
            organization_id TEXT PRIMARY KEY,
            organization_alias TEXT,
            budget_id TEXT,
            created_by TEXT,
            updated_by TEXT,
            {_ENTITY_LIMITS}
        )""",
        "CREATE INDEX trigate_organizations_budget ON trigate_organizations (budget_id)",
        """CREATE TABLE trigate_organization_members (
            organization_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            user_email TEXT,
            user_role TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (organization_id, user_id)
        )""",
        "CREATE INDEX trigate_organization_members_user ON trigate_organization_members (user_id)",
        "ALTER TABLE trigate_teams ADD COLUMN organization_id TEXT",
        "CREATE INDEX trigate_teams_organization ON trigate_teams (organization_id)",
        "ALTER TABLE trigate_spend_logs ADD COLUMN end_user TEXT",
        "ALTER TABLE trigate_spend_logs ADD COLUMN organization_id TEXT",
        "CREATE INDEX trigate_spend_logs_end_user ON trigate_spend_logs (end_user, start_time)",
    ],
    # What a client asked to be logged with a request (LiteLLM's `metadata`, `tags` and
    # `litellm_session_id`), under LiteLLM's spend-log names.
    [
        "ALTER TABLE trigate_spend_logs ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE trigate_spend_logs ADD COLUMN request_tags TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE trigate_spend_logs ADD COLUMN session_id TEXT",
    ],
    # LiteLLM's per-member limits within a team
    # (`max_budget_in_team`, the member's `tpm_limit`/`rpm_limit`), and the spend of the
    # member's requests in the team, which the spend ledger adds to as it does a key's.
    [
        "ALTER TABLE trigate_team_members ADD COLUMN spend DOUBLE PRECISION NOT NULL DEFAULT 0",
        "ALTER TABLE trigate_team_members ADD COLUMN max_budget DOUBLE PRECISION",
        "ALTER TABLE trigate_team_members ADD COLUMN tpm_limit INTEGER",
        "ALTER TABLE trigate_team_members ADD COLUMN rpm_limit INTEGER",
    ],
    # --- branch cache: the response cache's spend-row fields (LiteLLM's `cache_hit`,
    # `cache_key`): whether the answer came from the cache at no cost, and its key.
    [
        "ALTER TABLE trigate_spend_logs ADD COLUMN cache_hit INTEGER DEFAULT 0",
        "ALTER TABLE trigate_spend_logs ADD COLUMN cache_key TEXT",
    ],
    # --- openai-api: files and batches (issue 26) ---
    # The files and batches a key uploaded or created through the gateway: on which
    # deployment the upstream holds each, and whose it is (its key, and its key's team),
    # so that no other key can read, use or delete it; a batch's `billed` is set once,
    # when its cost is recorded at its completion.
    [
        """CREATE TABLE trigate_managed_objects (
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            team_id TEXT,
            key_identity TEXT NOT NULL,
            key_alias TEXT,
            user_id TEXT,
            organization_id TEXT,
            model_group TEXT NOT NULL,
            deployment_id TEXT NOT NULL,
            object TEXT NOT NULL,
            billed INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (kind, object_id)
        )""",
        "CREATE INDEX trigate_managed_objects_owner ON trigate_managed_objects "
        "(kind, owner, created_at)",
        "CREATE INDEX trigate_managed_objects_team ON trigate_managed_objects "
        "(kind, team_id, created_at)",
    ],
    # --- branch mcp ---
    # The MCP gateway: servers added through `/v1/mcp/server` (the whole definition as
    # JSON, its secrets sealed), and the MCP permissions of keys and teams (LiteLLM's
    # `object_permission`: `mcp_servers`, `mcp_access_groups`, `mcp_tool_permissions`).
    [
        """CREATE TABLE trigate_mcp_servers (
            server_id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            definition TEXT NOT NULL,
            created_by TEXT,
            updated_by TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "ALTER TABLE trigate_keys ADD COLUMN object_permission TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE trigate_teams ADD COLUMN object_permission TEXT NOT NULL DEFAULT '{}'",
    ],
    # --- fix-auth ---
    # Each UI sign-in identity's session epoch (a user id, or the password admin's): a
    # session carries the epoch it was signed in, and signing out moves it on, which
    # ends every session signed before, in every worker.
    [
        """CREATE TABLE trigate_ui_session_epochs (
            identity TEXT PRIMARY KEY,
            epoch INTEGER NOT NULL
        )""",
    ],
    # --- billfix: batch billing that cannot lose a bill ---
    # The batch whose output or error file a file is (null for an upload): the gateway
    # deletes no such file before that batch is billed. And the batches older versions
    # saw end failed, expired or cancelled, which they did not bill, are settled unbilled.
    [
        "ALTER TABLE trigate_managed_objects ADD COLUMN batch_id TEXT",
        _settle_batches_ended_before,
    ],
]
