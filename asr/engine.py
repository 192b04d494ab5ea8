"""The one interface every speech engine implements.

An engine holds the (large, shared) model; `open_stream` makes a cheap per-stream
recogniser. Streams take 16-bit signed little-endian mono PCM at the rate they were
opened with and return the events that audio produced. Blocking decode runs in the
engine's bounded thread pool, never on the event loop.
"""
from __future__ import annotations

import abc
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from asr.events import SpeechEvent

T = TypeVar("T")


class DecodeMeter:
    """How one engine keeps up, for /metrics: seconds of audio handed to feed() and not
    decoded yet (the backlog: a growing one means cards come later and later), and the
    real-time factor (decode time / audio time) of the recent decodes. Thread-safe: decode
    times are recorded in the pool threads."""

    RECENT = 64          # decodes the real-time factor is computed over

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.backlog_seconds = 0.0
        self.audio_seconds_total = 0.0     # audio decoded
        self.decode_seconds_total = 0.0    # time spent decoding it
        self._recent: deque[tuple[float, float]] = deque(maxlen=self.RECENT)

    @contextmanager
    def pending(self, audio_seconds: float) -> Iterator[None]:
        """Around a feed(): its audio counts as backlog until the feed returns."""
        with self._lock:
            self.backlog_seconds += audio_seconds
        try:
            yield
        finally:
            with self._lock:
                self.backlog_seconds = max(0.0, self.backlog_seconds - audio_seconds)

    def timed(self, audio_seconds: float, fn: Callable[..., T], *args: object) -> T:
        """Run fn(*args) (in a pool thread) and record it as decoding `audio_seconds`."""
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            spent = time.perf_counter() - started
            with self._lock:
                self.audio_seconds_total += audio_seconds
                self.decode_seconds_total += spent
                self._recent.append((audio_seconds, spent))

    @property
    def real_time_factor(self) -> float:
        with self._lock:
            audio = sum(a for a, _ in self._recent)
            spent = sum(s for _, s in self._recent)
        return spent / audio if audio > 0 else 0.0


class RecognizerStream(abc.ABC):
    sample_rate: int

    @abc.abstractmethod
    async def feed(self, pcm: bytes) -> list[SpeechEvent]:
        """Decode more audio; return the events it produced (possibly none)."""

    @abc.abstractmethod
    async def finish(self) -> list[SpeechEvent]:
        """Flush: the final transcript of any utterance in progress, then EndOfSpeech."""

    def close(self) -> None:
        """Release the recogniser. Idempotent."""


class SpeechEngine(abc.ABC):
    name: str
    _pool: ThreadPoolExecutor | None = None
    _closed = False

    def _start_decode_pool(self, threads: int) -> ThreadPoolExecutor:
        """The bounded pool every blocking decode of this engine runs in (off the event loop)."""
        if threads < 1:
            raise ValueError(f"decode_threads must be at least 1, got {threads}")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"{self.name}-decode")
        return self._pool

    @property
    def meter(self) -> DecodeMeter:
        meter = self.__dict__.get("_meter")
        if meter is None:
            meter = self.__dict__["_meter"] = DecodeMeter()
        return meter

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    @abc.abstractmethod
    def open_stream(self, sample_rate: int, label: str = "") -> RecognizerStream:
        """A new recogniser for one audio stream (one call leg).

        `label` names the stream for logs (e.g. "customer"); real engines only log it,
        the scripted fake uses it to pick which script to replay."""

    def close(self) -> None:
        """Release the model and the thread pool. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)


class ModelNotFoundError(RuntimeError):
    """No usable model; the message says where we looked and how to install one."""
