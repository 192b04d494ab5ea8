"""What a session and a connection may hold of the web server, on the real app served the
way `callassist serve` serves it (agent_ui.limits.make_runner), over real sockets.

- An ended session (logout here; removal or a deleted session from another store
  handle, as the CLI does; expiry) closes its websockets within a second, and only its.
- A user's websockets are capped; beyond the cap the socket is closed with 4429.
- A websocket client that stops answering pings is dropped.
- An idle keep-alive connection, a client trickling its headers (slowloris) and a slow
  request body are cut off.
- The Server header names no versions, not even on aiohttp's own error answers.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import WSMsgType, web
from yarl import URL

from agent_ui.app import create_app
from agent_ui.limits import make_runner
from agent_ui.security import SESSION_COOKIE
from agent_ui.store import Store
from callassist.bus import EventBus
from callassist.events import AgentJoined, CallStarted
from web_fixtures import client_session, http_login, make_config, make_store

CLOSE_LOGGED_OUT = 4401
CLOSE_TOO_MANY = 4429
DEADLINE = 1.5           # "within a second", plus scheduling slack on a busy machine


@dataclass
class Served:
    config: Any
    store: Store
    bus: EventBus
    runner: web.AppRunner
    url: str


async def serve(tmp_path: Path, **web_settings: Any) -> Served:
    config = make_config(tmp_path / "data", **web_settings)
    store = make_store(config)
    bus = EventBus()
    runner = make_runner(create_app(config, store, bus), shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]       # type: ignore[union-attr]
    return Served(config, store, bus, runner, f"http://127.0.0.1:{port}")


async def stop(served: Served) -> None:
    await served.runner.cleanup()
    served.store.close()


@pytest_asyncio.fixture
async def server(tmp_path):
    served = await serve(tmp_path, websockets_per_user=3)
    yield served
    await stop(served)


async def open_screen(http: aiohttp.ClientSession, url: str, **kwargs: Any):
    """A websocket past its catch-up ("ready"), as the agent screen opens it."""
    ws = await http.ws_connect(url + "/ws", origin=url, **kwargs)
    await ws.send_json({"last_seq": 0})
    while (await ws.receive_json(timeout=10)).get("type") != "ready":
        pass
    return ws


async def closed_within(ws, seconds: float) -> tuple[int | None, float]:
    """Read until the server closes the socket: (close code, seconds it took); code None
    if it is still open after `seconds`."""
    start = time.monotonic()
    deadline = start + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            # not receive(timeout=): its timeout restarts with every ping it answers
            message = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            break
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return ws.close_code, time.monotonic() - start
    return None, time.monotonic() - start


async def still_carries_events(ws, bus: EventBus, call_id: str, endpoint: str) -> bool:
    """Positive control: the socket is open and events of a new call on `endpoint` reach it."""
    bus.publish(CallStarted(call_id, caller="13900000000"))
    bus.publish(AgentJoined(call_id, endpoint))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await ws.receive(timeout=deadline - time.monotonic())
        if message.type != WSMsgType.TEXT:
            return False
        event = json.loads(message.data).get("event") or {}
        if event.get("call_id") == call_id:
            return True
    return False


def session_token(http: aiohttp.ClientSession, url: str) -> str:
    return http.cookie_jar.filter_cookies(URL(url))[SESSION_COOKIE].value


# --- an ended session closes its websockets ----------------------------------------------

async def test_logout_closes_that_sessions_websockets_within_a_second(server):
    async with client_session() as first, client_session() as second:
        csrf = await http_login(first, server.url, "zhang.wei")
        await http_login(second, server.url, "zhang.wei")           # the same user, elsewhere
        leaving = await open_screen(first, server.url)
        staying = await open_screen(second, server.url)
        async with first.post(f"{server.url}/logout", data={"csrf_token": csrf},
                              allow_redirects=False) as response:
            assert response.status == 303
        code, took = await closed_within(leaving, DEADLINE)
        assert code == CLOSE_LOGGED_OUT, f"still open {took:.2f} s after logout"
        # the other session of the same user is untouched
        assert await still_carries_events(staying, server.bus, "after-logout", "PJSIP/1001")
        await staying.close()


async def test_sessions_ended_by_another_process_close_their_websockets(server):
    """As `callassist user remove` and a logout elsewhere do: another connection to the
    same database file ends the sessions; this server's sockets notice."""
    cli = Store(server.store.path)
    try:
        async with client_session() as removed, client_session() as logged_out, \
                client_session() as bystander:
            await http_login(removed, server.url, "li.na")
            await http_login(logged_out, server.url, "zhang.wei")
            await http_login(bystander, server.url, "wang.qiang")
            removed_ws = await open_screen(removed, server.url)
            logged_out_ws = await open_screen(logged_out, server.url)
            bystander_ws = await open_screen(bystander, server.url)

            assert cli.accounts.remove_user("li.na")
            code, took = await closed_within(removed_ws, DEADLINE)
            assert code == CLOSE_LOGGED_OUT, f"removed user's socket open {took:.2f} s later"

            assert cli.accounts.delete_session(session_token(logged_out, server.url))
            code, took = await closed_within(logged_out_ws, DEADLINE)
            assert code == CLOSE_LOGGED_OUT, f"logged-out socket open {took:.2f} s later"

            assert await still_carries_events(bystander_ws, server.bus, "bystander", "PJSIP/1001")
            await bystander_ws.close()
    finally:
        cli.close()


async def test_an_expired_session_closes_its_websocket(server):
    token, _ = server.store.accounts.create_session("zhang.wei", ttl=2.0)
    expires = time.monotonic() + 2.0
    async with client_session() as http, client_session() as other:
        http.cookie_jar.update_cookies({SESSION_COOKIE: token}, URL(server.url))
        ws = await open_screen(http, server.url)
        await http_login(other, server.url, "zhang.wei")
        control = await open_screen(other, server.url)
        code, _ = await closed_within(ws, expires - time.monotonic() + DEADLINE)
        assert code == CLOSE_LOGGED_OUT
        assert time.monotonic() >= expires - 0.1                   # not before it expired
        assert not control.closed
        assert await still_carries_events(control, server.bus, "after-expiry", "PJSIP/1001")
        await control.close()


async def test_live_session_tokens_agrees_with_get_session(tmp_path):
    """The watcher's batched check and get_session (the contract: a session is live iff
    get_session returns it) agree on live, expired, deleted and disabled sessions."""
    config = make_config(tmp_path)
    store = make_store(config)
    try:
        now = time.time()
        live, _ = store.accounts.create_session("zhang.wei")
        expired, _ = store.accounts.create_session("zhang.wei", ttl=10, now=now - 20)
        deleted, _ = store.accounts.create_session("li.na")
        store.accounts.delete_session(deleted)
        disabled, _ = store.accounts.create_session("wang.qiang")
        store.accounts.set_disabled("wang.qiang", True)
        tokens = {live, expired, deleted, disabled, "never-issued"}
        assert store.accounts.live_session_tokens(tokens) == {live}
        assert {t for t in tokens if store.accounts.get_session(t) is not None} == {live}
        assert store.accounts.live_session_tokens(set()) == set()
        many = {store.accounts.create_session("zhao.min")[0] for _ in range(600)}   # more than one query
        assert store.accounts.live_session_tokens(many | {"x"}) == many
    finally:
        store.close()


# --- websockets per user ------------------------------------------------------------------

async def try_screen(http: aiohttp.ClientSession, url: str) -> tuple[str, Any]:
    """("ready", ws) or ("closed", (code, reason))."""
    ws = await http.ws_connect(url + "/ws", origin=url)
    await ws.send_json({"last_seq": 0})
    while True:
        message = await ws.receive(timeout=10)
        if message.type == WSMsgType.TEXT and json.loads(message.data).get("type") == "ready":
            return "ready", ws
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return "closed", (ws.close_code, message.extra)


async def test_a_users_websockets_are_capped(server):
    async with client_session() as http, client_session() as other:
        await http_login(http, server.url, "zhang.wei")
        await http_login(other, server.url, "li.na")
        # opened all at once: the cap holds against parallel handshakes too
        outcomes = await asyncio.gather(*(try_screen(http, server.url) for _ in range(6)))
        opened = [ws for kind, ws in outcomes if kind == "ready"]
        refused = [detail for kind, detail in outcomes if kind == "closed"]
        assert len(opened) == 3 and len(refused) == 3
        for code, reason in refused:
            assert code == CLOSE_TOO_MANY and "最多 3 个" in reason
        # another user is not affected (positive control)
        kind, theirs = await try_screen(other, server.url)
        assert kind == "ready"
        # a closed screen frees its place
        await opened.pop().close()
        deadline = time.monotonic() + 5
        while (outcome := await try_screen(http, server.url))[0] != "ready":
            assert time.monotonic() < deadline, "the closed socket's place was not freed"
            await asyncio.sleep(0.05)
        for ws in (*opened, outcome[1], theirs):
            await ws.close()


# --- websockets whose client stops answering -----------------------------------------------

async def test_a_websocket_client_that_stops_answering_pings_is_dropped(tmp_path):
    served = await serve(tmp_path, websocket_heartbeat=0.4)
    try:
        async with client_session() as http:
            await http_login(http, served.url, "wang.qiang")
            answering = await open_screen(http, served.url)                 # autoping: pongs
            silent = await open_screen(http, served.url, autoping=False)
            pings = 0

            async def drain_silent() -> int | None:
                nonlocal pings
                while True:
                    message = await silent.receive(timeout=5)
                    if message.type == WSMsgType.PING:
                        pings += 1                                          # and no pong
                    elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                        return silent.close_code

            dropped = asyncio.create_task(drain_silent())
            code, _ = await closed_within(answering, 2.0)          # reads: answers every ping
            assert code is None and not answering.closed
            assert await asyncio.wait_for(dropped, 1.0) is not None and pings >= 1
            assert silent.closed
            await answering.close()
    finally:
        await stop(served)


# --- slow and idle HTTP connections ---------------------------------------------------------

async def until_closed_by_server(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float | None]:
    """Everything the server sends until it closes the connection, and when (None: still
    open after `seconds`)."""
    start = time.monotonic()
    received = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), seconds - (time.monotonic() - start))
            if not chunk:
                return received, time.monotonic() - start
            received += chunk
    except (TimeoutError, ValueError):
        return received, None
    except ConnectionResetError:
        return received, time.monotonic() - start


async def test_idle_and_slow_connections_are_cut_off(tmp_path):
    served = await serve(tmp_path, idle_timeout=1.0, request_timeout=1.0)
    host, port = "127.0.0.1", URL(served.url).port
    connections: list[asyncio.StreamWriter] = []

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        connections.append(writer)
        return reader, writer

    try:
        # a connection that never sends a request
        reader, _ = await connect()
        _, took = await until_closed_by_server(reader, 3.0)
        assert took is not None and took < 2.5

        # slowloris: a header line every 0.2 s, never the end of the headers
        reader, writer = await connect()
        writer.write(b"GET /login HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for n in range(40):
                await asyncio.sleep(0.2)
                writer.write(b"X-Slow-%d: 1\r\n" % n)
                await writer.drain()

        trickling = asyncio.create_task(trickle())
        _, took = await until_closed_by_server(reader, 4.0)
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        assert took is not None and took < 2.5, "a client trickling headers held the connection"

        # keep-alive: reused while fresh (positive control), then closed when idle
        reader, writer = await connect()
        for _ in range(2):
            writer.write(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            await asyncio.wait_for(reader.readexactly(length), 5)
            await asyncio.sleep(0.3)
        _, took = await until_closed_by_server(reader, 3.0)
        assert took is not None and took < 2.5

        # a body that stops arriving: 408 once request_timeout has passed
        reader, writer = await connect()
        writer.write(b"POST /api/cards/x/feedback HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"helpful\"")
        start = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408") and 0.9 <= time.monotonic() - start < 2.5
        _, took = await until_closed_by_server(reader, 5.0)      # then closed (lingering 2 s)
        assert took is not None
        # the same request with its whole body is answered at once (401: no session)
        reader, writer = await connect()
        body = b'{"helpful": true}'
        writer.write(b"POST /api/cards/x/feedback HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        answer, took = await until_closed_by_server(reader, 4.0)
        assert answer.startswith(b"HTTP/1.1 401")
    finally:
        for writer in connections:
            writer.close()
        await stop(served)


# --- the Server header ------------------------------------------------------------------------

async def test_the_server_header_names_no_versions(server):
    def check(value: str, what: str) -> None:
        assert value == "callassist", (what, value)

    async with client_session() as http:
        for path in ("/login", "/static/css/app.css", "/nowhere", "/api/live"):
            async with http.get(server.url + path, allow_redirects=False) as response:
                check(response.headers["Server"], path)
        await http_login(http, server.url, "wang.qiang")
        ws = await http.ws_connect(server.url + "/ws", origin=server.url)
        check(ws._response.headers["Server"], "websocket handshake")
        await ws.close()
    # aiohttp's own answer to a malformed request (no app code runs)
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", URL(server.url).port)
        writer.write(raw)
        answer, _ = await until_closed_by_server(reader, 5.0)
        writer.close()
        head = answer.split(b"\r\n\r\n")[0].decode()
        assert head.startswith("HTTP/1.0 400") and "Server: callassist\r\n" in head + "\r\n", head
        assert "aiohttp" not in head and "Python" not in head
