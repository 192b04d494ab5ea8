"""The media seam (ari_app.media): a call's media on a LocalMediaHost without any ARI,
and AriApp.move_call, the controller's answer to a lost media host, on the ARI test peer
(and on the real Asterisk): the call's media is opened again with the recording
continued in the same file, every leg is tapped again, the audio after the move is heard
and transcribed under new utterance numbers, and one CallFault names the seconds of the
call that were not heard."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ari_app.media import LocalMediaHost, OpenedCall, ResumeInfo
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.config import load_config
from callassist.events import AgentJoined, CallEnded, CallFault, CallStarted, TranscriptUpdate
from callassist.pipeline import CallPipeline
from ari_peer import AriPeer, load_audio
from prompts.matcher import Matcher
from prompts.playbook import load_playbook
from retap_app import frames, make_app
from rtp_sender import RtpSender
from test_retap import heard, kept_events, recorded_seconds, wait_until

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "audio" / "mandarin-samples" / "01_aishell1_BAC009S0764W0121.wav"
RATE = 16000
MOVE_FAULT = re.compile(r"^识别节点 local 失联：第 ([\d.]+)–([\d.]+) 秒未收听；已转至节点 local$")

pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"{SAMPLE} not found")


def speech(seconds: float) -> np.ndarray:
    voice = load_audio(SAMPLE)
    assert voice is not None
    return np.tile(voice, int(seconds * RATE / len(voice)) + 1)[:int(seconds * RATE)]


def test_resume_info_and_opened_call_travel_as_plain_data() -> None:
    resume = ResumeInfo(200_000, 1_700_000_000.25, Path("/data/recordings/c1.flac"), 12.5)
    assert ResumeInfo.from_dict(resume.to_dict()) == resume
    assert ResumeInfo.from_dict(ResumeInfo(1, 2.0).to_dict()) == ResumeInfo(1, 2.0)
    opened = OpenedCall("/data/recordings/c1.wav", 3.5, "; note")
    assert OpenedCall.from_dict(opened.to_dict()) == opened
    assert OpenedCall.from_dict(OpenedCall().to_dict()) == OpenedCall()


async def test_local_media_host_records_and_transcribes_a_call_without_ari(tmp_path: Path) -> None:
    """What the worker role serves: open_call, a leg's RTP sent to the address open_leg
    gives, end_call -> CallEnded with the recording; no AriApp anywhere."""
    config = load_config(env={"CALLASSIST_RTP_PORT_MIN": "45000", "CALLASSIST_RTP_PORT_MAX": "45099",
                              "CALLASSIST_RECORDING_FORMAT": "wav"})
    bus = EventBus()
    engine = ScriptedEngine({"customer": [ScriptedUtterance("我 要 投诉", 0.3, 1.5)]}, endpoint_delay=0.2)
    host: LocalMediaHost

    def pipeline(call_id: str) -> CallPipeline:
        return CallPipeline(call_id, engine, Matcher(load_playbook()), host.publisher_for(call_id),
                            skip_silence=False)
    host = LocalMediaHost(config, bus.publish, pipeline, tmp_path)
    async with kept_events(bus) as events:
        opened = await host.open_call("c1", "13800000000", time.time())
        assert opened.recording == str(tmp_path / "c1.wav") and opened.heard_until is None
        address, port = await host.open_leg("c1", "customer", "em-1")
        assert (address, port) == (config.rtp.advertise_host, port) and 45000 <= port <= 45099
        assert await host.open_leg("c1", "customer", "em-1") == (address, port)   # asked again: same leg
        await host.leg_ready("c1", "em-1")
        sent = await RtpSender(speech(2.5).astype("<i2").tobytes(), ("127.0.0.1", port)).run()
        assert sent.sent > 100
        await wait_until(lambda: any(isinstance(e, TranscriptUpdate) and e.final for e in events),
                         what="a final transcript")
        leg = host.leg("c1", "em-1")
        assert leg is not None and leg.frames >= 0.9 * sent.sent
        await host.agent_joined("c1", "agent-1")
        await host.end_call("c1", 3.0)
        await host.end_call("c1", 3.0)                 # idempotent: nothing more
        await host.close_leg("c1", "em-1")
        await wait_until(lambda: any(isinstance(e, CallEnded) for e in events), what="CallEnded")
    kinds = [type(e) for e in events if not isinstance(e, TranscriptUpdate)]
    assert kinds[0] is CallStarted and kinds.count(CallEnded) == 1 and AgentJoined in kinds
    ended = next(e for e in events if isinstance(e, CallEnded))
    assert ended.recording == str(tmp_path / "c1.wav") and ended.duration == 3.0
    audio, _ = sf.read(str(tmp_path / "c1.wav"), dtype="int16", always_2d=True)
    assert heard(audio[int(0.5 * RATE):int(2.0 * RATE), 0])       # the customer's RTP is in the file
    assert not host.calls and host.ports.in_use == 0
    await host.close()


@pytest.mark.parametrize("fmt", ["wav", "flac"])
async def test_a_moved_call_is_heard_again_with_the_gap_in_its_record(peer: AriPeer, tmp_path: Path,
                                                                       fmt: str) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    bus = EventBus()
    async with kept_events(bus) as events:
        app = make_app(peer.url, recordings, bus, fmt, 43000)
        await app.start()
        try:
            await app.wait_ready(10)
            call = peer.start_call(speech(40), speech(40), answer_after=0.2)
            call_id = call.customer.id
            live = recordings / (f"{call_id}.wav" if fmt == "wav" else f"{call_id}.flac.partial.wav")

            def customer_lines() -> list[TranscriptUpdate]:
                return [e for e in events if isinstance(e, TranscriptUpdate) and e.call_id == call_id
                        and e.speaker == "customer" and e.final]
            await wait_until(lambda: call_id in app.calls and len(app.calls[call_id].legs) == 2 and all(
                leg.ready and frames(app, call_id, leg) > 5 for leg in app.calls[call_id].legs.values()),
                what="tapped")
            await wait_until(lambda: recorded_seconds(live) >= 2.5 and len(customer_lines()) >= 2,
                             what="audio and transcript before the move")
            lines_before = customer_lines()
            assert all(line.utterance < 100_000 for line in lines_before)        # control
            old_legs = dict(app.calls[call_id].legs)
            old_objects = {i for leg in old_legs.values() for i in leg.object_ids}
            moving_at = app.calls[call_id].elapsed(asyncio.get_running_loop().time())

            await app.move_call(call_id, "识别节点 local 失联")

            # one fault, naming the seconds not heard
            def faults() -> list[str]:
                return [e.problem for e in events if isinstance(e, CallFault) and e.call_id == call_id]
            await wait_until(lambda: bool(faults()), what="the move's fault")
            match = MOVE_FAULT.match(faults()[0])
            assert match, faults()
            gap_from, gap_to = map(float, match.groups())
            assert moving_at - 1.5 <= gap_from <= gap_to and gap_to - moving_at <= 1.0

            # every leg tapped again; the old taps deleted from Asterisk
            await wait_until(lambda: all(
                (leg := app.calls[call_id].legs.get(s)) is not None and leg is not old_legs[s] and leg.ready
                and frames(app, call_id, leg) > 5 for s in ("customer", "agent")), what="tapped again")
            await wait_until(lambda: not old_objects & {*peer.our_objects()[0], *peer.our_objects()[1]},
                             what="the old taps deleted")
            assert len(peer.our_objects()[0]) == 4          # control: the new taps are there

            # heard again: new lines, numbered past the earlier ones, after the gap
            await wait_until(lambda: any(line.utterance >= 100_000 for line in customer_lines()),
                             what="transcript after the move")
            after = [line for line in customer_lines() if line.utterance >= 100_000]
            assert all(line.start >= gap_to - 0.1 for line in after)
            assert customer_lines()[:len(lines_before)] == lines_before
            await wait_until(lambda: recorded_seconds(live) >= gap_to + 2.0, what="recording continued")
            await peer.hangup(call)
            await wait_until(lambda: any(isinstance(e, CallEnded) for e in events), what="the call's end")
            assert len(faults()) == 1, faults()
        finally:
            await app.stop()

    # announced once: the move starts no second call and ends none
    assert [type(e) for e in events if isinstance(e, (CallStarted, CallEnded))] == [CallStarted, CallEnded]
    ended = next(e for e in events if isinstance(e, CallEnded))
    path = recordings / f"{call_id}.{fmt}"
    assert ended.recording == str(path)
    assert sorted(p.name for p in recordings.iterdir()) == [path.name]   # the same file, continued
    audio, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == RATE and abs(len(audio) / RATE - ended.duration) <= 0.5   # one timeline
    assert heard(audio[int((gap_from - 1.5) * RATE):int((gap_from - 0.2) * RATE), 0])   # before the move
    assert heard(audio[int((gap_to + 0.5) * RATE):int((gap_to + 1.5) * RATE), 0])       # after it
    assert heard(audio[int((gap_to + 0.5) * RATE):int((gap_to + 1.5) * RATE), 1])


@pytest.mark.asterisk
async def test_a_moved_call_on_real_asterisk_is_tapped_again_on_one_timeline(asterisk, tmp_path: Path) -> None:
    """The same on the bundled Asterisk (a Local-channel call through the sample dialplan):
    the move's new externalMedia channels send to the new legs, the old taps are deleted,
    the call ends cleanly with one recording on one timeline."""
    from asterisk_fixture import network_for, no_leftovers
    from test_retap import our_objects

    ari = asterisk.ari
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    sounds.chmod(0o755)
    for name in ("customer", "agent"):
        path = sounds / f"{name}.sln16"
        speech(60).astype("<i2").tofile(path)
        path.chmod(0o644)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    bus = EventBus()
    async with network_for(ari) as network, kept_events(bus) as events:
        app = make_app(ari.url, recordings, bus, "wav", 43500, ari.user, ari.password)
        call_id = ""
        try:
            await app.start()
            await app.wait_ready(15)
            call_id = await network.originate(str(sounds / "customer"), str(sounds / "agent"))
            wav = recordings / f"{call_id}.wav"
            await wait_until(lambda: call_id in app.calls and len(app.calls[call_id].legs) == 2 and all(
                leg.ready and frames(app, call_id, leg) > 5 for leg in app.calls[call_id].legs.values()),
                timeout=20, what="both parties tapped")
            await wait_until(lambda: recorded_seconds(wav) >= 3.0, timeout=20, what="3 s recorded")
            old_legs = dict(app.calls[call_id].legs)
            old_objects = {i for leg in old_legs.values() for i in leg.object_ids}
            assert old_objects <= await our_objects(network)          # control: they exist

            await app.move_call(call_id, "识别节点 local 失联")

            await wait_until(lambda: any(isinstance(e, CallFault) for e in events), what="the move's fault")
            (fault,) = [e.problem for e in events if isinstance(e, CallFault)]
            match = MOVE_FAULT.match(fault)
            assert match, fault
            gap_from, gap_to = map(float, match.groups())
            await wait_until(lambda: all(
                (leg := app.calls[call_id].legs.get(s)) is not None and leg is not old_legs[s] and leg.ready
                and frames(app, call_id, leg) > 5 for s in ("customer", "agent")), timeout=20, what="tapped again")
            assert not old_objects & await our_objects(network), "the old taps deleted"
            await wait_until(lambda: recorded_seconds(wav) >= gap_to + 2.0, what="recording continued")
            await network.hangup(call_id)
            await wait_until(lambda: any(isinstance(e, CallEnded) for e in events), timeout=20, what="the call's end")
        finally:
            await app.stop()
            if call_id:
                await network.hangup(call_id)
        left = await no_leftovers(network, {call_id})
        assert not left, left
    ended = next(e for e in events if isinstance(e, CallEnded))
    assert ended.recording == str(wav) and sorted(p.name for p in recordings.iterdir()) == [wav.name]
    audio, _ = sf.read(str(wav), dtype="int16", always_2d=True)
    assert abs(len(audio) / RATE - ended.duration) <= 0.5
    assert heard(audio[int((gap_from - 1.0) * RATE):int((gap_from - 0.1) * RATE), 0])
    assert heard(audio[int((gap_to + 0.5) * RATE):int((gap_to + 1.5) * RATE), 0])
    assert heard(audio[int((gap_to + 0.5) * RATE):int((gap_to + 1.5) * RATE), 1])


class HostThatDiesAtTheEnd(LocalMediaHost):
    """A media host whose first end_call fails as a dead worker's does (failure injection)."""
    failures = 1

    async def end_call(self, call_id: str, duration: float) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("识别节点 w1 无响应")
        await super().end_call(call_id, duration)


async def test_a_call_whose_host_cannot_end_it_is_ended_on_another(peer: AriPeer, tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    bus = EventBus()
    async with kept_events(bus) as events:
        template = make_app(peer.url, recordings, bus, "wav", 43600)
        lines = {speaker: [ScriptedUtterance(f"{speaker} 第 {i} 句", i + 0.1, i + 0.6) for i in range(20)]
                 for speaker in ("customer", "agent")}
        engine, matcher = ScriptedEngine(lines, endpoint_delay=0.2), Matcher(load_playbook())
        host = HostThatDiesAtTheEnd(template.config, bus.publish, lambda call_id: CallPipeline(
            call_id, engine, matcher, host.publisher_for(call_id)), recordings)
        app = make_app(peer.url, recordings, bus, "wav", 43600, media=host)
        await app.start()
        try:
            await app.wait_ready(10)
            call = peer.start_call(speech(10), speech(10), answer_after=0.2)
            call_id = call.customer.id
            await wait_until(lambda: call_id in app.calls and len(app.calls[call_id].legs) == 2 and all(
                leg.ready and frames(app, call_id, leg) > 5 for leg in app.calls[call_id].legs.values()),
                what="tapped")
            await asyncio.sleep(1.0)
            await peer.hangup(call)
            await wait_until(lambda: any(isinstance(e, CallEnded) for e in events), what="the call's end")
            await wait_until(lambda: not app.calls, what="the call forgotten")
        finally:
            await app.stop()
            await host.close()
    assert host.failures == 0                                    # control: the first end did fail
    ended = [e for e in events if isinstance(e, CallEnded)]
    assert len(ended) == 1 and ended[0].recording == str(recordings / f"{call_id}.wav")
    assert sorted(p.name for p in recordings.iterdir()) == [f"{call_id}.wav"]
