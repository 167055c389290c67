"""The Usage and Logs pages, both read from the spend log through `/spend/logs`.

Usage sums the log's rows over a date range: spend and tokens per day, by key, team,
user, model and tag, with the two charts people look at (daily spend stacked by
model, and the top keys). Logs lists the rows themselves, filtered by key, model,
status and time, and shows one request whole.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from typing import Any

from quart import Response, request

from trigate.ui.web import UI, blueprint, page

DEFAULT_DAYS = 7
# The most rows one page reads (the API's own cap).
MAX_ROWS = 10_000
TOP_KEYS = 10
# The most rows the Logs page reads before filtering by key, model and status.
LOG_ROWS = 1000


def _dates() -> tuple[str, str]:
    today = datetime.datetime.now(datetime.UTC).date()
    start = (
        request.args.get("start_date")
        or (today - datetime.timedelta(days=DEFAULT_DAYS - 1)).isoformat()
    )
    end = request.args.get("end_date") or today.isoformat()
    return start, end


async def _rows(ui: UI, start: str, end: str, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await ui.api.get(
        "/spend/logs", start_date=start, end_date=end, summarize="false", limit=limit
    )
    rows.sort(key=lambda row: row["start_time"], reverse=True)
    return rows


def _key_label(row: dict[str, Any]) -> str:
    if row.get("key_alias"):
        return str(row["key_alias"])
    if row.get("key_hash"):
        return f"{str(row['key_hash'])[:10]}…"
    return "master key" if not row.get("user_id") else f"user {row['user_id']}"


def _day(row: dict[str, Any]) -> str:
    return datetime.datetime.fromtimestamp(row["start_time"], datetime.UTC).date().isoformat()


def usage_summary(rows: list[dict[str, Any]], start: str, end: str) -> dict[str, Any]:
    """What the Usage page shows, summed from spend-log rows."""
    days = _days(start, end)
    by_day_model: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(days, 0.0))
    tokens_by_day = {day: [0, 0] for day in days}
    groups: dict[str, dict[str, dict[str, float]]] = {
        name: defaultdict(lambda: {"spend": 0.0, "prompt": 0, "completion": 0, "requests": 0})
        for name in ("key", "team", "user", "model", "tag")
    }
    for row in rows:
        day = _day(row)
        if day not in tokens_by_day:
            continue
        by_day_model[row["model_group"]][day] += row["cost"]
        tokens_by_day[day][0] += row["prompt_tokens"]
        tokens_by_day[day][1] += row["completion_tokens"]
        labels = {
            "key": [_key_label(row)],
            "team": [row.get("team_id") or "no team"],
            "user": [row.get("user_id") or "no user"],
            "model": [row["model_group"]],
            "tag": row.get("request_tags") or [],
        }
        for group, names in labels.items():
            for name in names:
                entry = groups[group][name]
                entry["spend"] += row["cost"]
                entry["prompt"] += row["prompt_tokens"]
                entry["completion"] += row["completion_tokens"]
                entry["requests"] += 1
    tables = {
        group: sorted(entries.items(), key=lambda item: -item[1]["spend"])
        for group, entries in groups.items()
    }
    return {
        "days": days,
        "spend_by_model": {
            model: [per_day[d] for d in days] for model, per_day in by_day_model.items()
        },
        "prompt_tokens": [tokens_by_day[d][0] for d in days],
        "completion_tokens": [tokens_by_day[d][1] for d in days],
        "top_keys": [[name, entry["spend"]] for name, entry in tables["key"][:TOP_KEYS]],
        "tables": tables,
        "total_spend": sum(row["cost"] for row in rows),
        "total_requests": len(rows),
    }


def _days(start: str, end: str) -> list[str]:
    first = datetime.date.fromisoformat(start)
    last = datetime.date.fromisoformat(end)
    count = min(max((last - first).days + 1, 1), 366)
    return [(first + datetime.timedelta(days=n)).isoformat() for n in range(count)]


@blueprint.get("/usage")
@page
async def usage(ui: UI) -> Response:
    start, end = _dates()
    rows = await _rows(ui, start, end)
    if len(rows) == MAX_ROWS:
        ui.notices.append(
            f"The range holds more than {MAX_ROWS:,} requests: these figures sum the "
            f"latest {MAX_ROWS:,}. Narrow the dates for whole figures."
        )
    summary = usage_summary(rows, start, end)
    return await ui.render("usage.html", start=start, end=end, summary=summary)


@blueprint.get("/logs")
@page
async def logs(ui: UI) -> Response:
    start, end = _dates()
    wanted = {name: (request.args.get(name) or "").strip() for name in ("key", "model", "status")}
    read = await _rows(ui, start, end, limit=LOG_ROWS)
    if len(read) == LOG_ROWS:
        ui.notices.append(
            f"Showing the latest {LOG_ROWS:,} requests of the range, filtered: "
            "narrow the dates to see older ones."
        )
    rows = [row for row in read if _kept(row, wanted)]
    return await ui.render("logs.html", rows=rows, start=start, end=end, wanted=wanted,
                           key_label=_key_label)  # fmt: skip


def _kept(row: dict[str, Any], wanted: dict[str, str]) -> bool:
    key = wanted["key"].lower()
    if key and key not in _key_label(row).lower() and key != str(row.get("key_hash") or ""):
        return False
    if wanted["model"] and wanted["model"] not in (row["model_group"], row.get("model")):
        return False
    status = wanted["status"]
    if status == "success":
        return bool(row["status"] < 400)
    if status == "failure":
        return bool(row["status"] >= 400)
    return not status or str(row["status"]) == status


@blueprint.get("/logs/<request_id>")
@page
async def log_detail(ui: UI, request_id: str) -> Response:
    rows = await ui.api.get("/spend/logs", request_id=request_id, summarize="false")
    row = rows[0] if rows else None
    return await ui.render("log_detail.html", row=row, request_id=request_id,
                           key_label=_key_label)  # fmt: skip
