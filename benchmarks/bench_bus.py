"""The Redis bus (callassist.redis_bus) through a real redis-server on loopback:
publish -> fan-out subscriber latency (p50/p95/max, paced like live calls), events/s
(publish as fast as possible until another node's subscriber has them all), and bytes per
event (wire size of a realistic mix, and Redis memory per stream entry).

    python benchmarks/bench_bus.py [--paced 2000] [--rate 500] [--burst 50000]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from callassist import wire  # noqa: E402
from callassist.events import (Card, CardFired, CallEvent, CitationView, TranscriptUpdate,  # noqa: E402
                               CallFault)
from callassist.redis_bus import EVENTS_STREAM, RedisEventBus  # noqa: E402

CARD = Card("c1-7-complaint", "complaint", "投诉升级", "critical", "customer", "我要去工信部投诉你们", "工信部投诉",
            0.91, 12.5, 14.0, 7, ("先致歉", "记录诉求并承诺回电"),
            (CitationView("tcr", "电信条例", "第五十九条", "电信业务经营者应当建立健全服务质量管理制度"),),
            True, heard="工信部投诉", via="pinyin")


def sample(n: int) -> CallEvent:
    """Mostly transcript updates (what a call produces most), a card now and then."""
    if n % 20 == 19:
        return CardFired(f"call-{n % 8}", CARD)
    return TranscriptUpdate(f"call-{n % 8}", "customer" if n % 2 else "agent", n, "您好我想问一下我这个月的话费为什么这么高",
                            n * 0.5, n * 0.5 + 2.1, final=n % 3 == 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked(n: int) -> CallEvent:
    return CallFault("bench", str(n))


async def paced(url: str, count: int, rate: float) -> list[float]:
    publisher, listener = RedisEventBus(url, "bench-pub"), RedisEventBus(url, "bench-sub")
    await publisher.start()
    await listener.start()
    sub = listener.subscribe()
    await listener.ready()
    sent: dict[int, float] = {}
    latencies: list[float] = []

    async def receive() -> None:
        while len(latencies) < count:
            event = await sub.get()
            assert isinstance(event, CallFault)
            latencies.append(time.perf_counter() - sent[int(event.problem)])

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[n] = time.perf_counter()
        publisher.publish(marked(n))
    await asyncio.wait_for(receiver, 60)
    await publisher.close()
    await listener.close()
    return latencies


async def burst(url: str, count: int) -> tuple[float, float]:
    publisher, listener = RedisEventBus(url, "bench-pub"), RedisEventBus(url, "bench-sub")
    await publisher.start()
    await listener.start()
    sub = listener.subscribe()
    await listener.ready()
    events = [sample(n) for n in range(count)]
    start = time.perf_counter()
    for event in events:
        publisher.publish(event)
    publish_seconds = time.perf_counter() - start
    for _ in range(count):
        await sub.get()
    total = time.perf_counter() - start
    await publisher.close()
    await listener.close()
    return publish_seconds, total


async def stream_bytes(url: str) -> tuple[int, int]:
    redis = Redis.from_url(url)
    try:
        length = await redis.xlen(EVENTS_STREAM)
        memory = await redis.memory_usage(EVENTS_STREAM, samples=0)
        return length, int(memory or 0)
    finally:
        await redis.aclose()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paced", type=int, default=2000, help="events for the latency run")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s in the latency run")
    parser.add_argument("--burst", type=int, default=50_000, help="events for the throughput run")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not installed (Debian package redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        port = free_port()
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(200):
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.1):
                        break
                except OSError:
                    time.sleep(0.05)
            sizes = [len(wire.encode(sample(n))) for n in range(1000)]
            print(f"wire bytes/event (mix: transcript updates, 1 card in 20): mean {statistics.mean(sizes):.0f}, "
                  f"transcript {sizes[0]}, card {sizes[19]}")
            latencies = await paced(url, args.paced, args.rate)
            ms = [value * 1000 for value in latencies]
            print(f"publish -> other node's subscriber, {args.paced} events at {args.rate:.0f}/s: "
                  f"p50 {percentile(ms, 0.5):.2f} ms, p95 {percentile(ms, 0.95):.2f} ms, max {max(ms):.2f} ms")
            publish_seconds, total = await burst(url, args.burst)
            print(f"burst of {args.burst}: publish() {publish_seconds * 1e6 / args.burst:.1f} µs/event on the caller; "
                  f"all at the other node's subscriber after {total:.2f} s = {args.burst / total:,.0f} events/s")
            length, memory = await stream_bytes(url)
            print(f"redis stream: {length} entries, {memory / max(length, 1):.0f} bytes/entry in memory")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
