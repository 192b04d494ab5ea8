"""Voice activity detection: which 10/20/30 ms frames hold speech, and where utterances
start and end.

Built on webrtcvad (a GMM detector, ~3 µs per frame). Asterisk's snoop channel sends
digital silence (all-zero frames) when nobody talks, 50 frames a second per leg, so an
all-zero frame is recognised by one bytes comparison and never reaches webrtcvad.

`Segmenter` turns frame decisions into utterances with hysteresis: speech starts when
enough of a short window is voiced (isolated clicks do not open a segment), it ends after
`end_silence_ms` of continuous non-speech, and the reported start reaches back
`preroll_ms` so that the soft first consonant, which the VAD often misses, is kept.
Positions are sample offsets from the first sample pushed, at the input rate.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import webrtcvad

VALID_RATES = (8000, 16000, 32000, 48000)
VALID_FRAME_MS = (10, 20, 30)


@dataclass(frozen=True, slots=True)
class SpeechStart:
    sample: int         # first sample of the segment (pre-roll included)


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    sample: int         # one past the last sample of the segment (trailing pad included)
    detected_at: int    # how far the input had got when the end was decided


VadEvent = SpeechStart | SpeechEnd


class SpeechDetector:
    """Frame classifier: `is_speech(frame)` for frames of exactly `frame_bytes`."""

    def __init__(self, sample_rate: int, aggressiveness: int = 2, frame_ms: int = 20) -> None:
        if sample_rate not in VALID_RATES:
            raise ValueError(f"VAD sample rate must be one of {VALID_RATES}, got {sample_rate}")
        if frame_ms not in VALID_FRAME_MS:
            raise ValueError(f"VAD frame length must be one of {VALID_FRAME_MS} ms, got {frame_ms}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"VAD aggressiveness must be 0..3, got {aggressiveness}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_bytes = self.frame_samples * 2
        self._zero = bytes(self.frame_bytes)
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        if len(frame) != self.frame_bytes:
            raise ValueError(f"VAD frame must be {self.frame_bytes} bytes "
                             f"({self.frame_ms} ms at {self.sample_rate} Hz), got {len(frame)}")
        if frame == self._zero:  # digital silence: the common case between utterances
            return False
        return self._vad.is_speech(frame, self.sample_rate)


class Segmenter:
    """Utterance boundaries from a PCM stream pushed in chunks of any size."""

    TRAILING_PAD_MS = 150  # kept after the last voiced frame: word endings decay slowly

    def __init__(self, sample_rate: int, *, aggressiveness: int = 2, frame_ms: int = 20,
                 start_ms: int = 120, end_silence_ms: int = 600, preroll_ms: int = 300,
                 max_speech_ms: int = 25_000) -> None:
        """start_ms: voiced audio needed within a window of 2*start_ms to open a segment.
        max_speech_ms: a segment is cut (and a new one opened at once) after this long."""
        self.detector = SpeechDetector(sample_rate, aggressiveness, frame_ms)
        self.sample_rate = sample_rate
        frame = self.detector.frame_samples
        self._frame_bytes = self.detector.frame_bytes
        self._start_voiced = max(1, start_ms // frame_ms)
        self._window_frames = max(1, 2 * start_ms // frame_ms)
        self._window: deque[bool] = deque(maxlen=self._window_frames)
        self._end_frames = max(1, end_silence_ms // frame_ms)
        self._preroll = preroll_ms * sample_rate // 1000
        self._pad = min(self.TRAILING_PAD_MS, end_silence_ms) * sample_rate // 1000
        self._max_samples = max_speech_ms * sample_rate // 1000
        self._frame = frame
        self._pending = bytearray()
        self.samples_seen = 0           # samples classified so far
        self.in_speech = False
        self._segment_start = 0
        self._last_voiced_end = 0       # sample after the last voiced frame
        self._silent_run = 0
        self._last_end = 0              # segments never overlap: a start never precedes this

    @property
    def history_samples(self) -> int:
        """How far back (in samples) a SpeechStart may point before the current position."""
        return self._preroll + self._window_frames * self._frame + self._frame

    def push(self, pcm: bytes) -> list[VadEvent]:
        self._pending += pcm
        events: list[VadEvent] = []
        usable = len(self._pending) - len(self._pending) % self._frame_bytes
        view = memoryview(self._pending)
        try:
            for offset in range(0, usable, self._frame_bytes):
                self._step(self.detector.is_speech(bytes(view[offset:offset + self._frame_bytes])), events)
        finally:
            view.release()
        del self._pending[:usable]
        return events

    def flush(self) -> list[VadEvent]:
        """End the segment in progress, if any. A partial frame stays pending, so sample
        offsets keep matching the audio pushed if the stream goes on."""
        if not self.in_speech:
            return []
        return [self._close(self.samples_seen)]

    def _step(self, voiced: bool, events: list[VadEvent]) -> None:
        frame_start = self.samples_seen
        self.samples_seen += self._frame
        if voiced:
            self._last_voiced_end = self.samples_seen
        if not self.in_speech:
            self._window.append(voiced)
            if voiced and sum(self._window) >= self._start_voiced:
                first_voiced = frame_start - (len(self._window) - 1 - self._window.index(True)) * self._frame
                start = max(0, self._last_end, first_voiced - self._preroll)
                self.in_speech, self._segment_start, self._silent_run = True, start, 0
                self._window.clear()
                events.append(SpeechStart(start))
            return
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self._end_frames:
            events.append(self._close(min(self.samples_seen, self._last_voiced_end + self._pad)))
        elif self.samples_seen - self._segment_start >= self._max_samples:
            events.append(self._close(self.samples_seen))
            self.in_speech, self._segment_start, self._silent_run = True, self.samples_seen, 0
            events.append(SpeechStart(self.samples_seen))

    def _close(self, end: int) -> SpeechEnd:
        self.in_speech = False
        self._last_end = end
        self._window.clear()
        return SpeechEnd(end, self.samples_seen)
