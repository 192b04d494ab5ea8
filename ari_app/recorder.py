"""One stereo recording per call: left = customer, right = agent, on the call's timeline.

The recorder gets the same 16 kHz frames the recogniser gets. Each leg's audio is
placed at its position on the call's timeline (the agent's leg starts later: its first
write says where, and silence comes before it). What both legs have is interleaved and
written; a leg that falls more than `max_lag` behind the other (silent, absent, stalled)
is padded with silence so the file keeps growing and buffering stays bounded.

Crash safety: the audio is written and the WAV header's sizes are updated every
`flush_interval` seconds of audio, so a process killed mid-call leaves a playable file
short of at most that much. FLAC cannot be left readable after a kill (its length sits
in a header written at the end), so a FLAC recording is captured as a WAV next to it
(`live_path`, "<name>.partial.wav") and encoded at `close()`; `recover_partial()`
finishes what a crash left behind.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from callassist.events import SPEAKERS, Speaker

log = logging.getLogger(__name__)

FORMATS = ("wav", "flac")
PARTIAL_SUFFIX = ".partial.wav"
_ENCODE_BLOCK = 1 << 16


def partial_path(path: Path) -> Path:
    """Where a FLAC recording's audio is captured until the call ends."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


class CallRecorder:
    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, fmt: str = "wav",
                 *, flush_interval: float = 1.0, max_lag: float = 1.0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"recording format {fmt!r}: must be one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.live_path = self.path if fmt == "wav" else partial_path(self.path)
        if fmt == "flac" and self.path.exists():
            raise FileExistsError(f"{self.path}: a recording already exists")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: WavWriter | None = WavWriter(self.live_path, sample_rate, channels=2)
        self._flush_every = max(1, int(flush_interval * sample_rate))
        self._max_lag = int(max_lag * sample_rate)
        self._written = 0                     # samples per channel in the file
        self._unflushed = 0                   # of which not yet flushed
        self._pending: dict[Speaker, bytearray] = {s: bytearray() for s in SPEAKERS}
        self._duration: float | None = None

    @property
    def duration(self) -> float:
        """Seconds written so far (the final length once closed)."""
        return self._written / self.sample_rate

    def write(self, speaker: Speaker, pcm: bytes, at_sample: int | None = None) -> None:
        """Append a leg's audio (16-bit little-endian mono). `at_sample`, given with a leg's
        first audio, is where that audio starts on the call's timeline; silence fills up to it.
        Audio for a position the leg has already passed is placed right after it instead."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: recorder is closed")
        if speaker not in self._pending:
            raise ValueError(f"unknown speaker {speaker!r}")
        if len(pcm) % 2:
            raise ValueError(f"odd PCM length {len(pcm)}: not 16-bit samples")
        pending = self._pending[speaker]
        if at_sample is not None:
            end = self._end(speaker)
            if at_sample > end:
                pending += bytes(2 * (at_sample - end))
            elif at_sample < end:
                log.debug("%s: %s audio for sample %d placed at %d", self.path.name, speaker,
                          at_sample, end)
        pending += pcm
        self._advance()

    def flush(self) -> None:
        """Write out what both legs have and update the file's header."""
        if self._file is not None:
            self._file.flush()
            self._unflushed = 0

    def close(self) -> float:
        """Pad the shorter leg, finalise the file (encode FLAC) and return the duration in
        seconds. Idempotent. Encoding a long call's FLAC takes a while: see aclose()."""
        if self._duration is not None:
            return self._duration
        if self._file is not None:
            longest = max(self._end(s) for s in SPEAKERS)
            for speaker in SPEAKERS:
                self._pending[speaker] += bytes(2 * (longest - self._end(speaker)))
            self._advance()
            self._file.close()
            self._file = None
        if self.fmt == "flac":
            encode_flac(self.live_path, self.path)
            self.live_path.unlink()
        self._duration = self.duration
        return self._duration

    async def aclose(self) -> float:
        """close() in a worker thread, so encoding does not block the event loop."""
        return await asyncio.to_thread(self.close)

    def _end(self, speaker: Speaker) -> int:
        return self._written + len(self._pending[speaker]) // 2

    def _advance(self) -> None:
        assert self._file is not None
        ends = {s: self._end(s) for s in SPEAKERS}
        lead = max(ends.values())
        for speaker, end in ends.items():
            if lead - end > self._max_lag:                 # silent or absent leg: pad it
                self._pending[speaker] += bytes(2 * (lead - self._max_lag - end))
        count = min(self._end(s) for s in SPEAKERS) - self._written
        if count <= 0:
            return
        frames = np.empty((count, 2), dtype=np.int16)
        for channel, speaker in enumerate(SPEAKERS):      # SPEAKERS = (customer, agent)
            pending = self._pending[speaker]
            frames[:, channel] = np.frombuffer(pending, dtype="<i2", count=count)
            del pending[:2 * count]
        self._file.write(frames)
        self._written += count
        self._unflushed += count
        if self._unflushed >= self._flush_every:
            self.flush()


class WavWriter:
    """16-bit PCM WAV whose header sizes are rewritten at every flush (libsndfile only
    writes them at close, and players disagree about a header that says "0 bytes")."""

    def __init__(self, path: Path, sample_rate: int, channels: int) -> None:
        self._fh: BinaryIO = open(path, "xb")        # never overwrite an earlier recording
        self._data_bytes = 0
        block = 2 * channels
        self._fh.write(b"RIFF" + struct.pack("<I", 36) + b"WAVE"
                       + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate,
                                               sample_rate * block, block, 16)
                       + b"data" + struct.pack("<I", 0))

    def write(self, frames: np.ndarray) -> None:
        data = frames.astype("<i2", copy=False).tobytes()
        self._fh.write(data)
        self._data_bytes += len(data)

    def flush(self) -> None:
        fh = self._fh
        fh.flush()                       # the audio reaches the kernel before the header says so
        fh.seek(4)
        fh.write(struct.pack("<I", min(36 + self._data_bytes, 0xFFFFFFFF)))
        fh.seek(40)
        fh.write(struct.pack("<I", min(self._data_bytes, 0xFFFFFFFF)))
        fh.seek(0, os.SEEK_END)
        fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self.flush()
            finally:
                self._fh.close()


def encode_flac(source: Path, target: Path) -> None:
    """WAV -> FLAC through a temporary file, so `target` is either absent or complete."""
    temporary = target.with_name(target.name + ".tmp")
    try:
        with sf.SoundFile(str(source)) as src, sf.SoundFile(
                str(temporary), "w", samplerate=src.samplerate, channels=src.channels,
                format="FLAC", subtype="PCM_16") as dst:
            for block in src.blocks(_ENCODE_BLOCK, dtype="int16", always_2d=True):
                dst.write(block)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def recover_partial(path: str | os.PathLike) -> Path | None:
    """After a crash: turn a FLAC recording's leftover "<name>.partial.wav" into <name>.
    Returns the recording's path if there was something to recover, else None. (A WAV
    recording needs nothing: its file is playable up to the last flush as it stands.)"""
    path = Path(path)
    live = partial_path(path)
    if not live.exists():
        return None
    if path.exists():
        raise FileExistsError(f"{path} and {live} both exist; not overwriting")
    encode_flac(live, path)
    live.unlink()
    return path
