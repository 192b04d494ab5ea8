"""What every call source does with a call: recognise it, record it, announce it.

The ARI app (live calls) and the demo both drive a CallSession: they say when the
call starts and an agent joins, hand over each leg's audio, and say when it ends. The
session is the only place a call's CallStarted, AgentJoined and CallEnded come from,
and it keeps both legs on one timeline, so the recording, the transcript times and
the cards line up exactly.

Two ways in, one timeline: `audio()` for a source whose legs are contiguous streams
(the demo: the session places each leg when it starts), `place()` for a source that
knows where each frame belongs on the call clock (the ARI app: RTP stalls, re-tapped
legs and a second agent leave gaps and overlaps that only the telephony side sees).
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Protocol

from callassist.audio import PIPELINE_RATE
from callassist.events import AgentJoined, CallEnded, CallFault, CallStarted, Speaker
from callassist.pipeline import Publish

log = logging.getLogger(__name__)

ZERO_CHUNK = PIPELINE_RATE * 10      # silence fed to a pipeline in chunks of 10 s


class Recorder(Protocol):
    path: Path

    def write(self, speaker: Speaker, pcm: bytes, at_sample: int | None = None) -> None: ...

    def close(self) -> float: ...


class SessionPipeline(Protocol):
    """What the session needs of callassist.pipeline.CallPipeline."""

    def submit(self, speaker: Speaker, pcm: bytes) -> None: ...

    async def finish(self) -> None: ...


class CallSession:
    """Audio is recorded as it arrives and submitted to the pipeline's queue, so a slow
    decode never holds up the recording or the audio source. A recorder or pipeline that
    fails is dropped with a CallFault; the rest of the call goes on."""

    def __init__(self, call_id: str, pipeline: SessionPipeline | None, publish: Publish,
                 recorder: Recorder | None = None) -> None:
        self.call_id = call_id
        self.pipeline = pipeline
        self.recorder = recorder
        self._publish = publish
        self._started = time.monotonic()
        self._received: dict[str, int] = {}     # audio(): samples received per leg
        self._offsets: dict[str, int] = {}      # audio(): where each leg starts on the timeline
        self.fed: dict[str, int] = {}           # timeline sample the pipeline has per speaker
        self.ended = False

    def start(self, caller: str = "", source: str = "ari") -> None:
        """Announce the call; its recording is linked from the start (a crash leaves it found)."""
        recording = str(self.recorder.path) if self.recorder is not None else None
        self._publish(CallStarted(self.call_id, caller=caller, source=source, recording=recording))

    def agent_joined(self, endpoint: str) -> None:
        self._publish(AgentJoined(self.call_id, endpoint))

    def now_sample(self) -> int:
        """The call timeline's current position: the customer leg's clock, or the wall clock
        before the customer's first audio (or if it fell behind, e.g. RTP stalled)."""
        wall = int((time.monotonic() - self._started) * PIPELINE_RATE)
        customer = self._offsets.get("customer", 0) + self._received.get("customer", 0)
        return customer if customer >= wall - PIPELINE_RATE else wall

    def start_leg(self, speaker: Speaker, endpoint: str = "") -> None:
        """For audio(): call when a leg's audio source is ready; its audio is placed from
        this moment on."""
        at = 0 if speaker == "customer" else self.now_sample()
        self._offsets[speaker] = at
        self._received[speaker] = 0
        self._place_leg(speaker, at)
        if speaker == "agent":
            self.agent_joined(endpoint)

    async def audio(self, speaker: Speaker, pcm: bytes) -> None:
        """A leg's next audio, right after its previous audio."""
        if self.ended:
            return
        if speaker not in self._offsets:
            self.start_leg(speaker)
        at = self._offsets[speaker] + self._received[speaker]
        self._received[speaker] += len(pcm) // 2
        self.place(speaker, pcm, at)

    def place(self, speaker: Speaker, pcm: bytes, at: int) -> None:
        """A leg's audio starting at timeline sample `at`: recorded there, and fed so that
        the pipeline's clock for the speaker stays the call's (silence for a gap, an
        overlap dropped). Never waits: decoding is queued."""
        if self.ended:
            return
        if self.recorder is not None:
            try:
                self.recorder.write(speaker, pcm, at)
            except (OSError, ValueError, RuntimeError) as exc:
                log.error("call %s: recording stopped: %s", self.call_id, exc)
                self.recorder = None
                self._publish(CallFault(self.call_id, f"recording stopped: {exc}"))
        if self.pipeline is None:
            return
        if speaker not in self.fed:          # the speaker's first leg: place it on the timeline
            self._place_leg(speaker, at)
        fed = self.fed[speaker]
        try:
            while fed < at:                  # a later leg of the same speaker, or a stall
                chunk = min(at - fed, ZERO_CHUNK)
                self.pipeline.submit(speaker, bytes(2 * chunk))
                fed += chunk
            skip = min(fed - at, len(pcm) // 2)
            if skip > 0:                     # overlap (a re-tapped leg): drop what was covered
                pcm = pcm[2 * skip:]
            if pcm:
                self.pipeline.submit(speaker, pcm)
                fed += len(pcm) // 2
        except Exception as exc:             # the recogniser failed: keep recording
            log.exception("call %s: pipeline failed on %s audio", self.call_id, speaker)
            self.pipeline = None
            self._publish(CallFault(self.call_id, f"speech pipeline failed: {exc}"))
            return
        self.fed[speaker] = fed

    def _place_leg(self, speaker: Speaker, at: int) -> None:
        if self.pipeline is None or speaker in self.fed:
            return
        start_leg = getattr(self.pipeline, "start_leg", None)
        if start_leg is not None:
            start_leg(speaker, at / PIPELINE_RATE)
        self.fed[speaker] = at

    async def end(self, duration: float | None = None) -> None:
        """Flush recognition, close the recording, announce the end. Idempotent.
        `duration`: the source's own measure of the call (the ARI app's wall clock);
        without it, the recording's length or the timeline's position."""
        if self.ended:
            return
        self.ended = True
        measured = duration if duration is not None else self.now_sample() / PIPELINE_RATE
        recording = None
        if self.pipeline is not None:
            try:
                await self.pipeline.finish()
            except Exception:
                log.exception("call %s: pipeline finish failed", self.call_id)
        if self.recorder is not None:
            try:
                # FLAC is encoded on close: keep it off the event loop.
                length = await asyncio.to_thread(self.recorder.close)
                if duration is None and length:
                    measured = length
                recording = str(self.recorder.path)
            except (OSError, RuntimeError, ValueError) as exc:
                log.error("call %s: recording could not be finalised: %s", self.call_id, exc)
        self._publish(CallEnded(self.call_id, duration=round(measured, 3), recording=recording))

    def abort(self) -> None:
        """Tear down without flushing (the app is shutting down mid-call)."""
        self.ended = True
        if self.pipeline is not None:
            close = getattr(self.pipeline, "close", None)
            if close is not None:
                close()
