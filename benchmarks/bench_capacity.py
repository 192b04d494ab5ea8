"""How many machines a call centre needs: measured per-call costs on this machine, then the
capacity table for 100 / 300 / 1,000 seats (docs/deployment.md). Prints numbers, asserts
nothing; not run by CI. About 3 minutes with the defaults.

Measured, each in this process unless said (CPU = user + system of every thread,
resource.getrusage, so decoder threads count):
1. bus: the demo call (callassist.demo, played once in real time through what a worker runs
   per call): its events and wire bytes (callassist.wire) per minute of call.
2. worker, live: N concurrent two-leg calls built from the real Mandarin recordings in
   ../shared/audio/mandarin-samples (customer and agent taking turns), paced in real time
   through CallSession: recorder + CallPipeline with the Whisper base live engine, the
   matcher with its intent model, live conversation analytics. CPU seconds per second of
   call, resident memory, and whether decoding fell behind (CallFault).
3. worker, post-call: the post-call pass (Whisper re-transcription + matching) of one of
   those recordings: CPU seconds per second of call.
4. worker, RTP: S real-time RTP streams (tests/rtp_sender.py in a child process, as
   Asterisk's externalMedia sends) into ari_app's PortPool/RtpStream: CPU per stream.
5. bus, Redis: with redis-server installed, XADD of the demo call's events into a throwaway
   Redis (tests/servers.py): the server's CPU per event.
6. store writer: the demo call's stored events, replayed as many calls (fresh call and card
   ids), recorded by EventLog.record_many in the writer's batches: CPU and wall time per event
   on SQLite and, with --postgres URL (or --postgres auto: a throwaway PostgreSQL 15 from
   tests/servers.py, fsync off, so optimistic), on PostgreSQL. The database server's own CPU
   is not counted.

Then the table: concurrent calls from seats (assumption printed), worker processes, cores
and RAM per role.

    nice python benchmarks/bench_capacity.py [--calls 2] [--seconds 40] [--streams 20]
                                             [--postgres auto|postgresql://...] [--call-minutes 5]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from callassist.audio import PIPELINE_RATE, read_recording  # noqa: E402
from callassist.config import Config, load_config  # noqa: E402
from callassist.events import CallEvent, event_from_dict, event_to_dict  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "audio" / "mandarin-samples"
HOST = "127.0.0.1"
SEATS = (100, 300, 1000)
SEATS_PER_CALL = (1.0, 3.0)      # peak: every seat on a call .. one seat in three
HEADROOM = 0.7                   # plan cores to 70 % busy: bursts, GC, a moved call
CORES_PER_WORKER = 2             # one worker process per 2 cores ([asr] decode_threads = 2)
STORE_BATCH = 50                 # events per writer transaction (the writer takes what is queued)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wire_bytes(event: CallEvent) -> int:
    try:
        from callassist.wire import encode
    except ImportError:                        # before the wire format: its JSON
        return len(json.dumps(event_to_dict(event), ensure_ascii=False).encode())
    return len(encode(event))


# -------------------------------------------------------------------------- calls to play

def conversation(seconds: float, offset: int) -> np.ndarray:
    """(samples, 2) int16: customer (left) and agent (right) taking turns with the shared
    Mandarin recordings, 0.6 s between turns, for `seconds`."""
    files = sorted(p for p in SAMPLES.glob("*.wav"))
    if not files:
        raise SystemExit(f"no Mandarin samples in {SAMPLES}")
    clips = [read_recording(path).channels[0] for path in files]
    gap = np.zeros(int(0.6 * PIPELINE_RATE), np.int16)
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    total, turn = 0, offset
    while total < seconds * PIPELINE_RATE:
        clip = clips[turn % len(clips)]
        silent = np.zeros_like(clip)
        speaking_left = turn % 2 == 0
        left += [clip if speaking_left else silent, gap]
        right += [silent if speaking_left else clip, gap]
        total += len(clip) + len(gap)
        turn += 1
    n = int(seconds * PIPELINE_RATE)
    return np.column_stack([np.concatenate(left)[:n], np.concatenate(right)[:n]])


@dataclass
class Played:
    cpu_per_call_s: float          # CPU seconds per second of call
    seconds: float                 # call length
    calls: int
    rss_before: float
    rss_after: float
    events: list[list[CallEvent]]
    recordings: list[Path]
    behind: int                    # CallFaults saying decoding is behind


async def play_calls(config: Config, engine: Any, matcher: Any, audio: list[np.ndarray], out: Path,
                     label: str, stagger: float = 1.0) -> Played:
    """Each call through a CallSession as a worker hosts it, in real time, started `stagger`
    seconds apart (real calls are not in lockstep)."""
    from ari_app.recorder import CallRecorder
    from callassist.demo import play_call
    from callassist.events import CallFault
    from callassist.pipeline import CallPipeline
    from callassist.session import CallSession

    events: list[list[CallEvent]] = [[] for _ in audio]
    recordings = [out / f"{label}-{i}.wav" for i in range(len(audio))]

    async def one(i: int) -> None:
        await asyncio.sleep(i * stagger)
        call_id = f"{label}-{i}"
        pipeline = CallPipeline(call_id, engine, matcher, events[i].append, analytics=config.analytics)
        session = CallSession(call_id, pipeline, events[i].append,
                              CallRecorder(recordings[i], PIPELINE_RATE, "wav"))
        session.start(caller="13800138000", source="bench")
        session.start_leg("agent", endpoint="PJSIP/1001")
        await play_call(audio[i], session)

    rss_before = rss_mb()
    cpu0 = cpu_seconds()
    await asyncio.gather(*(one(i) for i in range(len(audio))))
    cpu = cpu_seconds() - cpu0
    seconds = sum(len(a) for a in audio) / PIPELINE_RATE
    behind = sum(1 for call in events for e in call if isinstance(e, CallFault))
    return Played(cpu / seconds, seconds / len(audio), len(audio), rss_before, rss_mb(), events,
                  recordings, behind)


async def post_call_cost(engine: Any, matcher: Any, recording: Path) -> float:
    """CPU seconds per second of call of the post-call re-transcription."""
    from callassist.analyze import analyze_recording
    audio = read_recording(recording)
    cpu0 = cpu_seconds()
    await analyze_recording(audio, engine, matcher, call_id="bench-post")
    return (cpu_seconds() - cpu0) / (len(audio.channels[0]) / PIPELINE_RATE)


# -------------------------------------------------------------------------- RTP

async def rtp_cost(streams: int, seconds: float) -> dict[str, float]:
    from ari_app.ports import PortPool
    pool = PortPool(HOST, 42000, 42000 + 2 * streams + 50, jitter_ms=60, stall_timeout=5.0)
    opened = [await pool.open_stream(name=f"bench{i}") for i in range(streams)]
    frames = [0] * streams

    async def consume(i: int, stream: Any) -> None:
        async for _ in stream.frames():
            frames[i] += 1
    consumers = [asyncio.create_task(consume(i, s)) for i, s in enumerate(opened)]
    sender = subprocess.Popen([sys.executable, __file__, "--send-rtp", str(seconds), *(str(s.port) for s in opened)],
                              stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None
    ready = await asyncio.get_running_loop().run_in_executor(None, sender.stdout.readline)
    assert ready.strip() == "ready", ready
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    while sender.poll() is None:
        await asyncio.sleep(0.05)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    await asyncio.sleep(0.2)                         # the last packets' reorder window
    await pool.close_all()
    await asyncio.gather(*consumers)
    return {"cpu_per_stream": cpu / wall / streams, "delivered": sum(frames) / (streams * int(seconds * 50))}


async def send_rtp(seconds: float, ports: list[int]) -> None:
    """Child process: one real-time externalMedia-like sender per port."""
    from rtp_sender import RtpSender
    clip = read_recording(sorted(SAMPLES.glob("*.wav"))[0]).channels[0]
    pcm = np.tile(clip, math.ceil(seconds * PIPELINE_RATE / len(clip)))[:int(seconds * PIPELINE_RATE)]
    senders = [RtpSender(pcm.astype("<i2").tobytes(), (HOST, port), speed=1.0) for port in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.run() for s in senders))


# -------------------------------------------------------------------------- bus and store

def redis_cost(events: list[CallEvent], copies: int) -> float | None:
    """redis-server CPU seconds per XADD of these events (approximate MAXLEN, as the bus)."""
    if shutil.which("redis-server") is None:
        return None
    import psutil  # type: ignore[import-untyped]
    import redis
    from servers import running_redis
    with running_redis("bench-redis-") as server:
        assert server.proc is not None
        client = redis.Redis.from_url(server.url())
        process = psutil.Process(server.proc.pid)
        payloads = [wire_bytes_of(e) for e in events]
        before = sum(process.cpu_times()[:2])
        pipe = client.pipeline(transaction=False)
        for _ in range(copies):
            for payload in payloads:
                pipe.xadd("callassist:events", {b"e": payload}, maxlen=1_000_000, approximate=True)
            pipe.execute()
        used = sum(process.cpu_times()[:2]) - before
        client.close()
        return used / (copies * len(payloads))


def wire_bytes_of(event: CallEvent) -> bytes:
    try:
        from callassist.wire import encode
    except ImportError:
        return json.dumps(event_to_dict(event), ensure_ascii=False).encode()
    return encode(event)


def stored_events(events: list[CallEvent]) -> list[CallEvent]:
    """What the store writer records: the bus's events less the transient ones (live
    conversation measures, which only the screens follow)."""
    try:
        from callassist.events import TRANSIENT_EVENTS
    except ImportError:
        from callassist.events import ConversationUpdated
        TRANSIENT_EVENTS = (ConversationUpdated,)    # noqa: N806  # the name the newer module gives it
    return [e for e in events if not isinstance(e, TRANSIENT_EVENTS)]


def as_call(event: CallEvent, call_id: str) -> CallEvent:
    """The event as if another call had it: its call id, and card ids of its own."""
    data = event_to_dict(event)
    data["call_id"] = call_id
    if "card_id" in data:
        data["card_id"] = f"{data['card_id']}-{call_id}"
    if isinstance(data.get("card"), dict):
        data["card"] = {**data["card"], "card_id": f"{data['card']['card_id']}-{call_id}"}
    return event_from_dict(data)


def store_cost(config: Config, template: list[CallEvent], calls: int) -> dict[str, Any]:
    """record_many of `calls` copies of one call's stored events, STORE_BATCH per transaction."""
    from agent_ui.store import open_store
    template = stored_events(template)
    store = open_store(config)
    try:
        batches: list[list[CallEvent]] = []
        for n in range(calls):
            renamed = [as_call(e, f"store-{n}") for e in template]
            batches += [renamed[i:i + STORE_BATCH] for i in range(0, len(renamed), STORE_BATCH)]
        count = sum(len(b) for b in batches)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for batch in batches:
            store.events.record_many(batch)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        return {"engine": type(store).__name__, "events": count, "cpu_ms": 1000 * cpu / count,
                "wall_ms": 1000 * wall / count, "per_s": count / wall}
    finally:
        store.close()


@contextlib.contextmanager
def postgres(url: str | None):
    """The --postgres URL; "auto": a throwaway server (tests/servers.py), fresh database."""
    if url != "auto":
        yield url
        return
    from servers import postgres_bin_dir, running_postgres
    if postgres_bin_dir() is None:
        print("(no PostgreSQL server installed: --postgres auto skipped)")
        yield None
        return
    with running_postgres("bench-pg-") as server:
        yield server.fresh_url()


# -------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Costs:
    live_cpu: float                # CPU s per call second, worker (recognition, matching, recording)
    post_cpu: float                # CPU s per call second, post-call pass (once per call)
    rtp_cpu: float                 # CPU s per call second, two RTP streams
    worker_base_mb: float          # a worker with its models loaded, no call
    worker_call_mb: float          # per concurrent call
    events_per_s: float            # bus events per second of call
    bytes_per_s: float             # bus bytes per second of call
    store_cpu_ms: float            # writer CPU per event (the engine used for planning)
    store_per_s: float             # writer events per second, one writer
    redis_cpu_ms: float | None     # redis-server CPU per event

    @property
    def worker_cpu(self) -> float:
        return self.live_cpu + self.post_cpu + self.rtp_cpu


def capacity_rows(costs: Costs) -> list[dict[str, Any]]:
    rows = []
    for seats in SEATS:
        for seats_per_call in SEATS_PER_CALL:
            calls = math.ceil(seats / seats_per_call)
            cores = calls * costs.worker_cpu / HEADROOM
            workers = math.ceil(cores / CORES_PER_WORKER)
            per_worker = math.ceil(calls / workers)
            # The post-call pass need not keep pace: queued to off-peak hours, peak needs the live share only.
            live_cores = CORES_PER_WORKER * math.ceil(
                calls * (costs.live_cpu + costs.rtp_cpu) / HEADROOM / CORES_PER_WORKER)
            ram = costs.worker_base_mb + per_worker * costs.worker_call_mb
            events = calls * costs.events_per_s
            writer_share = events / costs.store_per_s
            rows.append({"seats": seats, "ratio": seats_per_call, "calls": calls, "per_worker": per_worker,
                         "workers": workers, "worker_cores": workers * CORES_PER_WORKER, "ram_mb": ram,
                         "live_cores": live_cores,
                         "worker_ram_gb": workers * ram / 1024, "events": events,
                         "mbit": calls * costs.bytes_per_s * 8 / 1e6, "writer": writer_share,
                         "redis": events * (costs.redis_cpu_ms or 0.0) / 1000,
                         "web_nodes": 2 if seats < 1000 else 3, "ari": 2 if calls > 300 else 1})
    return rows


def print_table(costs: Costs, call_minutes: float) -> None:
    print(f"\nCapacity (assumption: at peak 1 concurrent call per {SEATS_PER_CALL[0]:g} to "
          f"{SEATS_PER_CALL[1]:g} seats; worker cores planned at {HEADROOM:.0%} busy; a worker process per "
          f"{CORES_PER_WORKER} cores; {costs.worker_cpu:.3f} CPU s per call second = live {costs.live_cpu:.3f} "
          f"+ post-call {costs.post_cpu:.3f} + RTP {costs.rtp_cpu:.4f})")
    print(f"{'seats':>6} {'seats/call':>10} {'calls':>6} {'workers':>7} {'calls/w':>7} {'w.cores':>7} {'live only':>9} {'w.RAM GB':>8} "
          f"{'events/s':>8} {'bus Mbit/s':>10} {'writer busy':>11} {'redis cores':>11} {'web':>4} {'ari':>4}")
    for r in capacity_rows(costs):
        print(f"{r['seats']:>6} {r['ratio']:>10g} {r['calls']:>6} {r['workers']:>7} {r['per_worker']:>7} "
              f"{r['worker_cores']:>7} {r['live_cores']:>9} {r['worker_ram_gb']:>8.1f} {r['events']:>8.0f} {r['mbit']:>10.2f} "
              f"{r['writer']:>11.1%} {r['redis']:>11.3f} {r['web_nodes']:>4} {r['ari']:>4}")
    recording_mb_h = 2 * PIPELINE_RATE * 2 * 3600 / 1e6
    print("  live only: worker cores when the post-call pass is left to catch up off-peak (it is a queue); "
          "web, ari: rules of thumb, not measured here (two web nodes for a node's failure).")
    print(f"  workers: processes of {CORES_PER_WORKER} cores, {costs.worker_base_mb:.0f} MB models and runtime "
          f"+ {costs.worker_call_mb:.0f} MB per call; "
          f"ARI controllers: 1 core / 1 GB per Asterisk (a second as standby); web: 2 cores / 2 GB each, "
          f"the leader also writes the store (writer busy = share of one writer's measured throughput); "
          f"Redis and PostgreSQL: 2 cores / 4 GB each at these sizes.")
    print(f"  storage: recordings {recording_mb_h:.0f} MB per call hour (WAV 16 kHz stereo; FLAC about half); "
          f"events {costs.bytes_per_s * 60 * call_minutes / 1e3:.0f} kB per {call_minutes:g}-minute call on the bus.")


# -------------------------------------------------------------------------- main

async def measure(args: argparse.Namespace) -> None:
    from asr import create_engine
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    logging.basicConfig(level=logging.WARNING)
    base = load_config(env={})
    config = dataclasses.replace(base, asr=dataclasses.replace(base.asr, engine="whisper"))
    print(f"cores: {os.cpu_count()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"engine whisper ({config.asr.whisper_compute_type}, {config.asr.decode_threads} decode threads)")
    rss0 = rss_mb()
    engine = create_engine(config)
    matcher = Matcher.from_config(load_playbook(), config.matcher)
    out = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    try:
        # Warm up (first decode allocates), then the demo call: the events a real call produces.
        from callassist.demo import DEMO_SCRIPT, demo_call_audio
        await play_calls(config, engine, matcher, [conversation(6, 0)], out, "warmup")
        demo = await play_calls(config, engine, matcher, [demo_call_audio()], out, "demo")
        demo_events = demo.events[0]
        kinds = Counter(type(e).__name__ for e in demo_events)
        minutes = demo.seconds / 60
        event_bytes = sum(wire_bytes(e) for e in demo_events)
        print(f"\n1. bus: the demo call ({DEMO_SCRIPT.id}, {demo.seconds:.0f} s): {len(demo_events)} events, "
              f"{event_bytes / 1e3:.1f} kB on the wire = {len(demo_events) / minutes:.0f} events and "
              f"{event_bytes / minutes / 1e3:.1f} kB per call minute")
        print("   " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
        worker_rss = rss_mb()

        played = await play_calls(config, engine, matcher,
                                  [conversation(args.seconds, 3 * i) for i in range(args.calls)], out, "call")
        sample_events = sum(len(e) for e in played.events)
        sample_bytes = sum(wire_bytes(e) for call in played.events for e in call)
        print(f"\n2. worker, live: {played.calls} concurrent calls x {played.seconds:.0f} s: "
              f"{played.cpu_per_call_s:.3f} CPU s per call second ({100 * played.cpu_per_call_s:.1f} % of a core "
              f"per call); decoding behind: {played.behind} fault(s); RSS {rss0:.0f} MB bare, "
              f"{worker_rss:.0f} MB with models, {played.rss_after:.0f} MB after the calls")
        print(f"   the same calls on the bus: {sample_events / (played.calls * played.seconds / 60):.0f} events and "
              f"{sample_bytes / (played.calls * played.seconds / 60) / 1e3:.1f} kB per call minute")
        post = await post_call_cost(engine, matcher, played.recordings[0])
        print(f"\n3. worker, post-call pass: {post:.3f} CPU s per call second")
        rtp = await rtp_cost(args.streams, args.rtp_seconds)
        print(f"\n4. worker, RTP: {args.streams} real-time streams for {args.rtp_seconds:.0f} s: "
              f"{1000 * rtp['cpu_per_stream']:.1f} ms CPU per stream second ({rtp['delivered']:.1%} of frames "
              f"delivered); a call is two streams")

        copies = max(1, 20_000 // max(1, len(demo_events)))
        redis_cpu = redis_cost(demo_events, copies)
        if redis_cpu is not None:
            print(f"\n5. bus, redis-server: {1e6 * redis_cpu:.1f} us CPU per XADD ({copies * len(demo_events)} events)")

        print(f"\n6. store writer, {args.store_calls} demo calls' events ({len(stored_events(demo_events))} stored "
              f"of {len(demo_events)} per call) in batches of {STORE_BATCH}:")
        sqlite_dir = out / "sqlite"
        sqlite = store_cost(dataclasses.replace(config, storage=dataclasses.replace(
            config.storage, data_dir=str(sqlite_dir), database_url="")), demo_events, args.store_calls)
        results = [("SQLite", sqlite)]
        with postgres(args.postgres) as url:
            if url:
                pg = store_cost(dataclasses.replace(config, storage=dataclasses.replace(
                    config.storage, data_dir=str(out / "pg"), database_url=url)), demo_events, args.store_calls)
                results.append(("PostgreSQL", pg))
        for name, r in results:
            print(f"   {name:<10} ({r['engine']}): {r['cpu_ms']:.3f} ms CPU, {r['wall_ms']:.3f} ms wall per event "
                  f"= {r['per_s']:,.0f} events/s for one writer")
        planning = results[-1][1]

        # Events per call second: the demo call is dense (a complaint escalating in 30 s);
        # the turn-taking sample calls are closer to an ordinary call's density.
        events_per_s = max(len(demo_events) / demo.seconds, sample_events / (played.calls * played.seconds))
        bytes_per_s = max(event_bytes / demo.seconds, sample_bytes / (played.calls * played.seconds))
        costs = Costs(live_cpu=played.cpu_per_call_s, post_cpu=post, rtp_cpu=2 * rtp["cpu_per_stream"],
                      worker_base_mb=worker_rss, worker_call_mb=max(0.0, (played.rss_after - worker_rss) / played.calls),
                      events_per_s=events_per_s, bytes_per_s=bytes_per_s, store_cpu_ms=planning["cpu_ms"],
                      store_per_s=planning["per_s"], redis_cpu_ms=None if redis_cpu is None else 1000 * redis_cpu)
        print_table(costs, args.call_minutes)
    finally:
        engine.close()
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2, help="concurrent calls on the worker (default 2)")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each call (default 40)")
    parser.add_argument("--streams", type=int, default=20, help="RTP streams (default 20)")
    parser.add_argument("--rtp-seconds", type=float, default=10.0)
    parser.add_argument("--store-calls", type=int, default=200, help="calls' events the store records (default 200)")
    parser.add_argument("--postgres", help="postgresql://... to measure, or auto (a throwaway server)")
    parser.add_argument("--call-minutes", type=float, default=5.0, help="average call length, for sizes (default 5)")
    parser.add_argument("--send-rtp", type=float, help=argparse.SUPPRESS)
    parser.add_argument("ports", type=int, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.send_rtp:
        asyncio.run(send_rtp(args.send_rtp, args.ports))
        return 0
    started = time.perf_counter()
    asyncio.run(measure(args))
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
