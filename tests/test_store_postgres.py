"""The PostgreSQL engine's own story, on a real PostgreSQL 15 (tests/servers.py): its
migrations, pg_trgm search matching SQLite's FTS5, the live feed across processes
(LISTEN/NOTIFY) and a server restart in the middle of a stream of events. The behaviour
both engines share is tests/test_store.py, run on each."""
from __future__ import annotations

import asyncio
import json
import random
import sys
import textwrap
import threading
from pathlib import Path

import psycopg
import pytest

from agent_ui.db import StoreError
from agent_ui.db_postgres import PostgresDatabase
from agent_ui.event_store import Listener
from agent_ui.migrations import Migration
from agent_ui.migrations.postgres import PG_MIGRATIONS
from agent_ui.store import Store, open_store
from callassist.config import load_config
from callassist.events import CallFault, TranscriptUpdate
from servers import PostgresServer
from test_store import T0, make_card, simple_call

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (ROOT / "prompts" / "corpus" / "calls_dev.jsonl", ROOT / "prompts" / "corpus" / "calls_dev2.jsonl")


_opened: list[Store] = []


def pg_store(url: str, tmp_path: Path) -> Store:
    store = Store(PostgresDatabase(url), recordings_dir=tmp_path / "recordings")
    _opened.append(store)
    return store


@pytest.fixture(autouse=True)
def close_stores():
    """A failing test must not leave follower threads behind for the next ones."""
    yield
    while _opened:
        store = _opened.pop()
        if not store.db.closed:
            store.close()


def sql(url: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


async def take(listener: Listener, count: int, timeout: float = 5.0) -> list[tuple[int, dict]]:
    return [await asyncio.wait_for(listener.get(), timeout) for _ in range(count)]


# --- migrations -----------------------------------------------------------------------

def test_migrates_an_empty_database_and_reopens_without_migrating_again(postgres_url: str,
                                                                         tmp_path: Path) -> None:
    store = pg_store(postgres_url, tmp_path)
    assert store.engine == "postgresql" and store.schema_version == PG_MIGRATIONS[-1].version
    store.events.record_many(simple_call("c1"))
    store.close()
    tables = {r[0] for r in sql(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"users", "calls", "events", "utterances", "cards", "reviews", "sessions", "login_attempts",
            "audit_log", "call_analytics", "schema_version"} <= tables
    assert sql(postgres_url, "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'") == [("pg_trgm",)]
    again = pg_store(postgres_url, tmp_path)
    assert again.calls.get_call("c1")["status"] == "ended"
    assert sql(postgres_url, "SELECT version FROM schema_version") == [(PG_MIGRATIONS[-1].version,)]
    again.close()


def test_open_store_uses_the_database_url_and_the_data_dirs_recordings(postgres_url: str,
                                                                       tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{postgres_url}"\n')
    store = open_store(load_config(config_file, env={}))
    _opened.append(store)
    assert store.engine == "postgresql" and store.recordings_dir == tmp_path / "data" / "recordings"
    assert store.recordings_dir.is_dir() and not (tmp_path / "data" / "callassist.db").exists()
    assert store.writable()
    store.events.record_many(simple_call("c1"))
    assert sql(postgres_url, "SELECT status FROM calls") == [("ended",)]


def test_refuses_a_newer_schema(postgres_url: str, tmp_path: Path) -> None:
    pg_store(postgres_url, tmp_path).close()
    sql(postgres_url, "UPDATE schema_version SET version = 999")
    with pytest.raises(StoreError, match="newer than"):
        pg_store(postgres_url, tmp_path)


def test_a_failing_migration_step_leaves_the_database_as_it_was(postgres_url: str) -> None:
    PostgresDatabase(postgres_url).close()
    latest = PG_MIGRATIONS[-1].version
    broken = Migration(latest + 1, "broken", ("CREATE TABLE half_done (x integer)", "THIS IS NOT SQL"))
    with pytest.raises(StoreError, match=f"migration to schema {latest + 1} .broken. failed, "
                                         f"database left at schema {latest}"):
        PostgresDatabase(postgres_url, migrations=PG_MIGRATIONS + (broken,))
    assert sql(postgres_url, "SELECT to_regclass('half_done') IS NULL") == [(True,)]
    db = PostgresDatabase(postgres_url)
    assert db.schema_version == latest
    db.close()


def test_nodes_starting_together_migrate_once(postgres_url: str) -> None:
    starters = 6
    barrier = threading.Barrier(starters)
    outcomes: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            db = PostgresDatabase(postgres_url)
        except Exception as exc:                           # collected: asserted below
            outcomes.append(exc)
        else:
            outcomes.append(db.schema_version)
            db.close()

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [PG_MIGRATIONS[-1].version] * starters
    assert sql(postgres_url, "SELECT count(*) FROM schema_version") == [(1,)]


# --- search ---------------------------------------------------------------------------

def corpus_lines() -> list[str]:
    lines = []
    for path in CORPUS:
        for line in path.read_text(encoding="utf-8").splitlines():
            lines += [turn["text"] for turn in json.loads(line)["turns"]]
    return lines


def test_trigram_search_finds_what_sqlite_fts5_finds(postgres_url: str, tmp_path: Path) -> None:
    lines = corpus_lines()
    rng = random.Random(11)
    sqlite_dir = tmp_path / "sqlite"
    sqlite_dir.mkdir()
    stores = [Store(sqlite_dir / "callassist.db"), pg_store(postgres_url, tmp_path)]
    calls = [simple_call(f"call-{n:03d}", at=T0 + n, texts=tuple(rng.sample(lines, 8))) for n in range(60)]
    stored = [event.text for events in calls for event in events if isinstance(event, TranscriptUpdate)]
    for store in stores:
        for events in calls:
            store.events.record_many(events)
    queries = ["投诉", "信号", "您", "工信部", "不好意思", "我理解您", "退费", "话 费", "網絡", "x%_"]
    for _ in range(40):                         # substrings of real lines, 2 to 5 characters
        line = rng.choice(stored).replace(" ", "")
        size = rng.choice((2, 3, 5))
        start = rng.randrange(max(1, len(line) - size))
        queries.append(line[start:start + size])
    found = 0
    for query in queries:
        sqlite_ids, pg_ids = ([c["call_id"] for c in store.calls.list_calls(text=query, limit=1000)] for store in stores)
        assert pg_ids == sqlite_ids, query
        assert [c["snippets"] for c in stores[1].calls.list_calls(text=query, limit=5)] == \
            [c["snippets"] for c in stores[0].calls.list_calls(text=query, limit=5)]
        found += bool(pg_ids)
    assert found >= 40                                     # control: most queries find calls
    for store in stores:
        store.close()


def test_three_characters_or_more_use_the_trigram_index(postgres_url: str, tmp_path: Path) -> None:
    store = pg_store(postgres_url, tmp_path)
    store.events.record_many(simple_call("c", texts=("我要去工信部投诉你们",)))
    with store.db.query() as db:
        db.execute("SET enable_seqscan = off")           # a tiny table: make the planner show its options
        plan = "\n".join(r[0] for r in db.execute(
            "EXPLAIN SELECT call_id FROM utterances WHERE search_text LIKE ?", ("%工信部%",)))
        assert "utterances_trgm" in plan
        db.execute("RESET enable_seqscan")
    store.close()


def test_two_characters_use_the_character_pair_index(postgres_url: str, tmp_path: Path) -> None:
    store = pg_store(postgres_url, tmp_path)
    store.events.record_many(simple_call("c", texts=("我要去工信部投诉你们",)))
    store.events.record_many(simple_call("d", at=T0 + 1, texts=("您的话费已经退回",)))
    with store.db.query() as db:
        db.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in db.execute(
            "EXPLAIN SELECT call_id FROM utterances WHERE callassist_bigrams(search_text) @> ARRAY[?]::text[]",
            ("投诉",)))
        assert "utterances_bigrams" in plan
        db.execute("RESET enable_seqscan")
    assert [c["call_id"] for c in store.calls.list_calls(text="投诉")] == ["c"]
    assert [c["call_id"] for c in store.calls.list_calls(text="话费")] == ["d"]
    assert store.calls.list_calls(text="诉话") == []            # control: pairs across lines do not match
    store.close()


# --- the live feed across processes ---------------------------------------------------

WRITER_PROCESS = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
    from agent_ui.db_postgres import PostgresDatabase
    from agent_ui.store import Store
    from callassist.events import CallFault
    store = Store(PostgresDatabase(sys.argv[1]), recordings_dir=Path(sys.argv[2]))
    writer = store.events.recorder()
    for i in range(200):
        writer.submit(CallFault("other-process", f"p{i}", at=float(i)))
    store.events.record_many([CallFault("other-process", f"batch{i}", at=300.0 + i) for i in range(50)])
    store.close()
""")


async def test_a_node_that_never_writes_hears_every_commit_of_another_process_once_in_order(
        postgres_url: str, tmp_path: Path) -> None:
    web = pg_store(postgres_url, tmp_path)
    web.events.record(CallFault("before", "committed before listening", at=T0))
    listener = web.events.listen()
    caught_up = web.events.events_since(0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER_PROCESS, postgres_url, str(tmp_path / "recordings"), str(ROOT))
    assert await proc.wait() == 0
    heard = await take(listener, 250)
    problems = [event["problem"] for _, event in heard]
    # two writers in that process (its recorder thread, a request write): their commits
    # interleave, each one's events stay in order
    assert sorted(problems) == sorted([f"p{i}" for i in range(200)] + [f"batch{i}" for i in range(50)])
    assert [p for p in problems if p[0] == "p"] == [f"p{i}" for i in range(200)]
    assert [p for p in problems if p[0] == "b"] == [f"batch{i}" for i in range(50)]
    seqs = [seq for seq, _ in heard]
    assert seqs == sorted(set(seqs)) and seqs[0] > caught_up[-1][0]
    assert caught_up + heard == web.events.events_since(0)         # catch-up + live: no gap, no duplicate
    await asyncio.sleep(0.3)
    assert listener.empty()                                 # nothing twice ...
    web.events.record(CallFault("after", "control", at=T0))        # ... while a new commit still arrives
    assert (await take(listener, 1))[0][1]["problem"] == "control"
    web.close()


async def test_listeners_on_the_writing_node_hear_its_commits_through_the_database(
        postgres_url: str, tmp_path: Path) -> None:
    store = pg_store(postgres_url, tmp_path)
    listener = store.events.listen()
    seqs = await asyncio.to_thread(store.events.record_many, simple_call("c", cards=(make_card("k"),)))
    heard = await take(listener, len(seqs))
    assert [seq for seq, _ in heard] == seqs
    store.close()


# --- a restart of the server ------------------------------------------------------------

async def test_every_event_is_stored_and_heard_once_across_a_postgresql_restart(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.fresh_url()
    writing = pg_store(url, tmp_path)                       # the web node holding the writer lease
    other = pg_store(url, tmp_path)                          # a web node that only reads
    local, remote = writing.events.listen(), other.events.listen()
    recorder = writing.events.recorder()
    events = [TranscriptUpdate("restarted", "customer", i, f"第{i}句", float(i), i + 0.5, True, at=T0 + i)
              for i in range(300)]
    for event in events[:100]:                               # before
        recorder.submit(event)
    first = await take(remote, 50)
    stopping = asyncio.create_task(asyncio.to_thread(postgres_server.stop))
    for event in events[100:150]:                            # while it shuts down
        recorder.submit(event)
        await asyncio.sleep(0.002)
    await stopping
    for event in events[150:200]:                            # while it is down
        recorder.submit(event)
    await asyncio.sleep(0.5)
    assert recorder.backlog > 0                              # control: the writer really waits
    await asyncio.to_thread(postgres_server.start)
    for event in events[200:]:                               # after
        recorder.submit(event)
    heard_remote = first + await take(remote, 250)
    heard_local = await take(local, 300)
    for heard in (heard_local, heard_remote):
        assert [event["utterance"] for _, event in heard] == list(range(300))
        seqs = [seq for seq, _ in heard]
        assert seqs == sorted(set(seqs))
    assert [seq for seq, _ in heard_local] == [seq for seq, _ in heard_remote]
    stored = other.events.events_since(0)                           # reads reconnect by themselves
    assert [seq for seq, _ in stored] == [seq for seq, _ in heard_remote]
    assert len(other.calls.get_call("restarted")["utterances"]) == 300
    assert recorder.failed == 0
    assert other.events.follower.reconnects >= 1            # control: the restart was felt
    await asyncio.sleep(0.3)
    assert local.empty() and remote.empty()                  # nothing delivered twice
    writing.close()
    other.close()
