"""CallPipeline: silence gating, call-time mapping, speaker routing, card lifecycle."""
from __future__ import annotations

import numpy as np
import pytest

from asr.engine import RecognizerStream, SpeechEngine
from asr.events import EndOfSpeech, FinalTranscript
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.events import CardConfirmed, CardFired, TranscriptUpdate
from callassist.pipeline import CallPipeline, SilenceGate
from prompts.matcher import Matcher
from prompts.playbook import load_playbook

RATE = 16000


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(load_playbook())


def voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like signal (harmonics with syllable-rate modulation) the VAD accepts."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return (tone * envelope * 6000).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


class RunStream(RecognizerStream):
    """Reports each run of audio it is fed as one utterance, on its own clock."""

    def __init__(self) -> None:
        self.sample_rate = RATE
        self.fed = 0
        self._run_start: int | None = None
        self._count = 0

    async def feed(self, pcm: bytes) -> list:
        events = []
        samples = np.frombuffer(pcm, np.int16)
        for pos in range(0, len(samples), 160):          # 10 ms resolution
            loud = np.abs(samples[pos:pos + 160]).max(initial=0) > 1000
            if loud and self._run_start is None:
                self._run_start = self.fed
            elif not loud and self._run_start is not None:
                events += self._close()
            self.fed += len(samples[pos:pos + 160])
        return events

    def _close(self) -> list:
        start, end = self._run_start / RATE, self.fed / RATE
        self._run_start = None
        self._count += 1
        return [FinalTranscript(self._count - 1, f"run{self._count}", start, end), EndOfSpeech(self._count - 1, end)]

    async def finish(self) -> list:
        return self._close() if self._run_start is not None else []


class RunEngine(SpeechEngine):
    name = "runs"

    def __init__(self) -> None:
        self.streams: dict[str, RunStream] = {}

    def open_stream(self, sample_rate: int, label: str = "") -> RunStream:
        self.streams[label] = RunStream()
        return self.streams[label]


async def feed_in_frames(pipeline: CallPipeline, speaker: str, audio: np.ndarray, frame: int = 320) -> None:
    for pos in range(0, len(audio), frame):
        await pipeline.feed(speaker, audio[pos:pos + frame].tobytes())


async def test_silence_is_not_decoded_and_times_stay_on_the_call_clock(matcher):
    engine, events = RunEngine(), []
    pipeline = CallPipeline("c1", engine, matcher, events.append)
    audio = np.concatenate([silence(3), voiced(1.0), silence(4), voiced(1.5, seed=1), silence(2)])
    await feed_in_frames(pipeline, "customer", audio)
    await pipeline.finish()

    fed = engine.streams["customer"].fed
    assert fed < len(audio) * 0.6, "long silences must not reach the recogniser"
    finals = [e for e in events if isinstance(e, TranscriptUpdate) and e.final]
    assert [round(e.start, 1) for e in finals] == [3.0, 8.0]
    assert finals[0].end == pytest.approx(4.0, abs=0.05)


async def test_late_leg_is_placed_at_its_offset(matcher):
    engine, events = RunEngine(), []
    pipeline = CallPipeline("c2", engine, matcher, events.append)
    pipeline.start_leg("agent", 2.5)
    await feed_in_frames(pipeline, "agent", np.concatenate([silence(1), voiced(1), silence(1.5)]))
    await pipeline.finish()
    final = next(e for e in events if isinstance(e, TranscriptUpdate) and e.final)
    assert final.speaker == "agent"
    assert final.start == pytest.approx(3.5, abs=0.05)


async def test_card_fires_on_partial_then_is_confirmed_once(matcher):
    engine = ScriptedEngine({"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 1.0, 3.0)]})
    events = []
    pipeline = CallPipeline("c3", engine, matcher, events.append, skip_silence=False)
    await feed_in_frames(pipeline, "customer", voiced(4))
    await pipeline.finish()

    fired = [e for e in events if isinstance(e, CardFired)]
    assert "regulator_complaint" in [e.card.category for e in fired]
    assert len(fired) == len({e.card.category for e in fired}), "one card per category and utterance"
    card = next(e.card for e in fired if e.card.category == "regulator_complaint")
    assert card.speaker == "customer" and not card.confirmed
    assert card.script and card.citations
    partial_index = next(i for i, e in enumerate(events) if isinstance(e, CardFired) and e.card is card)
    final_index = next(i for i, e in enumerate(events) if isinstance(e, TranscriptUpdate) and e.final)
    assert partial_index < final_index, "the card must come from a partial, before the final"
    assert [e.card_id for e in events if isinstance(e, CardConfirmed)] == [card.card_id]


async def test_agent_speech_is_matched_as_agent(matcher):
    engine = ScriptedEngine({"agent": [ScriptedUtterance("那 你 去 法院 告 吧", 0.5, 2.0)]})
    events = []
    pipeline = CallPipeline("c4", engine, matcher, events.append, skip_silence=False)
    await feed_in_frames(pipeline, "agent", voiced(3))
    await pipeline.finish()
    categories = {e.card.category for e in events if isinstance(e, CardFired)}
    assert categories == {"agent_forbidden_phrase"}
    assert all(e.speaker == "agent" for e in events if isinstance(e, TranscriptUpdate))


def test_gate_passes_speech_with_preroll_and_hangover():
    gate = SilenceGate(hangover=0.5, preroll=0.2)
    audio = np.concatenate([silence(1), voiced(0.5), silence(2)])
    runs = gate.push(audio.tobytes())
    assert len(runs) == 1
    start, data = runs[0]
    assert start == pytest.approx(0.8 * RATE, abs=160)
    assert len(data) // 2 == pytest.approx((0.2 + 0.5 + 0.5) * RATE, abs=320)


async def test_partial_that_may_grow_into_an_exclusion_waits(matcher):
    # "投诉你" is a staff complaint, "投诉你们" (the company) is excluded from it: the partial
    # ending in 投诉你 must not flash a staff card that the final result withdraws.
    engine = ScriptedEngine({"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你 们", 1.0, 3.0)]})
    events = []
    pipeline = CallPipeline("c5", engine, matcher, events.append, skip_silence=False)
    await feed_in_frames(pipeline, "customer", voiced(4))
    await pipeline.finish()
    assert [e.card.category for e in events if isinstance(e, CardFired)] == ["regulator_complaint"]


class GatedStream(RunStream):
    """A recogniser that cannot decode until the test opens the gate (a Whisper decode
    taking seconds on a busy machine)."""

    def __init__(self, gate) -> None:
        super().__init__()
        self.gate = gate

    async def feed(self, pcm: bytes) -> list:
        await self.gate.wait()
        return await super().feed(pcm)


async def test_submit_never_waits_for_the_recogniser_and_finish_drains(matcher):
    import asyncio

    gate = asyncio.Event()
    engine = RunEngine()
    engine.open_stream = lambda rate, label="": engine.streams.setdefault(label, GatedStream(gate))
    events = []
    pipeline = CallPipeline("c6", engine, matcher, events.append)
    audio = np.concatenate([silence(1), voiced(1), silence(2)])
    for pos in range(0, len(audio), 320):
        pipeline.submit("customer", audio[pos:pos + 320].tobytes())   # returns at once
    await asyncio.sleep(0.05)
    assert pipeline.backlog > 2.5, "the speech and what follows wait for the recogniser"
    gate.set()
    await pipeline.finish()
    finals = [e for e in events if isinstance(e, TranscriptUpdate) and e.final]
    assert [round(e.start, 1) for e in finals] == [1.0]


class LooseStream(RunStream):
    """Reports each utterance as starting 0.4 s early, in the silence before it, as
    Whisper's first word often does."""

    def _close(self) -> list:
        events = super()._close()
        final = events[0]
        return [FinalTranscript(final.utterance, final.text, max(final.start - 0.4, 0), final.end + 0.3),
                events[1]]


async def test_times_in_a_skipped_pause_are_moved_out_of_it(matcher):
    engine = RunEngine()
    engine.open_stream = lambda rate, label="": engine.streams.setdefault(label, LooseStream())
    events = []
    pipeline = CallPipeline("c7", engine, matcher, events.append)
    audio = np.concatenate([silence(1), voiced(1), silence(4), voiced(1.5, seed=1), silence(2)])
    await feed_in_frames(pipeline, "customer", audio)
    await pipeline.finish()
    finals = [e for e in events if isinstance(e, TranscriptUpdate) and e.final]
    assert [round(e.start, 1) for e in finals] == [1.0, 6.0]
    assert [round(e.end, 1) for e in finals] == [2.0, 7.5]


# --- a decoder that is behind, and the live conversation measures ----------------------

async def submit_in_frames(pipeline: CallPipeline, speaker: str, audio: np.ndarray, frame: int = 320) -> None:
    for pos in range(0, len(audio), frame):
        pipeline.submit(speaker, audio[pos:pos + frame].tobytes())


@pytest.mark.parametrize("admitting", [True, False])
async def test_a_call_that_starts_while_the_decoder_is_behind_is_told_so(matcher, admitting):
    from callassist.events import CallFault
    script = {"customer": [ScriptedUtterance("我 要 投诉", 0.5, 1.5)]}
    events = []
    pipeline = CallPipeline("c9", ScriptedEngine(script, admitting=admitting), matcher, events.append)
    # under 2 s at once: more, queued faster than real time, would be a backlog (a fault of its own)
    await submit_in_frames(pipeline, "customer", np.concatenate([silence(0.5), voiced(1), silence(0.3)]))
    await pipeline.finish()
    faults = [e.problem for e in events if isinstance(e, CallFault)]
    assert len(faults) == (0 if admitting else 1)          # admitting: the control
    assert all("满负荷" in problem for problem in faults)
    assert [e.text for e in events if isinstance(e, TranscriptUpdate) and e.final] == ["我 要 投诉"]


async def test_finals_that_waited_for_the_decoder_raise_one_fault_a_minute(matcher):
    from callassist.events import CallFault
    script = {"customer": [ScriptedUtterance("第一 句", 0.5, 1.0, waited=0.0),      # in time: no fault
                           ScriptedUtterance("第二 句", 2.0, 2.5, waited=3.2),
                           ScriptedUtterance("第三 句", 4.0, 4.5, waited=4.0),      # same minute: quiet
                           ScriptedUtterance("第四 句", 66.0, 66.5, waited=5.0)]}
    events = []
    pipeline = CallPipeline("c10", ScriptedEngine(script), matcher, events.append, skip_silence=False)
    await feed_in_frames(pipeline, "customer", voiced(68), frame=16000)
    await pipeline.finish()
    faults = [e.problem for e in events if isinstance(e, CallFault)]
    assert faults == ["识别延迟 3.2 秒：本机语音识别跟不上，提示卡会晚到",
                      "识别延迟 5.0 秒：本机语音识别跟不上，提示卡会晚到"]
    assert len([e for e in events if isinstance(e, TranscriptUpdate) and e.final]) == 4


async def test_a_live_call_publishes_its_conversation_measures(matcher):
    from callassist.config import load_config
    from callassist.events import ConversationUpdated
    script = {"customer": [ScriptedUtterance("你们 乱 扣 我 话费", 0.5, 2.5)],
              "agent": [ScriptedUtterance("您 别 着急", 3.0, 4.0)]}
    events = []
    pipeline = CallPipeline("c11", ScriptedEngine(script), matcher, events.append,
                            analytics=load_config().analytics)
    pipeline.start_leg("agent", 3.0)
    await submit_in_frames(pipeline, "customer", np.concatenate([silence(0.5), voiced(2, seed=1), silence(2.5)]))
    await submit_in_frames(pipeline, "agent", np.concatenate([voiced(1, seed=2), silence(1)]))
    await pipeline._conversation.update()     # what the 5 s timer does
    await pipeline.finish()
    updates = [e for e in events if isinstance(e, ConversationUpdated)]
    assert updates, "no conversation measures published"
    legs = updates[-1].stats["legs"]
    # the agent leg starts at 3.0 s on the call's timeline, not at 0
    assert legs["customer"]["talk_seconds"] == pytest.approx(2.0, abs=0.3)
    assert legs["agent"]["talk_seconds"] == pytest.approx(1.0, abs=0.3)
    assert not updates[-1].stats["talk_over"], "the agent spoke after the customer: no talk-over"


async def test_file_analysis_measures_nothing_live(matcher):
    """The control: without [analytics] (file analysis) the pipeline publishes no measures."""
    from callassist.events import ConversationUpdated
    events = []
    pipeline = CallPipeline("c12", ScriptedEngine({}), matcher, events.append)
    await submit_in_frames(pipeline, "customer", voiced(1))
    await pipeline.finish()
    assert pipeline._conversation is None
    assert not [e for e in events if isinstance(e, ConversationUpdated)]


@pytest.mark.parametrize("seconds, faults", [(4.0, 1), (1.0, 0)])     # 1 s queued: the control
async def test_a_streaming_recogniser_that_falls_behind_is_reported(matcher, seconds, faults):
    """Vosk decodes inside feed(): when it cannot keep up, the customer's audio waits in the
    leg's queue, and more than 2 s of it there is one CallFault."""
    import asyncio

    from callassist.events import CallFault
    gate = asyncio.Event()
    engine = RunEngine()
    engine.open_stream = lambda rate, label="": engine.streams.setdefault(label, GatedStream(gate))
    events = []
    pipeline = CallPipeline("c13", engine, matcher, events.append)
    await submit_in_frames(pipeline, "customer", voiced(seconds))
    gate.set()
    await pipeline.finish()
    problems = [e.problem for e in events if isinstance(e, CallFault)]
    assert len(problems) == faults and all(p.startswith("识别延迟") for p in problems)
    assert [e for e in events if isinstance(e, TranscriptUpdate) and e.final], "the audio was still decoded"
