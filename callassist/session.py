"""What every call source does with a call: recognise it, record it, announce it.

The ARI app (live calls) and the demo both drive a CallSession: they say when the
call and each leg start, hand over each leg's audio, and say when it ends. The
session keeps both legs on one timeline (the customer leg's sample clock), so the
recording, the transcript times and the cards line up exactly.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Protocol

from callassist.audio import PIPELINE_RATE
from callassist.events import AgentJoined, CallEnded, CallStarted, Speaker
from callassist.pipeline import CallPipeline, Publish

log = logging.getLogger(__name__)


class Recorder(Protocol):
    path: Path

    def write(self, speaker: Speaker, pcm: bytes, at_sample: int | None = None) -> None: ...

    def close(self) -> float: ...


class CallSession:
    """Audio is recorded as it arrives and submitted to the pipeline's queue, so a slow
    decode never holds up the recording or the audio source."""

    def __init__(self, call_id: str, pipeline: CallPipeline, publish: Publish,
                 recorder: Recorder | None = None) -> None:
        self.call_id = call_id
        self.pipeline = pipeline
        self.recorder = recorder
        self._publish = publish
        self._started = time.monotonic()
        self._received: dict[str, int] = {}     # samples received per leg
        self._offsets: dict[str, int] = {}      # where each leg starts on the call timeline
        self.ended = False

    def start(self, caller: str = "", source: str = "ari") -> None:
        self._publish(CallStarted(self.call_id, caller=caller, source=source))
        self.start_leg("customer")

    def now_sample(self) -> int:
        """The call timeline's current position: the customer leg's clock, or the wall clock
        before the customer's first audio (or if it fell behind, e.g. RTP stalled)."""
        wall = int((time.monotonic() - self._started) * PIPELINE_RATE)
        customer = self._offsets.get("customer", 0) + self._received.get("customer", 0)
        return customer if customer >= wall - PIPELINE_RATE else wall

    def start_leg(self, speaker: Speaker, endpoint: str = "") -> None:
        """Call when a leg's tap is ready; its audio is placed from this moment on."""
        at = 0 if speaker == "customer" else self.now_sample()
        self._offsets[speaker] = at
        self._received[speaker] = 0
        self.pipeline.start_leg(speaker, at / PIPELINE_RATE)
        if speaker == "agent":
            self._publish(AgentJoined(self.call_id, endpoint))

    async def audio(self, speaker: Speaker, pcm: bytes) -> None:
        if self.ended:
            return
        if speaker not in self._offsets:
            self.start_leg(speaker)
        if self.recorder:
            first = self._received[speaker] == 0
            self.recorder.write(speaker, pcm, self._offsets[speaker] if first else None)
        self._received[speaker] += len(pcm) // 2
        self.pipeline.submit(speaker, pcm)

    async def end(self) -> None:
        """Flush recognition, close the recording, announce the end. Idempotent."""
        if self.ended:
            return
        self.ended = True
        duration = self.now_sample() / PIPELINE_RATE
        recording = None
        try:
            await self.pipeline.finish()
        finally:
            if self.recorder:
                try:
                    # FLAC is encoded on close: keep it off the event loop.
                    duration = await asyncio.to_thread(self.recorder.close) or duration
                    recording = str(self.recorder.path)
                except OSError as exc:
                    log.error("call %s: recording could not be finalised: %s", self.call_id, exc)
            self._publish(CallEnded(self.call_id, duration=round(duration, 3), recording=recording))

    def abort(self) -> None:
        """Tear down without flushing (the app is shutting down mid-call)."""
        self.ended = True
        self.pipeline.close()
