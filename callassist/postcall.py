"""The accurate post-call pass: each finished recording is re-transcribed for QA.

Live recognition is tuned for speed (Vosk partials); once a call has ended, the
accurate engine (Whisper by default, [asr] post_call_engine) transcribes the
recording again and a TranscriptRevised event replaces the live lines in the
archive. Calls are processed one at a time, so QA work never competes with more
than one live decoder's worth of CPU.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from asr.engine import SpeechEngine
from callassist.audio import AudioError, read_recording
from callassist.bus import EventBus
from callassist.events import CallEnded, TranscriptLine, TranscriptRevised
from prompts.matcher import Matcher

log = logging.getLogger(__name__)


class PostCallTranscriber:
    def __init__(self, engine_factory: Callable[[], SpeechEngine], matcher: Matcher, bus: EventBus) -> None:
        self._engine_factory = engine_factory
        self._engine: SpeechEngine | None = None
        self._matcher = matcher
        self._bus = bus
        self._subscription = bus.subscribe()     # subscribe now: no CallEnded is missed
        self.done = 0

    async def run(self) -> None:
        try:
            async for event in self._subscription:
                if isinstance(event, CallEnded) and event.recording:
                    await self.transcribe(event.call_id, Path(event.recording))
        finally:
            self._subscription.close()
            if self._engine is not None:
                self._engine.close()

    async def transcribe(self, call_id: str, recording: Path) -> TranscriptRevised | None:
        from callassist.analyze import analyze_recording
        try:
            audio = await asyncio.to_thread(read_recording, recording)
            if self._engine is None:
                self._engine = await asyncio.to_thread(self._engine_factory)
            result = await analyze_recording(audio, self._engine, self._matcher, call_id=call_id)
        except AudioError as exc:
            log.error("post-call: call %s: %s", call_id, exc)
            return None
        except Exception:
            log.exception("post-call: call %s could not be re-transcribed", call_id)
            return None
        revised = TranscriptRevised(call_id, self._engine.name, tuple(
            TranscriptLine(u["speaker"], u["start"], u["end"], u["text"]) for u in result.utterances))
        self._bus.publish(revised)
        self.done += 1
        log.info("post-call: call %s re-transcribed by %s (%d lines)", call_id, self._engine.name,
                 len(revised.lines))
        return revised
