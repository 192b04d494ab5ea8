"""Trends for supervisors and QA leads: per agent or per category, per day or per week,
how many calls, cards per call, the share of calls that reached critical risk and of
those where the customer threatened to escalate (media, regulator, court, violence),
the mean technique adherence score and, where readings are stored, the mean escalation
score. Charts on the page (static/js/trends.js, inline SVG), CSV for spreadsheets.

  GET /trends                                         the page (supervisor, qa, admin)
  GET /api/trends?by=agent|category&period=day|week&from=YYYY-MM-DD&to=YYYY-MM-DD
  GET /trends/export.csv?<the same query>

Days and weeks are the server's local calendar (weeks start on Monday, named by that
Monday's date), as the archive's date filters are. QA sees ended calls only
(auth.call_filter), like everywhere else. By category, a call counts once in each
category it has a standing card of; calls without cards are in no category.
"""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from aiohttp import web

from agent_ui.adherence import assess_call
from agent_ui.auth import call_filter
from agent_ui.security import APP_CONFIG, APP_PLAYBOOK, APP_STORE, require_role
from agent_ui.trends_store import TrendCall
from agent_ui.views.api import BadRequest
from agent_ui.views.export import _cell
from agent_ui.views.qa import attachment
from agent_ui.views.render import page

ROLES = ("supervisor", "qa", "admin")
APP_ADHERENCE: web.AppKey[AdherenceScores] = web.AppKey("trends_adherence")
GROUPINGS = {"agent": "坐席", "category": "类别"}
PERIODS = {"day": "日", "week": "周"}
DEFAULT_DAYS = 30
MAX_DAYS = 366
NO_AGENT = "未分配坐席"
ADHERENCE_CACHE_SIZE = 200_000        # calls whose score is remembered (about 100 bytes each)
# (key, Chinese column name) of every metric, in the CSV's and the table's order
METRICS = (
    ("calls", "通话数"),
    ("cards_per_call", "每通触发数"),
    ("critical_share", "高风险占比"),
    ("escalated_share", "扬言升级占比"),
    ("adherence", "平均话术分"),
    ("adherence_calls", "评分通话数"),
    ("escalation", "平均升级风险分"),
    ("escalation_calls", "有升级评分通话数"),
)


@dataclass(frozen=True)
class TrendQuery:
    by: str
    period: str
    first_day: dt.date
    last_day: dt.date

    @property
    def date_from(self) -> float:
        return _midnight(self.first_day)

    @property
    def date_to(self) -> float:
        return _midnight(self.last_day + dt.timedelta(days=1)) - 0.001


def _midnight(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day).timestamp()      # local time


def _parse_day(value: str, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: 日期格式应为 YYYY-MM-DD") from None


def parse_query(query: Any, today: dt.date | None = None) -> TrendQuery:
    """The trends' query from the query string; BadRequest says what is wrong."""
    by = query.get("by") or "agent"
    period = query.get("period") or "day"
    if by not in GROUPINGS:
        raise BadRequest("by: agent 或 category")
    if period not in PERIODS:
        raise BadRequest("period: day 或 week")
    last = _parse_day(query.get("to", ""), "to") or today or dt.date.today()
    first = _parse_day(query.get("from", ""), "from") or last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise BadRequest("开始日期不能晚于结束日期")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadRequest(f"日期范围最多 {MAX_DAYS} 天")
    return TrendQuery(by, period, first, last)


def period_start(day: dt.date, period: str) -> dt.date:
    return day - dt.timedelta(days=day.weekday()) if period == "week" else day


def periods(query: TrendQuery) -> list[str]:
    """Every period of the range (ISO date of its first day), empty ones included."""
    step = dt.timedelta(days=7 if query.period == "week" else 1)
    day, out = period_start(query.first_day, query.period), []
    while day <= query.last_day:
        out.append(day.isoformat())
        day += step
    return out


def metrics(calls: list[TrendCall], adherence: dict[str, int | None]) -> dict[str, Any]:
    """The trends' numbers for a set of calls; a mean is None when no call has a value."""
    n = len(calls)
    scores = [float(s) for c in calls if (s := adherence.get(c.call_id)) is not None]
    escalation = [c.escalation_score for c in calls if c.escalation_score is not None]
    return {
        "calls": n,
        "cards_per_call": round(sum(c.card_count for c in calls) / n, 2) if n else None,
        "critical_share": round(sum(c.risk == "critical" for c in calls) / n, 3) if n else None,
        "escalated_share": round(sum(c.escalated for c in calls) / n, 3) if n else None,
        "adherence": round(fmean(scores), 1) if scores else None,
        "adherence_calls": len(scores),
        "escalation": round(fmean(escalation), 1) if escalation else None,
        "escalation_calls": len(escalation),
    }


def group_keys(call: TrendCall, by: str) -> Iterable[str]:
    return call.categories if by == "category" else (call.agent,)


def trends(query: TrendQuery, calls: list[TrendCall], adherence: dict[str, int | None],
           category_names: dict[str, str]) -> dict[str, Any]:
    """The /api/trends answer: `periods` (ISO date of each period's first day), `groups`
    ({key, name, total}, most calls first), `cells` ({group, period, **metrics}, only
    where there were calls), `has_escalation` (any call had an escalation score)."""
    cells: dict[tuple[str, str], list[TrendCall]] = defaultdict(list)
    members: dict[str, list[TrendCall]] = defaultdict(list)
    names: dict[str, str] = {}
    for call in calls:
        started = period_start(dt.date.fromtimestamp(call.started_at), query.period).isoformat()
        for key in group_keys(call, query.by):
            cells[(key, started)].append(call)
            members[key].append(call)
            if query.by == "category":
                names[key] = category_names.get(key, key)
            else:
                names[key] = call.agent_name or NO_AGENT
    groups: list[dict[str, Any]] = [{"key": key, "name": names[key], "total": metrics(group, adherence)}
                                    for key, group in members.items()]
    groups.sort(key=lambda g: (-g["total"]["calls"], g["name"]))
    order = {g["key"]: i for i, g in enumerate(groups)}
    return {
        "by": query.by, "period": query.period,
        "from": query.first_day.isoformat(), "to": query.last_day.isoformat(),
        "periods": periods(query),
        "groups": groups,
        "cells": [{"group": key, "period": started, **metrics(group, adherence)}
                  for (key, started), group in sorted(cells.items(), key=lambda i: (order[i[0][0]], i[0][1]))],
        "has_escalation": any(c.escalation_score is not None for c in calls),
    }


class AdherenceScores:
    """Each call's technique adherence score (agent_ui.adherence, as the QA page shows
    it; None: nothing to judge), remembered per call for as long as the call's transcript
    and cards stay the same: assessing costs milliseconds per call, and a month of a busy
    line is thousands of calls asked for again at every change of the chart."""

    def __init__(self, playbook: Any, window: float, size: int = ADHERENCE_CACHE_SIZE) -> None:
        self._playbook, self._window, self._size = playbook, window, size
        self._known: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.assessed = 0                       # calls assessed (not remembered): for the tests

    @staticmethod
    def _fingerprint(detail: dict[str, Any]) -> int:
        return hash((tuple((u["speaker"], u["utterance"], u["start"], u["end"], u["text"])
                           for u in detail["utterances"]),
                     tuple((c["card_id"], c["status"], c["start"]) for c in detail["cards"])))

    def scores(self, calls: list[TrendCall]) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for call in calls:
            detail = call.detail or {"cards": [], "utterances": []}
            fingerprint = self._fingerprint(detail)
            with self._lock:
                known = self._known.get(call.call_id)
                if known is not None:
                    self._known.move_to_end(call.call_id)
            if known is not None and known[0] == fingerprint:
                out[call.call_id] = known[1]
                continue
            score = assess_call(detail, self._playbook, self._window).to_dict()["score"]
            with self._lock:
                self.assessed += 1
                self._known[call.call_id] = (fingerprint, score)
                self._known.move_to_end(call.call_id)
                while len(self._known) > self._size:
                    self._known.popitem(last=False)
            out[call.call_id] = score
        return out


async def compute(request: web.Request) -> dict[str, Any]:
    user = require_role(request, *ROLES)
    query = parse_query(request.query)
    store, playbook = request.app[APP_STORE], request.app[APP_PLAYBOOK]
    adherence = request.app[APP_ADHERENCE]
    status = call_filter(user).get("status")

    def work() -> dict[str, Any]:        # reads and the adherence of every call: off the loop
        calls = store.trends.calls(query.date_from, query.date_to, status=status, with_detail=True)
        names = {c.id: c.title for c in playbook.categories}
        return trends(query, calls, adherence.scores(calls), names)
    return await asyncio.to_thread(work)


async def trends_page(request: web.Request) -> web.StreamResponse:
    require_role(request, *ROLES)
    return page(request, "trends.html", "趋势分析", script="trends.js")


async def trends_json(request: web.Request) -> web.Response:
    result = await compute(request)
    result["generated_at"] = time.time()
    return web.json_response(result)


def to_csv(result: dict[str, Any]) -> str:
    """One row per group and period with calls, then one 合计 row per group."""
    names = {g["key"]: g["name"] for g in result["groups"]}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([GROUPINGS[result["by"]], f"周期（{PERIODS[result['period']]}）",
                     *(label for _, label in METRICS)])
    rows = [(names[c["group"]], c["period"], c) for c in result["cells"]]
    rows += [(g["name"], "合计", g["total"]) for g in result["groups"]]
    for name, when, values in rows:
        writer.writerow([_cell(name), when, *("" if values[key] is None else values[key] for key, _ in METRICS)])
    return "\ufeff" + out.getvalue()          # BOM: spreadsheet programs then read UTF-8


async def trends_csv(request: web.Request) -> web.Response:
    result = await compute(request)
    name = f"趋势-{GROUPINGS[result['by']]}-{result['from']}-{result['to']}.csv"
    return web.Response(text=to_csv(result), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": attachment(name)})


def setup(app: web.Application) -> None:
    app[APP_ADHERENCE] = AdherenceScores(app[APP_PLAYBOOK], app[APP_CONFIG].web.adherence_window)
    app.router.add_get("/trends", trends_page)
    app.router.add_get("/api/trends", trends_json)
    app.router.add_get("/trends/export.csv", trends_csv)
