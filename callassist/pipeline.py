"""One call's speech pipeline: audio per leg in, transcript and prompt-card events out.

    frames (per leg) -> SilenceGate -> recogniser stream (one per leg) -> TranscriptFeed -> publish

TranscriptFeed (transcript line published, then matched by the call's CallMatcher) is the
part that does not need audio: `callassist analyze` of a transcript file uses it alone.

The same pipeline serves live calls (ari_app), the demo, and post-call analysis of
files (callassist.analyze), so a recording analysed later gives the cards the agent
saw live. Times published are seconds on the call's timeline (the recording's).
"""
from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import webrtcvad

from asr.engine import RecognizerStream, SpeechEngine
from asr.events import DecodeDelayed, EndOfSpeech, FinalTranscript, InterimTranscript, SpeechEvent
from callassist.audio import PIPELINE_RATE, QUIET_PEAK, is_speech
from callassist.events import SPEAKERS, CallEvent, CallFault, Speaker, TranscriptUpdate
from callassist.live_analytics import LiveConversation
from prompts.matcher import CallMatcher, Matcher

log = logging.getLogger(__name__)

Publish = Callable[[CallEvent], None]
DELAY_REPORT_EVERY = 60.0   # seconds of call time between two "decoding is behind" faults on a call
DELAY_BACKLOG = 2.0         # seconds of a customer's audio queued for a recogniser: it is behind


class SilenceGate:
    """Decides, 10 ms at a time, whether audio is worth decoding.

    Snoop channels send 50 frames a second even in silence (all zeros); decoding
    them would cost a recogniser's full CPU for nothing. The gate passes speech
    plus `hangover` of trailing silence (so the recogniser can end the utterance
    itself) and keeps `preroll` of audio before speech starts (so the first
    syllable is not clipped).
    """

    STEP = PIPELINE_RATE // 100 * 2      # 10 ms of 16-bit samples
    MIN_PAUSE = PIPELINE_RATE * 3 // 10  # shorter silences are part of speech

    def __init__(self, aggressiveness: int = 2, hangover: float = 1.0, preroll: float = 0.3,
                 min_level: int = QUIET_PEAK) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._hangover_steps = int(hangover * 100)
        self._preroll: deque[bytes] = deque(maxlen=int(preroll * 100))
        self._min_level = min_level        # peak below this is silence (callassist.audio.is_speech)
        self._silent_steps = self._hangover_steps
        self._pending = b""
        self._next_step = 0                # position (samples pushed) of the next 10 ms step
        self.speech_end = 0                 # after the last speech heard (the call opens with a pause)
        # Recent pauses between speech, [end of speech, start of next speech) in samples
        # pushed: a recogniser's time that falls in one is snapped out of it (see Leg).
        self.pauses: deque[tuple[int, int]] = deque(maxlen=64)

    @property
    def active(self) -> bool:
        return self._silent_steps < self._hangover_steps

    def _is_speech(self, step: bytes) -> bool:
        return is_speech(self._vad, step, self._min_level)

    def push(self, pcm: bytes) -> list[tuple[int, bytes]]:
        """Returns (offset of the passed audio within this push in samples, audio) runs;
        the offset is negative for preroll taken from earlier pushes."""
        data = self._pending + pcm
        lead = len(self._pending)
        whole = len(data) - len(data) % self.STEP
        self._pending = data[whole:]
        runs: list[tuple[int, bytearray]] = []
        for pos in range(0, whole, self.STEP):
            step = data[pos:pos + self.STEP]
            at = (pos - lead) // 2
            here, self._next_step = self._next_step, self._next_step + self.STEP // 2
            if speech := self._is_speech(step):
                if here - self.speech_end >= self.MIN_PAUSE:
                    self.pauses.append((self.speech_end, here))
                self.speech_end = here + self.STEP // 2
            if speech:
                if not self.active and self._preroll:
                    pre = b"".join(self._preroll)
                    runs.append((at - len(pre) // 2, bytearray(pre)))
                    self._preroll.clear()
                self._silent_steps = 0
            elif self.active:
                self._silent_steps += 1
            else:
                self._preroll.append(step)
                continue
            if runs and runs[-1][0] + len(runs[-1][1]) // 2 == at:
                runs[-1][1].extend(step)
            else:
                runs.append((at, bytearray(step)))
        return [(at, bytes(buf)) for at, buf in runs]


@dataclass
class _TimeMap:
    """Maps a recogniser's clock (audio it was fed) to the leg's clock (audio received)."""
    fed: list[int] = field(default_factory=lambda: [0])        # stream sample where a run starts
    received: list[int] = field(default_factory=lambda: [0])   # leg sample of that run's start

    def add_run(self, fed_at: int, received_at: int) -> None:
        if fed_at == self.fed[-1]:
            self.received[-1] = received_at
        elif received_at - fed_at != self.received[-1] - self.fed[-1]:
            self.fed.append(fed_at)
            self.received.append(received_at)

    def to_leg_seconds(self, stream_seconds: float) -> float:
        sample = stream_seconds * PIPELINE_RATE
        i = bisect.bisect_right(self.fed, sample) - 1
        return (self.received[i] + sample - self.fed[i]) / PIPELINE_RATE


class Leg:
    """One speaker's stream: gate, recogniser, and the clock mapping between them."""

    def __init__(self, speaker: Speaker, stream: RecognizerStream, skip_silence: bool) -> None:
        self.speaker = speaker
        self.stream = stream
        self.gate = SilenceGate() if skip_silence else None
        self.offset = 0.0          # where this leg starts on the call's timeline (s)
        self.received = 0          # samples received on this leg
        self.fed = 0               # samples given to the recogniser
        self.submitted = 0         # samples queued by submit() (live)
        self.queued = 0            # of those, samples not given to the recogniser yet
        self.clock = _TimeMap()
        self.shown: set[int] = set()   # utterances whose interim text was published

    def call_time(self, stream_seconds: float, edge: str = "") -> float:
        """A recogniser time on the call's timeline. Recognisers place word edges loosely
        in silence (Whisper often starts an utterance where its audio segment starts), and
        the silence fed before a skipped pause belongs to neither side of it: a start
        inside a pause moves to where speech resumed, an end to where speech stopped."""
        leg_seconds = self.clock.to_leg_seconds(stream_seconds)
        if self.gate and edge:
            sample = leg_seconds * PIPELINE_RATE
            for stopped, resumed in self.gate.pauses:
                if stopped <= sample < resumed:
                    leg_seconds = (resumed if edge == "start" else stopped) / PIPELINE_RATE
                    break
            else:                        # the pause going on now has no end yet
                if edge == "end" and sample > self.gate.speech_end:
                    leg_seconds = self.gate.speech_end / PIPELINE_RATE
        return self.offset + leg_seconds

    async def feed(self, pcm: bytes) -> list[SpeechEvent]:
        runs = self.gate.push(pcm) if self.gate else [(0, pcm)]
        events: list[SpeechEvent] = []
        for at, audio in runs:
            self.clock.add_run(self.fed, self.received + at)
            self.fed += len(audio) // 2
            events.extend(await self.stream.feed(audio))
        self.received += len(pcm) // 2
        return events


class TranscriptFeed:
    """Transcript lines in, transcript and card events out: each update is published as a
    TranscriptUpdate, then matched by the call's CallMatcher and its card events published.
    CallPipeline feeds it the recognisers' results; `callassist analyze` of a transcript
    file feeds it the file's lines, so both produce their cards the same way."""

    def __init__(self, call_id: str, matcher: Matcher, publish: Publish, day: dt.date | None = None) -> None:
        self.call_id = call_id
        self._publish = publish
        self._matcher = CallMatcher(matcher, call_id, day)

    def update(self, speaker: Speaker, utterance: int, text: str, start: float, end: float,
               final: bool) -> None:
        self._publish(TranscriptUpdate(self.call_id, speaker, utterance, text, start, end, final))
        for card_event in self._matcher.on_transcript(speaker, utterance, text, start, end, final):
            self._publish(card_event)


class CallPipeline:
    """Two ways in: `feed` decodes before it returns (file analysis: deterministic, paced
    by the decoder); `submit` queues and returns at once (live sources: the RTP receiver
    and the recorder must never wait for a recogniser). A submitted leg's recogniser is
    live (RecognizerStream.listen): results come as they are decoded, and the call is
    admitted once (engine.admit(): a segment engine that is behind decodes a new call after
    the calls already assisted, asr.scheduler). Audio is never dropped; when decoding is
    late the call gets a CallFault saying so (DecodeDelayed). `finish` drains it all."""

    def __init__(self, call_id: str, engine: SpeechEngine, matcher: Matcher, publish: Publish,
                 *, skip_silence: bool = True, day: dt.date | None = None, analytics: Any = None) -> None:
        """`analytics`: the [analytics] settings, for a live call's conversation measures
        (callassist.live_analytics); None for file analysis (the post-call pass measures)."""
        self.call_id = call_id
        self._publish = publish
        self._conversation = (LiveConversation.from_config(analytics, call_id, publish)
                              if analytics is not None else None)
        self._transcript = TranscriptFeed(call_id, matcher, publish, day)
        # Both streams are opened up front, customer first, so a leg that joins late
        # costs nothing extra on the audio path.
        self._legs = {speaker: Leg(speaker, engine.open_stream(PIPELINE_RATE, label=speaker), skip_silence)
                      for speaker in SPEAKERS}
        self._engine = engine
        self._admitted: bool | None = None       # decided at the first live audio (engine.admit)
        self._delay_reported = float("-inf")     # call time of the last "decoding is behind" fault
        self._finished = False
        self._queues: dict[Speaker, asyncio.Queue[bytes | None]] = {}
        self._workers: dict[Speaker, asyncio.Task] = {}

    def start_leg(self, speaker: Speaker, offset: float) -> None:
        """Place a leg that starts late (the agent's) on the call timeline; call before its first feed."""
        self._legs[speaker].offset = offset

    async def feed(self, speaker: Speaker, pcm: bytes) -> None:
        """16-bit native-endian mono PCM at 16 kHz, any chunk size, in order per leg.
        Do not mix with `submit` on the same leg."""
        if self._finished:
            return
        leg = self._legs[speaker]
        self._handle(leg, await leg.feed(pcm))

    def submit(self, speaker: Speaker, pcm: bytes) -> None:
        """Queue audio for decoding and return at once (see the class docstring)."""
        if self._finished:
            return
        queue = self._queues.get(speaker)
        leg = self._legs[speaker]
        if queue is None:
            self._go_live(leg)
            queue = self._queues[speaker] = asyncio.Queue()
            self._workers[speaker] = asyncio.create_task(
                self._decode_queued(speaker, queue), name=f"decode-{self.call_id}-{speaker}")
        queue.put_nowait(pcm)
        leg.queued += len(pcm) // 2
        if self._conversation is not None:
            self._conversation.audio(speaker, pcm, round(leg.offset * PIPELINE_RATE) + leg.submitted)
        leg.submitted += len(pcm) // 2

    def _go_live(self, leg: Leg) -> None:
        """The leg's recogniser hands over results as they are decoded. The call is admitted
        once, at its first audio: one that starts while the decoder is behind is transcribed
        after the calls already assisted, and the agent is told why cards may be missing."""
        if self._admitted is None:
            self._admitted = self._engine.admit()
            if not self._admitted:
                log.warning("call %s: speech decoding is behind; this call is transcribed after the "
                            "calls already assisted", self.call_id)
                self._publish(CallFault(self.call_id, "识别繁忙：本机语音识别已满负荷，本通电话的转写和提示卡会延后"))
        leg.stream.listen(lambda events: self._handle(leg, events), admitted=self._admitted)

    @property
    def backlog(self) -> float:
        """Seconds of submitted audio not decoded yet (both legs)."""
        return sum(leg.queued for leg in self._legs.values()) / PIPELINE_RATE

    async def _decode_queued(self, speaker: Speaker, queue: asyncio.Queue[bytes | None]) -> None:
        leg = self._legs[speaker]
        while (pcm := await queue.get()) is not None:
            leg.queued -= len(pcm) // 2
            try:
                await self.feed(speaker, pcm)
                # a recogniser that decodes inside feed() (Vosk) and cannot keep up shows it here
                if speaker == "customer" and leg.queued > DELAY_BACKLOG * PIPELINE_RATE:
                    self._report_delay(leg, leg.queued / PIPELINE_RATE)
            except Exception as exc:    # the recogniser failed: say so, keep the call going
                log.exception("call %s: speech recognition failed on the %s leg", self.call_id, speaker)
                self._publish(CallFault(self.call_id, f"speech recognition failed on the {speaker} leg: {exc}"))
                while (pcm := await queue.get()) is not None:
                    leg.queued -= len(pcm) // 2         # drain without decoding until finish()
                return

    async def finish(self) -> None:
        """Decode what is queued, flush both recognisers and close them. Idempotent."""
        if self._finished:
            return
        for queue in self._queues.values():
            queue.put_nowait(None)
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._finished = True
        if self._conversation is not None:
            await self._conversation.close()
        for leg in self._legs.values():
            try:
                self._handle(leg, await leg.stream.finish())
            finally:
                leg.stream.close()

    def _report_delay(self, leg: Leg, waited: float) -> None:
        """One CallFault per call and DELAY_REPORT_EVERY seconds of call time while the decoder is behind."""
        now = leg.call_time(leg.fed / PIPELINE_RATE)
        if now - self._delay_reported >= DELAY_REPORT_EVERY:
            self._delay_reported = now
            self._publish(CallFault(self.call_id, f"识别延迟 {waited:.1f} 秒：本机语音识别跟不上，提示卡会晚到"))

    def close(self) -> None:
        """Abandon without flushing (call torn down abnormally)."""
        self._finished = True
        if self._conversation is not None:
            self._conversation.cancel()
        for task in self._workers.values():
            task.cancel()
        for leg in self._legs.values():
            leg.stream.close()

    def _handle(self, leg: Leg, events: list[SpeechEvent]) -> None:
        for event in events:
            if isinstance(event, EndOfSpeech):
                continue
            if isinstance(event, DecodeDelayed):
                self._report_delay(leg, event.waited)
                continue
            final = isinstance(event, FinalTranscript)
            assert final or isinstance(event, InterimTranscript)
            text = event.text.strip()
            if not text and not (final and event.utterance in leg.shown):
                continue
            start, end = leg.call_time(event.start, "start"), leg.call_time(event.end, "end")
            if final:
                leg.shown.discard(event.utterance)
                if self._conversation is not None and text:
                    self._conversation.line(leg.speaker, round(start, 3), round(end, 3), text)
            else:
                leg.shown.add(event.utterance)
            self._transcript.update(leg.speaker, event.utterance, text, round(start, 3), round(end, 3),
                                    final)
