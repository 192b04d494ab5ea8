"""Stored analytics: AnalyticsStore on a real SQLite store (migration 4), the post-call pass
that fills it from a real recording, and GET /api/calls/{id}/analytics with the call's
access rules on the real app."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
import pytest_asyncio

import conversation_calls as calls
from agent_ui.migrations import MIGRATIONS
from agent_ui.store import Store, StoreError
from callassist.audio import write_wav
from callassist.bus import EventBus
from callassist.config import load_config
from callassist.events import AgentJoined, CallEnded, CallStarted, TranscriptUpdate
from callassist.postcall import PostCallPass
from prompts.matcher import Matcher
from prompts.playbook import load_playbook
from web_fixtures import client_session, http_login, make_config, make_store, start_app, until

STATS = {"legs": {"customer": {"talk_seconds": 12.5, "agitation": [{"t": 3.0, "value": 0.4}]}},
         "silences": [{"start": 20.0, "end": 26.0}], "talk_over": [], "sentiment": [], "duration": 40.0}
READING = {"complaint_type": {"key": "venting", "name": "泄愤型", "confidence": 0.7, "evidence": []}}


def _ended_call(store: Store, call_id: str, endpoint: str = "PJSIP/1001", started: float | None = None) -> None:
    started = time.time() if started is None else started
    store.events.record_many([CallStarted(call_id, at=started), AgentJoined(call_id, endpoint, at=started + 1),
                       CallEnded(call_id, 30.0, at=started + 30)])


def test_stats_and_reading_are_saved_apart_and_replaced_whole(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        assert store.schema_version == MIGRATIONS[-1].version >= 4
        _ended_call(store, "c1")
        assert store.analytics.get("c1") is None
        store.analytics.save_stats("c1", STATS, at=100.0)
        got = store.analytics.get("c1")
        assert got["stats"] == STATS and got["reading"] is None and got["updated_at"] == 100.0
        store.analytics.save_reading("c1", READING, at=101.0)
        assert store.analytics.get("c1")["stats"] == STATS, "saving the reading keeps the stats"
        store.analytics.save_stats("c1", {"duration": 1.0}, at=102.0)
        got = store.analytics.get("c1")
        assert got == {"stats": {"duration": 1.0}, "reading": READING, "updated_at": 102.0}
        with pytest.raises(StoreError, match="no such call"):
            store.analytics.save_stats("nope", STATS)
        assert store.analytics.get("nope") is None


def test_analytics_go_with_the_call_when_it_is_purged(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        _ended_call(store, "old", started=time.time() - 10 * 86400)
        _ended_call(store, "new")
        for call_id in ("old", "new"):
            store.analytics.save_stats(call_id, STATS)
        assert store.retention.purge(5) == 1
        assert store.analytics.get("old") is None and store.analytics.get("new") is not None
        rows = store.db._db.execute("SELECT call_id FROM call_analytics").fetchall()
        assert [r[0] for r in rows] == ["new"]


def test_a_schema_3_database_is_migrated_with_its_calls(tmp_path):
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:3]:
        for statement in step.statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO calls (call_id, started_at) VALUES ('before', 1.0)")
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version == MIGRATIONS[-1].version
        store.analytics.save_stats("before", STATS)
        assert store.analytics.get("before")["stats"] == STATS


async def test_post_call_pass_stores_the_analytics_of_a_real_recording(tmp_path):
    if not calls.available():
        pytest.skip("needs ../shared/audio")
    call = calls.complaint_call()
    recording = tmp_path / "call.wav"
    write_wav(recording, [call.legs["customer"], call.legs["agent"]])
    bus, store = EventBus(), Store(tmp_path / "db.sqlite")
    recorder = asyncio.create_task(store.events.run(bus))
    post_call = PostCallPass(None, Matcher(load_playbook()), bus, save_stats=store.analytics.save_stats,
                             analytics=load_config(env={}).analytics)
    worker = asyncio.create_task(post_call.run())
    try:
        bus.publish(CallStarted("c1", recording=str(recording)))
        for n, line in enumerate(call.lines):          # the live transcript's final lines
            bus.publish(TranscriptUpdate("c1", line["speaker"], n, line["text"], line["start"], line["end"], True))
        bus.publish(TranscriptUpdate("c1", "customer", 99, "谢谢", 5.0, 5.5, False))   # interim: ignored
        bus.publish(CallEnded("c1", call.duration, recording=str(recording)))
        await until(lambda: store.analytics.get("c1") is not None, timeout=60)
    finally:
        worker.cancel()
        recorder.cancel()
    stats = store.analytics.get("c1")["stats"]
    assert stats["legs"]["customer"]["talk_seconds"] == pytest.approx(call.talk_seconds("customer"), abs=0.3)
    assert len(stats["silences"]) == 2 and len(stats["talk_over"]) == 4
    customer_lines = [line for line in call.lines if line["speaker"] == "customer"]
    assert [p["t"] for p in stats["sentiment"]] == [line["start"] for line in customer_lines]
    store.close()


MINE, THEIRS = "1700000000.11", "1700000000.22"


@pytest_asyncio.fixture
async def site(tmp_path):
    config = make_config(tmp_path / "data")
    store = make_store(config)
    _ended_call(store, MINE, "PJSIP/1001")
    _ended_call(store, THEIRS, "PJSIP/1002")
    server = await start_app(config, store, EventBus())
    yield server, store
    await server.stop()
    store.close()


async def test_analytics_api_follows_the_call_access_rules(site):
    server, store = site
    async with client_session() as http:
        await http_login(http, server.url, "zhang.wei")            # agent of MINE
        async with http.get(f"{server.url}/api/calls/{MINE}/analytics") as response:
            assert response.status == 200
            assert await response.json() == {"stats": None, "reading": None}
        await store.off_loop(store.analytics.save_stats, MINE, STATS)
        async with http.get(f"{server.url}/api/calls/{MINE}/analytics") as response:
            assert await response.json() == {"stats": STATS, "reading": None}
        async with http.get(f"{server.url}/api/calls/{THEIRS}/analytics") as response:
            assert response.status == 403
        async with http.get(f"{server.url}/api/calls/nope/analytics") as response:
            assert response.status == 404
    async with client_session() as http:
        await http_login(http, server.url, "zhao.min")             # QA sees the archive
        async with http.get(f"{server.url}/api/calls/{THEIRS}/analytics") as response:
            assert response.status == 200 and await response.json() == {"stats": None, "reading": None}
    async with client_session() as http:                           # not logged in
        async with http.get(f"{server.url}/api/calls/{MINE}/analytics", allow_redirects=False) as response:
            assert response.status in (302, 303, 401)
