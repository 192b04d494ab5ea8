"""The one interface every speech engine implements.

An engine holds the (large, shared) model; `open_stream` makes a cheap per-stream
recogniser. Streams take 16-bit signed little-endian mono PCM at the rate they were
opened with and return the events that audio produced. Blocking decode runs in the
engine's bounded thread pool, never on the event loop.
"""
from __future__ import annotations

import abc
from concurrent.futures import ThreadPoolExecutor

from asr.events import SpeechEvent


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
