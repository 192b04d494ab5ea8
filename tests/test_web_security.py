"""Web security without a browser: the real app on a real port, real HTTP.

Default deny, CSRF, websocket origin, who sees which call, recording paths, login
rate limiting, passwords out of logs, security headers, exports."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sqlite3

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from agent_ui.security import PUBLIC_PATHS, SESSION_COOKIE
from callassist.bus import EventBus
from callassist.events import CallEnded, CallStarted, TranscriptUpdate
from web_fixtures import (PASSWORD, client_session, http_login, make_config, make_store,
                          simulate_call, start_app, until, write_wav)

MINE = "1700000000.11"         # zhang.wei's (PJSIP/1001) archived call, with a recording
THEIRS = "1700000000.22"       # li.na's (PJSIP/1002) live call


class Site:
    pass


@pytest_asyncio.fixture
async def site(tmp_path):
    s = Site()
    s.config = make_config(tmp_path / "data", login_attempts_per_minute=3)
    s.store = make_store(s.config)
    s.bus = EventBus()
    s.server = await start_app(s.config, s.store, s.bus,
                               access_log=logging.getLogger("aiohttp.access"))
    s.url = s.server.url
    wav = write_wav(s.store.recordings_dir / f"{MINE}.wav", 4.0)
    await simulate_call(s.bus, MINE, "PJSIP/1001", recording=wav)
    await simulate_call(s.bus, THEIRS, "PJSIP/1002", end=False)
    await until(lambda: (s.store.calls.get_call(MINE) or {}).get("status") == "ended"
                and len((s.store.calls.get_call(THEIRS) or {}).get("cards", [])) >= 3)
    s.card_mine = s.store.calls.get_call(MINE)["cards"][0]["card_id"]
    s.card_theirs = s.store.calls.get_call(THEIRS)["cards"][0]["card_id"]
    yield s
    await s.server.stop()
    s.store.close()


def concrete(path: str, site: Site) -> str:
    return (path.replace("{call_id}", MINE).replace("{card_id}", site.card_mine)
            .replace("{fmt}", "json"))


# --- default deny -----------------------------------------------------------------------

async def test_every_route_without_a_session_is_refused(site):
    app = site.server.app
    checked = 0
    async with client_session() as http:
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter") or info.get("prefix")
            # the public paths: the login page, and monitoring (tests/test_health.py)
            if route.method == "HEAD" or path in PUBLIC_PATHS or path.startswith("/static"):
                continue
            url = site.url + concrete(path, site)
            async with http.request(route.method, url, allow_redirects=False,
                                    headers={"Origin": site.url}) as response:
                body = await response.text()
                if route.method == "GET" and not path.startswith(("/api/", "/ws", "/recordings/")) \
                        and "/export." not in path:
                    assert response.status == 302, path
                    assert response.headers["Location"].startswith("/login?next="), path
                else:
                    assert response.status == 401, (route.method, path, response.status)
                assert "媒体" not in body and "RIFF" not in body
                checked += 1
    assert checked >= 15


async def test_static_files_are_public_but_do_not_escape_their_folder(site):
    async with client_session() as http:
        async with http.get(site.url + "/static/js/common.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
        for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
            async with http.get(URL(site.url + path, encoded=True)) as response:
                assert response.status in (403, 404), path
                assert "create_app" not in await response.text()


# --- CSRF -------------------------------------------------------------------------------

async def test_state_changes_need_the_csrf_token(site):
    async with client_session() as http:
        csrf = await http_login(http, site.url, "zhang.wei")
        ack = f"{site.url}/api/cards/{site.card_mine}/ack"
        async with http.post(ack) as response:
            assert response.status == 403
        async with http.post(ack, headers={"X-CSRF-Token": "forged"}) as response:
            assert response.status == 403
        assert site.store.calls.get_card(site.card_mine)["acknowledged_by"] is None
        async with http.post(ack, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200
        assert site.store.calls.get_card(site.card_mine)["acknowledged_by"] == "zhang.wei"
        async with http.post(f"{site.url}/logout", allow_redirects=False) as response:
            assert response.status == 403                     # logout is a state change too

    async with client_session() as http:
        csrf = await http_login(http, site.url, "zhao.min")
        review = f"{site.url}/qa/call/{MINE}/review"
        async with http.post(review, data={"verdict": "fail"}, allow_redirects=False) as response:
            assert response.status == 403
        assert site.store.calls.get_call(MINE)["review"] is None
        async with http.post(review, data={"verdict": "fail", "csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.status == 303
        assert site.store.calls.get_call(MINE)["review"]["verdict"] == "fail"


async def test_a_review_without_a_verdict_is_refused_with_a_clear_message(site):
    async with client_session() as http:
        csrf = await http_login(http, site.url, "zhao.min")
        review = f"{site.url}/qa/call/{MINE}/review"
        for verdict in (None, "", "pass "):
            form = {"csrf_token": csrf, "notes": "漏选结论"}
            if verdict is not None:
                form["verdict"] = verdict
            async with http.post(review, data=form, allow_redirects=False) as response:
                assert response.status == 400
                assert response.content_type == "text/html"
                page = await response.text()
            assert "请先选择质检结论" in page and f'href="/qa/call/{MINE}#review"' in page
        async with http.post(review, json={"notes": "x"}, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 400
            assert "请先选择质检结论" in (await response.json())["error"]
        assert site.store.calls.get_call(MINE)["review"] is None
        async with http.post(review, json={"verdict": "pass"}, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200
        assert site.store.calls.get_call(MINE)["review"]["verdict"] == "pass"


async def test_login_form_needs_its_token(site):
    async with client_session() as http:
        async with http.post(f"{site.url}/login", data={"username": "zhang.wei", "password": PASSWORD},
                             allow_redirects=False) as response:
            assert response.status == 403
            assert SESSION_COOKIE not in response.cookies


async def test_websocket_from_another_origin_is_refused(site):
    async with client_session() as http:
        await http_login(http, site.url, "wang.qiang")
        for origin in ("http://evil.example", None):
            headers = {"Origin": origin} if origin else {}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(site.url + "/ws", headers=headers)
            assert refused.value.status == 403
        ws = await http.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_json({"last_seq": 0})
        await ws.close()


# --- who sees which call ----------------------------------------------------------------

async def test_agents_see_only_their_own_calls(site):
    async with client_session() as http:
        csrf = await http_login(http, site.url, "li.na")
        for path in (f"/qa/call/{MINE}", f"/live/{MINE}", f"/api/calls/{MINE}", f"/recordings/{MINE}",
                     f"/qa/call/{MINE}/export.vtt", f"/qa/call/{MINE}/export.csv"):
            async with http.get(site.url + path, allow_redirects=False) as response:
                assert response.status == 403, path
        async with http.post(f"{site.url}/api/cards/{site.card_mine}/ack",
                             headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{site.url}/ws?call={MINE}", origin=site.url)
        assert refused.value.status == 403
        async with http.get(f"{site.url}/api/calls") as response:
            listed = {c["call_id"] for c in (await response.json())["calls"]}
        assert listed == {THEIRS}
        async with http.get(f"{site.url}/api/calls?agent=zhang.wei") as response:
            assert {c["call_id"] for c in (await response.json())["calls"]} == set()
        # her own live call: yes
        async with http.get(f"{site.url}/live/{THEIRS}") as response:
            assert response.status == 200

        # her socket carries her calls' events only
        ws = await http.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_json({"last_seq": 0, "calls": [MINE]})
        other = "1700000000.33"
        await simulate_call(site.bus, other, "PJSIP/1001", seconds=4.0)
        site.bus.publish(CallEnded(THEIRS, 16.0))
        seen: set[str] = set()
        while True:
            message = await ws.receive_json(timeout=10)
            if "event" in message:
                seen.add(message["event"]["call_id"])
                if message["event"]["type"] == "CallEnded":
                    break
        await ws.close()
        assert seen == {THEIRS}


async def test_qa_sees_the_archive_not_live_calls(site):
    async with client_session() as http:
        await http_login(http, site.url, "zhao.min")
        async with http.get(f"{site.url}/api/calls/{MINE}") as response:
            assert response.status == 200
        async with http.get(f"{site.url}/api/calls/{THEIRS}") as response:
            assert response.status == 403
        async with http.get(f"{site.url}/supervisor", allow_redirects=False) as response:
            assert response.status == 403
        async with http.get(f"{site.url}/api/calls") as response:
            assert {c["call_id"] for c in (await response.json())["calls"]} == {MINE}


async def test_supervisor_sees_every_live_call(site):
    async with client_session() as http:
        await http_login(http, site.url, "wang.qiang")
        async with http.get(f"{site.url}/api/live") as response:
            live = (await response.json())["calls"]
        assert [c["call_id"] for c in live] == [THEIRS]
        assert live[0]["risk"] == "critical" and "recording_path" not in live[0]


async def read_until_ready(ws) -> list[dict]:
    messages = []
    while (message := await ws.receive_json(timeout=10)).get("type") != "ready":
        messages.append(message)
    return messages


async def test_websocket_reconnect_replays_only_what_was_missed(site):
    async with client_session() as http:
        await http_login(http, site.url, "li.na")
        ws = await http.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_json({"last_seq": 0})
        caught_up = await read_until_ready(ws)
        first = [m["seq"] for m in caught_up]
        await ws.close()
        assert first and first == sorted(set(first))
        cards = [m["event"]["card"] for m in caught_up if m["event"]["type"] == "CardFired"]
        assert cards and all(c["heard"] and c["heard"] in c["text"] and c["via"] for c in cards)
        site.bus.publish(TranscriptUpdate(THEIRS, "agent", 50, "好的 我 记下 了", 20.0, 21.0, True))
        site.bus.publish(CallEnded(THEIRS, 22.0))
        await until(lambda: site.store.calls.get_call(THEIRS)["status"] == "ended")
        # the call's final reading (agent_ui.live_reading) follows its end
        await until(lambda: (site.store.analytics.get(THEIRS) or {}).get("reading") is not None)
        # the call has ended: it is replayed because the client still shows it
        ws = await http.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_json({"last_seq": first[-1], "calls": [THEIRS]})
        replay = await read_until_ready(ws)
        await ws.close()
        assert [m["event"]["type"] for m in replay] == ["TranscriptUpdate", "CallEnded", "CallReadingUpdated"]
        assert all(m["seq"] > first[-1] for m in replay)


# --- recordings -------------------------------------------------------------------------

async def test_recording_download_by_call_id_only(site, tmp_path):
    secret = tmp_path / "secret.wav"
    write_wav(secret, 1.0)
    site.bus.publish(CallStarted("evil-1"))
    site.bus.publish(CallEnded("evil-1", 1.0, recording="../../../../../../etc/passwd"))
    site.bus.publish(CallStarted("evil-2"))
    site.bus.publish(CallEnded("evil-2", 1.0, recording=str(secret)))
    link = site.store.recordings_dir / "link.wav"
    os.symlink(secret, link)
    site.bus.publish(CallStarted("evil-3"))
    site.bus.publish(CallEnded("evil-3", 1.0, recording=str(link)))
    await until(lambda: (site.store.calls.get_call("evil-3") or {}).get("status") == "ended")
    async with client_session() as http:
        await http_login(http, site.url, "root")
        for call_id in ("evil-1", "evil-2", "evil-3"):
            async with http.get(f"{site.url}/recordings/{call_id}") as response:
                assert response.status == 404, call_id
                assert b"root:" not in await response.read()
        for raw in ("/recordings/..%2F..%2F..%2Fetc%2Fpasswd", "/recordings/../../etc/passwd",
                    f"/recordings/{MINE}%2F..%2F..%2Fcallassist.db", "/recordings/%2Fetc%2Fpasswd"):
            async with http.get(URL(site.url + raw, encoded=True)) as response:
                assert response.status == 404, raw
                assert b"root:" not in await response.read()
        # the real one, with Range (seeking)
        async with http.get(f"{site.url}/recordings/{MINE}", headers={"Range": "bytes=0-11"}) as response:
            assert response.status == 206
            assert response.headers["Content-Type"] == "audio/wav"
            assert (await response.read())[:4] == b"RIFF"


# --- login --------------------------------------------------------------------------------

async def login_attempt(http, url, username, password):
    async with http.get(f"{url}/login") as response:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await response.text()).group(1)
    async with http.post(f"{url}/login", allow_redirects=False, data={
            "username": username, "password": password, "csrf_token": token}) as response:
        return response.status, response.headers


async def test_login_is_rate_limited(site):
    async with client_session() as http:
        for _ in range(3):
            status, _ = await login_attempt(http, site.url, "zhang.wei", "wrong-password")
            assert status == 401
        status, headers = await login_attempt(http, site.url, "zhang.wei", PASSWORD)
        assert status == 429 and int(headers["Retry-After"]) > 0


async def test_passwords_are_never_logged(site, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Pa55word-Zebra"
    async with client_session() as http:
        assert (await login_attempt(http, site.url, "zhang.wei", wrong))[0] == 401
        assert (await login_attempt(http, site.url, "nobody", wrong))[0] == 401
        assert (await login_attempt(http, site.url, "li.na", PASSWORD))[0] == 303
    assert "POST /login" in caplog.text                       # the access log did run
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    with open(site.store.path, "rb") as db:
        assert PASSWORD.encode() not in db.read()


async def test_login_redirects_only_to_local_pages_and_logout_ends_the_session(site):
    async with client_session() as http:
        async with http.get(f"{site.url}/login") as response:
            token = re.search(r'name="csrf_token" value="([^"]+)"', await response.text()).group(1)
        async with http.post(f"{site.url}/login", allow_redirects=False, data={
                "username": "wang.qiang", "password": PASSWORD, "csrf_token": token,
                "next": "//evil.example/x"}) as response:
            assert response.headers["Location"] == "/supervisor"
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        async with http.get(f"{site.url}/supervisor") as response:
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', await response.text()).group(1)
        async with http.post(f"{site.url}/logout", data={"csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.status == 303
    assert site.store.accounts.get_session(cookie.split("=", 1)[1].split(";")[0]) is None


async def test_session_cookie_is_secure_with_tls(tmp_path):
    config = make_config(tmp_path, tls_cert="cert.pem", tls_key="key.pem")
    store = make_store(config)
    server = await start_app(config, store, EventBus())
    try:
        async with aiohttp.ClientSession() as http:       # cookies by hand: this test server is plain HTTP
            async with http.get(f"{server.url}/login") as response:
                assert "Secure" in response.headers["Set-Cookie"]
                token = re.search(r'name="csrf_token" value="([^"]+)"', await response.text()).group(1)
            async with http.post(f"{server.url}/login", allow_redirects=False,
                                 headers={"Cookie": f"ca_login_csrf={token}"},
                                 data={"username": "zhang.wei", "password": PASSWORD,
                                       "csrf_token": token}) as response:
                assert response.status == 303
                cookie = response.headers["Set-Cookie"]
                assert cookie.startswith(SESSION_COOKIE)
                assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        await server.stop()
        store.close()


# --- headers and pages --------------------------------------------------------------------

async def test_security_headers_and_no_inline_script(site):
    async with client_session() as http:
        await http_login(http, site.url, "root")
        for path in ("/login", "/agent", "/supervisor", "/qa", f"/qa/call/{MINE}", "/api/live",
                     "/static/css/app.css", "/nowhere"):
            async with http.get(site.url + path) as response:
                headers = response.headers
                csp = headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
                assert "frame-ancestors 'none'" in csp
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["X-Content-Type-Options"] == "nosniff"
                if headers["Content-Type"].startswith("text/html"):
                    html = await response.text()
                    for tag in re.findall(r"<script[^>]*>", html):
                        assert 'src="/static/' in tag, (path, tag)
                    tags = " ".join(re.findall(r"<[a-z][^>]*>", html))
                    assert not re.search(r"\s(on[a-z]+|style)\s*=", tags), path


async def test_bad_requests_get_clear_errors(site):
    async with client_session() as http:
        csrf = await http_login(http, site.url, "zhang.wei")
        async with http.get(f"{site.url}/api/calls?from=yesterday") as response:
            assert response.status == 400 and "from" in (await response.json())["error"]
        async with http.post(f"{site.url}/api/cards/{site.card_mine}/feedback", data="nope",
                             headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"}) as response:
            assert response.status == 400
        async with http.post(f"{site.url}/api/cards/no-such-card/ack",
                             headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 404
        ws = await http.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_str("not json")
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4400


# --- exports --------------------------------------------------------------------------------

async def test_exports(site):
    site.bus.publish(CallStarted("formula"))
    site.bus.publish(TranscriptUpdate("formula", "customer", 0, "=HYPERLINK(\"x\") 我 要 投诉", 0.0, 1.0, True))
    site.bus.publish(CallEnded("formula", 1.0))
    await until(lambda: (site.store.calls.get_call("formula") or {}).get("status") == "ended")
    async with client_session() as http:
        await http_login(http, site.url, "zhao.min")
        async with http.get(f"{site.url}/qa/call/{MINE}/export.vtt") as response:
            vtt = await response.text()
            assert response.headers["Content-Type"].startswith("text/vtt")
            assert "attachment" in response.headers["Content-Disposition"]
        assert vtt.startswith("WEBVTT\n")
        assert "<v 客户>你们再不解决我就找媒体曝光" in vtt and "<v 坐席>" in vtt
        assert re.search(r"NOTE 触发 00:00:06\.500 \[严重\] 媒体曝光威胁", vtt)
        assert re.search(r"\n00:00:06\.500 --> 00:00:09\.000\n", vtt)
        assert re.search(r"NOTE 触发 00:00:06\.500 \[严重\] 媒体曝光威胁.*触发词「[^」]+」", vtt)
        assert "NOTE 通话 " + MINE + " 坐席 张伟（PJSIP/1001） 主叫 13800138000" in vtt
        async with http.get(f"{site.url}/qa/call/{MINE}/export.json") as response:
            data = json.loads(await response.text())
        assert data["call_id"] == MINE and data["adherence"]["score"] is not None
        assert "recording_path" not in data
        stored = {c["card_id"]: c for c in site.store.calls.get_call(MINE)["cards"]}
        for card in data["cards"]:                       # how each card fired, as stored
            assert card["heard"] and card["heard"] == stored[card["card_id"]]["heard"]
            assert card["via"] in ("chars", "pinyin", "intent")
        async with http.get(f"{site.url}/qa/call/{MINE}/export.csv") as response:
            table = list(csv.DictReader(io.StringIO((await response.text()).lstrip("\ufeff"))))
        triggers = [row for row in table if row["kind"] == "trigger"]
        assert triggers and all(row["heard"] and row["via"] and row["phrase"] for row in triggers)
        async with http.get(f"{site.url}/qa/call/formula/export.csv") as response:
            rows = list(csv.reader(io.StringIO((await response.text()).lstrip("\ufeff"))))
        assert rows[0][:5] == ["kind", "start", "end", "speaker", "text"]
        assert rows[1][4].startswith("'=HYPERLINK")              # no formula in spreadsheets


# --- hardening (issue 9): redirects, bad input, whose marks, file names -------------------

def session_rows(site: Site) -> int:
    with sqlite3.connect(site.store.path) as db:            # what is stored, not an API's view
        return db.execute("SELECT count(*) FROM sessions").fetchone()[0]


async def login_with_next(http, url: str, next_: str):
    async with http.get(f"{url}/login") as response:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await response.text()).group(1)
    async with http.post(f"{url}/login", allow_redirects=False, data={
            "username": "wang.qiang", "password": PASSWORD, "csrf_token": token,
            "next": next_}) as response:
        return response.status, response.headers


async def test_login_redirect_refuses_encoded_and_whitespace_tricks(site):
    tricks = ("/%09/evil.example", "/\t/evil.example", "/%0a/evil.example", "/%0D%0A/evil.example",
              "/%5Cevil.example", "/\\evil.example", "/%2509/evil.example", "/%2F/evil.example",
              "/ /evil.example", "/%E2%80%AE/evil.example", "//evil.example")
    async with client_session() as http:
        for trick in tricks:
            status, headers = await login_with_next(http, site.url, trick)
            assert (status, headers["Location"]) == (303, "/supervisor"), trick
            async with http.get(f"{site.url}/login", params={"next": trick}) as response:
                assert "evil" not in await response.text(), trick       # not put in the form
        # a real local target, search text included, still works (positive control)
        local = "/qa?q=%E6%8A%95%E8%AF%89&status=ended"
        status, headers = await login_with_next(http, site.url, local)
        assert (status, headers["Location"]) == (303, local)


async def test_control_characters_in_next_do_not_break_a_login(site):
    before = session_rows(site)
    async with client_session() as http:
        status, headers = await login_with_next(http, site.url, "/supervisor\r\nSet-Cookie: evil=1")
        assert status == 303 and headers["Location"] == "/supervisor"
        assert "evil" not in " ".join(headers.getall("Set-Cookie"))
        async with http.get(f"{site.url}/supervisor", allow_redirects=False) as response:
            assert response.status == 200                            # the one session works
    assert session_rows(site) == before + 1


async def test_json_endpoints_answer_bad_json_with_400(site):
    async with client_session() as http:
        csrf = await http_login(http, site.url, "zhao.min")
        review = f"{site.url}/qa/call/{MINE}/review"
        bad_bodies = {
            "truncated": b'{"verdict": "pass"',
            "deeply nested": b"[" * 100_000,
            "nested notes": b'{"verdict": "pass", "notes": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            "not UTF-8": b'{"verdict": "pass", "notes": "\xff\xfe"}',
            "null notes": b'{"verdict": "pass", "notes": null}',
            "number notes": b'{"verdict": "pass", "notes": 5}',
            "list verdict": b'{"verdict": ["pass"]}',
        }
        for what, body in bad_bodies.items():
            async with http.post(review, data=body, headers={
                    "X-CSRF-Token": csrf, "Content-Type": "application/json"}) as response:
                assert response.status == 400, what
                assert re.search(r"[\u4e00-\u9fff]", (await response.json())["error"]), what
        async with http.post(review, data=b'{"verdict": "pass"}', headers={
                "X-CSRF-Token": csrf, "Content-Type": "application/json; charset=no-such"}) as response:
            assert response.status == 400
        assert site.store.calls.get_call(MINE)["review"] is None            # nothing stored
        async with http.post(review, json={"verdict": "pass", "notes": "语气平和"},
                             headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200                             # positive control
        assert site.store.calls.get_call(MINE)["review"]["notes"] == "语气平和"
    async with client_session() as http:
        csrf = await http_login(http, site.url, "zhang.wei")
        feedback = f"{site.url}/api/cards/{site.card_mine}/feedback"
        async with http.post(feedback, data=b"[" * 100_000, headers={
                "X-CSRF-Token": csrf, "Content-Type": "application/json"}) as response:
            assert response.status == 400 and "JSON" in (await response.json())["error"]
        assert site.store.calls.get_card(site.card_mine)["helpful"] is None


async def test_websocket_hello_out_of_range_is_refused_clearly(site):
    async with client_session() as http:
        await http_login(http, site.url, "li.na")
        for hello in ('{"last_seq": 1000000000000000000000000000000}', '{"last_seq": -1}',
                      '{"last_seq": true}', '{"last_seq": "5"}', '{"last_seq": 1.5}',
                      '[' * 60_000):
            ws = await http.ws_connect(site.url + "/ws", origin=site.url)
            await ws.send_str(hello)
            message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4400, hello[:40]
            assert message.extra.startswith("bad hello")
            if "last_seq" in hello:
                assert "last_seq" in message.extra
        # the largest seq there can be is a valid hello (positive control)
        ws = await http.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_json({"last_seq": 2**63 - 1})
        assert (await ws.receive_json(timeout=5))["type"] == "ready"
        await ws.close()


async def test_only_the_calls_agent_marks_its_cards(site):
    card = site.card_theirs                                       # li.na's live call
    async with client_session() as supervisor, client_session() as agent:
        sup_csrf = await http_login(supervisor, site.url, "wang.qiang")
        agent_csrf = await http_login(agent, site.url, "li.na")
        async with supervisor.post(f"{site.url}/api/cards/{card}/ack",
                                   headers={"X-CSRF-Token": sup_csrf}) as response:
            assert response.status == 403
        assert site.store.calls.get_card(card)["acknowledged_by"] is None
        async with agent.post(f"{site.url}/api/cards/{card}/ack",
                              headers={"X-CSRF-Token": agent_csrf}) as response:
            assert response.status == 200
        async with agent.post(f"{site.url}/api/cards/{card}/feedback", json={"helpful": False},
                              headers={"X-CSRF-Token": agent_csrf}) as response:
            assert response.status == 200
        async with supervisor.post(f"{site.url}/api/cards/{card}/feedback", json={"helpful": True},
                                   headers={"X-CSRF-Token": sup_csrf}) as response:
            assert response.status == 403 and "坐席" in (await response.json())["error"]
        stored = site.store.calls.get_card(card)
        assert stored["acknowledged_by"] == "li.na" and stored["helpful"] is False
        # the agent's screen shows the agent's marks
        ws = await agent.ws_connect(site.url + "/ws", origin=site.url)
        await ws.send_json({"last_seq": 0})
        ready = (await read_until_ready_message(ws))["cards"]
        await ws.close()
        assert ready[card] == {"acknowledged": True, "helpful": False}


async def read_until_ready_message(ws) -> dict:
    while (message := await ws.receive_json(timeout=10)).get("type") != "ready":
        pass
    return message


async def test_export_file_names_keep_non_ascii_call_ids(site):
    call_id = "投诉-1"
    site.bus.publish(CallStarted(call_id))
    site.bus.publish(CallEnded(call_id, 1.0))
    await until(lambda: (site.store.calls.get_call(call_id) or {}).get("status") == "ended")
    async with client_session() as http:
        await http_login(http, site.url, "zhao.min")
        async with http.get(f"{site.url}/qa/call/{call_id}/export.json") as response:
            assert response.status == 200
            disposition = response.headers["Content-Disposition"]
        assert disposition.isascii()
        assert disposition == ("attachment; filename=\"call-__-1.json\"; "
                               "filename*=UTF-8''call-%E6%8A%95%E8%AF%89-1.json")
        async with http.get(f"{site.url}/qa/call/{MINE}/export.csv") as response:
            assert response.headers["Content-Disposition"] == f'attachment; filename="call-{MINE}.csv"'
