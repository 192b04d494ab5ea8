"""How much RTP one process can receive: prints numbers, asserts nothing.

1. CPU-bound: packets per second through one RtpStream (parse, lock checks, reorder
   buffer, byte swap, 20 ms framing, queue, consumer), packets fed straight in.
2. Real time: N concurrent streams (PortPool, one consumer task each) fed over UDP by
   tests/rtp_sender.py in a subprocess at real-time pacing; CPU % of one core for the
   receiving process and the sending one, and what arrived.

    nice python benchmarks/bench_rtp.py [--streams 20 50 100] [--seconds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ari_app.ports import PortPool  # noqa: E402
from ari_app.rtp import RtpStream, build_rtp, parse_rtp  # noqa: E402
from rtp_sender import RtpSender  # noqa: E402

HOST = "127.0.0.1"
SAMPLE = ROOT.parent / "shared" / "audio" / "mandarin-samples" / "01_aishell1_BAC009S0764W0121.wav"


def speech(seconds: float) -> bytes:
    """Real speech if the shared sample is there (else a tone), looped to `seconds`."""
    if SAMPLE.exists():
        from callassist.audio import read_recording
        one = read_recording(SAMPLE).channels[0]
    else:
        one = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype(np.int16)
    reps = int(np.ceil(seconds * 16000 / len(one)))
    return np.tile(one, reps)[:int(seconds * 16000)].astype("<i2").tobytes()


async def cpu_bound(packets: int = 100_000, reorder_every: int = 0) -> float:
    stream = await RtpStream.bind(HOST, 0, jitter_ms=60, max_queued=10**9)
    payload = np.arange(320, dtype=">i2").tobytes()
    data = [build_rtp(payload, sequence=i, timestamp=i * 320, ssrc=7) for i in range(packets)]
    if reorder_every:
        for i in range(0, packets - 1, reorder_every):
            data[i], data[i + 1] = data[i + 1], data[i]
    addr = (HOST, 40000)
    consumed = 0

    async def consume() -> None:
        nonlocal consumed
        async for _ in stream.frames():
            consumed += 1
    consumer = asyncio.create_task(consume())
    start = time.perf_counter()
    for i in range(0, packets, 500):
        for packet in data[i:i + 500]:
            stream.datagram_received(packet, addr)
        await asyncio.sleep(0)                         # the consumer drains the queue
    while consumed < stream.stats.delivered:
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    await consumer
    return packets / elapsed


def parse_rate(packets: int = 200_000) -> float:
    packet = build_rtp(bytes(640), sequence=1, timestamp=1, ssrc=1)
    start = time.perf_counter()
    for _ in range(packets):
        parse_rtp(packet)
    return packets / (time.perf_counter() - start)


async def real_time(count: int, seconds: float) -> dict[str, float]:
    pool = PortPool(HOST, 41000, 41000 + 2 * count + 50, jitter_ms=60, stall_timeout=5.0)
    streams = [await pool.open_stream(name=f"bench{i}") for i in range(count)]
    received = [0] * count

    async def consume(i: int, stream: RtpStream) -> None:
        async for _ in stream.frames():
            received[i] += 1
    consumers = [asyncio.create_task(consume(i, s)) for i, s in enumerate(streams)]
    sender = subprocess.Popen([sys.executable, __file__, "--send", str(seconds),
                               *(str(s.port) for s in streams)],
                              stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None
    loop = asyncio.get_running_loop()
    ready = await loop.run_in_executor(None, sender.stdout.readline)
    assert ready.strip() == "ready", ready
    cpu0, wall0 = time.process_time(), time.perf_counter()
    lag, tick = 0.0, loop.time()
    while sender.poll() is None:                        # event-loop lag while receiving
        await asyncio.sleep(0.05)
        now = loop.time()
        lag = max(lag, now - tick - 0.05)
        tick = now
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sender_report = sender.stdout.read().split()
    await asyncio.sleep(0.2)                            # the last packets' reorder window
    stats = [s.stats for s in streams]
    await pool.close_all()
    await asyncio.gather(*consumers)
    expected = count * int(seconds * 50)
    return {"streams": count, "recv_cpu": 100 * cpu / wall, "send_cpu": float(sender_report[0]),
            "send_late_ms": float(sender_report[1]), "loop_lag_ms": 1000 * lag,
            "delivered_pct": 100 * sum(received) / expected,
            "lost_filled": sum(s.lost_filled for s in stats), "late": sum(s.late for s in stats),
            "reordered": sum(s.reordered for s in stats), "overflow": sum(s.overflow for s in stats)}


async def send(seconds: float, ports: list[int]) -> None:
    """Subprocess side: one real-time sender per port; prints its CPU % and worst lateness."""
    pcm = speech(seconds)
    senders = [RtpSender(pcm, (HOST, port), speed=1.0) for port in ports]
    print("ready", flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(s.run() for s in senders))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"{100 * cpu / wall:.1f} {1000 * max(r.max_lateness for r in results):.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="*", default=[20, 50, 100])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--send", type=float, help=argparse.SUPPRESS)
    parser.add_argument("ports", type=int, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        asyncio.run(send(args.send, args.ports))
        return 0
    print(f"cores: {os.cpu_count()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"parse_rtp alone:                 {parse_rate():>10,.0f} packets/s")
    print(f"one RtpStream, in order:         {asyncio.run(cpu_bound()):>10,.0f} packets/s")
    print(f"one RtpStream, 1 in 10 swapped:  {asyncio.run(cpu_bound(reorder_every=10)):>10,.0f} packets/s")
    print("  (a real-time stream is 50 packets/s)")
    print(f"\nreal time, {args.seconds:.0f} s each, receiver and sender in separate processes:")
    print(f"{'streams':>7} {'recv CPU%':>9} {'send CPU%':>9} {'send late ms':>12} {'loop lag ms':>11} "
          f"{'delivered%':>10} {'lost':>5} {'late':>5} {'reord':>5} {'overflow':>8}")
    for count in args.streams:
        r = asyncio.run(real_time(count, args.seconds))
        print(f"{r['streams']:>7} {r['recv_cpu']:>9.1f} {r['send_cpu']:>9.1f} {r['send_late_ms']:>12.1f} "
              f"{r['loop_lag_ms']:>11.1f} {r['delivered_pct']:>10.2f} {r['lost_filled']:>5} "
              f"{r['late']:>5} {r['reordered']:>5} {r['overflow']:>8}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
