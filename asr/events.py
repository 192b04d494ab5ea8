"""Typed speech events: what every recogniser stream emits.

Times are seconds from the start of the stream (derived from the samples fed,
never from the wall clock), so they line up with the recording.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float
    confidence: float = 1.0


@dataclass(frozen=True, slots=True)
class InterimTranscript:
    """Best guess so far for the utterance in progress; replaced by later events."""
    utterance: int          # index of the utterance within the stream, from 0
    text: str
    start: float            # when the utterance began (seconds into the stream)
    end: float              # how far the audio has been decoded


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    """The settled text of one utterance, with per-word times where the engine gives them."""
    utterance: int
    text: str
    start: float
    end: float
    words: tuple[Word, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class EndOfSpeech:
    """The speaker fell silent; sent after the utterance's FinalTranscript."""
    utterance: int
    time: float


@dataclass(frozen=True, slots=True)
class DecodeDelayed:
    """The decoder was behind: this utterance's final waited `waited` seconds before its decode
    began (asr.scheduler). Sent just before that FinalTranscript."""
    utterance: int
    waited: float


SpeechEvent = InterimTranscript | FinalTranscript | EndOfSpeech | DecodeDelayed
