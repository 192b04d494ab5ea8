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
    """How one engine keeps up, for /metrics and /healthz: seconds of audio handed to it and
    not decoded yet (the backlog: a growing one means cards come later and later), the
    real-time factor (decode time / audio time) of the recent decodes, and for a scheduled
    engine (asr.scheduler) how long a customer's sentence waits for the decoder (`lag_seconds`),
    whether it is behind, and how many interims it shed. Thread-safe: decode times are
    recorded in the pool threads."""

    RECENT = 64          # decodes the real-time factor is computed over

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.backlog_seconds = 0.0
        self.audio_seconds_total = 0.0     # audio decoded
        self.decode_seconds_total = 0.0    # time spent decoding it
        self._recent: deque[tuple[float, float]] = deque(maxlen=self.RECENT)
        self.lag_seconds = 0.0
        self.behind = False
        self.interims_shed = 0

    def add_backlog(self, audio_seconds: float) -> None:
        with self._lock:
            backlog = self.backlog_seconds + audio_seconds
            self.backlog_seconds = backlog if backlog > 1e-6 else 0.0   # no float dust when idle

    def set_lag(self, seconds: float) -> None:
        self.lag_seconds = seconds

    def set_behind(self, behind: bool) -> None:
        self.behind = behind

    def count_shed(self) -> None:
        with self._lock:
            self.interims_shed += 1

    @contextmanager
    def pending(self, audio_seconds: float) -> Iterator[None]:
        """Around a feed(): its audio counts as backlog until the feed returns."""
        self.add_backlog(audio_seconds)
        try:
            yield
        finally:
            self.add_backlog(-audio_seconds)

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

    def listen(self, deliver: Callable[[list[SpeechEvent]], None], *, admitted: bool = True) -> None:
        """Live mode, for audio that arrives in real time: from now on feed() returns without
        waiting for decodes, and events decoded later are handed to `deliver` on the event
        loop, in order. A stream that decodes inside feed() (Vosk, the fake) keeps returning
        its events from feed() and never calls `deliver`. `admitted` is the engine's
        admit() for this call: False puts the stream behind the calls already assisted.
        Without listen(), feed() returns the events of the audio it was given (file analysis:
        deterministic, paced by the decoder)."""


class SpeechEngine(abc.ABC):
    name: str
    # False when live decodes trade accuracy for speed (Whisper's short window, no word
    # times): the post-call pass then re-transcribes the recording with the same engine.
    live_is_exact = True
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

    def admit(self) -> bool:
        """May a call that starts now be assisted live, without delaying the calls already
        assisted? Engines that cannot fall behind (decoding in feed()) always say yes."""
        return True

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
