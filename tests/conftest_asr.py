"""Helpers for the speech-engine tests (imported by test_asr_*.py; not a pytest plugin)."""
from __future__ import annotations

from pathlib import Path

import soundfile as sf

from asr.engine import RecognizerStream
from asr.events import EndOfSpeech, FinalTranscript, InterimTranscript, SpeechEvent
from callassist.config import PROJECT_ROOT

SAMPLES = PROJECT_ROOT.parent / "shared" / "audio" / "mandarin-samples"


def sample_path(stem: str, rate: int = 16000) -> Path:
    folder = SAMPLES if rate == 16000 else SAMPLES / "8k"
    matches = sorted(folder.glob(f"{stem}*.wav"))
    assert matches, f"no sample {stem}* in {folder}"
    return matches[0]


def read_pcm(path: Path) -> tuple[bytes, int]:
    data, rate = sf.read(path, dtype="int16")
    return data.tobytes(), rate


def references(high_confidence: bool = True) -> dict[str, str]:
    name = "transcripts_high_confidence.tsv" if high_confidence else "transcripts.tsv"
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if line.strip())


async def feed_all(stream: RecognizerStream, pcm: bytes, chunk_bytes: int, finish: bool = True) -> list[SpeechEvent]:
    events: list[SpeechEvent] = []
    for offset in range(0, len(pcm), chunk_bytes):
        events += await stream.feed(pcm[offset:offset + chunk_bytes])
    if finish:
        events += await stream.finish()
    return events


def check_event_structure(events: list[SpeechEvent], duration: float) -> list[FinalTranscript]:
    """The stream contract: utterances numbered 0, 1, ...; interims only for the open
    utterance; each final followed by its EndOfSpeech; word times ordered, inside the
    utterance and the audio. Returns the finals."""
    finals: list[FinalTranscript] = []
    expected = 0
    for index, event in enumerate(events):
        if isinstance(event, InterimTranscript):
            assert event.utterance == expected
            assert 0 <= event.start <= event.end <= duration + 0.05
        elif isinstance(event, FinalTranscript):
            assert event.utterance == expected
            assert isinstance(events[index + 1], EndOfSpeech) and events[index + 1].utterance == expected
            assert 0 <= event.start <= event.end <= duration + 0.05
            previous_end = event.start
            for word in event.words:
                assert word.text
                assert previous_end - 1e-6 <= word.start <= word.end + 1e-6, event.words
                assert word.end <= event.end + 1e-6
                previous_end = word.end
            finals.append(event)
        else:
            assert isinstance(event, EndOfSpeech)
            assert isinstance(events[index - 1], FinalTranscript)
            assert events[index - 1].end <= event.time + 1e-6 <= duration + 0.05
            expected += 1
    return finals
