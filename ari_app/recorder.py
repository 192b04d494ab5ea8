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

Every chunk of audio reaches the kernel as it is written (a kill loses none of it,
only the header's sizes may lag); `recover_recording()` repairs those sizes, finishes
an interrupted FLAC encode and measures the audio, so a call interrupted by a crash
is closed out with its recording and its true duration. `CallRecorder.resume()`
continues an interrupted recording in the same file (a call tapped again after a
restart): the gap is silence, so the file stays on the call's timeline.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from callassist.events import SPEAKERS, Speaker

log = logging.getLogger(__name__)

FORMATS = ("wav", "flac")
PARTIAL_SUFFIX = ".partial.wav"
_ENCODE_BLOCK = 1 << 16
_WAV_HEADER = 44                      # WavWriter's header: RIFF, fmt (16 bytes), data


def partial_path(path: Path) -> Path:
    """Where a FLAC recording's audio is captured until the call ends."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def recording_name(call_id: str, fmt: str) -> str:
    """The file name a call's recording gets (the one naming rule: recovery after a
    crash finds a recording by it when its path was never stored)."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', call_id)}.{fmt}"


class CallRecorder:
    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, fmt: str = "wav",
                 *, flush_interval: float = 1.0, max_lag: float = 1.0, resume: bool = False) -> None:
        """A new recording at `path` (never overwriting one), or with `resume` the
        continuation of the interrupted recording there (see resume())."""
        if fmt not in FORMATS:
            raise ValueError(f"recording format {fmt!r}: must be one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.live_path = self.path if fmt == "wav" else partial_path(self.path)
        if fmt == "flac" and self.path.exists():
            raise FileExistsError(f"{self.path}: a recording already exists")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        opener = WavWriter.append if resume else WavWriter.create
        self._file: WavWriter | None = opener(self.live_path, sample_rate, 2)
        self._flush_every = max(1, int(flush_interval * sample_rate))
        self._max_lag = int(max_lag * sample_rate)
        self._written = self._file.frames     # samples per channel in the file
        self._unflushed = 0                   # of which not yet flushed
        self._pending: dict[Speaker, bytearray] = {s: bytearray() for s in SPEAKERS}
        self._duration: float | None = None

    @classmethod
    def resume(cls, path: str | os.PathLike, sample_rate: int = 16000, fmt: str = "wav",
               **kwargs: float) -> CallRecorder:
        """Continue a recording a crash interrupted (its header is repaired first): new
        audio goes on at its place on the call's timeline, after silence for the gap.
        Raises FileNotFoundError if there is nothing to continue (a FLAC recording that
        was already encoded cannot be appended to)."""
        return cls(path, sample_rate, fmt, resume=True, **kwargs)

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

    def suspend(self) -> None:
        """Stop writing without finalising (no padding of the shorter leg, no FLAC encode), as
        a crash leaves the file: resume() continues it (a call moved to another worker)."""
        self.flush()
        writer, self._file = self._file, None
        if writer is not None:
            writer.close()

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

    def __init__(self, fh: BinaryIO, channels: int) -> None:
        """Writes on at the end of `fh`, a file with its header (see create, append)."""
        self._fh = fh
        self._block = 2 * channels
        self._data_bytes = fh.seek(0, os.SEEK_END) - _WAV_HEADER

    @classmethod
    def create(cls, path: Path, sample_rate: int, channels: int) -> WavWriter:
        fh = open(path, "xb")                    # never overwrite an earlier recording
        fh.write(_wav_header(sample_rate, channels, 0))
        fh.flush()                               # a file that exists is a WAV, even if killed now
        return cls(fh, channels)

    @classmethod
    def append(cls, path: Path, sample_rate: int, channels: int) -> WavWriter:
        """Reopen a WavWriter file a crash left behind, to write on at its end."""
        fmt = _read_wav_format(path)
        if fmt != (channels, sample_rate):             # checked before anything is changed
            raise ValueError(f"{path}: {fmt[0]} channel(s) at {fmt[1]} Hz, cannot continue it "
                             f"as {channels} at {sample_rate} Hz")
        repair_wav(path)
        return cls(open(path, "r+b"), channels)

    @property
    def frames(self) -> int:
        return self._data_bytes // self._block

    def write(self, frames: np.ndarray) -> None:
        data = frames.astype("<i2", copy=False).tobytes()
        self._fh.write(data)
        # to the kernel at once: a killed process then loses none of the audio it wrote
        # (only the header's sizes, which recover_recording() repairs)
        self._fh.flush()
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
    recording is playable up to the last flush as it stands; recover_recording() also
    repairs its header.)"""
    path = Path(path)
    live = partial_path(path)
    if not live.exists():
        return None
    if path.exists():
        raise FileExistsError(f"{path} and {live} both exist; not overwriting")
    repair_wav(live)
    encode_flac(live, path)
    live.unlink()
    return path


@dataclass(frozen=True)
class RecoveredRecording:
    path: Path
    frames: int
    sample_rate: int

    @property
    def duration(self) -> float:
        """Seconds of audio in the file: the call's true recorded length."""
        return self.frames / self.sample_rate


def recover_recording(path: str | os.PathLike) -> RecoveredRecording | None:
    """Make the recording a crash interrupted complete and readable, and measure it.

    WAV: the header's sizes are set to the audio actually in the file. FLAC: the
    capture ("<name>.partial.wav") is repaired and encoded; an encode the crash cut
    short ("<name>.tmp") is discarded and done again; a FLAC already encoded (the
    crash came before its capture was deleted) is kept if it holds every frame.
    Returns None if there is no recording at `path`. Raises ValueError / OSError /
    FileExistsError (two different versions of one recording) without deleting anything.
    """
    path = Path(path)
    if path.suffix.lower() != ".flac":
        if not path.is_file():
            return None
        frames = repair_wav(path)
        return RecoveredRecording(path, frames, _read_wav_format(path)[1])
    live = partial_path(path)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)     # a cut encode, never read
    if live.exists():
        frames = repair_wav(live)
        if path.exists():
            encoded = _audio_frames(path)
            if encoded != frames:
                raise FileExistsError(f"{path} ({encoded} frames) and {live} ({frames} frames) "
                                      f"differ; keeping both")
        else:
            encode_flac(live, path)
        live.unlink()
    if not path.is_file():
        return None
    info = sf.info(str(path))
    return RecoveredRecording(path, info.frames, info.samplerate)


def recover_call_recording(recordings_dir: Path, call_id: str,
                           stored: Path | None = None) -> RecoveredRecording | None:
    """recover_recording() for an interrupted call: the path stored for it when its
    recording opened, else the file its id names (recording_name) in any format."""
    candidates = [stored] if stored is not None else [
        Path(recordings_dir) / recording_name(call_id, fmt) for fmt in FORMATS]
    for candidate in candidates:
        recovered = recover_recording(candidate)
        if recovered is not None:
            return recovered
    return None


def repair_wav(path: str | os.PathLike) -> int:
    """Set a WavWriter file's header sizes to the whole frames the file holds (a torn
    last frame is cut off) and return that number of frames. Raises ValueError for a
    file that is not a 16-bit PCM WAV laid out as WavWriter writes it."""
    path = Path(path)
    channels, _ = _read_wav_format(path)
    block = 2 * channels
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        data = (size - _WAV_HEADER) // block * block
        if _WAV_HEADER + data != size:
            fh.truncate(_WAV_HEADER + data)
        fh.seek(4)
        fh.write(struct.pack("<I", min(36 + data, 0xFFFFFFFF)))
        fh.seek(40)
        fh.write(struct.pack("<I", min(data, 0xFFFFFFFF)))
    return data // block


def _wav_header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate,
                                    sample_rate * block, block, 16)
            + b"data" + struct.pack("<I", data_bytes))


def _read_wav_format(path: Path) -> tuple[int, int]:
    """(channels, sample rate) of a WavWriter file; ValueError if it is not one."""
    with open(path, "rb") as fh:
        header = fh.read(_WAV_HEADER)
    if (len(header) < _WAV_HEADER or header[:4] != b"RIFF" or header[8:16] != b"WAVE" + b"fmt "
            or header[36:40] != b"data"):
        raise ValueError(f"{path}: not a WAV file as callassist records them (44-byte header)")
    _, tag, channels, rate, _, _, bits = struct.unpack("<IHHIIHH", header[16:36])
    if tag != 1 or bits != 16 or channels < 1 or rate < 1:
        raise ValueError(f"{path}: not 16-bit PCM (format {tag}, {bits} bits)")
    return channels, rate


def _audio_frames(path: Path) -> int | None:
    """Frames in an audio file, or None if it cannot be read."""
    try:
        return sf.info(str(path)).frames
    except (RuntimeError, OSError):
        return None
