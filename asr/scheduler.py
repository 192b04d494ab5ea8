"""Which segment a segment engine decodes next, so cards stay in time at any load.

Whisper decodes whole segments, each costing about a second of one core however short the
audio, and a 2-core box has `decode_threads` of them. Decoding in arrival order made every
extra call delay everyone's cards (measured on a real Asterisk: p50 3.7 s with one call,
35 s with eight). The scheduler decodes by what matters for the agent:

    CUSTOMER_FINAL  the customer's finished sentence: this is what fires cards
    AGENT_FINAL     the agent's sentence (script adherence, the transcript)
    CUSTOMER_INTERIM, AGENT_INTERIM   the growing sentence, for text on screen while it is said
    OVERFLOW        calls admitted while the decoder was already behind (see `admit`)
    BATCH           post-call and file work: only when nothing live waits

Interims are shed first: a stream has at most one interim waiting, a newer request replaces
it, and one whose sentence has ended is dropped when its turn comes (the final is on its way).
When a customer's final has waited `behind_after` seconds, the decoder is *behind*: new calls
are admitted as OVERFLOW (recorded and transcribed, but never at the expense of the calls
already assisted), the streams say so (asr.events.DecodeDelayed -> a CallFault on the call),
one log line is written per episode, and the meter (health, /metrics) shows the lag.

Everything here runs on the event loop; the decode itself runs in the engine's pool.
"""
from __future__ import annotations

import asyncio
import enum
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from asr.engine import DecodeMeter

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    CUSTOMER_FINAL = 0
    AGENT_FINAL = 1
    CUSTOMER_INTERIM = 2
    AGENT_INTERIM = 3
    OVERFLOW = 4
    BATCH = 5

    @property
    def interim(self) -> bool:
        return self in (Priority.CUSTOMER_INTERIM, Priority.AGENT_INTERIM)


BEHIND_AFTER_S = 1.0      # a customer final waiting longer than this: the decoder is behind
CAUGHT_UP_AFTER_S = 10.0  # ... and it is caught up again after this long without such a wait


class Shed(Exception):
    """An interim that was not decoded: a newer one replaced it, or its sentence ended first."""


@dataclass(eq=False)
class DecodeJob:
    """`prepare()` runs on the event loop when the job's turn comes (so an interim decodes the
    freshest audio) and returns the blocking call's arguments, or None to shed the job;
    `decode(*args)` runs in the pool. `audio_seconds` feeds the meter."""
    priority: Priority
    prepare: Callable[[], tuple[Any, ...] | None]
    decode: Callable[..., Any]
    audio_seconds: float = 0.0
    key: object = None        # interims: the stream, so a newer request replaces a waiting one
    queued_at: float = field(default_factory=time.monotonic)
    waited: float = 0.0       # seconds between submit and the decode starting
    future: asyncio.Future = field(init=False)
    settled: bool = False     # its audio has left the meter's backlog


class DecodeScheduler:
    def __init__(self, pool: Executor, slots: int, meter: DecodeMeter, name: str = "",
                 behind_after: float = BEHIND_AFTER_S, caught_up_after: float = CAUGHT_UP_AFTER_S) -> None:
        self._pool = pool
        self._slots = slots
        self._meter = meter
        self._name = name
        self.behind_after = behind_after
        self.caught_up_after = caught_up_after
        self._heap: list[tuple[int, int, DecodeJob]] = []
        self._order = itertools.count()
        self._interims: dict[object, DecodeJob] = {}   # key -> its waiting interim
        self._running = 0
        self._behind_since: float | None = None
        self._last_late = float("-inf")                 # monotonic time of the last late customer final
        self._recheck: asyncio.TimerHandle | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def behind(self) -> bool:
        """True while customers' sentences wait longer than `behind_after` to be decoded."""
        self._refresh()
        return self._behind_since is not None

    def admit(self) -> bool:
        """May a new call be assisted live? Not while the decoder is behind: its audio then goes
        at OVERFLOW priority, so the calls already on screen keep their cards in time."""
        return not self.behind

    def lag(self) -> float:
        """How long the oldest waiting customer final has waited (0 when none waits)."""
        now = time.monotonic()
        return max((now - job.queued_at for _, _, job in self._heap
                    if job.priority == Priority.CUSTOMER_FINAL and not job.future.done()), default=0.0)

    # -- submitting -------------------------------------------------------------------

    def submit(self, job: DecodeJob) -> asyncio.Future:
        """Queue `job`; its future gets decode()'s result, or Shed, or decode()'s exception."""
        job.future = asyncio.get_running_loop().create_future()
        if job.priority.interim and job.key is not None:
            waiting = self._interims.pop(job.key, None)
            if waiting is not None and not waiting.future.done():
                self._shed(waiting)
            self._interims[job.key] = job
        heapq.heappush(self._heap, (int(job.priority), next(self._order), job))
        self._meter.add_backlog(job.audio_seconds)
        self._dispatch()
        return job.future

    def _settle(self, job: DecodeJob) -> None:
        if not job.settled:
            job.settled = True
            self._meter.add_backlog(-job.audio_seconds)

    def _shed(self, job: DecodeJob) -> None:
        self._meter.count_shed()
        self._settle(job)
        job.future.set_exception(Shed())
        job.future.exception()          # retrieved: an unawaited shed interim is not an error

    def _dispatch(self) -> None:
        while self._running < self._slots and self._heap:
            _, _, job = heapq.heappop(self._heap)
            if job.future.done():       # cancelled or shed while waiting
                self._settle(job)
                continue
            if job.priority.interim and self._interims.get(job.key) is job:
                del self._interims[job.key]
            job.waited = time.monotonic() - job.queued_at
            if job.priority == Priority.CUSTOMER_FINAL and job.waited > self.behind_after:
                self._mark_late(job.waited)
            try:
                args = job.prepare()
            except Exception as exc:    # the job's own failure, reported to its owner
                self._settle(job)
                job.future.set_exception(exc)
                continue
            if args is None:
                self._shed(job)
                continue
            try:
                pool_future = asyncio.get_running_loop().run_in_executor(
                    self._pool, self._meter.timed, job.audio_seconds, job.decode, *args)
            except RuntimeError as exc:  # the engine was closed: its pool takes no more work
                self._settle(job)
                job.future.set_exception(exc)
                continue
            self._running += 1
            pool_future.add_done_callback(functools.partial(self._finished, job))
        self._refresh()

    def _finished(self, job: DecodeJob, done: asyncio.Future) -> None:
        self._running -= 1
        self._settle(job)
        if not job.future.done():
            if done.cancelled():
                job.future.cancel()
            elif (exc := done.exception()) is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(done.result())
        self._dispatch()

    # -- behind / caught up -----------------------------------------------------------

    def _mark_late(self, waited: float) -> None:
        self._last_late = time.monotonic()
        # look again once it may have caught up, even if no more work comes (health reads the meter)
        if self._recheck is not None:
            self._recheck.cancel()
        self._recheck = asyncio.get_running_loop().call_later(self.caught_up_after + 0.01, self._refresh)
        if self._behind_since is None:
            self._behind_since = self._last_late
            self._meter.set_behind(True)
            waiting = sum(1 for _, _, job in self._heap if not job.future.done())
            log.warning("%s: speech decoding is behind: a customer's sentence waited %.1f s "
                        "(%d segments waiting); interims are shed, and calls that start now are "
                        "decoded after the ones on screen", self._name, waited, waiting)

    def _refresh(self) -> None:
        """Behind or caught up, from the wait of the customers' finals (one pass over the queue:
        this runs at every dispatch, for Vosk every 20 ms per leg)."""
        lag = self.lag()
        self._meter.set_lag(lag)
        if lag > self.behind_after:
            self._mark_late(lag)
        elif (self._behind_since is not None
              and time.monotonic() - self._last_late > self.caught_up_after):
            log.info("%s: speech decoding caught up after %.0f s behind", self._name,
                     time.monotonic() - self._behind_since)
            self._behind_since = None
            self._meter.set_behind(False)
