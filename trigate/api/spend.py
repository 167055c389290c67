"""`/spend/logs` and `/global/spend/report`: what was spent, by whom, on what."""

from __future__ import annotations

import datetime

from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import iso, query_arg, require_master, token_hash_of
from trigate.api.jsonio import json_response
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.store import SpendFilter

DAY = 86400.0
DEFAULT_REPORT_DAYS = 30


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/spend/logs")
    async def spend_logs() -> Response:
        await require_master(gateway)
        key = query_arg("api_key") or query_arg("key")
        start, end = _range(default_days=None)
        rows = await gateway.store.spend_logs(
            SpendFilter(
                key_hash=token_hash_of(key) if key else None,
                team_id=query_arg("team_id"),
                user_id=query_arg("user_id"),
                start=start,
                end=end,
                limit=_limit(),
            )
        )
        for row in rows:
            row["startTime"], row["endTime"] = iso(row["start_time"]), iso(row["end_time"])
        return json_response(rows)

    @app.get("/global/spend/report")
    async def spend_report() -> Response:
        await require_master(gateway)
        start, end = _range(default_days=DEFAULT_REPORT_DAYS)
        assert start is not None and end is not None
        return json_response(await gateway.store.spend_report(start, end))


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
