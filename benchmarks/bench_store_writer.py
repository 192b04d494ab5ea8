"""Recording the bus into the store: events/s stored and the event loop's longest stall,
with and without another process holding the database's write lock.

    python benchmarks/bench_store_writer.py [--rate 2000] [--seconds 6] [--lock 3]

The bus carries `--rate` final transcript lines a second (in 20 ms ticks, as RTP
frames come) for `--seconds`; store.events.run(bus) records them and a store listener hears
each after its commit. "with locker": from 1 s in, another process holds the write
lock for `--lock` seconds (as `callassist user ...`, `archive import` or a backup
may). Printed per run: events stored per second (first publish to the last event
heard), the loop's longest stall (a 10 ms ticker), and the worst publish-to-heard
delay. The same file runs against an older checkout (before the writer thread).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from agent_ui.store import Store  # noqa: E402
from callassist.bus import EventBus  # noqa: E402
from callassist.events import CallStarted, TranscriptUpdate  # noqa: E402

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""
TICK = 0.02


async def one_run(rate: int, seconds: float, lock: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "callassist.db")
        bus = EventBus()
        listener = store.events.listen()
        recorder = asyncio.create_task(store.events.run(bus))
        loop = asyncio.get_running_loop()
        worst_lag = 0.0

        async def ticker() -> None:
            nonlocal worst_lag
            while True:
                due = loop.time() + 0.01
                await asyncio.sleep(0.01)
                worst_lag = max(worst_lag, loop.time() - due)
        ticking = asyncio.create_task(ticker())

        published: dict[int, float] = {}
        total = int(rate * seconds)
        worst_delay = 0.0
        all_heard = asyncio.Event()

        async def hear() -> None:
            nonlocal worst_delay
            heard = 0
            while heard < total:
                _, event = await listener.get()
                if event["type"] == "TranscriptUpdate":
                    heard += 1
                    worst_delay = max(worst_delay, loop.time() - published[event["utterance"]])
            all_heard.set()
        hearing = asyncio.create_task(hear())
        per_tick = max(1, int(rate * TICK))
        locker = None
        start = loop.time()
        bus.publish(CallStarted("bench", at=time.time()))
        i = 0
        while i < total:
            if lock and locker is None and loop.time() - start >= 1.0:
                locker = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", LOCKER, str(store.path), str(lock),
                    stdout=asyncio.subprocess.PIPE)
                await locker.stdout.readline()                        # type: ignore[union-attr]
            for _ in range(min(per_tick, total - i)):
                published[i] = loop.time()
                bus.publish(TranscriptUpdate("bench", "customer", i, f"第{i}句", i * 0.1,
                                             i * 0.1 + 0.1, True, at=time.time()))
                i += 1
            await asyncio.sleep(max(0.0, start + (i / per_tick) * TICK - loop.time()))
        await all_heard.wait()
        await hearing
        elapsed = loop.time() - start
        if locker is not None:
            await locker.wait()
        ticking.cancel()
        recorder.cancel()
        await asyncio.gather(ticking, recorder, return_exceptions=True)
        store.close()
        return {"events_per_s": total / elapsed, "max_lag": worst_lag, "worst_delay": worst_delay}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="events a second on the bus")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--lock", type=float, default=3.0, help="seconds the other process holds the lock")
    args = parser.parse_args()
    for label, lock in (("no locker", 0.0), (f"with locker ({args.lock:g} s)", args.lock)):
        r = asyncio.run(one_run(args.rate, args.seconds, lock))
        print(f"store writer, {args.rate} events/s offered, {label}: {r['events_per_s']:.0f} events/s "
              f"stored, loop max lag {r['max_lag'] * 1000:.0f} ms, worst publish-to-listener delay "
              f"{r['worst_delay']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
