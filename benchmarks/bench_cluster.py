"""What the cluster adds between a card and the agent's screen, against one process.

A card's way to the screen, measured from the pipeline's publish to the moment a web node's
store listener (the screens' hub) has it, committed:

  single process  EventBus -> the store's writer thread (SQLite) -> listener
  cluster         worker's RedisEventBus -> Redis stream -> StoreFeed on web node 1 (the
                  store-writer lease) -> PostgreSQL commit + NOTIFY -> web node 2's follower
                  -> listener (the agent is connected to the other web node)

Both in ONE run, on the same paced load (N calls, each a realistic mix of interim and final
transcripts and a card now and then), so the ratio holds on a shared machine. Also printed:
bus bytes and entries per call, PostgreSQL transactions and rows per call, Redis memory.
Starts its own redis-server and PostgreSQL (Debian packages; tests/servers.py).

    python benchmarks/bench_cluster.py [--calls 20] [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent_ui.db_postgres import PostgresDatabase  # noqa: E402
from agent_ui.store import Store  # noqa: E402
from callassist import wire  # noqa: E402
from callassist.bus import EventBus  # noqa: E402
from callassist.events import (AgentJoined, CallEnded, CallEvent, CallStarted, Card, CardFired,  # noqa: E402
                               CitationView, TranscriptUpdate)
from callassist.redis_bus import RedisEventBus, stop_task  # noqa: E402
from callassist.store_feed import StoreFeed  # noqa: E402
from servers import PostgresServer, RedisServer, running_postgres, running_redis  # noqa: E402

EVENTS_PER_SECOND_PER_CALL = 2.5      # interims every 0.5 s while someone speaks, finals, cards
CARD_EVERY = 25                       # one card per this many events of a call


def card(call_id: str, n: int) -> Card:
    return Card(f"{call_id}-{n}", "regulator_complaint", "扬言向工信部投诉", "critical", "customer",
                "我要去工信部投诉你们", "工信部投诉", 0.93, n * 0.4, n * 0.4 + 2.0, n,
                ("先致歉，表示理解", "承诺 24 小时内回复"),
                (CitationView("telecom_regulations_59", "电信条例", "第五十九条", "电信业务经营者应当..."),),
                True, heard="工信部投诉", via="chars")


def call_events(call_id: str, n: int) -> CallEvent:
    """The n-th event of a call: transcript updates mostly, a card every CARD_EVERY."""
    if n % CARD_EVERY == CARD_EVERY - 1:
        return CardFired(call_id, card(call_id, n))
    speaker = "customer" if (n // 6) % 2 == 0 else "agent"
    return TranscriptUpdate(call_id, speaker, n // 6, "您好我想问一下我这个月的话费为什么扣了这么多"[: 6 + n % 6 * 3],
                            n * 0.4, n * 0.4 + 1.5, final=n % 6 == 5)


async def drive(publish: Callable[[CallEvent], None], calls: int, seconds: float,
                sent: dict[str, float]) -> int:
    """Publish `calls` calls' events paced like live calls; returns events published."""
    count = 0
    for c in range(calls):
        publish(CallStarted(f"call-{c}", caller="13800000000"))
        publish(AgentJoined(f"call-{c}", f"PJSIP/{1001 + c}"))
    interval = 1.0 / (EVENTS_PER_SECOND_PER_CALL * calls)
    began = time.monotonic()
    n = 0
    while time.monotonic() - began < seconds:
        for c in range(calls):
            event = call_events(f"call-{c}", n)
            if isinstance(event, CardFired):
                sent[event.card.card_id] = time.monotonic()
            publish(event)
            count += 1
            await asyncio.sleep(interval)
        n += 1
    for c in range(calls):
        publish(CallEnded(f"call-{c}", duration=seconds))
    return count + 3 * calls


async def follow(store: Store, sent: dict[str, float], seen: dict[str, float], stop: asyncio.Event) -> None:
    queue = store.events.listen()
    try:
        while not stop.is_set():
            try:
                _seq, data = await asyncio.wait_for(queue.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            if data["type"] == "CardFired":
                seen[data["card"]["card_id"]] = time.monotonic()
    finally:
        store.events.unlisten(queue)


def latencies(sent: dict[str, float], seen: dict[str, float]) -> list[float]:
    return sorted(1000 * (seen[k] - sent[k]) for k in sent if k in seen)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def single_process(tmp: Path, calls: int, seconds: float) -> tuple[list[float], int]:
    bus = EventBus()
    store = Store(tmp / f"single-{time.monotonic_ns()}.db")
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    recorder = asyncio.create_task(store.events.run(bus))
    follower = asyncio.create_task(follow(store, sent, seen, stop))
    await asyncio.sleep(0.2)
    await drive(bus.publish, calls, seconds, sent)
    await _until(lambda: len(seen) >= len(sent), 10)
    stop.set()
    recorder.cancel()
    await asyncio.gather(recorder, follower, return_exceptions=True)
    store.close()
    return latencies(sent, seen), len(sent)


async def cluster(tmp: Path, redis: RedisServer, pg: PostgresServer, calls: int, seconds: float) -> dict:
    url = pg.fresh_url()
    writer_store = Store(PostgresDatabase(url), recordings_dir=tmp)
    screen_store = Store(PostgresDatabase(url), recordings_dir=tmp)
    worker_bus, web_bus = RedisEventBus(redis.url(3), "worker-1"), RedisEventBus(redis.url(3), "web-1")
    await worker_bus.start()
    await web_bus.start()
    feed = asyncio.create_task(StoreFeed(web_bus, writer_store, "web-1").run())
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    follower = asyncio.create_task(follow(screen_store, sent, seen, stop))
    await asyncio.sleep(1.0)                       # the lease taken, the follower listening
    stats_before = _pg_stats(writer_store)
    bytes_sent = 0
    entries = 0

    def publish(event: CallEvent) -> None:
        nonlocal bytes_sent, entries
        bytes_sent += len(wire.encode(event))
        entries += 1
        worker_bus.publish(event)
    await drive(publish, calls, seconds, sent)
    await _until(lambda: len(seen) >= len(sent), 20)
    await asyncio.sleep(1.0)                       # the CallEnded of every call committed
    stats_after = _pg_stats(writer_store)
    memory = await worker_bus.redis.memory_usage("callassist:events") or 0
    stop.set()
    await stop_task(feed)
    await asyncio.gather(follower, return_exceptions=True)
    await worker_bus.close()
    await web_bus.close()
    writer_store.close()
    screen_store.close()
    return {"latencies": latencies(sent, seen), "cards": len(sent), "bytes": bytes_sent, "entries": entries,
            "xacts": stats_after[0] - stats_before[0], "rows": stats_after[1] - stats_before[1],
            "redis_bytes": memory}


def _pg_stats(store: Store) -> tuple[int, int]:
    with store.db.query() as db:          # type: ignore[attr-defined]
        row = db.execute("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                         "WHERE datname = current_database()").fetchone()
    return int(row[0]), int(row[1])


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="single process and cluster alternated this often")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as name, \
            running_redis("bench-cluster-redis-") as redis, running_postgres("bench-cluster-pg-") as pg:
        tmp = Path(name)
        print(f"{args.calls} calls x {args.seconds:.0f} s, {EVENTS_PER_SECOND_PER_CALL} events/s per call, "
              f"a card every {CARD_EVERY} events; single process and cluster alternated, "
              f"{args.rounds} rounds")
        single: list[float] = []
        cards_single = 0
        results = []
        for _ in range(args.rounds):
            measured, cards = await single_process(tmp, args.calls, args.seconds)
            single += measured
            cards_single += cards
            results.append(await cluster(tmp, redis, pg, args.calls, args.seconds))
    single.sort()
    multi = sorted(v for r in results for v in r["latencies"])
    result = {key: sum(r[key] for r in results) for key in ("cards", "bytes", "entries", "xacts", "rows")}
    result["redis_bytes"] = results[-1]["redis_bytes"]     # one stream holds every round's entries
    print(f"\ncard publish -> a web node's listener, ms (cards: {cards_single} / {result['cards']})")
    print(f"{'path':<48}{'p50':>8}{'p95':>8}{'max':>8}")
    print(f"{'single process (bus, SQLite writer thread)':<48}{pct(single, .5):8.1f}{pct(single, .95):8.1f}"
          f"{max(single):8.1f}")
    print(f"{'cluster (Redis, StoreFeed, PostgreSQL, NOTIFY)':<48}{pct(multi, .5):8.1f}{pct(multi, .95):8.1f}"
          f"{max(multi):8.1f}")
    print(f"{'ratio cluster / single':<48}{pct(multi, .5) / pct(single, .5):8.1f}"
          f"{pct(multi, .95) / pct(single, .95):8.1f}")
    per_call = 1 / args.calls
    minutes = args.seconds / 60 * args.rounds
    print(f"\nper call minute: bus {result['entries'] * per_call / minutes:.0f} entries, "
          f"{result['bytes'] * per_call / minutes / 1024:.1f} KiB on the wire; Redis "
          f"{result['redis_bytes'] / max(1, result['entries']):.0f} B per stream entry; PostgreSQL "
          f"{result['xacts'] * per_call / minutes:.0f} transactions (the writer's and the other node's reads), "
          f"{result['rows'] * per_call / minutes:.0f} rows written")
    print(f"missing cards: single {cards_single - len(single)}, cluster {result['cards'] - len(multi)}")


if __name__ == "__main__":
    asyncio.run(main())
