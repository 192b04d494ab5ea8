"""RTP receive path: packet parsing, the reorder buffer, and RtpStream over real UDP sockets."""
from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import numpy as np
import pytest

from ari_app.jitter import JitterBuffer
from ari_app.ports import PortPool, PortRangeExhausted
from ari_app.rtp import (FRAME_BYTES, PT_SLIN8, PT_SLIN16, MalformedPacket, RtpStream, build_rtp,
                         parse_rtp)
from rtp_sender import RtpSender

HOST = "127.0.0.1"


# -- helpers ----------------------------------------------------------------------------------

def indexed_pcm(frames: int) -> bytes:
    """Frame i holds the constant (i + 1) * 100, so a received frame says which packet it was."""
    return np.repeat((np.arange(frames, dtype="<i2") + 1) * 100, 320).astype("<i2").tobytes()


def frame_index(frame: bytes) -> int:
    """Inverse of indexed_pcm; -1 for silence."""
    samples = np.frombuffer(frame, dtype="<i2")
    assert len(samples) == 320 and (samples == samples[0]).all()
    return int(samples[0]) // 100 - 1


def payload_for(index: int) -> bytes:
    return np.full(320, (index + 1) * 100, dtype=">i2").tobytes()


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def take(stream: RtpStream, count: int, timeout: float = 3.0) -> list[bytes]:
    frames: list[bytes] = []

    async def read() -> None:
        async for frame in stream.frames():
            frames.append(frame)
            if len(frames) == count:
                return
    await asyncio.wait_for(read(), timeout)
    return frames


def queued(stream: RtpStream) -> list[bytes]:
    """Frames delivered so far, without waiting."""
    out = []
    while not stream._queue.empty():
        item = stream._queue.get_nowait()
        if item is None:
            break
        out.append(item)
    return out


class RawSender:
    """Hand-made packets from one UDP socket (for exact control over order and timing)."""

    def __init__(self, port: int, ssrc: int = 0x1234ABCD, local_port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, local_port))
        self.target = (HOST, port)
        self.ssrc = ssrc

    def send(self, seq: int, index: int | None = None, *, ssrc: int | None = None,
             payload_type: int = PT_SLIN16, marker: bool = False, raw: bytes | None = None) -> None:
        data = raw if raw is not None else build_rtp(
            payload_for(seq if index is None else index), sequence=seq, timestamp=seq * 320,
            ssrc=self.ssrc if ssrc is None else ssrc, payload_type=payload_type, marker=marker)
        self.sock.sendto(data, self.target)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def stream_factory():
    streams: list[RtpStream] = []

    async def make(**kwargs) -> RtpStream:
        kwargs.setdefault("jitter_ms", 60)
        kwargs.setdefault("stall_timeout", 5.0)
        stream = await RtpStream.bind(HOST, 0, **kwargs)
        streams.append(stream)
        return stream
    yield make
    for stream in streams:
        stream.close()


@pytest.fixture
def raw_senders():
    senders: list[RawSender] = []

    def make(port: int, **kwargs) -> RawSender:
        sender = RawSender(port, **kwargs)
        senders.append(sender)
        return sender
    yield make
    for sender in senders:
        sender.close()


# -- parsing ----------------------------------------------------------------------------------

def test_parse_plain_packet():
    packet = parse_rtp(build_rtp(b"\x01\x02" * 320, sequence=65535, timestamp=2**32 - 1,
                                 ssrc=0xDEADBEEF, marker=True))
    assert (packet.version, packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == \
        (2, 118, 65535, 2**32 - 1, 0xDEADBEEF)
    assert packet.marker and not packet.padding and not packet.extension and packet.csrc_count == 0
    assert packet.payload == b"\x01\x02" * 320


def test_parse_skips_csrcs_and_extension_and_strips_padding():
    payload = b"\xAA\xBB" * 10
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 118, 7, 320, 99)
    csrcs = struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x00" * 8
    padding = b"\x00\x00\x00\x04"
    packet = parse_rtp(header + csrcs + extension + payload + padding)
    assert packet.csrcs == (11, 22) and packet.extension and packet.padding
    assert packet.payload == payload


@pytest.mark.parametrize("data, reason", [
    (b"\x80\x76" + b"\x00" * 9, "too short"),
    (struct.pack("!BBHII", 0x40, 118, 1, 1, 1) + b"\x00" * 4, "version 1"),
    (struct.pack("!BBHII", 0xA0, 118, 1, 1, 1) + b"\x00\x00\x00\x00", "bad padding length 0"),
    (struct.pack("!BBHII", 0xA0, 118, 1, 1, 1) + b"\x00\x00\x00\x09", "bad padding length 9"),
    (struct.pack("!BBHII", 0x90, 118, 1, 1, 1) + b"\xBE\xDE", "no extension header"),
    (struct.pack("!BBHII", 0x90, 118, 1, 1, 1) + struct.pack("!HH", 0xBEDE, 5) + b"\x00" * 8,
     "runs past the packet end"),
    (struct.pack("!BBHII", 0x8F, 118, 1, 1, 1) + b"\x00" * 20, "15 CSRCs"),
])
def test_parse_rejects_malformed(data, reason):
    with pytest.raises(MalformedPacket, match=reason):
        parse_rtp(data)


# -- reorder buffer (pure) ----------------------------------------------------------------------

def test_jitter_buffer_waits_for_gap_then_fills():
    jb = JitterBuffer(window=0.060)
    assert jb.push(10, b"a" * 4, 0.00) == [b"a" * 4]
    assert jb.push(12, b"c" * 4, 0.04) == []            # 11 missing: wait
    assert jb.deadline == pytest.approx(0.10)
    assert jb.push(11, b"b" * 4, 0.05) == [b"b" * 4, b"c" * 4]   # in time: reordered
    assert jb.push(14, b"e" * 4, 0.08) == []
    assert jb.expire(0.139) == []
    assert jb.expire(0.140) == [bytes(4), b"e" * 4]       # window passed: 13 filled
    assert jb.push(13, b"d" * 4, 0.15) == []              # too late
    assert jb.push(14, b"e" * 4, 0.16) == []              # duplicate
    c = jb.counters
    assert (c.reordered, c.lost_filled, c.late, c.duplicates) == (1, 1, 1, 1)


def test_jitter_buffer_count_bound_and_restart():
    jb = JitterBuffer(window=0.060)                      # at most 3 packets held behind a gap
    jb.push(100, b"x", 0.0)
    out = [jb.push(s, b"y", 0.0) for s in (102, 103, 104)]
    assert out == [[], [], []]
    assert jb.push(105, b"z", 0.0) == [b"\x00", b"y", b"y", b"y", b"z"]
    # A jump of 20000: a lone stray is dropped, a confirmed jump is a restart.
    assert jb.push(20105, b"s", 0.0) == []
    assert jb.push(106, b"n", 0.0) == [b"n"]
    assert jb.push(30000, b"r1", 0.0) == []
    assert jb.push(30001, b"r2", 0.0) == [b"r1", b"r2"]
    assert jb.push(30002, b"r3", 0.0) == [b"r3"]
    assert jb.counters.resyncs == 1 and jb.counters.late == 1


def test_jitter_buffer_zero_window_never_waits():
    jb = JitterBuffer(window=0.0)
    jb.push(1, b"a", 0.0)
    assert jb.push(3, b"c", 0.0) == [b"\x00", b"c"]
    assert jb.push(2, b"b", 0.0) == []


# -- RtpStream over UDP -----------------------------------------------------------------------

async def test_big_endian_sine_arrives_as_little_endian(stream_factory):
    stream = await stream_factory()
    t = np.arange(16000) / 16000
    sine = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    stats = await RtpSender(sine.tobytes(), (HOST, stream.port), speed=0).run()
    frames = await take(stream, 50)
    assert b"".join(frames) == sine.tobytes()
    assert all(len(f) == FRAME_BYTES for f in frames)
    s = stream.stats
    assert (s.received, s.accepted, s.delivered, s.lost_filled) == (50, 50, 50, 0)
    assert stream.ssrc == stats.ssrc and stream.source[0] == HOST


async def test_real_time_pacing_delivers_everything(stream_factory):
    stream = await stream_factory()
    sender = RtpSender(indexed_pcm(25), (HOST, stream.port), speed=1.0)
    start = asyncio.get_running_loop().time()
    stats, frames = await asyncio.gather(sender.run(), take(stream, 25))
    elapsed = asyncio.get_running_loop().time() - start
    assert [frame_index(f) for f in frames] == list(range(25))
    assert elapsed >= 0.45                              # paced: 24 intervals of 20 ms
    assert stats.sent == 25


async def test_foreign_sender_dropped_after_lock(stream_factory):
    stream = await stream_factory()
    await RtpSender(indexed_pcm(10), (HOST, stream.port), speed=0).run()
    await until(lambda: stream.stats.accepted == 10)
    intruder = RtpSender(indexed_pcm(10)[::-1], (HOST, stream.port), speed=0)
    await intruder.run()
    await until(lambda: stream.stats.received == 20)
    assert stream.stats.foreign == 10 and stream.stats.accepted == 10
    assert [frame_index(f) for f in queued(stream)] == list(range(10))


async def test_allowed_hosts_and_restrict_source(stream_factory, raw_senders):
    closed = await stream_factory(allowed_hosts={"192.0.2.1"})
    raw_senders(closed.port).send(1)
    await until(lambda: closed.stats.received == 1)
    assert closed.stats.foreign == 1 and closed.source is None

    stream = await stream_factory()
    stale, fresh = raw_senders(stream.port, ssrc=1), raw_senders(stream.port, ssrc=2)
    stale.send(50)                                       # a stale call got the lock first
    await until(lambda: stream.source is not None)
    stream.restrict_source(HOST, fresh.sock.getsockname()[1])
    assert stream.source is None
    for seq in range(3):
        fresh.send(seq)
        stale.send(51 + seq)
    await until(lambda: stream.stats.received == 7)
    assert stream.ssrc == 2 and stream.stats.foreign == 3
    assert [frame_index(f) for f in queued(stream)] == [50, 0, 1, 2]


async def test_wrong_payload_type_dropped_before_and_after_lock(stream_factory, raw_senders):
    stream = await stream_factory()
    sender = raw_senders(stream.port)
    sender.send(1, payload_type=0)                       # ulaw: not what we asked for
    sender.send(2)
    sender.send(3, payload_type=101)                     # telephone-event
    sender.send(4, raw=b"\x80\x76" + b"\x00" * 5)         # truncated
    sender.send(5, raw=build_rtp(b"\x00" * 3, sequence=5, timestamp=0, ssrc=sender.ssrc))
    sender.send(3)
    await until(lambda: stream.stats.received == 6)
    s = stream.stats
    assert (s.wrong_type, s.malformed, s.accepted) == (2, 2, 2)
    assert [frame_index(f) for f in queued(stream)] == [2, 3]


async def test_duplicates_dropped(stream_factory):
    stream = await stream_factory()
    stats = await RtpSender(indexed_pcm(12), (HOST, stream.port), speed=0, duplicate={3, 7}).run()
    assert stats.sent == 14
    frames = await take(stream, 12)
    await until(lambda: stream.stats.received == 14)
    assert [frame_index(f) for f in frames] == list(range(12))
    assert stream.stats.duplicates == 2 and queued(stream) == []


async def test_reordered_packets_delivered_in_order(stream_factory):
    stream = await stream_factory()
    await RtpSender(indexed_pcm(12), (HOST, stream.port), speed=0, swap={2, 6}).run()
    frames = await take(stream, 12)
    assert [frame_index(f) for f in frames] == list(range(12))
    assert stream.stats.reordered == 2 and stream.stats.lost_filled == 0


async def test_gaps_filled_with_silence_of_the_right_length(stream_factory):
    stream = await stream_factory(jitter_ms=60)
    await RtpSender(indexed_pcm(15), (HOST, stream.port), speed=0, drop={4, 5, 6, 11}).run()
    frames = await take(stream, 15)
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3, -1, -1, -1, 7, 8, 9, 10, -1, 12, 13, 14]
    assert stream.stats.lost_filled == 4 and len(b"".join(frames)) == 15 * FRAME_BYTES


async def test_gap_at_the_tail_is_filled_after_the_window(stream_factory, raw_senders):
    stream = await stream_factory(jitter_ms=60)
    sender = raw_senders(stream.port)
    for seq in (0, 1, 3):
        sender.send(seq)
    assert [frame_index(f) for f in await take(stream, 2)] == [0, 1]
    start = asyncio.get_running_loop().time()
    assert [frame_index(f) for f in await take(stream, 2)] == [-1, 3]
    assert asyncio.get_running_loop().time() - start >= 0.04
    sender.send(2)                                       # too late now
    await until(lambda: stream.stats.late == 1)


async def test_random_loss_reordering_and_duplicates_together(stream_factory):
    stream = await stream_factory()
    sender = RtpSender(indexed_pcm(200), (HOST, stream.port), speed=0, seed=7,
                       loss=0.05, reorder=0.05, duplicates=0.05)
    stats = await sender.run()
    assert stats.dropped and stats.swapped and stats.duplicated
    last = max(i for i in range(200) if i not in stats.dropped)
    frames = await take(stream, last + 1)
    assert [frame_index(f) for f in frames] == [-1 if i in stats.dropped else i
                                                 for i in range(last + 1)]
    s = stream.stats
    assert s.lost_filled == len([i for i in stats.dropped if i < last])
    assert s.duplicates == len(stats.duplicated) and s.late == 0


async def test_sender_stops_mid_way(stream_factory):
    stream = await stream_factory()
    stats = await RtpSender(indexed_pcm(50), (HOST, stream.port), speed=0, stop_after=10).run()
    assert (stats.sent, stats.stopped_at) == (10, 10)
    sender = RtpSender(indexed_pcm(50), (HOST, stream.port), speed=5.0)
    task = asyncio.create_task(sender.run())
    await asyncio.sleep(0.05)
    sender.stop()
    stats = await task
    assert stats.stopped_at is not None and 0 < stats.sent < 50


async def test_sequence_wraps_around(stream_factory):
    stream = await stream_factory()
    await RtpSender(indexed_pcm(12), (HOST, stream.port), speed=0, sequence=65530,
                    drop={6}, swap={4}).run()            # 6 is sequence 0; 4/5 are 65534/65535
    frames = await take(stream, 12)
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3, 4, 5, -1, 7, 8, 9, 10, 11]
    s = stream.stats
    assert (s.lost_filled, s.reordered, s.late, s.resyncs) == (1, 1, 0, 0)


async def test_ssrc_change_from_locked_address_is_adopted(stream_factory, raw_senders):
    stream = await stream_factory()
    sender = raw_senders(stream.port, ssrc=1)
    for seq in range(3):
        sender.send(seq)
    sender.send(3, ssrc=99)                              # a stray: dropped
    for seq in range(3, 6):                              # Asterisk's source change: new SSRC
        sender.send(seq, ssrc=2)
    sender.send(6, ssrc=3, marker=True)                  # marker bit: adopted at once
    await until(lambda: stream.stats.received == 8)
    assert [frame_index(f) for f in queued(stream)] == list(range(7))
    assert stream.ssrc == 3 and stream.stats.ssrc_changes == 2 and stream.stats.foreign == 1


async def test_stall_is_observable_and_the_stream_recovers(stream_factory, raw_senders):
    stream = await stream_factory(stall_timeout=0.2)
    assert stream.state == "waiting"
    assert await asyncio.wait_for(stream.wait_stalled(), 3.0)     # nothing ever came
    sender = raw_senders(stream.port)
    sender.send(0)
    assert await asyncio.wait_for(stream.wait_flowing(), 3.0)
    for seq in (1, 3):                                   # 2 missing when it stalls
        sender.send(seq)
    start = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(stream.wait_stalled(), 3.0)
    assert asyncio.get_running_loop().time() - start >= 0.15
    assert stream.stalled and stream.stats.stalls == 2
    assert [frame_index(f) for f in queued(stream)] == [0, 1, -1, 3]
    sender.send(4)
    assert await asyncio.wait_for(stream.wait_flowing(), 3.0)
    assert stream.state == "flowing" and [frame_index(f) for f in await take(stream, 1)] == [4]


async def test_close_releases_packets_held_behind_a_gap(stream_factory, raw_senders):
    stream = await stream_factory(jitter_ms=500)
    sender = raw_senders(stream.port)
    for seq in (0, 2):
        sender.send(seq)
    await until(lambda: stream.stats.accepted == 2)
    stream.close()
    assert [frame_index(f) async for f in stream.frames()] == [0, -1, 2]


async def test_close_is_idempotent_ends_frames_and_frees_the_port(stream_factory):
    stream = await stream_factory()
    port = stream.port
    consumer = asyncio.create_task(take(stream, 10))
    await asyncio.sleep(0.01)
    stream.close()
    stream.close()
    assert await consumer == []
    assert [f async for f in stream.frames()] == []
    assert not await stream.wait_stalled() and stream.state == "closed"
    await stream.aclose()
    again = await RtpStream.bind(HOST, port)
    await again.aclose()


async def test_consumer_falling_behind_drops_oldest(stream_factory):
    stream = await stream_factory(max_queued=5)
    await RtpSender(indexed_pcm(20), (HOST, stream.port), speed=0).run()
    await until(lambda: stream.stats.accepted == 20)
    assert [frame_index(f) for f in queued(stream)] == list(range(15, 20))
    assert stream.stats.overflow == 15 and stream.stats.delivered == 5


async def test_slin8_is_resampled_to_16k(stream_factory):
    stream = await stream_factory(payload_type=PT_SLIN8)
    t = np.arange(16000) / 16000
    sine = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    await RtpSender(sine.tobytes(), (HOST, stream.port), speed=0, payload_type=PT_SLIN8).run()
    await until(lambda: stream.stats.accepted == 50)
    audio = np.frombuffer(b"".join(queued(stream)), dtype="<i2").astype(np.float64)
    assert len(audio) >= 14000                        # less the resampler's delay
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    assert np.argmax(spectrum) * 16000 / 12000 == pytest.approx(440, abs=3)
    assert np.sqrt(np.mean(audio[2000:14000] ** 2)) == pytest.approx(12000 / np.sqrt(2), rel=0.05)


# -- port pool --------------------------------------------------------------------------------

async def test_port_pool_exhaustion_skips_refused_ports_and_reuses_closed():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((HOST, 0))
    base = probe.getsockname()[1]
    probe.close()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pool = PortPool(HOST, base, base + 3, jitter_ms=20, stall_timeout=1.0)
    try:
        blocker.bind((HOST, base + 1))                   # taken by "another process"
        streams = []
        with pytest.raises(PortRangeExhausted, match=r"no free RTP port .*refused by the OS"):
            for _ in range(5):
                streams.append(await pool.open_stream())
        assert 1 <= len(streams) <= 3 and pool.in_use == len(streams)
        assert base + 1 not in {s.port for s in streams}
        assert streams[0]._jitter.window == pytest.approx(0.020)
        await streams[0].aclose()
        assert pool.in_use == len(streams) - 1
        reopened = await pool.open_stream(jitter_ms=0)
        assert reopened.port == streams[0].port and reopened._jitter.window == 0
    finally:
        blocker.close()
        await pool.close_all()
    assert pool.in_use == 0


def test_port_pool_rejects_a_bad_range():
    with pytest.raises(ValueError):
        PortPool(HOST, 5000, 4000)
