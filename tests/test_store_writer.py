"""Store writes stay off the loop that carries RTP and ARI (agent_ui.store_writer).

Another process holds the database's write lock (as `callassist user ...`, `archive
import` or a backup would) while a call comes in through the ARI test peer, a real UDP
RTP sender streams audio from its own process and the bus carries a steady flow of
events. The loop must keep running (its longest stall far below the lock time), RTP
must arrive complete and in time, the call must be tapped, transcribed and carded
while the lock is held, and once the lock is gone every event is stored in order and
each reaches a listener exactly once."""
from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent_ui.store import Store
from ari_app.app import AriApp
from ari_app.rtp import RtpStats, RtpStream
from ari_peer import AriPeer
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.config import load_config
from callassist.events import CallEvent, CallStarted, CardFired, TranscriptUpdate
from callassist.pipeline import CallPipeline
from prompts.matcher import Matcher
from prompts.playbook import load_playbook

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "audio" / "mandarin-samples"
CUSTOMER_WAV = SAMPLES / "01_aishell1_BAC009S0764W0121.wav"
AGENT_WAV = SAMPLES / "02_aishell1_BAC009S0764W0122.wav"
SCRIPTS = {"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.3, 1.5)],
           "agent": [ScriptedUtterance("您好 请 讲", 0.2, 0.9)]}
LOCK_SECONDS = 3.0            # how long the other process holds the write lock
MAX_STALL = LOCK_SECONDS / 6  # the loop's longest stall must stay far below it
LOAD_INTERVAL = 0.02          # one bus event per RTP frame time
T0 = 1_700_000_000.0


# Another process: takes the write lock, says when (CLOCK_MONOTONIC, shared by all
# processes), holds it until a line on stdin (or a cap), says when it let go.
LOCKER = """
import select, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE IF NOT EXISTS locker_was_here (x)")
print("locked", time.monotonic(), flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
db.execute("COMMIT")
print("released", time.monotonic(), flush=True)
"""


class DatabaseLocker:
    def __init__(self, path: Path, cap: float) -> None:
        self.path, self.cap = path, cap
        self.locked_at = self.released_at = 0.0
        self._proc: asyncio.subprocess.Process | None = None

    async def lock(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCKER, str(self.path), str(self.cap),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.locked_at = await self._read("locked")

    async def release(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(b"go\n")
            await self._proc.stdin.drain()
        except ConnectionError:              # it let go already: its cap was reached
            pass
        self.released_at = await self._read("released")
        await self._proc.wait()

    async def _read(self, word: str) -> float:
        assert self._proc is not None and self._proc.stdout is not None
        said, at = (await asyncio.wait_for(self._proc.stdout.readline(), 30)).split()
        assert said.decode() == word
        return float(at)


class LoopLag:
    """A ticker on the loop: how late each 10 ms tick woke up, and when."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []       # (woke at, lateness)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        async def tick() -> None:
            loop = asyncio.get_running_loop()
            while True:
                due = loop.time() + 0.01
                await asyncio.sleep(0.01)
                now = loop.time()
                self.ticks.append((now, now - due))
        self._task = asyncio.create_task(tick())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def worst(self, start: float, end: float) -> float:
        """The longest stall of a tick that woke up in [start, end + that stall]."""
        return max((lag for at, lag in self.ticks if start <= at - lag <= end), default=0.0)


class BusLoad:
    """Final transcript lines of one call, published every LOAD_INTERVAL."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.published: list[TranscriptUpdate] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        async def publish() -> None:
            self.bus.publish(CallStarted("load", caller="load", at=T0))
            while True:
                i = len(self.published)
                event = TranscriptUpdate("load", "customer", i, f"第{i}句", i * 0.02, i * 0.02 + 0.02,
                                         True, at=T0 + i * 0.02)
                self.published.append(event)
                self.bus.publish(event)
                await asyncio.sleep(LOAD_INTERVAL)
        self._task = asyncio.create_task(publish())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class ExternalRtp:
    """tests/rtp_sender.py in its own process, streaming to an RtpStream of ours."""

    def __init__(self, stream: RtpStream, wav: Path) -> None:
        self.stream, self.wav = stream, wav
        self.frame_times: list[float] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._consumer: asyncio.Task | None = None

    async def start(self) -> None:
        async def consume() -> None:
            loop = asyncio.get_running_loop()
            async for _ in self.stream.frames():
                self.frame_times.append(loop.time())
        self._consumer = asyncio.create_task(consume())
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "rtp_sender.py"), str(self.wav),
            f"127.0.0.1:{self.stream.port}", stdout=asyncio.subprocess.DEVNULL)

    async def finish(self) -> RtpStats:
        assert self._proc is not None and self._consumer is not None
        assert await self._proc.wait() == 0
        # the jitter buffer hands out what is queued once the sender is done
        packets = sf.info(self.wav).frames // 320
        await wait_until(lambda: self.stream.stats.delivered >= packets)
        self.stream.close()
        await self._consumer
        return self.stream.stats

    def longest_gap(self, start: float, end: float) -> float:
        inside = [t for t in self.frame_times if start <= t <= end]
        return max((b - a for a, b in itertools.pairwise(inside)), default=end - start)


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
async def peer():
    peer = await AriPeer().start()
    yield peer
    await peer.stop()


def tone_wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 16000)
    return path


@pytest.mark.skipif(not CUSTOMER_WAV.is_file(), reason=f"{SAMPLES} not found")
async def test_rtp_ari_and_the_loop_keep_flowing_while_another_process_holds_the_database(
        tmp_path: Path, peer: AriPeer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent_ui.store_writer")
    store = Store(tmp_path / "callassist.db")
    bus = EventBus()
    listener = store.events.listen()
    recorder = asyncio.create_task(store.events.run(bus))
    seen: list[tuple[float, CallEvent]] = []              # what the bus carried, and when
    subscription = bus.subscribe()

    async def collect() -> None:
        loop = asyncio.get_running_loop()
        async for event in subscription:
            seen.append((loop.time(), event))
    collector = asyncio.create_task(collect())

    engine = ScriptedEngine(SCRIPTS)
    matcher = Matcher(load_playbook())
    config = load_config(env={"CALLASSIST_ARI_URL": peer.url, "CALLASSIST_ARI_PASSWORD": "secret",
                              "CALLASSIST_RTP_PORT_MIN": "43000", "CALLASSIST_RTP_PORT_MAX": "43999"})
    ari = AriApp(config, bus, lambda call_id: CallPipeline(call_id, engine, matcher, bus.publish,
                                                           skip_silence=False), tmp_path / "rec")
    await ari.start()
    await ari.wait_ready(5)

    lag = LoopLag()
    lag.start()
    load = BusLoad(bus)
    load.start()
    rtp = ExternalRtp(await RtpStream.bind("127.0.0.1", 0), tone_wav(tmp_path / "tone.wav", 7.0))
    await rtp.start()
    await wait_until(lambda: len(rtp.frame_times) > 10)   # RTP flows before the lock

    locker = DatabaseLocker(store.path, cap=4 * LOCK_SECONDS)
    await locker.lock()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    call_id = call.customer.id

    def of_call(kind: type, where: Callable[[CallEvent], bool] = lambda e: True) -> list[float]:
        return [at for at, e in seen if isinstance(e, kind) and e.call_id == call_id and where(e)]

    # ARI is handled and the call is tapped, transcribed and carded: all under the lock
    await wait_until(lambda: bool(of_call(CardFired)) and bool(
        of_call(TranscriptUpdate, lambda e: e.speaker == "agent" and e.final)))
    legs = list(ari.media.calls[call_id].legs.values())       # the media side: RTP streams
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, locker.locked_at + LOCK_SECONDS - loop.time()))
    still_stored = store.events.events_since(0)                 # reads go on under the lock
    await locker.release()

    held = locker.released_at - locker.locked_at
    assert held >= LOCK_SECONDS
    assert of_call(CallStarted)[0] < locker.released_at
    assert of_call(CardFired)[0] < locker.released_at
    assert legs and all(leg.stream.stats.late == 0 and leg.stream.stats.lost_filled == 0 for leg in legs)
    # the loop never stalled for long, RTP kept arriving while the lock was held
    assert lag.worst(locker.locked_at, locker.released_at) < MAX_STALL
    assert rtp.longest_gap(locker.locked_at, locker.released_at) < MAX_STALL
    # positive control: the lock really kept every write out meanwhile
    assert not any(e["call_id"] == call_id for _, e in still_stored)

    await peer.hangup(call)
    await load.stop()
    stats = await rtp.finish()
    assert (stats.late, stats.lost_filled, stats.overflow) == (0, 0, 0)
    assert stats.delivered == stats.accepted > 0

    # after the lock: everything is stored, in order, and heard exactly once
    last = load.published[-1]
    heard: list[tuple[int, dict]] = []

    async def hear_all() -> None:
        while not any(e["type"] == "TranscriptUpdate" and e["call_id"] == "load"
                      and e["utterance"] == last.utterance for _, e in heard):
            heard.append(await listener.get())
    await asyncio.wait_for(hear_all(), 30)
    stored_load = [e for _, e in store.events.events_since(0, call_ids=["load"]) if e["type"] == "TranscriptUpdate"]
    assert [e["utterance"] for e in stored_load] == [e.utterance for e in load.published]
    heard_seqs = [seq for seq, _ in heard]
    assert heard_seqs == sorted(set(heard_seqs))               # in order, no duplicates
    assert [e["utterance"] for _, e in heard if e["call_id"] == "load"
            and e["type"] == "TranscriptUpdate"] == [e.utterance for e in load.published]
    stored_seqs = {seq for seq, _ in store.events.events_since(0)}
    assert {seq for seq in stored_seqs if seq <= heard_seqs[-1]} <= set(heard_seqs)   # no gap
    assert len(load.published) > 2 * LOCK_SECONDS / LOAD_INTERVAL / 3     # a real flow
    # the operator was told, with the backlog, and told again when it was over
    assert "store writes are falling behind" in caplog.text and "event(s) waiting" in caplog.text
    await wait_until(lambda: "store writes caught up" in caplog.text)

    await ari.stop()
    await lag.stop()
    recorder.cancel()
    collector.cancel()
    await asyncio.gather(recorder, collector, return_exceptions=True)
    store.close()


async def test_close_drains_the_events_queued_behind_a_locked_database(tmp_path: Path) -> None:
    store = Store(tmp_path / "callassist.db")
    bus = EventBus()
    recorder = asyncio.create_task(store.events.run(bus))
    await asyncio.sleep(0)                                 # the recorder is running
    other = sqlite3.connect(tmp_path / "callassist.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    events = [CallStarted("drained", at=T0)] + [
        TranscriptUpdate("drained", "customer", i, f"第{i}句", i, i + 1, True, at=T0 + i)
        for i in range(300)]
    for event in events:
        bus.publish(event)
    recorder.cancel()                                      # a clean stop: the app is closing
    await asyncio.gather(recorder, return_exceptions=True)
    closing = asyncio.create_task(asyncio.to_thread(store.close))
    await asyncio.sleep(0.3)
    assert not closing.done()                              # close waits for the queue ...
    reader = sqlite3.connect(tmp_path / "callassist.db")
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 0    # nothing got through
    other.execute("COMMIT")                                # ... until the database is free
    await asyncio.wait_for(closing, 30)
    stored = [row[0] for row in reader.execute(
        "SELECT json_extract(payload, '$.utterance') FROM events WHERE call_id = 'drained' "
        "AND type = 'TranscriptUpdate' ORDER BY seq")]
    assert stored == list(range(300))
    reader.close()
    other.close()


async def test_a_login_waits_for_a_locked_database_off_the_loop(tmp_path: Path) -> None:
    from web_fixtures import client_session, http_login, make_config, make_store, start_app
    config = make_config(tmp_path / "data")
    store = make_store(config)
    server = await start_app(config, store, EventBus())
    lag = LoopLag()
    lag.start()
    locker = DatabaseLocker(store.path, cap=4 * LOCK_SECONDS)
    await locker.lock()
    async with client_session() as agent, client_session() as qa:
        login = asyncio.create_task(http_login(qa, server.url, "zhao.min"))   # writes: attempt, session, audit
        async with agent.get(f"{server.url}/login") as response:               # the app goes on serving
            assert response.status == 200
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, locker.locked_at + LOCK_SECONDS - loop.time()))
        assert not login.done()                     # the login really waits for the database ...
        await locker.release()
        assert await asyncio.wait_for(login, 30)    # ... and gets in once it is free
    assert lag.worst(locker.locked_at, locker.released_at) < MAX_STALL
    await lag.stop()
    await server.stop()
    store.close()
