"""JSON API for the pages: calls (listing, detail, live), card acknowledgement and
feedback, and the filter vocabularies. Every listing is restricted to what the user
may see (auth.call_filter); every call is checked with auth.can_view_call."""
from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from aiohttp import web

from agent_ui.adherence import assess_call
from agent_ui.auth import call_filter, can_review
from agent_ui.security import (APP_CONFIG, APP_PLAYBOOK, APP_STORE, current_user, public_user,
                               require_call, require_role)

PAGE_SIZE = 50
MAX_PAGE = 200
SUMMARY_FIELDS = ("call_id", "source", "caller", "agent_endpoint", "agent_username", "agent_name",
                  "started_at", "ended_at", "duration", "status", "risk", "categories",
                  "max_severity", "card_count", "snippets")
CARD_FIELDS = ("card_id", "category", "title", "severity", "speaker", "text", "phrase", "heard",
               "via", "score",
               "start", "end", "utterance", "script", "citations", "alert_supervisor", "status",
               "confirmed", "fired_at", "acknowledged_by", "acknowledged_at", "helpful")


class BadRequest(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}, ensure_ascii=False),
                         content_type="application/json")


async def json_body(request: web.Request) -> Any:
    """The request's body as JSON, or BadRequest saying what is wrong with it."""
    try:
        return json.loads(await request.text())
    except RecursionError:               # "[[[[..." past Python's nesting limit
        raise BadRequest("请求体的 JSON 嵌套层数过多") from None
    except (ValueError, UnicodeDecodeError, LookupError):   # not JSON, not UTF-8, unknown charset
        raise BadRequest("请求体应为有效的 JSON（UTF-8 编码）") from None


# --- shapes sent to the browser (no file paths, no password hashes) -------------------

def call_summary(call: dict[str, Any]) -> dict[str, Any]:
    out = {key: call.get(key) for key in SUMMARY_FIELDS if key in call}
    out["has_recording"] = bool(call.get("recording_path"))
    return out


def call_detail(call: dict[str, Any], playbook: Any, window: float) -> dict[str, Any]:
    out = call_summary(call)
    out["agents"] = call.get("agents", [])
    out["utterances"] = call.get("utterances", [])
    out["cards"] = [{key: card.get(key) for key in CARD_FIELDS} for card in call.get("cards", [])]
    out["faults"] = call.get("faults", [])
    out["review"] = call.get("review")
    out["reviews"] = call.get("reviews", [])
    out["adherence"] = assess_call(call, playbook, window).to_dict()
    return out


def adherence_window(request: web.Request) -> float:
    return request.app[APP_CONFIG].web.adherence_window


# --- query parsing ------------------------------------------------------------------

def _day(value: str, name: str, end: bool = False) -> float | None:
    if not value:
        return None
    try:
        day = dt.datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise BadRequest(f"{name}: 日期格式应为 YYYY-MM-DD") from None
    return (day + dt.timedelta(days=1)).timestamp() - 0.001 if end else day.timestamp()


def _int(value: str | None, name: str, default: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name}: 应为整数") from None
    return max(0, min(number, high))


def list_filters(request: web.Request) -> dict[str, Any]:
    """CallArchive.list_calls keyword arguments from the query string, then narrowed to what
    the user may see (the role's restriction always wins)."""
    q = request.query
    filters: dict[str, Any] = {
        "date_from": _day(q.get("from", ""), "from"),
        "date_to": _day(q.get("to", ""), "to", end=True),
        "agent": q.get("agent") or None,
        "category": q.get("category") or None,
        "severity": q.get("severity") or None,
        "text": (q.get("q") or "").strip()[:200] or None,
        "status": q.get("status") or None,
    }
    if filters["status"] not in (None, "live", "ended"):
        raise BadRequest("status: live 或 ended")
    filters.update(call_filter(current_user(request)))
    return filters


# --- handlers -----------------------------------------------------------------------

async def me(request: web.Request) -> web.Response:
    return web.json_response({"user": public_user(current_user(request)), "server_time": time.time()})


async def meta(request: web.Request) -> web.Response:
    """Vocabularies for the filters: categories (from the playbook) and agents."""
    user = current_user(request)
    playbook = request.app[APP_PLAYBOOK]
    categories = [{"id": c.id, "title": c.title, "severity": c.severity} for c in playbook.categories]
    agents = []
    if user["role"] != "agent":
        agents = [{"username": u["username"], "display_name": u.get("display_name") or u["username"],
                   "endpoints": u.get("endpoints", [])}
                  for u in request.app[APP_STORE].accounts.list_users() if u["role"] == "agent"]
    return web.json_response({"categories": categories, "agents": agents})


async def list_calls(request: web.Request) -> web.Response:
    store = request.app[APP_STORE]
    filters = list_filters(request)
    limit = _int(request.query.get("limit"), "limit", PAGE_SIZE, MAX_PAGE)
    offset = _int(request.query.get("offset"), "offset", 0, 10**9)
    calls = store.calls.list_calls(**filters, limit=limit, offset=offset)
    return web.json_response({"calls": [call_summary(c) for c in calls],
                              "total": store.calls.count_calls(**filters), "offset": offset, "limit": limit})


async def call_json(request: web.Request) -> web.Response:
    call = require_call(request, request.match_info["call_id"])
    detail = call_detail(call, request.app[APP_PLAYBOOK], adherence_window(request))
    detail["can_review"] = can_review(current_user(request))
    return web.json_response(detail)


async def call_analytics(request: web.Request) -> web.Response:
    """The call's conversation stats and reading (null until computed); same access as the call."""
    call_id = require_call(request, request.match_info["call_id"])["call_id"]
    stored = request.app[APP_STORE].analytics.get(call_id) or {}
    return web.json_response({"stats": stored.get("stats"), "reading": stored.get("reading")})


async def live_calls(request: web.Request) -> web.Response:
    user = current_user(request)
    store = request.app[APP_STORE]
    if user["role"] in ("supervisor", "admin"):
        calls = store.calls.live_calls()
    elif user["role"] == "agent":
        calls = store.calls.list_calls(endpoints=list(user.get("endpoints") or ()), status="live")
    else:
        calls = []
    return web.json_response({"calls": [call_summary(c) for c in calls], "server_time": time.time()})


def answered_call(user: dict[str, Any], call: dict[str, Any]) -> bool:
    """One of the user's endpoints took part in the call as its agent."""
    agents = {call.get("agent_endpoint")} | set(call.get("agents") or ())
    return bool(set(user.get("endpoints") or ()) & (agents - {None, ""}))


def _card_for_user(request: web.Request) -> tuple[str, dict[str, Any]]:
    """The card and user for an acknowledgement or feedback. A card's marks are its
    call's agent's (they show on the agent's screen): anyone else who may see the call,
    a supervisor for instance, gets 403 rather than overwriting them."""
    user = require_role(request, "agent", "supervisor", "admin")
    card_id = request.match_info["card_id"]
    call_id = request.app[APP_STORE].calls.card_call_id(card_id)
    if call_id is None:
        raise web.HTTPNotFound(text='{"error": "没有这张提示卡"}', content_type="application/json")
    call = require_call(request, call_id)
    if not answered_call(user, call):
        raise web.HTTPForbidden(text=json.dumps(
            {"error": "提示卡的“已处理”和“有用/没用”只能由接听该通话的坐席标记"}, ensure_ascii=False),
            content_type="application/json")
    return card_id, user


async def acknowledge(request: web.Request) -> web.Response:
    card_id, user = _card_for_user(request)
    store = request.app[APP_STORE]
    await store.off_loop(store.reviews.acknowledge_card, card_id, user["username"])
    return web.json_response({"ok": True, "card_id": card_id})


async def feedback(request: web.Request) -> web.Response:
    card_id, user = _card_for_user(request)
    body = await json_body(request)
    helpful = body.get("helpful") if isinstance(body, dict) else None
    if not isinstance(helpful, bool):
        raise BadRequest("helpful: 应为 true 或 false")
    store = request.app[APP_STORE]
    await store.off_loop(store.reviews.card_feedback, card_id, user["username"], helpful)
    return web.json_response({"ok": True, "card_id": card_id, "helpful": helpful})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/meta", meta)
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/{call_id}", call_json)
    app.router.add_get("/api/calls/{call_id}/analytics", call_analytics)
    app.router.add_get("/api/live", live_calls)
    app.router.add_post("/api/cards/{card_id}/ack", acknowledge)
    app.router.add_post("/api/cards/{card_id}/feedback", feedback)
