"""CallSession: legs on one timeline, recording and recognition from the same audio."""
from __future__ import annotations

import numpy as np
import soundfile as sf

from ari_app.recorder import CallRecorder
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.events import AgentJoined, CallEnded, CallStarted, CardFired, TranscriptUpdate
from callassist.pipeline import CallPipeline
from callassist.session import CallSession
from prompts.matcher import Matcher
from prompts.playbook import load_playbook

RATE = 16000


def noise(seconds: float, level: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * level).astype(np.int16).tobytes()


async def test_a_call_is_announced_recorded_and_recognised(tmp_path):
    engine = ScriptedEngine({"customer": [ScriptedUtterance("再 不 解决 我 就 找 记者 曝光", 0.5, 2.0)],
                             "agent": [ScriptedUtterance("您好 请问 有 什么 可以 帮 您", 0.2, 1.0)]})
    events = []
    recorder = CallRecorder(tmp_path / "call.wav", RATE, "wav")
    session = CallSession("s1", CallPipeline("s1", engine, Matcher(load_playbook()), events.append,
                                             skip_silence=False), events.append, recorder)
    session.start(caller="13800000000", source="demo")
    customer = noise(3.0, 3000, 1)
    frame = 640
    for pos in range(0, len(customer), frame):
        if pos == frame * 50:                      # the agent answers one second in
            session.start_leg("agent", endpoint="PJSIP/1001")
        await session.audio("customer", customer[pos:pos + frame])
        if pos >= frame * 50:
            await session.audio("agent", noise(0.02, 8000, pos))
    await session.end()

    kinds = [type(e) for e in events]
    assert kinds[0] is CallStarted and kinds[-1] is CallEnded
    assert AgentJoined in kinds
    fired = [e.card for e in events if isinstance(e, CardFired)]
    assert [c.category for c in fired] == ["media_exposure"] and fired[0].speaker == "customer"
    agent_lines = [e for e in events if isinstance(e, TranscriptUpdate) and e.speaker == "agent" and e.final]
    assert agent_lines and agent_lines[0].start >= 1.0, "the agent leg starts where it joined"

    ended = events[-1]
    audio, rate = sf.read(ended.recording, dtype="int16")
    assert rate == RATE and audio.shape[1] == 2
    assert abs(np.abs(audio[: RATE // 2, 1]).mean()) < 1, "agent channel silent before it joined"
    assert np.abs(audio[int(1.2 * RATE):, 1]).mean() > 1000


async def test_end_is_idempotent_and_audio_after_it_is_ignored(tmp_path):
    events = []
    session = CallSession("s2", CallPipeline("s2", ScriptedEngine({}), Matcher(load_playbook()),
                                             events.append), events.append)
    session.start()
    await session.audio("customer", noise(0.1, 100, 0))
    await session.end()
    await session.end()
    await session.audio("customer", noise(0.1, 100, 0))
    assert sum(isinstance(e, CallEnded) for e in events) == 1
