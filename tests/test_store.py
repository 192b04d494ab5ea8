"""agent_ui.store on both engines (a real SQLite file, a real PostgreSQL database from
tests/servers.py): recording bus events, the live feed, queries, full-text search, users,
sessions and retention; the SQLite specifics (file, WAL, migrations, locks) on SQLite only
(PostgreSQL's own: tests/test_store_postgres.py)."""
from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

import agent_ui.db_sqlite as sqlite_engine
import agent_ui.retention_store as retention_module
from agent_ui.db_postgres import PostgresDatabase
from agent_ui.migrations import MIGRATIONS, Migration
from agent_ui.risk import call_risk
from agent_ui.store import Store, StoreError, open_store
from callassist.bus import EventBus
from callassist.config import load_config
from callassist.events import (AgentJoined, CallEnded, CallFault, CallStarted, Card, CardConfirmed,
                               CardFired, CardWithdrawn, CitationView, TranscriptUpdate)

T0 = 1_700_000_000.0


def make_card(card_id: str, category: str = "regulator_complaint", severity: str = "critical",
              start: float = 1.0, speaker: str = "customer", confirmed: bool = False,
              text: str = "我要去工信部投诉") -> Card:
    return Card(card_id=card_id, category=category, title="越级投诉", severity=severity,
                speaker=speaker, text=text, phrase="工信部投诉", score=93.5, start=start,
                end=start + 2, utterance=0, script=("安抚情绪", "记录诉求"),
                citations=(CitationView("telecom_regs_art", "电信条例", "第六十一条", "……"),),
                alert_supervisor=severity == "critical", confirmed=confirmed)


def simple_call(call_id: str, at: float = T0, endpoint: str = "PJSIP/1001",
                texts: tuple[str, ...] = ("你好，请问有什么可以帮您",), cards: tuple[Card, ...] = (),
                ended: bool = True, recording: str | None = None) -> list:
    events: list = [CallStarted(call_id, caller="13800000000", source="ari", at=at),
                    AgentJoined(call_id, endpoint, at=at + 0.5)]
    for i, text in enumerate(texts):
        events.append(TranscriptUpdate(call_id, "customer" if i % 2 else "agent", i, text,
                                       float(i * 3), float(i * 3 + 2), True, at=at + i * 3 + 2))
    events += [CardFired(call_id, card, at=at + card.start) for card in cards]
    if ended:
        events.append(CallEnded(call_id, 60.0, recording=recording, at=at + 60))
    return events


def open_engine(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if engine == "sqlite":
        return Store(tmp_path / "callassist.db")
    url = request.getfixturevalue("postgres_url")         # a fresh database of its own
    return Store(PostgresDatabase(url), recordings_dir=tmp_path / "recordings")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """The same behaviour on both engines."""
    s = open_engine(request.param, tmp_path, request)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path):
    s = Store(tmp_path / "callassist.db")
    yield s
    s.close()


def scalar(store: Store, sql: str, *params: object) -> object:
    """One value from a query on the store's own read connection (either engine)."""
    with store.db.query() as db:
        return db.execute(sql, params).fetchone()[0]


async def delivered(store: Store) -> None:
    """Until every committed event has reached the listeners' queues: at once on SQLite
    (the committing thread hands them over), through the follower on PostgreSQL."""
    target = store.events.last_seq()
    follower = store.events.follower
    if follower is not None:
        for _ in range(1000):
            if follower.last_seq >= target:
                break
            await asyncio.sleep(0.01)
        assert follower.last_seq >= target, (follower.last_seq, target)
    for _ in range(3):                  # the loop runs the hand-over queued by the thread
        await asyncio.sleep(0)


# --- schema ---------------------------------------------------------------------------

def test_migrates_an_empty_file_and_reopens_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "callassist.db"
    s = Store(path)
    assert s.schema_version == MIGRATIONS[-1].version
    assert scalar(s, "PRAGMA journal_mode") == "wal"
    assert scalar(s, "PRAGMA foreign_keys") == 1
    assert scalar(s, "PRAGMA synchronous") == 1                            # NORMAL
    with s.db.query() as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "user_endpoints", "calls", "events", "utterances", "utterances_fts", "cards",
            "reviews", "sessions", "login_attempts"} <= tables
    s.events.record_many(simple_call("c1"))
    assert (tmp_path / "callassist.db-wal").exists()
    assert path.stat().st_mode & 0o077 == 0                                    # owner only
    s.close()

    again = Store(path)                                                        # no migration re-run
    assert again.schema_version == MIGRATIONS[-1].version
    assert again.calls.get_call("c1")["status"] == "ended"
    again.close()


def test_a_failing_migration_step_leaves_the_database_as_it_was(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "callassist.db"
    Store(path).close()
    broken = Migration(MIGRATIONS[-1].version + 1, "broken", (
        "CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"))
    monkeypatch.setattr(sqlite_engine, "MIGRATIONS", MIGRATIONS + (broken,))
    latest = MIGRATIONS[-1].version
    with pytest.raises(StoreError, match=f"migration to schema {latest + 1} .broken. failed, "
                                         f"database left at schema {latest}"):
        Store(path)
    monkeypatch.undo()
    s = Store(path)
    assert s.schema_version == MIGRATIONS[-1].version
    assert scalar(s, "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'") == 0
    s.close()


def test_cards_keep_how_they_fired_and_older_databases_gain_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "callassist.db"
    old = sqlite3.connect(path)                      # a schema-1 database with a card in it
    for statement in MIGRATIONS[0].statements:
        old.execute(statement)
    old.execute("INSERT INTO calls (call_id, started_at) VALUES ('before', ?)", (T0,))
    old.execute("""INSERT INTO cards (card_id, call_id, category, title, severity, speaker, text,
                                      phrase, score, start, "end", utterance, fired_at)
                   VALUES ('k-old', 'before', 'regulator_complaint', '越级投诉', 'critical',
                           'customer', '我要去工信部投诉', '工信部投诉', 93.5, 1, 3, 0, ?)""", (T0,))
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()

    s = Store(path)
    assert s.schema_version == MIGRATIONS[-1].version
    before = s.calls.get_card("k-old")
    assert (before["heard"], before["via"], before["phrase"]) == ("", "", "工信部投诉")
    heard = dataclasses.replace(make_card("k-new", text="我要去公信不投诉"), phrase="工信部",
                                heard="公信不", via="pinyin")
    s.events.record_many(simple_call("after", at=T0 + 100, cards=(heard,)))
    s.events.record(CardConfirmed("after", "k-new", "我要去公信不投诉你们", 3.5, at=T0 + 104))
    card = s.calls.get_call("after")["cards"][0]
    assert (card["heard"], card["via"], card["phrase"]) == ("公信不", "pinyin", "工信部")
    assert card["text"] == "我要去公信不投诉你们" and card["confirmed"]
    s.close()


def test_refuses_a_newer_schema_and_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version = 999")
    con.close()
    with pytest.raises(StoreError, match="newer than"):
        Store(newer)
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "such" / "dir.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(junk)


def test_open_store_creates_the_data_dir(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'[storage]\ndata_dir = "{tmp_path / "var" / "data"}"\n')
    s = open_store(load_config(config_file, env={}))
    assert s.path == tmp_path / "var" / "data" / "callassist.db"
    assert s.recordings_dir.is_dir()
    s.close()


# --- recording events -----------------------------------------------------------------

def test_a_full_call_is_recorded_and_read_back(store: Store) -> None:
    fired_on_partial = make_card("k1", "media_exposure", "critical", start=3.0)
    withdrawn = make_card("k2", "lawsuit_threat", "warning", start=3.0)
    events = [
        CallStarted("call-1", caller="13800000000", source="ari", at=T0),
        AgentJoined("call-1", "PJSIP/1001", at=T0 + 1),
        TranscriptUpdate("call-1", "agent", 0, "您好 请问 有 什么 可以 帮 您", 0.5, 2.0, True, at=T0 + 2),
        TranscriptUpdate("call-1", "customer", 0, "我 要", 3.0, 3.5, False, at=T0 + 3.5),
        TranscriptUpdate("call-1", "customer", 0, "我 要 找 媒体", 3.0, 4.0, False, at=T0 + 4),
        CardFired("call-1", fired_on_partial, at=T0 + 4),
        CardFired("call-1", withdrawn, at=T0 + 4),
        TranscriptUpdate("call-1", "customer", 0, "我 要 找 媒体 曝光 你们", 3.0, 5.0, True, at=T0 + 5.2),
        CardConfirmed("call-1", "k1", "我要找媒体曝光你们", 5.0, at=T0 + 5.2),
        CardWithdrawn("call-1", "k2", at=T0 + 5.2),
        CallFault("call-1", "agent leg RTP stopped", at=T0 + 20),
        CallEnded("call-1", 42.5, recording="/data/recordings/call-1.wav", at=T0 + 42.5),
    ]
    seqs = [store.events.record(e) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    call = store.calls.get_call("call-1")
    assert call["status"] == "ended" and call["duration"] == 42.5 and call["source"] == "ari"
    assert call["caller"] == "13800000000" and call["started_at"] == T0 and call["ended_at"] == T0 + 42.5
    assert call["agent_endpoint"] == "PJSIP/1001" and call["agents"] == ["PJSIP/1001"]
    assert call["recording_path"] == "/data/recordings/call-1.wav"
    assert [(u["speaker"], u["text"], u["final"]) for u in call["utterances"]] == [
        ("agent", "您好 请问 有 什么 可以 帮 您", True), ("customer", "我 要 找 媒体 曝光 你们", True)]
    cards = {c["card_id"]: c for c in call["cards"]}
    assert cards["k1"]["status"] == "confirmed" and cards["k1"]["end"] == 5.0
    assert cards["k1"]["text"] == "我要找媒体曝光你们"
    assert cards["k1"]["script"] == ["安抚情绪", "记录诉求"]
    assert cards["k1"]["citations"][0]["law"] == "电信条例"
    assert cards["k2"]["status"] == "withdrawn"
    assert call["categories"] == ["media_exposure"] and call["card_count"] == 1
    assert call["max_severity"] == "critical" and call["risk"] == "critical"
    assert call["faults"] == [{"problem": "agent leg RTP stopped", "at": T0 + 20}]
    assert call["review"] is None

    # interim transcripts: only the latest per utterance is kept, and none once final
    types = [e["type"] for _, e in store.events.events_since(0)]
    assert "TranscriptUpdate" in types
    assert not any(e["type"] == "TranscriptUpdate" and not e["final"] for _, e in store.events.events_since(0))
    assert len(types) == len(events) - 2


def test_only_the_latest_interim_of_an_utterance_is_kept(store: Store) -> None:
    store.events.record(CallStarted("c", at=T0))
    for i, text in enumerate(["我", "我 要", "我 要 投诉"]):
        store.events.record(TranscriptUpdate("c", "customer", 0, text, 0.0, 0.5 * (i + 1), False, at=T0 + i))
    store.events.record(TranscriptUpdate("c", "agent", 0, "您 好", 0.0, 0.5, False, at=T0 + 3))
    partials = [(e["speaker"], e["text"]) for _, e in store.events.events_since(0)
                if e["type"] == "TranscriptUpdate"]
    assert partials == [("customer", "我 要 投诉"), ("agent", "您 好")]
    assert store.calls.get_call("c")["utterances"] == []        # interim results are not utterances


def test_the_same_card_fired_twice_is_one_card_and_one_event(store: Store) -> None:
    store.events.record(CallStarted("c", at=T0))
    card = make_card("dup", "lawsuit_threat", "warning")
    first = store.events.record(CardFired("c", card, at=T0 + 1))
    again = store.events.record(CardFired("c", card, at=T0 + 2))
    assert again == first
    assert len(store.calls.get_call("c")["cards"]) == 1
    assert sum(e["type"] == "CardFired" for _, e in store.events.events_since(0)) == 1
    # a later, confirmed copy of a card fired on a partial does upgrade it (and is stored)
    confirmed = store.events.record(CardFired("c", make_card("dup", "lawsuit_threat", "warning",
                                                      confirmed=True), at=T0 + 3))
    assert confirmed > first
    assert store.calls.get_call("c")["cards"][0]["status"] == "confirmed"


def test_events_of_a_call_whose_start_was_not_seen_are_kept(store: Store) -> None:
    store.events.record(CallFault("orphan", "snoop failed", at=T0 + 5))
    store.events.record(CallEnded("orphan", 5.0, at=T0 + 5))
    call = store.calls.get_call("orphan")
    assert call["status"] == "ended" and call["started_at"] == T0 + 5


def test_call_start_is_the_earliest_seen(store: Store) -> None:
    store.events.record(AgentJoined("c", "PJSIP/1001", at=T0 + 2))          # before its CallStarted
    store.events.record(CallStarted("c", caller="110", at=T0))
    store.events.record(CallStarted("c", caller="110", at=T0 + 9))          # repeated
    call = store.calls.get_call("c")
    assert call["started_at"] == T0 and call["caller"] == "110" and call["agent_endpoint"] == "PJSIP/1001"


def test_close_interrupted_calls(store: Store) -> None:
    store.events.record_many(simple_call("live", ended=False))
    store.events.record_many(simple_call("done"))
    assert store.recovery.close_interrupted_calls(now=T0 + 100) == 1
    call = store.calls.get_call("live")
    # no recording: the call lasted until its last stored event, not until the restart
    assert call["status"] == "ended" and call["duration"] == 2.0
    assert "restarted" in call["faults"][0]["problem"]
    assert store.calls.live_calls() == []


def test_record_many_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        store.events.record_many([CallStarted("atomic", at=T0), "not an event"])   # type: ignore[list-item]
    assert store.calls.get_call("atomic") is None and store.events.events_since(0) == []


# --- the live feed --------------------------------------------------------------------

def test_events_since_orders_and_filters(store: Store) -> None:
    for call_id, at in (("a", T0), ("b", T0 + 1)):
        store.events.record_many(simple_call(call_id, at=at, texts=("一", "二")))
    everything = store.events.events_since(0)
    seqs = [seq for seq, _ in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    middle = seqs[3]
    assert [s for s, _ in store.events.events_since(middle)] == seqs[4:]
    only_b = store.events.events_since(0, call_ids=["b"])
    assert only_b and all(e["call_id"] == "b" for _, e in only_b)
    assert store.events.events_since(0, call_ids=[]) == []
    assert store.events.events_since(0, limit=2) == everything[:2]
    assert store.events.last_seq() == seqs[-1]


async def test_listeners_hear_an_event_only_after_it_is_committed(sqlite_store: Store) -> None:
    store = sqlite_store
    other = sqlite3.connect(store.path)                  # what another reader can see
    listener = store.events.listen()
    seen_committed: list[bool] = []
    offer = listener.offer

    def checking_offer(item):
        seq = item[0]
        seen_committed.append(other.execute("SELECT 1 FROM events WHERE seq = ?", (seq,)).fetchone()
                              is not None)
        offer(item)

    listener.offer = checking_offer                       # type: ignore[method-assign]
    store.events.record_many(simple_call("c"))
    assert seen_committed and all(seen_committed)
    items = [listener.get_nowait() for _ in range(listener.qsize())]
    assert items == store.events.events_since(0)
    store.events.unlisten(listener)
    store.events.record(CallFault("c", "x", at=T0))
    assert listener.empty()
    other.close()


async def test_catch_up_then_live_has_no_gaps_or_duplicates(store: Store) -> None:
    store.events.record_many(simple_call("before", texts=("一", "二", "三")))
    listener = store.events.listen()
    caught_up = store.events.events_since(0)
    store.events.record_many(simple_call("after", at=T0 + 100))
    await delivered(store)
    last = caught_up[-1][0]
    sent = [seq for seq, _ in caught_up]
    while not listener.empty():
        seq, _ = listener.get_nowait()
        if seq > last:
            sent.append(seq)
            last = seq
    assert sent == [seq for seq, _ in store.events.events_since(0)]


async def test_a_bounded_listener_drops_its_oldest_and_counts(store: Store) -> None:
    listener = store.events.listen(maxsize=2)
    store.events.record_many(simple_call("c", texts=("一", "二", "三")))
    await delivered(store)
    assert listener.qsize() == 2 and listener.dropped == len(store.events.events_since(0)) - 2
    assert [listener.get_nowait()[0] for _ in range(2)] == [s for s, _ in store.events.events_since(0)][-2:]


async def test_run_records_every_bus_event_published_after_it_is_called(store: Store) -> None:
    bus = EventBus()
    listener = store.events.listen()
    task = asyncio.create_task(store.events.run(bus))
    for event in simple_call("bus-call", texts=("我要投诉", "您好")):    # before the task ran
        bus.publish(event)
    received = [await asyncio.wait_for(listener.get(), 5) for _ in range(5)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bus.subscriber_count == 0
    assert [e["type"] for _, e in received] == ["CallStarted", "AgentJoined", "TranscriptUpdate",
                                                "TranscriptUpdate", "CallEnded"]
    assert store.calls.get_call("bus-call")["status"] == "ended"


async def test_run_survives_an_event_it_cannot_store(store: Store, caplog) -> None:
    bus = EventBus()
    listener = store.events.listen()
    task = asyncio.create_task(store.events.run(bus))
    bus.publish("garbage")                                            # type: ignore[arg-type]
    bus.publish(CallStarted("fine", at=T0))
    _, stored = await asyncio.wait_for(listener.get(), 5)            # recorded by another thread
    assert stored["call_id"] == "fine"
    task.cancel()
    assert store.calls.get_call("fine") is not None
    assert "could not store" in caplog.text


async def test_run_waits_out_another_process_holding_the_database(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")                        # e.g. a long `archive import`
    bus = EventBus()
    listener = store.events.listen()
    task = asyncio.create_task(store.events.run(bus))
    bus.publish(CallStarted("patient", at=T0))
    await asyncio.sleep(0.3)
    assert listener.empty()
    other.execute("COMMIT")
    seq, event = await asyncio.wait_for(listener.get(), 5)
    assert event["call_id"] == "patient" and store.calls.get_call("patient") is not None
    task.cancel()
    other.close()
    store.close()


async def test_records_from_a_worker_thread_reach_listeners_on_the_loop(store: Store) -> None:
    listener = store.events.listen()
    await asyncio.to_thread(store.events.record, CallStarted("threaded", at=T0))
    seq, event = await asyncio.wait_for(listener.get(), 5)
    assert event["call_id"] == "threaded" and seq == store.events.last_seq()


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "db"), Store(tmp_path / "db")
    a.events.record_many(simple_call("from-a"))
    b.events.record_many(simple_call("from-b", at=T0 + 1))
    assert {c["call_id"] for c in a.calls.list_calls()} == {"from-a", "from-b"}
    a.close()
    b.close()


# --- queries --------------------------------------------------------------------------

@pytest.fixture
def archive(store: Store) -> Store:
    store.accounts.add_user("alice", "agent", "hash", "张丽", ["PJSIP/1001"])
    store.accounts.add_user("bob", "agent", "hash", "王波", ["PJSIP/1002", "PJSIP/2002"])
    store.events.record_many(simple_call("c1", at=T0, endpoint="PJSIP/1001",
                                  texts=("您好", "我要去工信部 投诉你们"),
                                  cards=(make_card("c1-k", "regulator_complaint", "critical"),)))
    store.events.record_many(simple_call("c2", at=T0 + 86400, endpoint="PJSIP/1002",
                                  texts=("您好", "话费 怎么 这么 高"),
                                  cards=(make_card("c2-k", "bill_shock", "warning", text="话费怎么这么高"),)))
    store.events.record_many(simple_call("c3", at=T0 + 2 * 86400, endpoint="PJSIP/2002",
                                  texts=("您好", "網絡 信號 很差"), ended=False))
    return store


def ids(calls: list[dict]) -> list[str]:
    return [c["call_id"] for c in calls]


def test_list_calls_newest_first_with_card_summary(archive: Store) -> None:
    calls = archive.calls.list_calls()
    assert ids(calls) == ["c3", "c2", "c1"]
    c1 = calls[2]
    assert c1["categories"] == ["regulator_complaint"] and c1["max_severity"] == "critical"
    assert c1["card_count"] == 1 and c1["risk"] == "critical"
    assert c1["agent_username"] == "alice" and c1["agent_name"] == "张丽"
    assert calls[0]["max_severity"] is None and calls[0]["card_count"] == 0


def test_list_calls_filters(archive: Store) -> None:
    assert ids(archive.calls.list_calls(endpoints=["PJSIP/1001"])) == ["c1"]
    assert ids(archive.calls.list_calls(endpoints=[])) == []
    assert ids(archive.calls.list_calls(agent="bob")) == ["c3", "c2"]               # a username
    assert ids(archive.calls.list_calls(agent="PJSIP/1001")) == ["c1"]              # an endpoint
    assert ids(archive.calls.list_calls(date_from=T0 + 3600)) == ["c3", "c2"]
    assert ids(archive.calls.list_calls(date_from=T0, date_to=T0 + 86400)) == ["c2", "c1"]
    assert ids(archive.calls.list_calls(category="bill_shock")) == ["c2"]
    assert ids(archive.calls.list_calls(severity="critical")) == ["c1"]
    assert ids(archive.calls.list_calls(status="live")) == ["c3"]
    assert ids(archive.calls.list_calls(status="ended")) == ["c2", "c1"]
    assert ids(archive.calls.list_calls(risk="warning")) == ["c2"]
    assert ids(archive.calls.list_calls(limit=1, offset=1)) == ["c2"]
    assert archive.calls.count_calls(status="ended") == 2 and archive.calls.count_calls() == 3
    assert ids(archive.calls.live_calls()) == ["c3"]
    with pytest.raises(StoreError):
        archive.calls.list_calls(status="paused")


def test_a_transferred_call_is_visible_under_both_agents(archive: Store) -> None:
    archive.events.record(AgentJoined("c3", "PJSIP/1001", at=T0 + 2 * 86400 + 30))
    assert archive.calls.get_call("c3")["agents"] == ["PJSIP/2002", "PJSIP/1001"]
    assert ids(archive.calls.list_calls(endpoints=["PJSIP/2002"])) == ["c3"]
    assert ids(archive.calls.list_calls(endpoints=["PJSIP/1001"])) == ["c3", "c1"]


def test_chinese_full_text_search(archive: Store) -> None:
    assert ids(archive.calls.list_calls(text="工信部投诉")) == ["c1"]                # across an ASR space
    assert ids(archive.calls.list_calls(text="工信部 投訴")) == ["c1"]               # traditional, spaced
    found = archive.calls.list_calls(text="工信部投诉")[0]
    assert found["snippets"][0]["text"] == "我要去工信部 投诉你们"
    assert ids(archive.calls.list_calls(text="网络信号")) == ["c3"]                  # stored traditional
    assert ids(archive.calls.list_calls(text="话费")) == ["c2"]                      # 2 chars: LIKE
    assert ids(archive.calls.list_calls(text="您好")) == ["c3", "c2", "c1"]
    assert ids(archive.calls.list_calls(text="高")) == ["c2"]
    assert archive.calls.list_calls(text="消协投诉") == []
    assert ids(archive.calls.list_calls(text="  ")) == ["c3", "c2", "c1"]           # nothing to search
    for odd in ('x"y%z_', "NEAR(a b)", "a_", "%", '"'):                    # no SQL/FTS syntax
        assert archive.calls.list_calls(text=odd) in ([], archive.calls.list_calls())
    assert archive.calls.list_calls(text="a_") == []
    assert ids(archive.calls.list_calls(text="投诉", endpoints=["PJSIP/1002"])) == []


def test_fts_index_follows_updates_and_deletes(store: Store) -> None:
    store.events.record(TranscriptUpdate("c", "customer", 0, "我要投诉到消协", 0, 1, True, at=T0))
    assert ids(store.calls.list_calls(text="投诉到消协")) == ["c"]
    store.events.record(TranscriptUpdate("c", "customer", 0, "我要找律师起诉", 0, 1, True, at=T0 + 1))
    assert store.calls.list_calls(text="投诉到消协") == []
    assert ids(store.calls.list_calls(text="律师起诉")) == ["c"]
    if store.engine == "sqlite":
        assert scalar(store, "SELECT count(*) FROM utterances_fts WHERE utterances_fts MATCH "
                             "'\"律师起诉\"'") == 1
    assert scalar(store, "SELECT count(*) FROM utterances WHERE search_text LIKE '%投诉到消协%'") == 0


# --- cards, reviews, risk ---------------------------------------------------------------

def test_card_acknowledgement_feedback_and_owner(archive: Store) -> None:
    assert archive.calls.card_call_id("c1-k") == "c1" and archive.calls.card_call_id("nope") is None
    assert archive.reviews.acknowledge_card("c1-k", "alice", at=T0 + 5)
    assert archive.reviews.acknowledge_card("c1-k", "mallory", at=T0 + 6)         # first one is kept
    assert not archive.reviews.acknowledge_card("nope", "alice")
    assert archive.reviews.card_feedback("c1-k", "alice", helpful=False)
    assert archive.reviews.card_feedback("c1-k", "alice", helpful=True)
    assert not archive.reviews.card_feedback("nope", "alice", helpful=True)
    card = archive.calls.get_card("c1-k")
    assert (card["acknowledged_by"], card["acknowledged_at"]) == ("alice", T0 + 5)
    assert card["helpful"] is True and card["feedback_by"] == "alice"


def test_reviews(archive: Store) -> None:
    assert archive.reviews.save_review("c1", "qa1", "needs_coaching", "没有安抚", 50)
    assert archive.reviews.save_review("c1", "qa1", "pass", "复核后通过", 80.5)
    assert not archive.reviews.save_review("missing", "qa1", "pass")
    with pytest.raises(StoreError):
        archive.reviews.save_review("c1", "qa1", "pass", adherence_score=101)
    with pytest.raises(StoreError):
        archive.reviews.save_review("c1", "qa1", "")
    call = archive.calls.get_call("c1")
    assert len(call["reviews"]) == 1
    assert call["review"]["verdict"] == "pass" and call["review"]["adherence_score"] == 80.5


@pytest.mark.parametrize("cards, risk", [
    ([], "normal"),
    ([("network_quality", "info")], "normal"),
    ([("bill_shock", "warning")], "warning"),
    ([("media_exposure", "critical")], "critical"),
    ([("lawsuit_threat", "warning"), ("lawsuit_threat", "warning")], "critical"),
    ([("lawsuit_threat", "warning"), ("media_exposure", "warning")], "critical"),
    ([("lawsuit_threat", "warning"), ("bill_shock", "warning")], "warning"),
    ([("repeated_complaint", "warning")], "warning"),
    ([("repeated_complaint", "warning"), ("bill_shock", "warning")], "critical"),
    ([("repeated_complaint", "info"), ("network_quality", "info")], "normal"),
])
def test_call_risk(cards, risk) -> None:
    assert call_risk(cards) == risk


def test_risk_follows_cards_as_they_fire_and_are_withdrawn(store: Store) -> None:
    store.events.record(CallStarted("r", at=T0))
    store.events.record(CardFired("r", make_card("t1", "lawsuit_threat", "warning", start=1)))
    assert store.calls.get_call("r")["risk"] == "warning"
    store.events.record(CardFired("r", make_card("t2", "regulator_complaint", "warning", start=9)))
    assert store.calls.get_call("r")["risk"] == "critical"
    store.events.record(CardWithdrawn("r", "t2"))
    assert store.calls.get_call("r")["risk"] == "warning"


# --- users and sessions ---------------------------------------------------------------

def test_users_and_endpoints(store: Store) -> None:
    store.accounts.add_user("alice", "agent", "h1", "张丽", ["PJSIP/1001", "PJSIP/1001", "PJSIP/1003"])
    store.accounts.add_user("sup", "supervisor", "h2")
    alice = store.accounts.get_user("alice")
    assert alice["endpoints"] == ["PJSIP/1001", "PJSIP/1003"] and alice["password_hash"] == "h1"
    assert store.accounts.user_for_endpoint("PJSIP/1003")["username"] == "alice"
    assert store.accounts.user_for_endpoint("PJSIP/9999") is None
    assert [u["username"] for u in store.accounts.list_users()] == ["alice", "sup"]
    assert all("password_hash" not in u for u in store.accounts.list_users())
    with pytest.raises(StoreError, match="already exists"):
        store.accounts.add_user("alice", "agent", "h")
    with pytest.raises(StoreError, match="already belongs to user 'alice'"):
        store.accounts.add_user("carol", "agent", "h", endpoints=["PJSIP/1001"])
    assert store.accounts.get_user("carol") is None                        # nothing half-added
    with pytest.raises(StoreError, match="role"):
        store.accounts.add_user("dave", "boss", "h")
    for bad in ("", "-x", "a b", "x" * 65, "名字'"):
        with pytest.raises(StoreError, match="invalid username"):
            store.accounts.add_user(bad, "agent", "h")
    with pytest.raises(StoreError, match="invalid endpoint"):
        store.accounts.add_user("erin", "agent", "h", endpoints=["PJSIP/ 1"])
    assert store.accounts.set_password_hash("alice", "h9") and store.accounts.get_user("alice")["password_hash"] == "h9"
    token, _ = store.accounts.create_session("alice")
    assert store.accounts.remove_user("alice") and not store.accounts.remove_user("alice")
    assert store.accounts.get_session(token) is None and store.accounts.user_for_endpoint("PJSIP/1001") is None


def test_sessions(store: Store) -> None:
    store.accounts.add_user("alice", "agent", "h")
    token, csrf = store.accounts.create_session("alice", ttl=60, now=T0)
    assert len(token) >= 40 and len(csrf) >= 40 and token != csrf
    session = store.accounts.get_session(token, now=T0 + 59)
    assert session == {"username": "alice", "csrf": csrf, "created_at": T0, "expires_at": T0 + 60}
    assert store.accounts.get_session(token, now=T0 + 60) is None                 # expired, and deleted
    assert store.accounts.get_session(token, now=T0) is None
    assert store.accounts.get_session("") is None and store.accounts.get_session("forged") is None
    token2, _ = store.accounts.create_session("alice")
    assert scalar(store, "SELECT count(*) FROM sessions WHERE token_hash = ? OR csrf = ?",
                  token2, token2) == 0                                   # token not stored raw
    assert store.accounts.delete_session(token2) and store.accounts.get_session(token2) is None
    with pytest.raises(StoreError, match="no user"):
        store.accounts.create_session("ghost")


# --- retention ------------------------------------------------------------------------

def test_purge_deletes_old_calls_and_only_their_recordings_inside_the_data_dir(store: Store,
                                                                              tmp_path: Path) -> None:
    store.recordings_dir.mkdir()
    now = T0 + 200 * 86400
    old_rec = store.recordings_dir / "old.wav"
    new_rec = store.recordings_dir / "new.wav"
    outside = tmp_path / "precious.wav"
    sneaky = store.recordings_dir / ".." / "sneaky.wav"
    for f in (old_rec, new_rec, outside, sneaky):
        f.write_bytes(b"RIFF")
    link = store.recordings_dir / "link.wav"                         # points outside
    link.symlink_to(outside)
    store.events.record_many(simple_call("old", at=T0, recording=str(old_rec),
                                  texts=("我要去工信部投诉",),
                                  cards=(make_card("old-k"),)))
    store.events.record_many(simple_call("old-relative", at=T0 + 1, recording="recordings/missing.wav"))
    store.events.record_many(simple_call("old-outside", at=T0 + 2, recording=str(outside)))
    store.events.record_many(simple_call("old-sneaky", at=T0 + 3, recording=str(sneaky)))
    store.events.record_many(simple_call("old-live", at=T0 + 4, ended=False))
    store.events.record_many(simple_call("old-link", at=T0 + 5, recording=str(link)))
    store.events.record_many(simple_call("new", at=now - 86400, recording=str(new_rec)))
    store.reviews.save_review("old", "qa", "pass")

    assert store.recordings.file(str(old_rec)) == old_rec.resolve()
    assert store.recordings.file("recordings/old.wav") == old_rec.resolve()
    assert store.recordings.file(str(outside)) is None and store.recordings.file(str(sneaky)) is None
    assert store.recordings.file(str(link)) is None
    assert store.recordings.file("recordings/missing.wav") is None and store.recordings.file(None) is None
    assert store.retention.purge(0, now=now) == 0                                  # 0 keeps everything
    assert store.retention.purge(180, now=now) == 5
    assert ids(store.calls.list_calls()) == ["new", "old-live"]
    assert not old_rec.exists() and new_rec.exists()
    assert outside.exists() and sneaky.exists() and link.exists()        # never outside recordings/
    assert store.calls.get_call("old") is None and store.calls.card_call_id("old-k") is None
    assert store.events.events_since(0, call_ids=["old", "old-outside"]) == []
    assert store.calls.list_calls(text="工信部投诉") == []
    if store.engine == "sqlite":
        assert scalar(store, "SELECT count(*) FROM utterances_fts") == scalar(store, "SELECT count(*) FROM utterances")
    assert scalar(store, "SELECT count(*) FROM reviews") == 0


def test_purge_drops_expired_sessions_and_old_login_attempts(store: Store) -> None:
    store.accounts.add_user("alice", "agent", "h")
    token, _ = store.accounts.create_session("alice", ttl=10, now=T0)
    store.accounts.add_login_failure("user:alice", T0)
    store.retention.purge(180, now=T0 + 2 * 86400)
    assert scalar(store, "SELECT count(*) FROM sessions") == 0
    assert store.accounts.login_failures("user:alice", 0) == []


def test_purge_works_in_batches(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(retention_module, "PURGE_BATCH", 2)
    for i in range(5):
        store.events.record_many(simple_call(f"old{i}", at=T0 + i))
    store.events.record_many(simple_call("recent", at=T0 + 100 * 86400))
    assert store.retention.purge(30, now=T0 + 101 * 86400) == 5
    assert ids(store.calls.list_calls()) == ["recent"]


async def test_an_event_delivered_again_from_the_bus_is_stored_once(store: Store) -> None:
    events = simple_call("replayed")
    origins = [f"1700000000000-{i}" for i in range(len(events))]
    first = store.events.record_many(events[:3], origins[:3])
    listener = store.events.listen()
    # the writer died after committing the first three and before acknowledging them: the
    # bus delivers them again with the rest
    again = store.events.record_many(events, origins)
    await delivered(store)
    assert again[:3] == first
    heard = [listener.get_nowait()[0] for _ in range(listener.qsize())]
    assert heard == again[3:]                       # the new ones only, once each
    assert [seq for seq, _ in store.events.events_since(0, call_ids=["replayed"])] == again
    # control: without origins the same events are stored again
    assert store.events.record_many(events[:1])[0] > again[-1]
