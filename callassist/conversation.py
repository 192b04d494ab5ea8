"""Conversation analytics of one call, per leg, from its audio and its transcript.

    talk time and share     frames the product's VAD (callassist.audio.is_speech, the
                            pipeline's SilenceGate rule) calls speech, less those at the
                            line's noise floor; pauses under 0.5 s bridged, bursts under
                            0.1 s dropped
    silences                both legs silent for >= min_silence (hold, dead air), between
                            the first speech and the last (live: and up to now)
    talk-over               both legs talking at once for >= min_talk_over; `by` is the leg
                            whose talk started second (the one who cut in)
    speaking rate           characters of the leg's transcript lines per minute of the
                            leg's talk inside those lines
    loudness, pitch         median RMS dBFS and median F0 (YIN, numpy) of voiced 10 ms frames
    agitation               per utterance 0..1: loudness, pitch and speaking rate above the
                            speaker's own first `baseline` seconds of talk (docs/analytics.md)
    sentiment               per customer line -1..1 (callassist.sentiment, a lexicon)

One path for live and post-call: `ConversationTracker` is fed each leg's 16 kHz PCM at its
place on the call's timeline and the final transcript lines; `snapshot()` is cheap (numpy
over 10 ms frames: a few ms for an hour's call). `analyse_call` feeds a whole recording
(left customer, right agent, as ari_app.recorder writes it) through the same tracker.
Nothing here touches the event loop, the bus or the store: pure computation.
"""
from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webrtcvad

from callassist.audio import PIPELINE_RATE, VAD_STEP_BYTES, Recording, is_speech, read_recording
from callassist.events import SPEAKERS, Speaker, TranscriptLine
from callassist.sentiment import sentiment, spoken_chars

FRAMES_PER_SECOND = 100                        # analysis frames are the VAD's 10 ms steps
FRAME_SAMPLES = PIPELINE_RATE // FRAMES_PER_SECOND
VAD_AGGRESSIVENESS = 2                         # as the pipeline's SilenceGate
BRIDGE_FRAMES = 50                             # pauses under 0.5 s are part of the talk
# webrtcvad's own hangover keeps calling ~0.1 s of line noise after speech: a frame
# within FLOOR_MARGIN_DB of the leg's noise floor (median of its last 30 s of non-speech
# frames) is not talk. Digital silence has no floor to speak of (SILENT_DB).
FLOOR_MARGIN_DB = 6.0
NOISE_FLOOR_FRAMES = 3000
MIN_FLOOR_FRAMES = 50                          # a floor needs 0.5 s of non-speech to go on
SILENT_DB = -120.0
MIN_TALK_FRAMES = 10                           # a burst under 0.1 s is a click or a breath, not talk
UTTERANCE_GAP_FRAMES = 100                     # without a transcript: talk 1 s apart is one utterance
PROCESS_FRAMES = 20                            # audio is analysed once 0.2 s is waiting
MAX_BLOCK_FRAMES = 500                         # and at most 5 s at a time
# Pitch: YIN (de Cheveigné & Kawahara 2002) on a 40 ms window ending at each voiced frame.
PITCH_WINDOW = 640
PITCH_MIN_HZ = 75.0
PITCH_MAX_HZ = 400.0
YIN_THRESHOLD = 0.2
# Agitation (docs/analytics.md): each rise over the speaker's baseline, as a fraction of
# the rise that counts as fully agitated, weighted; a measure that is missing is left out.
FULL_LOUDNESS_RISE_DB = 8.0
FULL_PITCH_RISE_SEMITONES = 4.0
FULL_RANGE_RISE_SEMITONES = 4.0
FULL_RATE_RISE = 0.4                           # 40 % faster than the baseline
AGITATION_WEIGHTS = {"loudness": 0.3, "pitch": 0.3, "pitch_range": 0.15, "rate": 0.25}
MIN_PITCHED_FRAMES = 20                        # a pitch range needs 0.2 s of pitched speech
MIN_RATE_TALK = 0.3                            # seconds of talk below which a rate means nothing
DEFAULT_MIN_SILENCE = 5.0
DEFAULT_MIN_TALK_OVER = 0.3
DEFAULT_BASELINE = 20.0

LineLike = TranscriptLine | Mapping[str, Any]


@dataclass
class LegStats:
    talk_seconds: float = 0.0
    talk_share: float = 0.0                    # of both legs' talk together (they add up to 1)
    speaking_rate: float | None = None         # characters per minute of talk (None: no transcript)
    loudness_db: float | None = None           # median dBFS of voiced frames (None: no speech)
    pitch_hz: float | None = None              # median F0 of voiced frames
    agitation: list[dict[str, float]] = field(default_factory=list)    # {"t", "value" 0..1}


@dataclass
class ConversationStats:
    legs: dict[Speaker, LegStats]
    silences: list[dict[str, float]]           # {"start", "end"}
    talk_over: list[dict[str, Any]]            # {"start", "end", "by": speaker}
    sentiment: list[dict[str, float]]          # {"t", "value" -1..1}, customer lines
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Line:
    speaker: Speaker
    start: float
    end: float
    text: str


def _as_line(line: LineLike) -> _Line:
    if isinstance(line, Mapping):
        return _Line(line["speaker"], float(line["start"] or 0.0), float(line["end"] or 0.0),
                     str(line.get("text") or ""))
    return _Line(line.speaker, float(line.start or 0.0), float(line.end or 0.0), line.text)


def yin_pitch(windows: np.ndarray, rate: int = PIPELINE_RATE) -> np.ndarray:
    """F0 in Hz of each row of `windows` (samples), NaN where there is no clear period.
    YIN: the cumulative-mean-normalised difference function, the first dip under
    YIN_THRESHOLD followed to its minimum, refined by parabolic interpolation."""
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        return np.full(len(x), np.nan)
    x = x - x.mean(axis=1, keepdims=True)
    n = x.shape[1]
    tau_max = int(rate / PITCH_MIN_HZ)
    tau_min = max(2, int(rate / PITCH_MAX_HZ))
    width = n - tau_max
    size = 1 << (n + width - 1).bit_length()
    cross = np.fft.irfft(np.conj(np.fft.rfft(x[:, :width], size)) * np.fft.rfft(x, size), size)[:, :tau_max + 1]
    energy = np.concatenate([np.zeros((len(x), 1)), np.cumsum(x * x, axis=1)], axis=1)
    lags = np.arange(tau_max + 1)
    diff = energy[:, [width]] + (energy[:, lags + width] - energy[:, lags]) - 2.0 * cross
    diff[:, 0] = 0.0
    np.maximum(diff, 0.0, out=diff)
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(running, 1e-9)
    below = cmnd[:, tau_min:tau_max] < YIN_THRESHOLD
    found = below.any(axis=1)
    tau = np.argmax(below, axis=1) + tau_min
    rows = np.arange(len(x))
    for _ in range(tau_max):                   # follow the dip down to its minimum
        step = found & (tau < tau_max - 1) & (cmnd[rows, np.minimum(tau + 1, tau_max)] < cmnd[rows, tau])
        if not step.any():
            break
        tau = tau + step
    left, mid, right = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, tau + 1]
    curve = left - 2.0 * mid + right
    shift = np.where(np.abs(curve) > 1e-12, 0.5 * (left - right) / np.where(curve == 0, 1, curve), 0.0)
    f0 = rate / (tau + np.clip(shift, -0.5, 0.5))
    f0[~found] = np.nan
    return f0


class _LegTrack:
    """One leg's audio, analysed 10 ms at a time as it arrives: talk segments and the
    loudness and pitch of every voiced frame. Positions are frames on the call's timeline."""

    def __init__(self) -> None:
        self._vad = webrtcvad.Vad(VAD_AGGRESSIVENESS)
        self.received = 0                       # timeline samples up to which audio was given
        self._pending = bytearray()             # received, not analysed yet (starts at `frames`)
        self.frames = 0                         # frames analysed
        self._context = np.zeros(PITCH_WINDOW - FRAME_SAMPLES, np.float32)   # audio before `frames`
        self.segments: list[list[int]] = []     # talk [start, end) frames, short pauses bridged
        self._quiet: deque[float] = deque(maxlen=NOISE_FLOOR_FRAMES)   # dBFS of recent non-speech frames
        self.voiced_at = array("q")             # voiced frames: position, dBFS, F0 (NaN: none)
        self.voiced_db = array("f")
        self.voiced_f0 = array("f")

    def feed(self, pcm: bytes, at: int | None) -> None:
        if at is not None and at != self.received:
            if at > self.received:              # a gap on this leg: silence
                self._pending.extend(bytes(2 * (at - self.received)))
                self.received = at
            else:                               # audio for a stretch already covered: dropped
                pcm = pcm[2 * min(self.received - at, len(pcm) // 2):]
        self._pending.extend(pcm)
        self.received += len(pcm) // 2
        if len(self._pending) >= PROCESS_FRAMES * VAD_STEP_BYTES:
            self.flush()

    def flush(self) -> None:
        """Analyse every whole frame received (in blocks: bounded memory for a whole recording)."""
        block = MAX_BLOCK_FRAMES * VAD_STEP_BYTES
        while len(self._pending) >= VAD_STEP_BYTES:
            whole = min(block, len(self._pending) - len(self._pending) % VAD_STEP_BYTES)
            data = bytes(self._pending[:whole])
            del self._pending[:whole]
            self._analyse(data)

    def _analyse(self, data: bytes) -> None:
        samples = np.frombuffer(data, dtype=np.int16)
        count = len(data) // VAD_STEP_BYTES
        frames = samples.reshape(count, FRAME_SAMPLES).astype(np.float64)
        db = 10.0 * np.log10(np.maximum(np.mean(frames * frames, axis=1), 1e-3) / 32768.0 ** 2)
        flagged = np.fromiter((is_speech(self._vad, data[i:i + VAD_STEP_BYTES])
                               for i in range(0, len(data), VAD_STEP_BYTES)), dtype=bool, count=count)
        self._quiet.extend(db[~flagged].tolist())
        floor = float(np.median(self._quiet)) if len(self._quiet) >= MIN_FLOOR_FRAMES else SILENT_DB
        voiced = flagged & (db > floor + FLOOR_MARGIN_DB)
        signal = np.concatenate([self._context, samples.astype(np.float32)])
        self._context = signal[-len(self._context):]
        index = np.flatnonzero(voiced)
        if index.size:
            windows = signal[(index * FRAME_SAMPLES)[:, None] + np.arange(PITCH_WINDOW)]
            f0 = yin_pitch(windows)
            positions = index + self.frames
            self.voiced_at.extend(positions.tolist())
            self.voiced_db.extend(db[index].astype(np.float32).tolist())
            self.voiced_f0.extend(f0.astype(np.float32).tolist())
            for position in positions.tolist():
                if self.segments and position - self.segments[-1][1] < BRIDGE_FRAMES:
                    self.segments[-1][1] = position + 1
                else:
                    self.segments.append([position, position + 1])
        self.frames += count

    def talk(self) -> list[tuple[int, int]]:
        return [(s, e) for s, e in self.segments if e - s >= MIN_TALK_FRAMES]

    def features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.frombuffer(self.voiced_at, dtype=np.int64), np.frombuffer(self.voiced_db, dtype=np.float32),
                np.frombuffer(self.voiced_f0, dtype=np.float32))


def _mask(segments: list[tuple[int, int]], length: int) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    for start, end in segments:
        mask[start:min(end, length)] = True
    return mask


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _frame(seconds: float) -> int:
    return max(0, int(round(seconds * FRAMES_PER_SECOND)))


def _seconds(frames: int | float) -> float:
    return round(float(frames) / FRAMES_PER_SECOND, 2)


@dataclass(frozen=True)
class _Utterance:
    start: int                                 # frames
    end: int
    chars: int | None                          # None: no transcript


@dataclass(frozen=True)
class Voice:
    """How one stretch of a leg sounds: over its voiced frames, the median loudness, the
    median pitch and the pitch range; and its speaking rate from the transcript."""
    loudness: float | None                     # dBFS
    pitch: float | None                        # Hz
    pitch_range: float | None                  # semitones between the 10th and 90th percentile
    rate: float | None                         # characters per minute of talk


class ConversationTracker:
    """Fed each leg's audio and the final transcript lines as the call goes; `snapshot()`
    gives the conversation's stats so far (cheap enough to call every few seconds)."""

    def __init__(self, *, min_silence: float = DEFAULT_MIN_SILENCE, min_talk_over: float = DEFAULT_MIN_TALK_OVER,
                 baseline: float = DEFAULT_BASELINE) -> None:
        self.min_silence = min_silence
        self.min_talk_over = min_talk_over
        self.baseline = baseline
        self._legs = {speaker: _LegTrack() for speaker in SPEAKERS}
        self._lines: list[_Line] = []
        self._settled: dict[tuple[str, _Utterance], float | None] = {}   # agitation that can no longer change

    @classmethod
    def from_config(cls, analytics: Any) -> ConversationTracker:
        """From the [analytics] section (callassist.config.AnalyticsConfig)."""
        return cls(min_silence=analytics.min_silence_s, min_talk_over=analytics.min_talk_over_s,
                   baseline=analytics.baseline_s)

    def feed(self, speaker: Speaker, pcm: bytes, at: int | None = None) -> None:
        """16-bit mono PCM at 16 kHz of one leg; `at`: the timeline sample of its first
        sample (as CallSession.place gets it), None: right after the leg's previous audio.
        A gap is silence; audio for a stretch already fed is dropped."""
        self._legs[speaker].feed(pcm, at)

    def add_line(self, line: LineLike) -> None:
        """A final transcript line (speaker, start, end, text; seconds on the call's timeline)."""
        self._lines.append(_as_line(line))

    @property
    def duration(self) -> float:
        frames = max(leg.received for leg in self._legs.values()) / FRAME_SAMPLES
        return max([frames / FRAMES_PER_SECOND] + [line.end for line in self._lines])

    def snapshot(self, *, ended: bool = False) -> ConversationStats:
        """The stats so far. `ended`: the call is over, so the silence after the last
        speech is the hang-up, not dead air (live, a silence going on now counts)."""
        for leg in self._legs.values():
            leg.flush()
        length = _frame(self.duration)
        talk = {speaker: leg.talk() for speaker, leg in self._legs.items()}
        masks = {speaker: _mask(segments, length) for speaker, segments in talk.items()}
        talked = {speaker: int(mask.sum()) for speaker, mask in masks.items()}
        total = sum(talked.values())
        legs = {speaker: LegStats(talk_seconds=_seconds(talked[speaker]),
                                  talk_share=round(talked[speaker] / total, 3) if total else 0.0)
                for speaker in SPEAKERS}
        for speaker in SPEAKERS:
            self._voice_stats(speaker, masks[speaker], legs[speaker])
        return ConversationStats(
            legs=legs,
            silences=self._silences(masks, length, ended),
            talk_over=self._talk_over(masks, talk),
            sentiment=[{"t": round(line.start, 2), "value": sentiment(line.text)}
                       for line in sorted(self._lines, key=lambda line: line.start)
                       if line.speaker == "customer" and spoken_chars(line.text)],
            duration=round(self.duration, 2))

    # --- conversation ---------------------------------------------------------------

    def _silences(self, masks: dict[Speaker, np.ndarray], length: int, ended: bool) -> list[dict[str, float]]:
        anyone = np.logical_or.reduce(list(masks.values()))
        spoken = np.flatnonzero(anyone)
        if not spoken.size:
            return []
        until = spoken[-1] + 1 if ended else length
        quiet = ~anyone[spoken[0]:until]
        shortest = _frame(self.min_silence)
        return [{"start": _seconds(spoken[0] + s), "end": _seconds(spoken[0] + e)}
                for s, e in _runs(quiet) if e - s >= shortest]

    def _talk_over(self, masks: dict[Speaker, np.ndarray],
                   talk: dict[Speaker, list[tuple[int, int]]]) -> list[dict[str, Any]]:
        both = masks["customer"] & masks["agent"]
        shortest = _frame(self.min_talk_over)
        out = []
        for s, e in _runs(both):
            if e - s < shortest:
                continue
            began = {speaker: max(start for start, end in segments if start <= s < end)
                     for speaker, segments in talk.items()}
            by = "customer" if began["customer"] > began["agent"] else "agent"
            out.append({"start": _seconds(s), "end": _seconds(e), "by": by})
        return out

    # --- voice ------------------------------------------------------------------------

    def _utterances(self, speaker: Speaker, talk: list[tuple[int, int]]) -> list[_Utterance]:
        lines = sorted((line for line in self._lines if line.speaker == speaker), key=lambda line: line.start)
        if lines:
            return [_Utterance(_frame(line.start), max(_frame(line.end), _frame(line.start) + 1),
                               spoken_chars(line.text)) for line in lines]
        merged: list[list[int]] = []
        for start, end in talk:
            if merged and start - merged[-1][1] < UTTERANCE_GAP_FRAMES:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        return [_Utterance(start, end, None) for start, end in merged]

    def _voice(self, utterances: list[_Utterance], mask: np.ndarray,
               at: np.ndarray, db: np.ndarray, f0: np.ndarray) -> Voice:
        """The Voice of the leg's frames inside `utterances` (all of them together)."""
        spans: list[slice] = []
        chars, talked = 0, 0.0
        counted = False
        for u in utterances:
            lo, hi = np.searchsorted(at, [u.start, u.end])
            spans.append(slice(int(lo), int(hi)))
            if u.chars is not None:
                counted = True
                chars += u.chars
                inside = int(mask[u.start:u.end].sum())
                talked += (inside or u.end - u.start) / FRAMES_PER_SECOND
        loudness = np.concatenate([db[span] for span in spans]) if spans else db[:0]
        pitches = np.concatenate([f0[span] for span in spans]) if spans else f0[:0]
        pitched = pitches[~np.isnan(pitches)]
        spread = None
        if pitched.size >= MIN_PITCHED_FRAMES:
            low, high = np.percentile(pitched, [10, 90])
            spread = 12.0 * math.log2(high / low)
        return Voice(loudness=float(np.median(loudness)) if loudness.size else None,
                     pitch=float(np.median(pitched)) if pitched.size else None,
                     pitch_range=spread,
                     rate=chars / talked * 60.0 if counted and talked >= MIN_RATE_TALK else None)

    def _voice_stats(self, speaker: Speaker, mask: np.ndarray, stats: LegStats) -> None:
        at, db, f0 = self._legs[speaker].features()
        utterances = self._utterances(speaker, self._legs[speaker].talk())
        whole = self._voice([_Utterance(0, len(mask) + 1, None)], mask, at, db, f0)
        spoken = self._voice([u for u in utterances if u.chars is not None], mask, at, db, f0)
        stats.loudness_db = None if whole.loudness is None else round(whole.loudness, 1)
        stats.pitch_hz = None if whole.pitch is None else round(whole.pitch, 1)
        stats.speaking_rate = None if spoken.rate is None else round(spoken.rate, 1)
        # the baseline: the speaker's own first `baseline` seconds of talk
        baseline_end = int(np.searchsorted(np.cumsum(mask), self.baseline * FRAMES_PER_SECOND)) + 1
        sound = self._voice([_Utterance(0, baseline_end, None)], mask, at, db, f0)
        words = self._voice([u for u in utterances if u.start < baseline_end and u.chars is not None],
                            mask, at, db, f0)
        base = Voice(sound.loudness, sound.pitch, sound.pitch_range, words.rate)
        # once the baseline is complete, an utterance the audio has passed keeps its value
        settled = baseline_end <= len(mask) and bool(mask[:baseline_end].sum() >= self.baseline * FRAMES_PER_SECOND)
        heard = self._legs[speaker].frames - BRIDGE_FRAMES
        for u in utterances:
            key = (speaker, u)
            if key in self._settled:
                value = self._settled[key]
            else:
                value = agitation(self._voice([u], mask, at, db, f0), base)
                if settled and u.end <= heard:
                    self._settled[key] = value
            if value is not None:
                stats.agitation.append({"t": _seconds(u.start), "value": round(value, 3)})


def agitation(here: Voice, base: Voice) -> float | None:
    """0..1: how far `here` rises over the speaker's baseline in loudness, pitch, pitch
    range and speaking rate, each as a fraction of the rise that counts as fully agitated,
    weighted (AGITATION_WEIGHTS; a measure either side lacks is left out and the rest
    reweighted). Falls count as 0: speaking quieter, lower or slower is not agitation.
    None without loudness (no voiced audio in the stretch). See docs/analytics.md."""
    if here.loudness is None or base.loudness is None:
        return None
    rises = {"loudness": (here.loudness - base.loudness) / FULL_LOUDNESS_RISE_DB}
    if here.pitch and base.pitch:
        rises["pitch"] = 12.0 * math.log2(here.pitch / base.pitch) / FULL_PITCH_RISE_SEMITONES
    if here.pitch_range is not None and base.pitch_range is not None:
        rises["pitch_range"] = (here.pitch_range - base.pitch_range) / FULL_RANGE_RISE_SEMITONES
    if here.rate and base.rate:
        rises["rate"] = (here.rate / base.rate - 1.0) / FULL_RATE_RISE
    weight = sum(AGITATION_WEIGHTS[name] for name in rises)
    return sum(AGITATION_WEIGHTS[name] * min(1.0, max(0.0, rise)) for name, rise in rises.items()) / weight


def analyse_call(audio: Recording | str | Path | Mapping[str, np.ndarray | bytes],
                 lines: Iterable[LineLike] = (), *, min_silence: float = DEFAULT_MIN_SILENCE,
                 min_talk_over: float = DEFAULT_MIN_TALK_OVER, baseline: float = DEFAULT_BASELINE) -> ConversationStats:
    """The stats of a finished call: its recording (a path or a read Recording: left =
    customer, right = agent, a mono file is the customer), or each leg's 16 kHz PCM on
    the call's timeline, and its final transcript lines."""
    if isinstance(audio, (str, Path)):
        audio = read_recording(audio)
    if isinstance(audio, Recording):
        if audio.sample_rate != PIPELINE_RATE:
            raise ValueError(f"analyse_call needs {PIPELINE_RATE} Hz audio, got {audio.sample_rate}")
        audio = dict(zip(SPEAKERS, audio.channels))
    tracker = ConversationTracker(min_silence=min_silence, min_talk_over=min_talk_over, baseline=baseline)
    for speaker, pcm in audio.items():
        data = pcm if isinstance(pcm, bytes) else np.ascontiguousarray(pcm, dtype=np.int16).tobytes()
        tracker.feed(speaker, data, 0)  # type: ignore[arg-type]
    for line in lines:
        tracker.add_line(line)
    return tracker.snapshot(ended=True)
