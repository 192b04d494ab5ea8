"""A scripted speech engine for tests that are not about speech recognition.

Like LiveKit's FakeSTT: it does not listen, it replays. Each stream replays the
utterances scripted for its label (e.g. "customer") on the stream's own clock,
which advances with the audio fed (so real-time pacing of the audio gives
real-time pacing of the events): interim results grow word by word while the
utterance is "spoken", the final arrives `endpoint_delay` after it ends.

Failure injection: `admitting=False` makes the engine refuse new calls (a decoder that is
behind), and an utterance's `waited` replays a final that waited that long for the decoder
(a DecodeDelayed before its FinalTranscript).
"""
from __future__ import annotations

from dataclasses import dataclass

from asr.engine import RecognizerStream, SpeechEngine
from asr.events import DecodeDelayed, EndOfSpeech, FinalTranscript, InterimTranscript, SpeechEvent, Word


@dataclass(frozen=True)
class ScriptedUtterance:
    text: str            # words separated by spaces, as Vosk would print them
    start: float         # seconds into the stream
    end: float
    waited: float = 0.0  # > 0: the final waited this long for a decoder that was behind


class ScriptedStream(RecognizerStream):
    def __init__(self, script: list[ScriptedUtterance], sample_rate: int, endpoint_delay: float) -> None:
        self.sample_rate = sample_rate
        self._script = sorted(script, key=lambda u: u.start)
        self._endpoint_delay = endpoint_delay
        self._samples = 0
        self._next = 0                 # index of the utterance not yet finalised
        self._last_interim = ""
        self.closed = False

    @property
    def time(self) -> float:
        return self._samples / self.sample_rate

    def _events_until(self, now: float, flush: bool) -> list[SpeechEvent]:
        events: list[SpeechEvent] = []
        while self._next < len(self._script):
            utt = self._script[self._next]
            if now < utt.start and not flush:
                break
            words = utt.text.split()
            if now >= utt.end + self._endpoint_delay or flush:
                span = (utt.end - utt.start) / max(len(words), 1)
                timed = tuple(Word(w, utt.start + i * span, utt.start + (i + 1) * span)
                              for i, w in enumerate(words))
                if utt.waited:
                    events.append(DecodeDelayed(self._next, utt.waited))
                events.append(FinalTranscript(self._next, utt.text, utt.start, utt.end, timed))
                events.append(EndOfSpeech(self._next, utt.end))
                self._next += 1
                self._last_interim = ""
                continue
            heard = min(len(words), int(len(words) * (now - utt.start) / max(utt.end - utt.start, 1e-6)) + 1)
            text = " ".join(words[:heard])
            if text != self._last_interim:
                events.append(InterimTranscript(self._next, text, utt.start, min(now, utt.end)))
                self._last_interim = text
            break
        return events

    async def feed(self, pcm: bytes) -> list[SpeechEvent]:
        self._samples += len(pcm) // 2
        return self._events_until(self.time, flush=False)

    async def finish(self) -> list[SpeechEvent]:
        return self._events_until(self.time, flush=True)

    def close(self) -> None:
        self.closed = True


class ScriptedEngine(SpeechEngine):
    name = "scripted"

    def __init__(self, scripts: dict[str, list[ScriptedUtterance]], endpoint_delay: float = 0.3,
                 *, admitting: bool = True) -> None:
        self.scripts = scripts
        self.endpoint_delay = endpoint_delay
        self.admitting = admitting
        self.streams: list[ScriptedStream] = []

    def admit(self) -> bool:
        return self.admitting

    def open_stream(self, sample_rate: int, label: str = "") -> ScriptedStream:
        stream = ScriptedStream(list(self.scripts.get(label, [])), sample_rate, self.endpoint_delay)
        self.streams.append(stream)
        return stream
