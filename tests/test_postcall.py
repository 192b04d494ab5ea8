"""Post-call pass: a finished recording is re-transcribed and replaces the live lines."""
from __future__ import annotations

import asyncio

import numpy as np
import soundfile as sf

from agent_ui.store import Store
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.events import CallEnded, CallStarted, TranscriptRevised, TranscriptUpdate
from callassist.postcall import PostCallPass
from prompts.matcher import Matcher
from prompts.playbook import load_playbook


async def test_recording_is_retranscribed_and_replaces_the_live_transcript(tmp_path):
    path = tmp_path / "call.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal((16000 * 3, 2)) * 3000).astype(np.int16), 16000)
    accurate = ScriptedEngine({"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.5, 2.0)],
                               "agent": [ScriptedUtterance("您好 请 讲", 0.1, 0.4)]})
    bus, store = EventBus(), Store(tmp_path / "db.sqlite")
    recorder = asyncio.create_task(store.events.run(bus))
    transcriber = PostCallPass(lambda: accurate, Matcher(load_playbook()), bus)
    worker = asyncio.create_task(transcriber.run())
    revised = bus.subscribe()

    bus.publish(CallStarted("c1"))
    bus.publish(TranscriptUpdate("c1", "customer", 0, "我 要 去 公信 不 投诉", 0.5, 2.0, True))
    bus.publish(CallEnded("c1", 3.0, recording=str(path)))
    event = await asyncio.wait_for(_first(revised, TranscriptRevised), 30)
    await asyncio.sleep(0.1)

    assert [(line.speaker, line.text) for line in event.lines] == [
        ("agent", "您好 请 讲"), ("customer", "我 要 去 工信部 投诉 你们")]
    assert [u["text"] for u in store.calls.get_call("c1")["utterances"]] == ["您好 请 讲", "我 要 去 工信部 投诉 你们"]
    assert store.calls.list_calls(text="工信部投诉"), "search finds the accurate transcript"
    for task in (worker, recorder):
        task.cancel()


async def test_unreadable_recording_is_reported_and_skipped(tmp_path, caplog):
    bus = EventBus()
    transcriber = PostCallPass(lambda: ScriptedEngine({}), Matcher(load_playbook()), bus)
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    assert await transcriber.transcribe("c2", bad) is None
    assert "broken.wav" in caplog.text


async def _first(subscription, kind):
    async for event in subscription:
        if isinstance(event, kind):
            return event


async def test_the_live_engine_shared_for_the_exact_pass_is_left_open(tmp_path):
    """serve hands Whisper's live engine to the post-call pass (its live decodes are cut for
    speed): the pass must not close it when it stops; an engine of its own it does close."""
    path = tmp_path / "call.wav"
    sf.write(path, np.zeros((16000 * 2, 2), np.int16), 16000)
    for owns in (False, True):
        bus = EventBus()
        engine = ScriptedEngine({"customer": [ScriptedUtterance("您好", 0.1, 0.4)]})
        post_call = PostCallPass(lambda engine=engine: engine, Matcher(load_playbook()), bus, owns_engine=owns)
        worker = asyncio.create_task(post_call.run())
        revised = bus.subscribe()
        bus.publish(CallEnded(f"c-{owns}", 2.0, recording=str(path)))
        await asyncio.wait_for(_first(revised, TranscriptRevised), 30)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        assert engine._closed is owns
