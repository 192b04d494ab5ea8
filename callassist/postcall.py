"""The post-call pass over each finished recording: the accurate re-transcription for QA
and the call's conversation analytics.

Live recognition is tuned for speed (Vosk partials); once a call has ended, the
accurate engine (Whisper by default, [asr] post_call_engine) transcribes the
recording again and a TranscriptRevised event replaces the live lines in the
archive. Then the conversation analytics (callassist.conversation.analyse_call: talk,
silences, talk-over, agitation, sentiment) are computed from the recording and the best
transcript there is (the revised one, else the live final lines this pass collected from
the bus) and saved (`save_stats`, e.g. the store's AnalyticsStore.save_stats). Reading,
decoding, analysing and saving all run off the event loop. Calls are processed one at a
time, so QA work never competes with more than one live decoder's worth of CPU.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asr.engine import SpeechEngine
from callassist.audio import AudioError, Recording, read_recording
from callassist.bus import EventBus
from callassist.config import AnalyticsConfig
from callassist.events import CallEnded, TranscriptLine, TranscriptRevised, TranscriptUpdate
from prompts.matcher import Matcher

log = logging.getLogger(__name__)

SaveStats = Callable[[str, dict[str, Any]], None]      # (call id, ConversationStats.to_dict()); may block


class PostCallPass:
    def __init__(self, engine_factory: Callable[[], SpeechEngine] | None, matcher: Matcher, bus: EventBus,
                 *, save_stats: SaveStats | None = None, analytics: AnalyticsConfig | None = None,
                 owns_engine: bool = True) -> None:
        """`engine_factory` None: no re-transcription; `save_stats` None: no analytics;
        `owns_engine` False: the factory hands over the live engine, which is not closed here."""
        self._engine_factory = engine_factory
        self._owns_engine = owns_engine
        self._engine: SpeechEngine | None = None
        self._matcher = matcher
        self._bus = bus
        self._save_stats = save_stats
        self._analytics = analytics
        self._live_lines: dict[str, dict[tuple[str, int], TranscriptLine]] = {}   # call -> final lines
        self._subscription = bus.subscribe()     # subscribe now: no CallEnded is missed
        self.done = 0

    async def run(self) -> None:
        try:
            async for event in self._subscription:
                if isinstance(event, TranscriptUpdate):
                    if event.final and self._save_stats is not None:
                        self._live_lines.setdefault(event.call_id, {})[(event.speaker, event.utterance)] = \
                            TranscriptLine(event.speaker, event.start, event.end, event.text)
                elif isinstance(event, CallEnded):
                    live = list(self._live_lines.pop(event.call_id, {}).values())
                    if event.recording:
                        await self.process(event.call_id, Path(event.recording), live)
        finally:
            self._subscription.close()
            if self._engine is not None and self._owns_engine:
                self._engine.close()

    async def process(self, call_id: str, recording: Path, live_lines: list[TranscriptLine]) -> None:
        """Re-transcribe (if there is an engine), then analyse (if there is somewhere to save)."""
        if self._engine_factory is None and self._save_stats is None:
            return
        try:
            audio = await asyncio.to_thread(read_recording, recording)
        except AudioError as exc:
            log.error("post-call: call %s: %s", call_id, exc)
            return
        lines = live_lines
        if self._engine_factory is not None:
            revised = await self.transcribe(call_id, audio)
            if revised is not None:
                lines = list(revised.lines)
        if self._save_stats is not None:
            await self.analyse(call_id, audio, lines)

    async def transcribe(self, call_id: str, recording: Path | Recording) -> TranscriptRevised | None:
        from callassist.analyze import analyze_recording
        assert self._engine_factory is not None
        try:
            audio = recording if isinstance(recording, Recording) else \
                await asyncio.to_thread(read_recording, recording)
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

    async def analyse(self, call_id: str, audio: Recording, lines: list[TranscriptLine]) -> dict[str, Any] | None:
        """The call's conversation stats, computed and saved on worker threads; None if that failed."""
        from callassist.conversation import analyse_call
        assert self._save_stats is not None
        settings = {} if self._analytics is None else {
            "min_silence": self._analytics.min_silence_s, "min_talk_over": self._analytics.min_talk_over_s,
            "baseline": self._analytics.baseline_s}
        try:
            stats = (await asyncio.to_thread(analyse_call, audio, lines, **settings)).to_dict()
            await asyncio.to_thread(self._save_stats, call_id, stats)
        except Exception:
            log.exception("post-call: call %s: conversation analytics failed", call_id)
            return None
        log.info("post-call: call %s analysed (%.0f s, talk %.0f/%.0f s)", call_id, stats["duration"],
                 stats["legs"]["customer"]["talk_seconds"], stats["legs"]["agent"]["talk_seconds"])
        return stats
