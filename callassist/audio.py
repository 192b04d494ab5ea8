"""Reading recordings and converting audio into what the engines take (16-bit mono PCM)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import webrtcvad

PIPELINE_RATE = 16000            # every stream inside the product runs at 16 kHz
FRAME_MS = 20
FRAME_BYTES = PIPELINE_RATE * FRAME_MS // 1000 * 2   # 640: one snoop/RTP frame
VAD_STEP_BYTES = PIPELINE_RATE // 100 * 2            # 320: the 10 ms step speech is judged on
QUIET_PEAK = 64                                      # a step peaking below this (about -54 dBFS) is silence


def is_speech(vad: webrtcvad.Vad, step: bytes, min_level: int = QUIET_PEAK) -> bool:
    """Whether one 10 ms step of 16 kHz PCM is speech: the product's one voice activity
    rule (the pipeline's SilenceGate, conversation analytics). Zeros and hiss (peak below
    `min_level`) are silence without asking the VAD, which calls some of them speech."""
    samples = np.frombuffer(step, dtype=np.int16)
    if int(np.abs(samples).max(initial=0)) < min_level:
        return False
    return vad.is_speech(step, PIPELINE_RATE)


class AudioError(ValueError):
    """A recording that cannot be used; the message says why."""


@dataclass(frozen=True)
class Recording:
    channels: tuple[np.ndarray, ...]   # int16 arrays at `sample_rate`, one per channel
    sample_rate: int
    source_rate: int

    @property
    def duration(self) -> float:
        return len(self.channels[0]) / self.sample_rate if self.channels else 0.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 with clipping (resamplers overshoot slightly)."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality); float32 in, float32 out."""
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), from_rate, to_rate, quality="HQ")


def read_recording(path: str | Path, rate: int = PIPELINE_RATE) -> Recording:
    """Any format libsndfile reads (WAV, FLAC, OGG, MP3 …), any rate, resampled to `rate`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        data, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if data.size == 0:
        raise AudioError(f"{path}: the recording is empty")
    if data.shape[1] > 2:
        raise AudioError(f"{path}: {data.shape[1]} channels; expected mono (customer) "
                         "or stereo (customer, agent)")
    channels = tuple(to_int16(resample(data[:, i], source_rate, rate)) for i in range(data.shape[1]))
    return Recording(channels=channels, sample_rate=rate, source_rate=source_rate)


def write_wav(path: str | Path, channels: list[np.ndarray] | np.ndarray, rate: int = PIPELINE_RATE) -> None:
    """int16 channels (equal length) -> 16-bit WAV."""
    data = np.column_stack(channels) if isinstance(channels, list) else channels
    sf.write(str(path), data, rate, subtype="PCM_16")
