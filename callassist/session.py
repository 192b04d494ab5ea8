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
    """Audio is recorded as it arrives; recognition runs in one task per leg behind a
    queue, so a slow decode (Whisper transcribes a whole segment at once) never holds
    up the recording or the RTP receiver. The queue is unbounded on purpose: audio is
    never dropped, a recogniser that falls behind only delays its cards."""

    def __init__(self, call_id: str, pipeline: CallPipeline, publish: Publish,
                 recorder: Recorder | None = None) -> None:
        self.call_id = call_id
        self.pipeline = pipeline
        self.recorder = recorder
        self._publish = publish
        self._started = time.monotonic()
        self._received: dict[str, int] = {}     # samples received per leg
        self._offsets: dict[str, int] = {}      # where each leg starts on the call timeline
        self._queues: dict[str, asyncio.Queue[bytes | None]] = {}
        self._decoders: dict[str, asyncio.Task] = {}
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
        if speaker not in self._queues:
            self._queues[speaker] = asyncio.Queue()
            self._decoders[speaker] = asyncio.create_task(
                self._decode(speaker, self._queues[speaker]), name=f"decode-{self.call_id}-{speaker}")
        self._queues[speaker].put_nowait(pcm)

    @property
    def backlog(self) -> float:
        """Seconds of audio waiting for the recognisers (both legs)."""
        return sum(len(b) for q in self._queues.values() for b in q._queue if b) / 2 / PIPELINE_RATE

    async def _decode(self, speaker: Speaker, queue: asyncio.Queue[bytes | None]) -> None:
        while (pcm := await queue.get()) is not None:
            try:
                await self.pipeline.feed(speaker, pcm)
            except Exception:           # a decoder fault must not end the call or the recording
                log.exception("call %s: recognition failed on the %s leg", self.call_id, speaker)

    async def end(self) -> None:
        """Flush recognition, close the recording, announce the end. Idempotent."""
        if self.ended:
            return
        self.ended = True
        duration = self.now_sample() / PIPELINE_RATE
        recording = None
        try:
            for queue in self._queues.values():
                queue.put_nowait(None)
            await asyncio.gather(*self._decoders.values(), return_exceptions=True)
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
        for task in self._decoders.values():
            task.cancel()
        self.pipeline.close()
