"""`/spend/logs` and `/global/spend/report`: what was spent, by whom, on what, in
LiteLLM's shapes (its field names beside trigate's own)."""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable

from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import iso, query_arg, require_master, token_hash_of
from trigate.api.jsonio import json_response
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.store import Row, SpendFilter

DAY = 86400.0
DEFAULT_REPORT_DAYS = 30
# LiteLLM's name for spend outside any team.
NO_TEAM = "Unassigned Team"
# A summary has a row for every day of its range, so the range is bounded.
MAX_SUMMARY_DAYS = 3660


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/spend/logs")
    async def spend_logs() -> Response:
        await require_master(gateway)
        key = query_arg("api_key") or query_arg("key")
        start, end = _range(default_days=None)
        query = SpendFilter(
            request_id=query_arg("request_id"),
            key_hash=token_hash_of(key) if key else None,
            team_id=query_arg("team_id"),
            user_id=query_arg("user_id"),
            start=start,
            end=end,
            limit=_limit(),
        )
        # LiteLLM's default with both dates: spend per day, not the rows themselves.
        summarize = query_arg("summarize") not in ("false", "False", "0")
        if start is not None and end is not None and summarize:
            if end - start > MAX_SUMMARY_DAYS * DAY:
                raise InvalidRequest(
                    f"A summary spans at most {MAX_SUMMARY_DAYS} days; "
                    "pass `summarize=false` for the rows.",
                    param="end_date",
                )
            totals = await gateway.store.spend_totals(query)
            return json_response(_daily_summary(totals, start, end))
        return json_response([_log_shape(row) for row in await gateway.store.spend_logs(query)])

    @app.get("/global/spend/report")
    async def spend_report() -> Response:
        await require_master(gateway)
        start, end = _range(default_days=DEFAULT_REPORT_DAYS)
        key = query_arg("api_key")
        user = query_arg("internal_user_id")
        group_by = query_arg("group_by") or "team"
        if group_by not in ("team", "api_key"):
            raise InvalidRequest("`group_by` must be `team` or `api_key`.", param="group_by")
        totals = await gateway.store.spend_totals(
            SpendFilter(
                key_hash=token_hash_of(key) if key else None,
                team_id=query_arg("team_id"),
                user_id=user,
                start=start,
                end=end,
            )
        )
        # As in LiteLLM, a report for one key or one user is per key.
        if key or user or group_by == "api_key":
            return json_response(_by_key(totals))
        return json_response(_by_team_and_day(totals))


def _log_shape(row: Row) -> Row:
    """A spend-log row with LiteLLM's names for what it has beside trigate's own."""
    ttft = row["ttft_ms"]
    return {
        **row,
        "api_key": row["key_hash"],
        "spend": row["cost"],
        "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
        "user": row["user_id"],
        "model_id": row["deployment"],
        "startTime": iso(row["start_time"]),
        "endTime": iso(row["end_time"]),
        "completionStartTime": iso(row["start_time"] + ttft / 1000) if ttft is not None else None,
        "metadata": {**(row.get("metadata") or {}), **_caller_metadata(row)},
        # LiteLLM's spend logs hold these as strings ("True"/"False", "" without a key).
        "cache_hit": "True" if row.get("cache_hit") else "False",
        "cache_key": row.get("cache_key") or "",
    }


def _caller_metadata(row: Row) -> Row:
    """What LiteLLM writes into each spend row's `metadata` about the key that made the
    request (`user_api_key_*`), which its users filter and check on."""
    return {
        "user_api_key": row["key_hash"],
        "user_api_key_alias": row["key_alias"],
        "user_api_key_team_id": row["team_id"],
        "user_api_key_org_id": row.get("organization_id"),
        "user_api_key_user_id": row["user_id"],
        "user_api_key_end_user_id": row.get("end_user"),
    }


def _daily_summary(totals: list[Row], start: float, end: float) -> list[Row]:
    """LiteLLM's summarized `/spend/logs`: per day, the spend in all, per user, per model
    group and per key (each key's hash a field of its own), every day of the range."""
    days: dict[str, Row] = {}
    for midnight in _days(start, end):
        day = _day(midnight)
        days[day] = {"startTime": day, "spend": 0.0, "users": {}, "models": {}}
    for row in totals:
        summary = days[row["day"]]
        summary["spend"] += row["spend"]
        for field, name in (("users", row["user_id"]), ("models", row["model_group"])):
            summary[field][name] = summary[field].get(name, 0.0) + row["spend"]
        if row["key_hash"] is not None:
            summary[row["key_hash"]] = summary.get(row["key_hash"], 0.0) + row["spend"]
    return list(days.values())


def _by_team_and_day(totals: list[Row]) -> list[Row]:
    """LiteLLM's `group_by=team` report: per day, each team's spend, detailed per model
    group and key."""
    teams: dict[str, dict[str | None, Row]] = defaultdict(dict)
    for row in totals:
        team = teams[row["day"]].setdefault(
            row["team_id"],
            {
                "team_name": row["team_alias"] or row["team_id"] or NO_TEAM,
                "team_id": row["team_id"],
                "total_spend": 0.0,
                "metadata": {},
            },
        )
        team["total_spend"] += row["spend"]
        detail = team["metadata"].setdefault(
            (row["model_group"], row["key_hash"]),
            {"model": row["model_group"], "api_key": row["key_hash"], "spend": 0.0,
             "total_tokens": 0},
        )  # fmt: skip
        detail["spend"] += row["spend"]
        detail["total_tokens"] += row["prompt_tokens"] + row["completion_tokens"]
    return [
        {
            "group_by_day": f"{day}T00:00:00+00:00",
            "teams": [
                {**team, "metadata": list(team["metadata"].values())} for team in by_team.values()
            ],
        }
        for day, by_team in sorted(teams.items())
    ]


def _by_key(totals: Iterable[Row]) -> list[Row]:
    """LiteLLM's per-key report: each key's cost and tokens, detailed per model group,
    costliest key first."""
    keys: dict[str | None, Row] = {}
    for row in totals:
        key = keys.setdefault(
            row["key_hash"],
            {"api_key": row["key_hash"], "total_cost": 0.0, "total_input_tokens": 0,
             "total_output_tokens": 0, "model_details": {}},
        )  # fmt: skip
        detail = key["model_details"].setdefault(
            row["model_group"],
            {"model": row["model_group"], "total_cost": 0.0, "total_input_tokens": 0,
             "total_output_tokens": 0},
        )  # fmt: skip
        for entry in (key, detail):
            entry["total_cost"] += row["spend"]
            entry["total_input_tokens"] += row["prompt_tokens"]
            entry["total_output_tokens"] += row["completion_tokens"]
    shaped = [{**key, "model_details": list(key["model_details"].values())}
              for key in keys.values()]  # fmt: skip
    return sorted(shaped, key=lambda key: -key["total_cost"])


def _range(default_days: int | None) -> tuple[float | None, float | None]:
    """`start_date` and `end_date` as YYYY-MM-DD (UTC, end inclusive), LiteLLM's way."""
    start, end = _date("start_date"), _date("end_date")
    if end is not None:
        end += DAY
    if default_days is not None:
        today = datetime.datetime.now(datetime.UTC).date()
        end = end if end is not None else _epoch(today) + DAY
        start = start if start is not None else end - default_days * DAY
    return start, end


def _days(start: float, end: float) -> Iterable[float]:
    day = start
    while day < end:
        yield day
        day += DAY


def _day(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).date().isoformat()


def _date(name: str) -> float | None:
    value = query_arg(name)
    if value is None:
        return None
    try:
        return _epoch(datetime.date.fromisoformat(value))
    except ValueError:
        raise InvalidRequest(f"`{name}` must be a date as YYYY-MM-DD.", param=name) from None


def _epoch(day: datetime.date) -> float:
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()


def _limit() -> int:
    value = query_arg("limit") or "1000"
    # Checked as text first: int() refuses strings of more than 4300 digits with a ValueError.
    if (
        not (value.isascii() and value.isdigit() and len(value) <= 5)
        or not 0 < int(value) <= 10_000
    ):
        raise InvalidRequest("`limit` must be a whole number from 1 to 10000.", param="limit")
    return int(value)
