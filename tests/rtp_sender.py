"""A real-time RTP sender that behaves like Asterisk's externalMedia channel, for tests.

Sends mono audio as slin16 (payload type 118, 640-byte big-endian payloads, timestamp
+320) or slin (type 10, 8 kHz, 320 bytes), one packet every 20 ms scheduled on the
event loop's clock (packet i is due at start + i * 20 ms, so pacing never drifts),
from a random SSRC, sequence number and timestamp. Impairments for the receiver's
tests: loss, reordering (a packet swapped with the next), duplicates (sent twice),
chosen by packet index or at random with a seed, and stopping mid-way.

    sender = RtpSender.from_file("call.wav", ("127.0.0.1", port), loss=0.01, seed=1)
    stats = await sender.run()

Also a command: python tests/rtp_sender.py FILE HOST:PORT [--speed 1] [--loss 0.01] ...
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:                    # run as a script or from benchmarks/
    sys.path.insert(0, str(ROOT))

from ari_app.rtp import FORMATS, PT_SLIN16, build_rtp  # noqa: E402
from callassist.audio import read_recording, resample, to_int16  # noqa: E402

FRAME_TIME = 0.020


@dataclass
class SenderStats:
    packets: int = 0                  # 20 ms packets in the audio
    sent: int = 0                     # datagrams sent, duplicates included
    dropped: list[int] = field(default_factory=list)      # packet indexes never sent
    duplicated: list[int] = field(default_factory=list)
    swapped: list[int] = field(default_factory=list)      # i: packet i sent after i + 1
    stopped_at: int | None = None     # packet index where sending stopped early
    ssrc: int = 0
    first_sequence: int = 0
    first_timestamp: int = 0
    max_lateness: float = 0.0         # worst delay of a send behind its schedule, seconds


class RtpSender:
    def __init__(self, pcm: bytes, target: tuple[str, int], *, payload_type: int = PT_SLIN16,
                 speed: float = 1.0, ssrc: int | None = None, sequence: int | None = None,
                 timestamp: int | None = None, drop: Collection[int] = (),
                 swap: Collection[int] = (), duplicate: Collection[int] = (),
                 loss: float = 0.0, reorder: float = 0.0, duplicates: float = 0.0,
                 stop_after: int | None = None, seed: int | None = None,
                 local_addr: tuple[str, int] | None = None) -> None:
        """`pcm`: 16 kHz 16-bit little-endian mono. `speed`: 1 = real time, 10 = ten times
        faster, 0 = as fast as possible. `drop`/`swap`/`duplicate`: packet indexes;
        `loss`/`reorder`/`duplicates`: probabilities per packet (with `seed`).
        `stop_after`: send only that many packets' slots, then stop."""
        if payload_type not in FORMATS:
            raise ValueError(f"payload type {payload_type} not supported")
        rng = random.Random(seed)
        self.target = target
        self.payload_type = payload_type
        self.speed = speed
        self.local_addr = local_addr
        self.stop_after = stop_after
        self.stats = SenderStats(ssrc=rng.getrandbits(32) if ssrc is None else ssrc,
                                 first_sequence=rng.getrandbits(16) if sequence is None else sequence,
                                 first_timestamp=rng.getrandbits(32) if timestamp is None else timestamp)
        self.payloads = self._payloads(pcm, FORMATS[payload_type].sample_rate)
        count = len(self.payloads)
        self.stats.packets = count
        self._drop = set(drop) | {i for i in range(count) if loss and rng.random() < loss}
        self._dup = set(duplicate) | {i for i in range(count) if duplicates and rng.random() < duplicates}
        swaps = set(swap) | {i for i in range(count - 1) if reorder and rng.random() < reorder}
        self._swap = {i for i in sorted(swaps) if i + 1 < count and i - 1 not in swaps}
        self._stop = asyncio.Event()

    @classmethod
    def from_file(cls, path: str | Path, target: tuple[str, int], *, raw_rate: int = 16000,
                  **kwargs) -> RtpSender:
        return cls(pcm_from_file(path, raw_rate), target, **kwargs)

    def packet(self, index: int, marker: bool = False) -> bytes:
        """The RTP packet for the index-th 20 ms of audio."""
        s = self.stats
        samples = len(self.payloads[index]) // 2
        return build_rtp(self.payloads[index], sequence=s.first_sequence + index,
                         timestamp=s.first_timestamp + index * samples, ssrc=s.ssrc,
                         payload_type=self.payload_type, marker=marker)

    def plan(self) -> list[tuple[int, int]]:
        """(slot, packet index) in sending order, impairments applied."""
        order: list[tuple[int, int]] = []
        count = len(self.payloads)
        slot = 0
        while slot < count:
            if slot in self._swap:
                pair = [(slot, slot + 1), (slot + 1, slot)]
                slot += 2
            else:
                pair = [(slot, slot)]
                slot += 1
            for at, index in pair:
                if index in self._drop:
                    continue
                order.append((at, index))
                if index in self._dup:
                    order.append((at, index))
        return order

    def stop(self) -> None:
        """Stop sending (from another task), as a hung-up or broken channel would."""
        self._stop.set()

    async def run(self) -> SenderStats:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=self.target, local_addr=self.local_addr)
        s = self.stats
        s.dropped = sorted(self._drop)
        s.duplicated = sorted(self._dup - self._drop)
        s.swapped = sorted(self._swap)
        try:
            start = loop.time()
            interval = FRAME_TIME / self.speed if self.speed > 0 else 0.0
            for n, (slot, index) in enumerate(self.plan()):
                if self.stop_after is not None and slot >= self.stop_after or self._stop.is_set():
                    s.stopped_at = slot
                    break
                if interval:
                    due = start + slot * interval
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    s.max_lateness = max(s.max_lateness, loop.time() - due)
                elif n % 50 == 49:
                    await asyncio.sleep(0)              # let the receiver run
                transport.sendto(self.packet(index, marker=index == 0))
                s.sent += 1
        finally:
            transport.close()
        return s

    @staticmethod
    def _payloads(pcm: bytes, rate: int) -> list[bytes]:
        samples = np.frombuffer(pcm[:len(pcm) - len(pcm) % 2], dtype="<i2")
        if rate != 16000:
            samples = to_int16(resample(samples.astype(np.float32) / 32768.0, 16000, rate))
        per = rate // 50
        padded = np.zeros(-(-len(samples) // per) * per, dtype=">i2")
        padded[:len(samples)] = samples
        data = padded.tobytes()
        return [data[i:i + 2 * per] for i in range(0, len(data), 2 * per)]


def pcm_from_file(path: str | Path, raw_rate: int = 16000) -> bytes:
    """16 kHz 16-bit little-endian mono from a recording (first channel), or from raw
    16-bit little-endian .pcm/.raw at `raw_rate`."""
    path = Path(path)
    if path.suffix.lower() in (".pcm", ".raw", ".sln", ".slin"):
        samples = np.fromfile(path, dtype="<i2")
        if raw_rate != 16000:
            samples = to_int16(resample(samples.astype(np.float32) / 32768.0, raw_rate, 16000))
        return samples.astype("<i2").tobytes()
    return read_recording(path, 16000).channels[0].astype("<i2").tobytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("--payload-type", type=int, default=PT_SLIN16, choices=sorted(FORMATS))
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0)
    parser.add_argument("--duplicates", type=float, default=0.0)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    sender = RtpSender.from_file(args.file, (host, int(port)), payload_type=args.payload_type,
                                 speed=args.speed, loss=args.loss, reorder=args.reorder,
                                 duplicates=args.duplicates, stop_after=args.stop_after,
                                 seed=args.seed)
    print(asyncio.run(sender.run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
