"""The ARI app against the ARI test peer: real websocket, real RTP over UDP, the real
CallPipeline with the scripted speech engine, and the faults a live PBX throws at it."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ari_app.app import AriApp
from ari_app.calls import LegTap
from ari_app.client import AriClient
from ari_app.media import LocalMediaHost
from ari_peer import AriPeer, load_audio
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.config import Config, load_config
from callassist.events import (AgentJoined, CallEnded, CallEvent, CallFault, CallStarted, CardFired,
                               TranscriptUpdate)
from callassist.pipeline import CallPipeline
from prompts.matcher import Matcher
from prompts.playbook import load_playbook

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "audio" / "mandarin-samples"
CUSTOMER_WAV = SAMPLES / "01_aishell1_BAC009S0764W0121.wav"
AGENT_WAV = SAMPLES / "02_aishell1_BAC009S0764W0122.wav"

pytestmark = pytest.mark.skipif(not CUSTOMER_WAV.is_file(), reason=f"{SAMPLES} not found")

SCRIPTS = {"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.3, 1.5)],
           "agent": [ScriptedUtterance("您好 请 讲", 0.2, 0.9)]}


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(load_playbook())


@pytest.fixture
async def peer():
    peer = await AriPeer().start()
    yield peer
    await peer.stop()


def make_config(peer: AriPeer, **env: str) -> Config:
    base = {"CALLASSIST_ARI_URL": peer.url, "CALLASSIST_ARI_PASSWORD": "secret",
            "CALLASSIST_ARI_REQUEST_TIMEOUT": "2", "CALLASSIST_ARI_RECONNECT_INITIAL_DELAY": "0.05",
            "CALLASSIST_ARI_RECONNECT_MAX_DELAY": "0.4",
            "CALLASSIST_RTP_PORT_MIN": "42000", "CALLASSIST_RTP_PORT_MAX": "42999"}
    return load_config(env={**base, **env})


class Harness:
    """An AriApp with the real pipeline (scripted engine) and every bus event collected."""

    def __init__(self, peer: AriPeer, matcher: Matcher, recordings: Path, **env: str) -> None:
        self.peer = peer
        self.bus = EventBus()
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()
        self.engine = ScriptedEngine(SCRIPTS)
        self.app = AriApp(make_config(peer, **env), self.bus,
                          lambda call_id: CallPipeline(call_id, self.engine, matcher, self.bus.publish,
                                                       skip_silence=False),
                          recordings)
        assert isinstance(self.app.media, LocalMediaHost)
        self.media: LocalMediaHost = self.app.media
        self._collector: asyncio.Task | None = None

    async def start(self) -> "Harness":
        subscription = self.bus.subscribe()

        async def collect() -> None:
            async for event in subscription:
                self.events.append(event)
                self._changed.set()
        self._collector = asyncio.create_task(collect())
        await self.app.start()
        await self.app.wait_ready(5)
        return self

    async def stop(self) -> None:
        await self.app.stop()
        if self._collector:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)

    def of(self, kind: type, where: Callable[[CallEvent], bool] = lambda e: True) -> list:
        return [e for e in self.events if isinstance(e, kind) and where(e)]

    async def wait_for(self, kind: type, where: Callable[[CallEvent], bool] = lambda e: True,
                       timeout: float = 5.0) -> CallEvent:
        async def find() -> CallEvent:
            while True:
                found = self.of(kind, where)
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(find(), timeout)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.02)

    def frames(self, call_id: str, leg: LegTap) -> int:
        """Frames the media host took from the leg."""
        media = self.media.leg(call_id, leg.media_id)
        return media.frames if media is not None else 0

    async def wait_tapped(self, call_id: str, legs: int = 2) -> None:
        await self.wait_until(lambda: call_id in self.app.calls and sum(
            1 for leg in self.app.calls[call_id].legs.values()
            if leg.ready and self.frames(call_id, leg) > 5) >= legs)

    def assert_nothing_left(self) -> None:
        assert self.peer.our_objects() == ([], []), "channels/bridges of ours left in Asterisk"
        assert not self.app.calls
        assert self.app.open_tasks == 0, "tasks left running"
        assert not self.media.calls, "media left open"
        assert self.media.ports.in_use == 0, "RTP sockets left open"


@pytest.fixture
async def harness(peer, matcher, tmp_path):
    started: list[Harness] = []

    async def make(**env: str) -> Harness:
        h = await Harness(peer, matcher, tmp_path / "recordings", **env).start()
        started.append(h)
        return h
    yield make
    for h in started:
        await h.stop()


def best_match(signal: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(lag in seconds, correlation) of `reference` inside `signal`."""
    x, r = signal.astype(float), reference.astype(float)
    n = len(x) + len(r)
    cc = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(r, n)), n)
    lag = int(np.argmax(np.abs(cc)))
    lag = lag - n if lag > len(x) else lag
    seg = x[max(lag, 0):max(lag, 0) + len(r)]
    ref = r[max(-lag, 0):max(-lag, 0) + len(seg)]
    seg = seg[:len(ref)]
    return lag / 16000, float(np.corrcoef(seg, ref)[0, 1])


# -- the normal call --------------------------------------------------------------------------------

async def test_two_leg_call_is_tapped_transcribed_recorded_and_cleaned_up(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.4)
    call_id = call.customer.id
    started = await h.wait_for(CallStarted)
    assert (started.call_id, started.caller, started.source) == (call_id, "13800138000", "ari")
    joined = await h.wait_for(AgentJoined)
    assert joined.endpoint == "PJSIP/1001"
    await h.wait_tapped(call_id)
    await h.wait_for(TranscriptUpdate, lambda e: e.speaker == "agent" and e.final)
    await h.wait_for(TranscriptUpdate, lambda e: e.speaker == "customer" and e.final)
    await h.wait_for(CardFired, lambda e: e.card.category == "regulator_complaint")
    await asyncio.sleep(1.0)
    await peer.hangup(call)
    ended = await h.wait_for(CallEnded)
    assert ended.call_id == call_id and 2.0 < ended.duration < 10

    # the order Asterisk needs: subscribe before continue, and the tap before continue
    ops = [op for op, _, path in peer.requests if call_id in path or op in ("externalMedia", "createBridge",
                                                                             "addChannel")]
    assert ops.index("subscribe") < ops.index("continue")
    assert ops.index("addChannel") < ops.index("continue")

    # each leg is on its own side of the stereo recording, at its place on the timeline
    audio, rate = sf.read(ended.recording, dtype="int16")
    assert rate == 16000 and audio.shape[1] == 2
    lag, corr = best_match(audio[:, 0], load_audio(CUSTOMER_WAV))
    assert corr > 0.95 and abs(lag) < 0.15
    lag, corr = best_match(audio[:, 1], load_audio(AGENT_WAV))
    assert corr > 0.95 and 0.3 < lag < 0.9          # the agent answered ~0.4 s after the continue
    assert best_match(audio[:, 0], load_audio(AGENT_WAV))[1] < 0.5
    agent_final = h.of(TranscriptUpdate, lambda e: e.speaker == "agent" and e.final)[0]
    assert agent_final.text == "您好 请 讲"
    assert agent_final.start == pytest.approx(lag + 0.2, abs=0.15)   # on the call's timeline

    await asyncio.sleep(0.05)
    h.assert_nothing_left()
    assert not h.of(CallFault)
    assert call.customer.id not in peer.channels   # (really hung up)


async def test_stop_releases_calls_but_the_calls_go_on(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_tapped(call.customer.id)
    await h.stop()
    assert [e.call_id for e in h.of(CallEnded)] == [call.customer.id]
    assert peer.our_objects() == ([], [])
    assert call.customer.alive and call.agent is not None and call.agent.alive


# -- faults -------------------------------------------------------------------------------------------

async def test_events_websocket_drop_mid_call_reconnects_and_the_call_goes_on(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    call_id = call.customer.id
    await h.wait_tapped(call_id)
    frames_before = {s: h.frames(call_id, leg) for s, leg in h.app.calls[call_id].legs.items()}
    await peer.drop_websocket()
    await h.wait_until(lambda: peer.websocket_connects == 2 and h.app.ready)
    assert h.app.disconnects == 1
    report = h.app.last_resync
    assert report is not None and report.reason == "reconnect"
    assert (report.closed, report.retapped, report.swept_channels) == (0, 0, 0)
    await asyncio.sleep(0.3)
    legs = h.app.calls[call_id].legs
    assert all(h.frames(call_id, legs[s]) > frames_before[s] for s in ("customer", "agent")), "audio kept flowing"
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_hangup_missed_while_disconnected_is_closed_out_at_resync(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_tapped(call.customer.id)
    peer.refuse_websocket = True
    await peer.drop_websocket()
    await peer.hangup(call)                        # nobody hears of it
    await asyncio.sleep(0.3)
    assert call.customer.id in h.app.calls
    peer.refuse_websocket = False
    ended = await h.wait_for(CallEnded)
    assert ended.call_id == call.customer.id and ended.recording
    assert h.app.last_resync is not None and h.app.last_resync.closed == 1
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_agent_answer_missed_while_disconnected_is_found_in_the_dial_bridge(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.4)
    await h.wait_tapped(call.customer.id, legs=1)
    peer.refuse_websocket = True
    await peer.drop_websocket()
    await asyncio.sleep(0.6)                       # the agent answers meanwhile
    assert call.agent is not None and call.agent.state == "Up"
    peer.refuse_websocket = False
    joined = await h.wait_for(AgentJoined)
    assert joined.endpoint == "PJSIP/1001"
    assert h.app.last_resync is not None and h.app.last_resync.agents_found == 1
    await h.wait_tapped(call.customer.id)
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_asterisk_restart_closes_calls_and_new_calls_work(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_tapped(call.customer.id)
    await peer.restart(downtime=0.5)
    ended = await h.wait_for(CallEnded)
    assert ended.call_id == call.customer.id
    await h.wait_until(lambda: h.app.ready)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()
    second = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_tapped(second.customer.id)
    await peer.hangup(second)
    await h.wait_for(CallEnded, lambda e: e.call_id == second.customer.id)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


@pytest.mark.parametrize("op", ["snoop", "externalMedia", "addChannel"])
async def test_customer_hanging_up_during_the_tap_leaves_nothing(peer, harness, op):
    h = await harness()
    calls = []
    peer.after(op, lambda info: peer.hangup(calls[0]))
    calls.append(peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2))
    ended = await h.wait_for(CallEnded)
    assert ended.call_id == calls[0].customer.id
    await asyncio.sleep(0.1)
    h.assert_nothing_left()
    assert not h.of(CallFault), "a hangup is not a fault"


async def test_agent_hanging_up_during_its_tap_leaves_nothing(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.3)
    await h.wait_tapped(call.customer.id, legs=1)
    peer.after("snoop", lambda info: peer.hangup(call.agent))
    await h.wait_for(AgentJoined)
    await h.wait_until(lambda: call.agent is not None and not call.agent.alive)
    await asyncio.sleep(0.2)
    live = h.app.calls[call.customer.id]
    assert "agent" not in live.legs and live.agent_id is None and not live.retiring
    assert len(peer.our_objects()[0]) == 2          # only the customer's snoop and externalMedia
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_rtp_that_stops_is_a_fault_and_the_call_still_closes(peer, harness):
    h = await harness(CALLASSIST_RTP_STALL_TIMEOUT="0.5")
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_tapped(call.customer.id)
    peer.stop_rtp(call.customer)
    fault = await h.wait_for(CallFault)
    assert fault.call_id == call.customer.id and "customer audio stalled" in fault.problem
    await peer.hangup(call)
    ended = await h.wait_for(CallEnded)
    assert ended.recording
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_tap_refused_is_a_fault_the_call_goes_on_and_resync_retaps(peer, harness):
    h = await harness()
    peer.fail("externalMedia", 500, "An internal error prevented this request from being handled")
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    fault = await h.wait_for(CallFault)
    assert "customer tap failed" in fault.problem and "500" in fault.problem
    await h.wait_for(AgentJoined)                  # the call was continued all the same
    await h.wait_tapped(call.customer.id, legs=1)  # the agent leg
    assert "customer" not in h.app.calls[call.customer.id].legs
    assert len(peer.our_objects()[1]) == 1         # the failed tap's bridge and snoop were removed
    report = await h.app.resync("test")
    assert report.retapped == 1
    await h.wait_tapped(call.customer.id)
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_tap_removed_by_someone_else_is_made_again(peer, harness):
    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_tapped(call.customer.id)
    old = h.app.calls[call.customer.id].legs["customer"]
    await peer.hangup(old.em_id)                   # e.g. an admin's "channel request hangup"
    await h.wait_until(lambda: h.app.calls[call.customer.id].legs["customer"] is not old)
    await h.wait_tapped(call.customer.id)
    await h.wait_until(lambda: old.snoop_id not in peer.channels and old.bridge_id not in peer.bridges)
    assert len(peer.our_objects()[0]) == 4         # the new customer tap and the agent's
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


async def test_customer_left_waiting_in_stasis_is_taken_on(peer, harness):
    # A client registers the app, the call enters Stasis, the client dies before `continue`.
    async with AriClient(peer.url, "callassist", "secret", "callassist") as other:
        socket = await other.connect_events()
        call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
        await asyncio.sleep(0.05)
        await socket.close()
    assert call.customer.stasis_app == "callassist"
    h = await harness()
    assert h.app.last_resync is not None and h.app.last_resync.adopted == 1
    await h.wait_for(AgentJoined)                  # tapped, then continued to the Dial
    await h.wait_tapped(call.customer.id)
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()


KILLED_APP = """
import asyncio
from ari_app.app import AriApp
from callassist.bus import EventBus
from callassist.config import load_config

async def main():
    app = AriApp(load_config(), EventBus(), None, None)
    await app.start()
    await app.wait_ready(10)
    print("READY", flush=True)
    while not any(len([l for l in c.legs.values() if l.ready]) == 2 for c in app.calls.values()):
        await asyncio.sleep(0.02)
    print("TAPPED", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_app_killed_mid_call_then_restarted_sweeps_the_orphans(peer, harness):
    env = {**os.environ, "CALLASSIST_ARI_URL": peer.url, "CALLASSIST_ARI_PASSWORD": "secret",
           "CALLASSIST_RTP_PORT_MIN": "43000", "CALLASSIST_RTP_PORT_MAX": "43099",
           "PYTHONPATH": str(ROOT)}
    env.pop("CALLASSIST_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", KILLED_APP, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"READY"
        call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).strip() == b"TAPPED"
    finally:
        proc.kill()                                 # SIGKILL: no cleanup at all
        await proc.wait()
    await asyncio.sleep(0.1)
    channels, bridges = peer.our_objects()
    assert (len(channels), len(bridges)) == (4, 2)  # two snoops, two externalMedia, two bridges
    h = await harness()
    report = h.app.last_resync
    assert report is not None and (report.swept_channels, report.swept_bridges) == (4, 2)
    assert peer.our_objects() == ([], [])
    assert call.customer.alive and call.agent is not None and call.agent.alive   # the call itself goes on


async def test_wrong_password_keeps_retrying_and_says_why(peer, matcher, tmp_path, caplog):
    config = load_config(env={"CALLASSIST_ARI_URL": peer.url, "CALLASSIST_ARI_PASSWORD": "wrong",
                              "CALLASSIST_ARI_RECONNECT_INITIAL_DELAY": "0.05",
                              "CALLASSIST_ARI_RECONNECT_MAX_DELAY": "0.1"})
    app = AriApp(config, EventBus(), None, tmp_path)
    with caplog.at_level(logging.ERROR, logger="ari_app.app"):
        await app.start()
        await asyncio.sleep(0.4)
        assert not app.ready
        await app.stop()
    assert "401" in caplog.text and "username/password" in caplog.text


# -- the whisper cue ------------------------------------------------------------------------------------

async def test_critical_card_plays_a_cue_only_the_agent_hears(peer, harness):
    h = await harness(CALLASSIST_CUE_ENABLED="true")
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    await h.wait_for(CardFired, lambda e: e.card.severity == "critical")
    await h.wait_until(lambda: bool(peer.playbacks))
    playback = peer.playbacks[0]
    assert call.agent is not None
    assert (playback["snoop_of"], playback["whisper"], playback["media_uri"]) == \
        (call.agent.id, "out", "tone:1000")
    cue_channel = playback["channel"]
    assert h.app.ids.kind_of(cue_channel) == "cue"
    await h.wait_until(lambda: cue_channel not in peer.channels, timeout=2)   # removed after 300 ms
    await peer.hangup(call)
    await h.wait_for(CallEnded)
    await asyncio.sleep(0.05)
    h.assert_nothing_left()
    assert len(peer.playbacks) == 1, "one cue per card, not one per event"


# -- the call timeline of a leg's audio (no PBX needed) ----------------------------------------------

class _FakeStream:
    """Stands in for RtpStream: hands out the frames it was given, then ends."""

    def __init__(self, frames: list[bytes]) -> None:
        self._frames = frames
        self.stats = type("Stats", (), {"stalls": 0})()

    async def frames(self):
        for frame in self._frames:
            yield frame


class _RecordingPipeline:
    def __init__(self) -> None:
        self.starts: dict[str, float] = {}
        self.fed: dict[str, bytearray] = {"customer": bytearray(), "agent": bytearray()}

    def start_leg(self, speaker: str, offset: float) -> None:
        self.starts[speaker] = offset

    def submit(self, speaker: str, pcm: bytes) -> None:
        self.fed[speaker] += pcm

    async def finish(self) -> None:
        pass


async def test_a_later_leg_of_the_same_speaker_keeps_the_pipeline_on_the_call_clock():
    from ari_app.media import LegMedia, MediaCall, MediaLeg
    from callassist.session import CallSession

    loop = asyncio.get_running_loop()
    pipeline = _RecordingPipeline()
    call = MediaCall("c1", started=loop.time() - 2.0,                            # 2 s into the call
                     session=CallSession("c1", pipeline, lambda e: None))  # type: ignore[arg-type]
    frame = np.full(320, 1000, np.int16).tobytes()
    first = MediaLeg("e1", "agent", stream=_FakeStream([frame] * 10))  # type: ignore[arg-type]
    await LegMedia(call, first, lambda e: None).pump()
    assert pipeline.starts["agent"] == pytest.approx(2.0 - 0.02, abs=0.05)
    assert len(pipeline.fed["agent"]) == 10 * 640

    call.started -= 3.0                  # the first agent left; a second one answers 3 s later
    second = MediaLeg("e2", "agent", stream=_FakeStream([frame] * 5))  # type: ignore[arg-type]
    await LegMedia(call, second, lambda e: None).pump()
    fed = np.frombuffer(bytes(pipeline.fed["agent"]), np.int16)
    assert pipeline.starts["agent"] == pytest.approx(1.98, abs=0.05)     # placed once only
    assert call.session is not None and call.session.fed["agent"] == round(pipeline.starts["agent"] * 16000) + len(fed)
    gap = fed[10 * 320:-5 * 320]
    assert len(gap) / 16000 == pytest.approx(3.0 - 0.2, abs=0.05) and not gap.any()
    assert second.offset == pytest.approx(second.next_sample / 16000 - 0.1, abs=0.01)


# -- one call path --------------------------------------------------------------------------------------

async def test_a_live_call_is_one_call_session_with_one_call_ended(peer, harness, monkeypatch):
    """The ARI app keeps the telephony; the call itself (recording, recognition, CallStarted,
    AgentJoined, CallEnded) is the same CallSession the demo drives."""
    from callassist.session import CallSession

    announced: list[tuple[str, str]] = []      # (method, call id) of every session announcement
    for name in ("start", "agent_joined", "end"):
        original = getattr(CallSession, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            announced.append((_name, self.call_id))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(CallSession, name, spy)

    h = await harness()
    call = peer.start_call(CUSTOMER_WAV, AGENT_WAV, answer_after=0.2)
    call_id = call.customer.id
    await h.wait_tapped(call_id)
    session = h.media.calls[call_id].session
    assert isinstance(session, CallSession)
    started = await h.wait_for(CallStarted)
    assert session.recorder is not None and started.recording == str(session.recorder.path)
    await h.wait_for(TranscriptUpdate, lambda e: e.speaker == "customer" and e.final)
    await peer.hangup(call)
    await h.app.resync("manual")               # a second way to close the call, racing the hangup
    await h.wait_for(CallEnded)
    await h.stop()                             # and a third
    assert [e.call_id for e in h.of(CallEnded)] == [call_id]
    assert announced == [("start", call_id), ("agent_joined", call_id), ("end", call_id)]


def test_the_ari_app_announces_calls_only_through_the_session():
    """No module of the ARI app builds CallStarted, AgentJoined or CallEnded itself."""
    import ast

    for path in sorted((ROOT / "ari_app").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        names |= {alias.asname or alias.name for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not names & {"CallStarted", "AgentJoined", "CallEnded"}, path.name
