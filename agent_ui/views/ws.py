"""/ws: stored call events pushed to a screen as soon as they are committed.

Protocol (JSON text frames):
  client -> server, once after opening:  {"last_seq": N, "calls": [call ids it shows]}
  server -> client:  {"seq": S, "event": event_to_dict(...)}  (events, in order per call)
                     {"type": "ready", "server_time": t, "calls": [...], "cards": {...}}
                                         after the catch-up; cards: acknowledgement and
                                         feedback state of the calls' cards
Query ?call=ID narrows the socket to one call (the /live/ID view).

Catch-up without duplicates: the socket first attaches to the app's LiveHub (which
hands it every event committed from then on for its calls), then replays
store.events.events_since(last_seq) for those calls, then streams; it never sends a call an
event at or below the last seq it sent that call, and the client ignores any such
event too, so a reconnect with its last seq shows each event once. A screen that
falls more than FEED_QUEUE events behind is closed with 4000 and reconnects
(catching up from the store).

Who sees what: an agent, the live calls on their endpoints (a call enters scope when
its AgentJoined names one of them); a supervisor or admin, every call; anyone, one
call they may view with ?call=ID. The handshake must come from this site (Origin).

Limits (agent_ui.views.sockets.OpenSockets): a socket is closed with 4401 within about
half a second of its session ending (logout, removal, password/role change, disabling,
expiry; from this process or another); a user's socket beyond [web]
websockets_per_user is closed at once with 4429; a client that does not answer the
server's pings ([web] websocket_heartbeat) is dropped.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from agent_ui.auth import can_view_call
from agent_ui.security import (APP_CONFIG, APP_STORE, REQ_SESSION, current_user, forbidden,
                               require_call, same_origin)
from agent_ui.views.hub import Feed, LiveHub
from agent_ui.views.sockets import OpenSockets, Place

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
FEED_QUEUE = 2000
MAX_WANTED = 50
MAX_SEQ = 2**63 - 1                # SQLite's largest integer: a larger last_seq is no seq
CLOSE_BEHIND = 4000
CLOSE_BAD_HELLO = 4400
CLOSE_LOGGED_OUT = 4401
CLOSE_TOO_MANY = 4429
CLOSE_GOING_AWAY = 1001
CLOSE_REASON_BYTES = 123           # RFC 6455: a close frame's reason, in UTF-8 bytes
APP_SOCKETS: web.AppKey[OpenSockets] = web.AppKey("websockets", OpenSockets)
APP_HUB: web.AppKey[LiveHub] = web.AppKey("live_hub", LiveHub)


class Scope:
    """Which calls one socket may carry, and the last seq sent to it per call."""

    def __init__(self, user: dict[str, Any], store: Any, focus: str | None) -> None:
        self.user = user
        self.store = store
        self.focus = focus
        self.endpoints = set(user.get("endpoints") or ())
        self.every = focus is None and user["role"] in ("supervisor", "admin")
        self.sent: dict[str, int] = {}

    def feed(self) -> Feed:
        return Feed(FEED_QUEUE, every=self.every,
                    endpoints=() if self.focus or self.every else self.endpoints)

    def initial(self, wanted: list[str]) -> list[str]:
        """The calls to catch up on: the live ones this socket covers, plus those the
        client already shows (a reconnect), if the user may see them."""
        if self.focus is not None:
            return [self.focus]
        if self.every:
            calls = [c["call_id"] for c in self.store.calls.live_calls()]
        else:
            calls = [c["call_id"] for c in self.store.calls.list_calls(
                endpoints=sorted(self.endpoints), status="live", limit=100)]
        for call_id in wanted[:MAX_WANTED]:
            if call_id not in calls and (self.every or can_view_call(
                    self.user, self.store.calls.get_call(call_id))):
                calls.append(call_id)
        return calls

    def fresh(self, seq: int, event: dict[str, Any]) -> bool:
        """Not sent before; records it as sent."""
        call_id = event.get("call_id", "")
        if seq <= self.sent.get(call_id, 0):
            return False
        self.sent[call_id] = seq
        return True


def close_reason(text: str) -> bytes:
    """`text` as a close frame's reason: UTF-8, cut on a character boundary to fit."""
    return text.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore").encode()


def _parse_hello(data: str) -> tuple[int, list[str]]:
    try:
        hello = json.loads(data)
    except RecursionError:                     # "[[[[..." nested past Python's limit
        raise ValueError("hello is nested too deeply") from None
    if not isinstance(hello, dict):
        raise ValueError("hello must be an object")
    last = hello.get("last_seq", 0)
    wanted = hello.get("calls", [])
    if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last <= MAX_SEQ:
        raise ValueError(f"last_seq must be an integer from 0 to {MAX_SEQ}")
    if not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted):
        raise ValueError("calls must be a list of call ids")
    return last, wanted


def _card_state(store: Any, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for call_id in call_ids:
        call = store.calls.get_call(call_id) or {}
        for card in call.get("cards", []):
            if card.get("acknowledged_by") or card.get("helpful") is not None:
                state[card["card_id"]] = {"acknowledged": bool(card.get("acknowledged_by")),
                                          "helpful": card.get("helpful")}
    return state


async def _send(ws: web.WebSocketResponse, seq: int, event: dict[str, Any]) -> None:
    await ws.send_str(json.dumps({"seq": seq, "event": event}, ensure_ascii=False))


async def _stream(ws: web.WebSocketResponse, scope: Scope, hub: LiveHub, last: int,
                  wanted: list[str]) -> None:
    store = scope.store
    feed = scope.feed()
    # Attach, then catch up, with no await in between: every event committed after the
    # catch-up query reaches the feed; what the feed repeats of the catch-up is skipped.
    calls = scope.initial(wanted)
    hub.attach(feed, calls)
    try:
        backlog = store.events.events_since(last, call_ids=calls)
        for call_id in calls:
            scope.sent[call_id] = last
        for seq, event in backlog:
            if scope.fresh(seq, event):
                await _send(ws, seq, event)
        await ws.send_str(json.dumps({
            "type": "ready", "server_time": time.time(), "calls": calls,
            "cards": _card_state(store, calls) if scope.user["role"] == "agent" else {}},
            ensure_ascii=False))
        while True:
            seq, event = await feed.get()
            if feed.overflowed:
                await ws.close(code=CLOSE_BEHIND, message=b"behind: reconnect to catch up")
                return
            call_id = event.get("call_id", "")
            if call_id not in scope.sent:
                # a call joining mid-stream (an agent's AgentJoined, a new call on the
                # board): its history first; the feed holds everything after this event
                scope.sent[call_id] = 0
                for old_seq, old in store.events.events_since(0, call_ids=[call_id]):
                    if old_seq < seq and scope.fresh(old_seq, old):
                        await _send(ws, old_seq, old)
            if scope.fresh(seq, event):
                await _send(ws, seq, event)
    finally:
        hub.detach(feed)


async def _read_until_gone(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) until the client goes; the heartbeat drops a silent one."""
    while not ws.closed:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


async def _session_end(place: Place) -> None:
    await place.ended.wait()


async def websocket(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    if not same_origin(request):
        log.warning("websocket refused: Origin %r from %s", request.headers.get("Origin"),
                    request.remote)
        raise forbidden(request, "来源不被允许")
    focus = request.query.get("call") or None
    if focus is not None:
        require_call(request, focus)
    elif user["role"] not in ("agent", "supervisor", "admin"):
        raise forbidden(request)
    store = request.app[APP_STORE]
    sockets = request.app[APP_SOCKETS]
    # the slot is taken before the handshake's first await: parallel handshakes count
    place = sockets.admit(user["username"], request[REQ_SESSION])
    ws = web.WebSocketResponse(heartbeat=request.app[APP_CONFIG].web.websocket_heartbeat,
                               max_msg_size=64 * 1024)
    try:
        await ws.prepare(request)
        if place is None:
            log.warning("websocket refused: %s already holds %d", user["username"], sockets.per_user)
            await ws.close(code=CLOSE_TOO_MANY, message=close_reason(
                f"此账号打开的实时页面过多（每个账号最多 {sockets.per_user} 个），请先关闭其他页面"))
            return ws
        place.ws = ws
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT)
            if msg.type != WSMsgType.TEXT:
                raise ValueError("expected a JSON hello")
            last, wanted = _parse_hello(msg.data)
        except (asyncio.TimeoutError, ValueError) as exc:
            await ws.close(code=CLOSE_BAD_HELLO, message=close_reason(f"bad hello: {exc}"))
            return ws
        stream = asyncio.create_task(_stream(ws, Scope(user, store, focus), request.app[APP_HUB],
                                             last, wanted))
        ended = asyncio.create_task(_session_end(place))
        tasks = [stream, ended, asyncio.create_task(_read_until_gone(ws))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() and not isinstance(
                        task.exception(), ConnectionResetError):
                    log.error("websocket of %s failed", user["username"], exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if ended in done:
            await ws.close(code=CLOSE_LOGGED_OUT, message=b"session ended")
    finally:
        if place is not None:
            sockets.release(place)
        if ws.prepared:
            await ws.close()
    return ws


async def _close_all(app: web.Application) -> None:
    for ws in app[APP_SOCKETS].open_sockets():
        await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down")


async def _run_hub(app: web.Application):
    tasks = [asyncio.create_task(app[APP_HUB].run(), name="live-hub"),   # listening from here
             asyncio.create_task(app[APP_SOCKETS].watch_sessions(), name="websocket-sessions")]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def setup(app: web.Application) -> None:
    app[APP_SOCKETS] = OpenSockets(app[APP_STORE], app[APP_CONFIG].web.websockets_per_user)
    app[APP_HUB] = LiveHub(app[APP_STORE])
    app.cleanup_ctx.append(_run_hub)
    app.on_shutdown.append(_close_all)
    app.router.add_get("/ws", websocket)
