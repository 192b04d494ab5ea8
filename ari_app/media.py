"""The media of live calls, behind one seam: RTP ports, each leg's audio placed on the
call's clock, and the call's CallSession (recording, recognition, CallStarted, AgentJoined,
CallEnded). The ARI app (ari_app.app) keeps the telephony and asks a MediaHost for the rest:

    AriApp                                    MediaHost
    customer StasisStart  ------------------> open_call(call_id, caller, started_at)
    tap a leg: before externalMedia --------> open_leg(call_id, speaker, leg_id) -> (host, port)
               after externalMedia ---------> leg_source(call_id, leg_id, host, port)
               bridged ---------------------> leg_ready(call_id, leg_id)
               torn down -------------------> close_leg(call_id, leg_id)
    agent answered -------------------------> agent_joined(call_id, endpoint)
    hangup ---------------------------------> end_call(call_id, duration)
    crash recovery / a host lost -----------> open_call(..., resume=ResumeInfo(...))

LocalMediaHost does it in this process (role "all", and the worker role serves one over
RPC); ari_app.remote_media.RemoteMediaHost sends it to a worker. A leg is named by its
`leg_id` (the ARI app uses the leg's externalMedia channel id): a re-tapped leg is a new
leg of the same speaker whose audio overlaps the old one's for a moment, so the speaker
alone does not say which leg to close. Every argument and result is plain data (str, int,
float, None, or a dataclass with to_dict/from_dict), so that it can travel over RPC.

This module knows nothing of ARI: no AriClient, Call or ARI objects.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ari_app.ports import PortPool
from ari_app.recorder import CallRecorder, partial_path, recording_name
from ari_app.rtp import RtpStream
from callassist.config import Config
from callassist.events import CallEvent, CallFault, CardFired, Speaker, TranscriptUpdate
from callassist.session import CallSession, Recorder, SessionPipeline

log = logging.getLogger(__name__)

RATE = 16000
DRAIN_TIMEOUT = 1.0              # a closing leg's queued frames get this long to be consumed
LOCAL_HOST = "local"             # host_of() for media in this process

Publish = Callable[[CallEvent], None]
PipelineFactory = Callable[[str], SessionPipeline]


class MediaError(RuntimeError):
    """The media host could not do what was asked (remote hosts raise subclasses of it)."""


class UnknownCall(MediaError, LookupError):
    """The host has no media for this call (never opened, ended, or lost with its host)."""


@dataclass(frozen=True)
class ResumeInfo:
    """What a host needs to go on with a call that started elsewhere (a run that crashed,
    a worker that died): the call keeps its id, clock and recording file."""
    utterance_base: int              # the new pipeline's utterance numbers start past this
    started_at: float                # wall clock: t=0 of the call (as open_call's started_at)
    recording: Path | None = None    # the recording to continue; None: look for it by name
    heard_until: float | None = None  # seconds of the call already heard, if known otherwise

    def to_dict(self) -> dict[str, Any]:
        return {"utterance_base": self.utterance_base, "started_at": self.started_at,
                "recording": str(self.recording) if self.recording is not None else None,
                "heard_until": self.heard_until}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResumeInfo:
        recording = data.get("recording")
        heard_until = data.get("heard_until")
        return cls(int(data["utterance_base"]), float(data["started_at"]),
                   Path(recording) if recording else None,
                   float(heard_until) if heard_until is not None else None)


@dataclass(frozen=True)
class OpenedCall:
    """open_call's answer. `recording`: the file the call records into (a later move
    continues it). With resume: `heard_until`, the seconds of the call the recording
    (or ResumeInfo) already holds, None if unknown; `recording_note`, a clause for the
    controller's CallFault when the recording could not be continued ("" if it was)."""
    recording: str | None = None
    heard_until: float | None = None
    recording_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"recording": self.recording, "heard_until": self.heard_until,
                "recording_note": self.recording_note}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenedCall:
        heard_until = data.get("heard_until")
        return cls(data.get("recording"), float(heard_until) if heard_until is not None else None,
                   str(data.get("recording_note", "")))


class MediaHost(Protocol):
    """Where a call's media lives. Closing methods (close_leg, end_call) are idempotent and
    accept what the host does not know (a leg already closed, a call lost with its host)."""

    async def open_call(self, call_id: str, caller: str, started_at: float,
                        resume: ResumeInfo | None = None) -> OpenedCall:
        """Session, recorder and pipeline for the call. Without resume: publishes CallStarted.
        With resume: no CallStarted (the call was announced); the recording is continued
        (silence for the gap) and utterances are numbered from resume.utterance_base; a host
        that still holds the call first lets its media go as a dying host would."""
        ...

    async def open_leg(self, call_id: str, speaker: Speaker, leg_id: str) -> tuple[str, int]:
        """An RTP port for a new leg; returns the (host, port) Asterisk must send to."""
        ...

    async def leg_source(self, call_id: str, leg_id: str, host: str, port: int | None) -> None:
        """Take the leg's RTP only from there (what Asterisk says it sends from)."""
        ...

    async def leg_ready(self, call_id: str, leg_id: str) -> None:
        """The leg is bridged: its audio goes to the call from now on (pump + stall watch)."""
        ...

    async def close_leg(self, call_id: str, leg_id: str) -> None:
        """Stop the leg: its queued audio is taken (up to DRAIN_TIMEOUT), its port freed."""
        ...

    async def agent_joined(self, call_id: str, endpoint: str) -> None:
        """Publishes AgentJoined."""
        ...

    async def end_call(self, call_id: str, duration: float) -> None:
        """Close the call's legs, flush recognition, close the recording, publish CallEnded."""
        ...

    def host_of(self, call_id: str) -> str:
        """The node the call's media is on ("local" in this process)."""
        ...


class UtteranceShift:
    """Publishes a resumed call's pipeline events with utterance numbers moved past the
    earlier ones: the store keys transcript lines by (call, speaker, utterance), so a new
    pipeline counting from 0 again would overwrite the lines from before the crash or move."""

    def __init__(self, publish: Publish, base: int) -> None:
        self.publish = publish
        self.base = base

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, TranscriptUpdate):
            event = dataclasses.replace(event, utterance=event.utterance + self.base)
        elif isinstance(event, CardFired):
            event = dataclasses.replace(event, card=dataclasses.replace(
                event.card, utterance=event.card.utterance + self.base))
        self.publish(event)


@dataclass
class MediaLeg:
    """One leg's audio on the host: its RTP stream and where its frames go on the call's clock."""
    leg_id: str
    speaker: Speaker
    stream: RtpStream
    offset: float | None = None      # call-timeline seconds of its first frame
    next_sample: int = 0             # call-timeline sample of the next frame
    frames: int = 0
    stalls_seen: int = 0
    tasks: set[asyncio.Task] = field(default_factory=set)   # media pump, stall watch


@dataclass
class MediaCall:
    """A call's media on the host."""
    call_id: str
    started: float                   # loop time of t=0 of the call (its wall-clock started_at)
    session: CallSession
    utterance_base: int = 0          # > 0: resumed (see ari_app.calls.UtteranceShift)
    legs: dict[str, MediaLeg] = field(default_factory=dict)   # by leg id

    def elapsed(self, now: float) -> float:
        return now - self.started


class LegMedia:
    """Moves one leg's frames to the call's session at their place on the call's clock
    (stalls and re-taps leave gaps and overlaps only the clock shows), and reports RTP
    stalling."""

    def __init__(self, call: MediaCall, leg: MediaLeg, publish: Publish) -> None:
        self.call = call
        self.leg = leg
        self.publish = publish

    async def pump(self) -> None:
        call, leg = self.call, self.leg
        loop = asyncio.get_running_loop()
        async for pcm in leg.stream.frames():
            now_sample = round(call.elapsed(loop.time()) * RATE) - len(pcm) // 2
            if leg.offset is None:
                leg.offset = max(now_sample, 0) / RATE
                leg.next_sample = max(now_sample, 0)
            elif leg.stream.stats.stalls > leg.stalls_seen and now_sample > leg.next_sample:
                # after a stall the sender's clock ran on without us: skip the gap
                leg.next_sample = now_sample
            leg.stalls_seen = leg.stream.stats.stalls
            at = leg.next_sample
            leg.next_sample += len(pcm) // 2
            leg.frames += 1
            call.session.place(leg.speaker, pcm, at)

    async def watch_stalls(self) -> None:
        stream = self.leg.stream
        while True:
            if not await stream.wait_stalled():
                return
            problem = (f"{self.leg.speaker} audio stalled: no RTP for {stream.stall_timeout:g} s "
                       f"on port {stream.port}")
            log.warning("call %s: %s", self.call.call_id, problem)
            self.publish(CallFault(self.call.call_id, problem))
            if not await stream.wait_flowing():
                return
            log.info("call %s: %s audio flowing again", self.call.call_id, self.leg.speaker)


class LocalMediaHost:
    """The media of calls in this process: RTP from a PortPool, one CallSession per call
    (recorder in `recordings_dir`, pipeline from `pipeline_factory`), events to `publish`."""

    def __init__(self, config: Config, publish: Publish, pipeline_factory: PipelineFactory | None = None,
                 recordings_dir: str | Path | None = None, ports: PortPool | None = None) -> None:
        self.config = config
        self.publish = publish
        self.pipeline_factory = pipeline_factory
        self.recordings_dir = Path(recordings_dir) if recordings_dir is not None else None
        self.ports = ports or PortPool.from_config(config.rtp)
        self.advertise_host = config.rtp.advertise_host
        self.calls: dict[str, MediaCall] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- MediaHost ---------------------------------------------------------------------------
    async def open_call(self, call_id: str, caller: str, started_at: float,
                        resume: ResumeInfo | None = None) -> OpenedCall:
        if call_id in self.calls:
            if resume is None:
                raise MediaError(f"call {call_id} is already open on this host")
            await self.release_call(call_id)      # a move within this host: as if it had died
        loop = asyncio.get_running_loop()
        started = loop.time() - max(0.0, time.time() - started_at)
        if resume is None:
            recorder, problem = self._open_recorder(call_id)   # first: CallStarted links it
            call = self._new_call(call_id, started, recorder, 0)
            call.session.start(caller=caller, source="ari")
            if problem:
                self.publish(CallFault(call_id, problem))
            call.session.pipeline = self._open_pipeline(call_id)
            return OpenedCall(self._recording_of(recorder))
        # the recorder first, so that the pipeline (and its publisher) sees the call
        recorder, heard_until, note = await asyncio.to_thread(self._continue_recording, call_id, resume)
        if heard_until is None:
            heard_until = resume.heard_until
        call = self._new_call(call_id, started, recorder, resume.utterance_base)
        call.session.pipeline = self._open_pipeline(call_id)
        return OpenedCall(self._recording_of(recorder), heard_until, note)

    async def open_leg(self, call_id: str, speaker: Speaker, leg_id: str) -> tuple[str, int]:
        call = self._call(call_id)
        leg = call.legs.get(leg_id)
        if leg is None:           # (an open_leg sent again finds its leg)
            stream = await self.ports.open_stream(name=f"{call_id}/{speaker}")
            if self.calls.get(call_id) is not call:      # ended or moved meanwhile
                await stream.aclose()
                raise UnknownCall(f"call {call_id} closed while its {speaker} leg was opened")
            leg = call.legs[leg_id] = MediaLeg(leg_id, speaker, stream)
        return self.advertise_host, leg.stream.port

    async def leg_source(self, call_id: str, leg_id: str, host: str, port: int | None) -> None:
        self._leg(call_id, leg_id).stream.restrict_source(host, port)

    async def leg_ready(self, call_id: str, leg_id: str) -> None:
        call = self._call(call_id)
        leg = self._leg(call_id, leg_id)
        if leg.tasks:
            return
        media = LegMedia(call, leg, self.publish)
        for coro in (media.pump(), media.watch_stalls()):
            task = asyncio.create_task(coro, name=f"media {call_id}/{leg.speaker}")
            leg.tasks.add(task)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
            task.add_done_callback(leg.tasks.discard)

    async def close_leg(self, call_id: str, leg_id: str) -> None:
        call = self.calls.get(call_id)
        leg = call.legs.pop(leg_id, None) if call is not None else None
        if leg is not None:
            await self._close_leg(leg)

    async def agent_joined(self, call_id: str, endpoint: str) -> None:
        self._call(call_id).session.agent_joined(endpoint)

    async def end_call(self, call_id: str, duration: float) -> None:
        call = self.calls.get(call_id)
        if call is None:
            log.warning("call %s: end_call, but this host has no media for it", call_id)
            return
        try:
            legs = list(call.legs.values())
            call.legs.clear()
            await asyncio.gather(*(self._close_leg(leg) for leg in legs))
            await call.session.end(duration=duration)    # flushes, closes the recording, CallEnded
        finally:
            if self.calls.get(call_id) is call:
                del self.calls[call_id]

    def host_of(self, call_id: str) -> str:
        return LOCAL_HOST

    # -- beyond the seam -------------------------------------------------------------------
    def publisher_for(self, call_id: str) -> Publish:
        """Where the call's pipeline publishes: `publish`, through UtteranceShift for a call
        resumed here (pipeline factories call this while open_call builds the pipeline)."""
        call = self.calls.get(call_id)
        if call is not None and call.utterance_base:
            return UtteranceShift(self.publish, call.utterance_base)
        return self.publish

    def open_recordings(self) -> set[Path]:
        """The files the calls' recorders are writing (crash recovery must not touch them)."""
        return {call.session.recorder.live_path for call in self.calls.values()
                if isinstance(call.session.recorder, CallRecorder)}

    def leg(self, call_id: str, leg_id: str) -> MediaLeg | None:
        call = self.calls.get(call_id)
        return call.legs.get(leg_id) if call is not None else None

    async def release_call(self, call_id: str) -> None:
        """Let a call's media go without ending the call, as a host that dies would: its
        legs stop, its pipeline is dropped, its recording is left for another host to
        continue (FLAC not encoded). No CallEnded."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        legs = list(call.legs.values())
        call.legs.clear()
        await asyncio.gather(*(self._close_leg(leg, drain=False) for leg in legs))
        session = call.session
        session.abort()
        recorder, session.recorder = session.recorder, None
        if isinstance(recorder, CallRecorder):
            await asyncio.to_thread(recorder.suspend)
        log.info("call %s: media released on this host", call_id)

    async def close(self) -> None:
        """Stop: calls still open are released (left to be continued elsewhere), every
        port is freed."""
        await asyncio.gather(*(self.release_call(call_id) for call_id in list(self.calls)))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.ports.close_all()

    # -- internals -------------------------------------------------------------------------
    def _call(self, call_id: str) -> MediaCall:
        call = self.calls.get(call_id)
        if call is None:
            raise UnknownCall(f"no media for call {call_id} on this host")
        return call

    def _leg(self, call_id: str, leg_id: str) -> MediaLeg:
        leg = self._call(call_id).legs.get(leg_id)
        if leg is None:
            raise UnknownCall(f"no leg {leg_id} of call {call_id} on this host")
        return leg

    def _new_call(self, call_id: str, started: float, recorder: Recorder | None, utterance_base: int) -> MediaCall:
        call = MediaCall(call_id, started, CallSession(call_id, None, self.publish, recorder), utterance_base)
        self.calls[call_id] = call
        return call

    async def _close_leg(self, leg: MediaLeg, drain: bool = True) -> None:
        leg.stream.close()                   # the pump drains what is queued, then ends
        if leg.tasks:
            late = set(leg.tasks)
            if drain:
                _, late = await asyncio.wait(late, timeout=DRAIN_TIMEOUT)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await leg.stream.aclose()            # the port is free again

    def _open_pipeline(self, call_id: str) -> SessionPipeline | None:
        if self.pipeline_factory is None:
            return None
        try:
            return self.pipeline_factory(call_id)
        except Exception as exc:
            log.exception("call %s: no speech pipeline", call_id)
            self.publish(CallFault(call_id, f"speech pipeline not started: {exc}"))
            return None

    def _open_recorder(self, call_id: str) -> tuple[CallRecorder | None, str | None]:
        """Start the call's recording; returns it, or the problem if it could not be started."""
        if not self.config.recording.enabled or self.recordings_dir is None:
            return None, None
        fmt = self.config.recording.format
        path = self.recordings_dir / recording_name(call_id, fmt)
        try:
            return CallRecorder(path, RATE, fmt), None
        except (OSError, ValueError) as exc:
            log.error("call %s: not recording: %s", call_id, exc)
            return None, f"recording not started: {exc}"

    def _continue_recording(self, call_id: str, resume: ResumeInfo) -> tuple[CallRecorder | None, float | None, str]:
        """Reopen the call's recording to write on (silence fills the gap). Returns the
        recorder, the seconds it already held (None if unknown) and a note for the call's
        fault. Blocking (repairs the file's header): run it off the event loop."""
        if not self.config.recording.enabled or self.recordings_dir is None:
            return None, None, ""
        path = resume.recording
        if path is None:
            for fmt in ("wav", "flac"):
                candidate = self.recordings_dir / recording_name(call_id, fmt)
                if candidate.exists() or partial_path(candidate).exists():
                    path = candidate
                    break
        if path is not None:
            fmt = "flac" if path.suffix.lower() == ".flac" else "wav"
            try:
                recorder = CallRecorder.resume(path, RATE, fmt)
                return recorder, recorder.duration, ""
            except (OSError, ValueError) as exc:
                log.error("call %s: cannot continue recording %s: %s", call_id, path, exc)
                problem = f"; recording {path.name} could not be continued ({exc})"
        else:
            problem = "; its recording was not found"
        fmt = self.config.recording.format
        for part in range(2, 100):
            target = self.recordings_dir / recording_name(f"{call_id}.part{part}", fmt)
            if not target.exists() and not partial_path(target).exists():
                break
        try:
            recorder = CallRecorder(target, RATE, fmt)
        except (OSError, ValueError) as exc:
            log.error("call %s: not recording: %s", call_id, exc)
            return None, None, f"{problem}; not recording: {exc}"
        return recorder, None, f"{problem}; the rest is recorded in {target.name}"

    @staticmethod
    def _recording_of(recorder: Recorder | None) -> str | None:
        return str(recorder.path) if recorder is not None else None

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media task failed", exc_info=task.exception())

