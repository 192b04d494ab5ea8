"""Receiving one leg's audio from an Asterisk externalMedia channel over RTP.

Asterisk sends `slin16` as RTP payload type 118: 640 bytes of big-endian 16-bit
samples every 20 ms (timestamp +320). `RtpStream` is one UDP port for one leg:

- it locks to the first sender (address and SSRC) whose packet is valid and of the
  expected payload type; everything else arriving on the port is dropped and counted
  (a stale call still sending to a reused port, a scanner, RTCP, DTMF events);
- the locked sender may change its SSRC (Asterisk does on a bridge/source change,
  keeping the sequence numbers going): a new SSRC from the locked address is adopted
  when its packet carries the marker bit or after three packets in sequence;
- a small reorder buffer (ari_app.jitter) puts packets back in order, drops duplicates
  and late packets, and fills lost packets with silence so the leg's clock stays true;
- audio is converted to little-endian and handed out in 20 ms frames of 640 bytes
  through `frames()`, an async iterator (one consumer) that ends when the stream closes;
- no valid packet for `stall_timeout` seconds makes the stream `stalled` (observable
  with `wait_stalled()`/`wait_flowing()`; the iterator just waits), so the call manager
  can report a fault and keep the call.
"""
from __future__ import annotations

import array
import asyncio
import logging
import socket
import struct
import weakref
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import soxr

from ari_app.jitter import JitterBuffer

log = logging.getLogger(__name__)

RTP_VERSION = 2
HEADER_LEN = 12
PT_SLIN16 = 118          # what Asterisk uses for slin16 on externalMedia
PT_SLIN8 = 10            # 8 kHz slin (RFC 3551 L16 number, Asterisk's choice too)
OUTPUT_RATE = 16000
FRAME_BYTES = OUTPUT_RATE // 50 * 2       # 20 ms at 16 kHz, 16-bit: 640
SSRC_SWITCH_PACKETS = 3                   # in-sequence packets that adopt a new SSRC
RECEIVE_BUFFER = 1 << 20                  # kernel socket buffer: rides out event-loop pauses

_HEADER = struct.Struct("!BBHII")

StreamState = Literal["waiting", "flowing", "stalled", "closed"]


class MalformedPacket(ValueError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class RtpPacket:
    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    csrcs: tuple[int, ...] = ()


def parse_rtp(packet: bytes) -> RtpPacket:
    """RFC 3550 header; skips CSRCs and the header extension, strips padding."""
    size = len(packet)
    if size < HEADER_LEN:
        raise MalformedPacket(f"too short for an RTP header: {size} bytes")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    version = first >> 6
    if version != RTP_VERSION:
        raise MalformedPacket(f"RTP version {version}, expected 2")
    padding, extension, csrc_count = bool(first & 0x20), bool(first & 0x10), first & 0x0F
    start = HEADER_LEN + 4 * csrc_count
    if start > size:
        raise MalformedPacket(f"{csrc_count} CSRCs need {start} bytes, packet has {size}")
    csrcs = struct.unpack_from(f"!{csrc_count}I", packet, HEADER_LEN) if csrc_count else ()
    if extension:
        if start + 4 > size:
            raise MalformedPacket("header extension flag set but no extension header")
        words = struct.unpack_from("!H", packet, start + 2)[0]
        start += 4 + 4 * words
        if start > size:
            raise MalformedPacket(f"header extension of {words} words runs past the packet end")
    end = size
    if padding:
        pad = packet[-1]
        if pad == 0 or start + pad > size:
            raise MalformedPacket(f"bad padding length {pad} (payload has {size - start} bytes)")
        end -= pad
    return RtpPacket(version, padding, extension, csrc_count, bool(second & 0x80), second & 0x7F,
                     sequence, timestamp, ssrc, packet[start:end], tuple(csrcs))


def build_rtp(payload: bytes, *, sequence: int, timestamp: int, ssrc: int,
              payload_type: int = PT_SLIN16, marker: bool = False) -> bytes:
    """A plain RTP packet (no CSRC, extension or padding), as Asterisk sends them."""
    return _HEADER.pack(RTP_VERSION << 6, (0x80 if marker else 0) | payload_type,
                        sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF) + payload


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    payload_type: int
    sample_rate: int
    name: str


FORMATS = {PT_SLIN16: PayloadFormat(PT_SLIN16, 16000, "slin16"),
           PT_SLIN8: PayloadFormat(PT_SLIN8, 8000, "slin")}


@dataclass(frozen=True, slots=True)
class RtpStats:
    received: int = 0        # datagrams that reached the port
    accepted: int = 0        # packets of the locked stream taken into the reorder buffer
    delivered: int = 0       # 640-byte frames handed to the consumer
    malformed: int = 0       # not RTP, or an empty/odd-length payload
    foreign: int = 0         # another address, or another SSRC that was not adopted
    wrong_type: int = 0      # the locked sender's packets of another payload type
    duplicates: int = 0
    late: int = 0            # came after their slot was filled with silence
    reordered: int = 0       # came out of order but in time, delivered in order
    lost_filled: int = 0     # packets that never came, replaced by silence
    resyncs: int = 0         # the sequence numbering restarted
    ssrc_changes: int = 0    # new SSRC adopted from the locked address
    overflow: int = 0        # frames dropped because the consumer fell behind
    stalls: int = 0          # times the stream went quiet for stall_timeout


class RtpTotals:
    """The counters of every stream this process opened, open or closed (for /metrics):
    the open streams are summed when asked, a closed one's counts are kept once."""

    def __init__(self) -> None:
        self._open: weakref.WeakSet[RtpStream] = weakref.WeakSet()
        self._closed = dict.fromkeys((f.name for f in fields(RtpStats)), 0)

    def track(self, stream: RtpStream) -> None:
        self._open.add(stream)

    def retire(self, stream: RtpStream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            for name, value in _stats_items(stream.stats):
                self._closed[name] += value

    def snapshot(self) -> RtpStats:
        counts = dict(self._closed)
        for stream in list(self._open):
            for name, value in _stats_items(stream.stats):
                counts[name] += value
        return RtpStats(**counts)


def _stats_items(stats: RtpStats) -> list[tuple[str, int]]:
    return [(f.name, getattr(stats, f.name)) for f in fields(RtpStats)]


RTP_TOTALS = RtpTotals()


class RtpStream(asyncio.DatagramProtocol):
    """One leg's externalMedia RTP port. Create with `await RtpStream.bind(host, port)`
    (or through ari_app.ports.PortPool); read with `async for pcm in stream.frames()`."""

    def __init__(self, *, payload_type: int = PT_SLIN16, jitter_ms: float = 60,
                 stall_timeout: float = 5.0, allowed_hosts: Collection[str] | None = None,
                 max_queued: int = 500, name: str = "") -> None:
        if payload_type not in FORMATS:
            raise ValueError(f"payload type {payload_type} not supported "
                             f"(known: {', '.join(f'{k} {v.name}' for k, v in FORMATS.items())})")
        self.format = FORMATS[payload_type]
        self.name = name
        self.stall_timeout = stall_timeout
        self.max_queued = max_queued
        self._allowed_hosts = frozenset(allowed_hosts) if allowed_hosts is not None else None
        self._expected_source: tuple[str, int | None] | None = None
        self._jitter = JitterBuffer(jitter_ms / 1000.0)
        self._resampler = (soxr.ResampleStream(self.format.sample_rate, OUTPUT_RATE, 1, dtype="int16")
                           if self.format.sample_rate != OUTPUT_RATE else None)
        self._counts = dict.fromkeys(("received", "accepted", "delivered", "malformed", "foreign",
                                      "wrong_type", "ssrc_changes", "overflow", "stalls"), 0)
        self._warned: set[str] = set()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pending = bytearray()               # converted audio not yet a whole frame
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.source: tuple[str, int] | None = None     # locked sender address
        self.ssrc: int | None = None                   # locked SSRC
        self._ssrc_candidates: list[RtpPacket] = []
        self._state: StreamState = "waiting"
        self._last_packet = 0.0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._jitter_timer: asyncio.TimerHandle | None = None
        self._stalled_event = asyncio.Event()
        self._flowing_event = asyncio.Event()
        self._close_callbacks: list[Callable[[RtpStream], None]] = []
        self._socket_closed = asyncio.Event()
        RTP_TOTALS.track(self)

    # -- opening and closing ------------------------------------------------------------

    @classmethod
    async def bind(cls, host: str, port: int, **kwargs) -> RtpStream:
        """Bind a UDP socket on (host, port) (port 0: any free port); raises OSError."""
        loop = asyncio.get_running_loop()
        stream = cls(**kwargs)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: stream, sock=sock)
        return stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram transport
        self._loop = asyncio.get_running_loop()
        self.port = transport.get_extra_info("sockname")[1]
        self._last_packet = self._loop.time()       # a stream that never starts stalls too
        self._arm_stall_timer()

    def add_close_callback(self, callback: Callable[[RtpStream], None]) -> None:
        """Called once when the stream's socket is closed (PortPool returns the port this way)."""
        if self._state == "closed" and self._transport is None:
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def close(self) -> None:
        """Release the socket and end `frames()` (after what is already queued). Idempotent."""
        if self._state == "closed":
            return
        self._deliver(self._jitter.flush())          # packets held behind a gap still count
        self._state = "closed"
        RTP_TOTALS.retire(self)
        stats = self.stats
        if stats.lost_filled or stats.late or stats.overflow:
            log.info("RTP %s: closed after %d packet(s): %d lost (filled with silence), %d late, "
                     "%d frame(s) dropped on overflow", self._label, stats.received, stats.lost_filled,
                     stats.late, stats.overflow)
        for timer in (self._stall_timer, self._jitter_timer):
            if timer:
                timer.cancel()
        self._queue.put_nowait(None)
        self._stalled_event.set()
        self._flowing_event.set()
        if self._transport is not None:
            self._transport.close()        # the socket closes on the next loop iteration
        else:
            self._run_close_callbacks()

    async def aclose(self) -> None:
        """close(), then wait until the socket is really closed and its port free."""
        self.close()
        await self._socket_closed.wait()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("RTP %s: socket lost: %s", self._label, exc)
        self.close()
        self._transport = None
        self._run_close_callbacks()        # the port is really free now

    def _run_close_callbacks(self) -> None:
        self._socket_closed.set()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("RTP %s: close callback failed", self._label)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP %s: socket error ignored: %s", self._label, exc)

    # -- what the consumer sees -----------------------------------------------------------

    async def frames(self) -> AsyncIterator[bytes]:
        """20 ms frames of 16 kHz 16-bit little-endian mono, in order, lost packets as
        silence; ends when the stream is closed. One consumer per stream."""
        while True:
            frame = await self._queue.get()
            if frame is None:
                self._queue.put_nowait(None)      # a second iteration ends at once too
                return
            yield frame

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stalled(self) -> bool:
        return self._state == "stalled"

    @property
    def quiet_for(self) -> float:
        """Seconds since the last packet (since the stream opened, before the first one)."""
        loop = self._loop
        return 0.0 if loop is None else loop.time() - self._last_packet

    async def wait_stalled(self) -> bool:
        """Return True when no packet came for stall_timeout; False if the stream closed."""
        await self._stalled_event.wait()
        return self._state == "stalled"

    async def wait_flowing(self) -> bool:
        """Return True once packets arrive (first ones, or after a stall); False if closed."""
        await self._flowing_event.wait()
        return self._state == "flowing"

    @property
    def stats(self) -> RtpStats:
        j = self._jitter.counters
        return RtpStats(**self._counts, duplicates=j.duplicates, late=j.late, reordered=j.reordered,
                        lost_filled=j.lost_filled, resyncs=j.resyncs)

    def restrict_source(self, host: str, port: int | None = None) -> None:
        """Accept only this sender (e.g. the externalMedia channel's UNICASTRTP_LOCAL_ADDRESS/
        PORT once known). A lock already taken on another sender is released."""
        self._expected_source = (host, port)
        if self.source is not None and not self._source_expected(self.source):
            log.warning("RTP %s: dropping lock on %s:%s, expecting %s:%s",
                        self._label, *self.source, host, port or "*")
            self.source = self.ssrc = None
            self._ssrc_candidates.clear()
            self._deliver(self._jitter.reset())

    # -- packet path ----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        counts = self._counts
        counts["received"] += 1
        if self._state == "closed":
            return
        addr = addr[:2]
        if self.source is not None:
            if addr != self.source:
                self._drop("foreign", "packets from %s:%s, locked to %s:%s", *addr, *self.source)
                return
        elif not self._source_expected(addr):
            self._drop("foreign", "packets from %s:%s, not an expected sender", *addr)
            return
        try:
            packet = parse_rtp(data)
        except MalformedPacket as exc:
            self._drop("malformed", "malformed packet from %s:%s: %s", *addr, exc.reason)
            return
        if packet.payload_type != self.format.payload_type:
            self._drop("wrong_type", "payload type %d, expected %d (%s)", packet.payload_type,
                       self.format.payload_type, self.format.name)
            return
        if not packet.payload or len(packet.payload) % 2:
            self._drop("malformed", "payload of %d bytes is not 16-bit audio", len(packet.payload))
            return
        if self.source is None:
            self.source, self.ssrc = addr, packet.ssrc
            log.info("RTP %s: locked to %s:%s ssrc %08x", self._label, *addr, packet.ssrc)
        elif packet.ssrc != self.ssrc:
            self._other_ssrc(packet)
            return
        elif self._ssrc_candidates:
            self._drop_candidates()
        self._accept(packet)

    def _accept(self, packet: RtpPacket) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._counts["accepted"] += 1
        self._last_packet = now
        if self._state != "flowing":
            self._state = "flowing"
            self._stalled_event.clear()
            self._flowing_event.set()
            self._arm_stall_timer()
        self._deliver(self._jitter.push(packet.sequence, packet.payload, now))
        self._arm_jitter_timer()

    def _other_ssrc(self, packet: RtpPacket) -> None:
        """A new SSRC from the locked address: Asterisk's source change, or a stray."""
        last = self._ssrc_candidates[-1] if self._ssrc_candidates else None
        if last and (last.ssrc != packet.ssrc or packet.sequence != (last.sequence + 1) & 0xFFFF):
            self._drop_candidates()
        candidates = self._ssrc_candidates
        candidates.append(packet)
        if not packet.marker and len(candidates) < SSRC_SWITCH_PACKETS:
            return
        log.info("RTP %s: ssrc %08x -> %08x", self._label, self.ssrc or 0, packet.ssrc)
        self.ssrc = packet.ssrc
        self._counts["ssrc_changes"] += 1
        self._deliver(self._jitter.reset())
        self._ssrc_candidates = []
        for adopted in candidates:
            self._accept(adopted)

    def _drop_candidates(self) -> None:
        self._counts["foreign"] += len(self._ssrc_candidates)
        self._ssrc_candidates = []

    def _deliver(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        pcm = array.array("h", payloads[0] if len(payloads) == 1 else b"".join(payloads))
        pcm.byteswap()                                      # network (big-endian) -> little
        if self._resampler is not None:
            data = self._resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes()
        else:
            data = pcm.tobytes()
        pending = self._pending
        if not pending and len(data) == FRAME_BYTES:        # the usual case: one whole frame
            self._emit(data)
            return
        pending += data
        taken = 0
        while len(pending) - taken >= FRAME_BYTES:
            self._emit(bytes(pending[taken:taken + FRAME_BYTES]))
            taken += FRAME_BYTES
        if taken:
            del pending[:taken]

    def _emit(self, frame: bytes) -> None:
        queue = self._queue
        if queue.qsize() >= self.max_queued:                # consumer behind: drop the oldest
            queue.get_nowait()
            self._counts["overflow"] += 1
            self._counts["delivered"] -= 1
        queue.put_nowait(frame)
        self._counts["delivered"] += 1

    # -- timers ---------------------------------------------------------------------------

    def _arm_jitter_timer(self) -> None:
        deadline = self._jitter.deadline
        if deadline is not None and self._jitter_timer is None and self._loop is not None:
            self._jitter_timer = self._loop.call_at(deadline, self._on_jitter_timer)

    def _on_jitter_timer(self) -> None:
        self._jitter_timer = None
        if self._state == "closed" or self._loop is None:
            return
        self._deliver(self._jitter.expire(self._loop.time()))
        self._arm_jitter_timer()

    def _arm_stall_timer(self) -> None:
        if self._stall_timer is None and self._loop is not None and self._state != "closed":
            self._stall_timer = self._loop.call_at(self._last_packet + self.stall_timeout,
                                                   self._on_stall_timer)

    def _on_stall_timer(self) -> None:
        self._stall_timer = None
        if self._state in ("closed", "stalled") or self._loop is None:
            return
        if self._loop.time() - self._last_packet < self.stall_timeout:
            self._arm_stall_timer()                         # packets came meanwhile
            return
        self._state = "stalled"
        self._counts["stalls"] += 1
        self._flowing_event.clear()
        self._stalled_event.set()
        log.warning("RTP %s: no packets for %.1f s", self._label, self.stall_timeout)
        self._deliver(self._jitter.flush())

    # -- helpers ----------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"{self.name or 'stream'}:{self.port}"

    def _source_expected(self, addr: tuple) -> bool:
        if self._allowed_hosts is not None and addr[0] not in self._allowed_hosts:
            return False
        if self._expected_source is not None:
            host, port = self._expected_source
            return addr[0] == host and (port is None or addr[1] == port)
        return True

    def _drop(self, kind: str, why: str, *args: object) -> None:
        self._counts[kind] += 1
        if kind not in self._warned:                      # one warning per kind, then count
            self._warned.add(kind)
            log.warning("RTP %s: dropping " + why + " (further %s drops are only counted)",
                        self._label, *args, kind)
