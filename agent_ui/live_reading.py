"""The call-level reading while calls are live: each call is read again
(prompts.call_reading.read_call) from its final transcript lines and standing cards at most
every `interval` seconds once the customer has said [scoring] min_customer_turns things, and
the result goes on the bus as CallReadingUpdated (the store records it, the hub hands it to
the agent's screen and the supervisor board like any call event). When the call ends it is
read once more, marked final, published, and stored with store.analytics.save_reading; a
post-call transcript (TranscriptRevised) replaces the stored reading with one read from it.

    reader = LiveReader(bus.publish, store)
    task = asyncio.create_task(reader.run(bus))

read_call costs more than a millisecond on a longer call (benchmarks/bench_call_reading.py),
so it runs on a worker thread, one reading per call at a time; the loop only collects lines.
The call's live conversation measures (ConversationUpdated, from the call's pipeline:
callassist.live_analytics) are read with it, for agitation and talk-over.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from callassist.events import (CallEnded, CallEvent, CallReadingUpdated, CardConfirmed, CardFired,
                               CardWithdrawn, ConversationUpdated, TranscriptRevised, TranscriptUpdate)
from prompts.call_reading import CallTypes, load_call_types, read_call

log = logging.getLogger(__name__)

READING_INTERVAL = 5.0          # seconds between two readings of one call


@dataclass
class _LiveCall:
    lines: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    customer_turns: int = 0
    stats: dict[str, Any] | None = None   # the latest ConversationUpdated
    last_read: float = float("-inf")      # monotonic time of the last reading
    dirty: bool = False                   # something changed since the last reading
    task: asyncio.Task | None = None

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        lines = sorted(self.lines.values(), key=lambda line: (line["start"], line["speaker"] != "customer"))
        return lines, list(self.cards.values())


class LiveReader:
    def __init__(self, publish: Callable[[CallEvent], None], store: Any = None, *,
                 interval: float = READING_INTERVAL, types: CallTypes | None = None) -> None:
        self.publish = publish
        self.store = store
        self.interval = interval
        self.types = types or load_call_types()
        self.calls: dict[str, _LiveCall] = {}
        self._post_call: set[asyncio.Task] = set()
        self.readings = 0                 # published so far (for tests and metrics)

    def run(self, bus: Any) -> Coroutine[Any, Any, None]:
        """Subscribe to `bus` NOW and return the coroutine that follows it until cancelled."""
        subscription = bus.subscribe()

        async def follow() -> None:
            try:
                async for event in subscription:
                    self.on_event(event)
            finally:
                subscription.close()
                for call in self.calls.values():
                    if call.task is not None:
                        call.task.cancel()
                for task in self._post_call:
                    task.cancel()

        return follow()

    # --- events (on the loop, cheap) ---------------------------------------------------

    def on_event(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            self._ended(event.call_id)
            return
        if isinstance(event, TranscriptRevised):
            self._spawn(self._reread_revised(event))
            return
        call = self.calls.get(event.call_id)
        if isinstance(event, TranscriptUpdate):
            if not event.final:
                return
            call = call or self.calls.setdefault(event.call_id, _LiveCall())
            key = (event.speaker, event.utterance)
            if event.text.strip():
                call.lines[key] = {"speaker": event.speaker, "utterance": event.utterance,
                                   "text": event.text, "start": event.start, "end": event.end}
            else:
                call.lines.pop(key, None)
            call.customer_turns = sum(line["speaker"] == "customer" for line in call.lines.values())
        elif isinstance(event, CardFired):
            call = call or self.calls.setdefault(event.call_id, _LiveCall())
            card = event.card
            call.cards[card.card_id] = {"category": card.category, "severity": card.severity,
                                        "speaker": card.speaker, "utterance": card.utterance}
        elif isinstance(event, CardWithdrawn) and call is not None:
            call.cards.pop(event.card_id, None)
        elif isinstance(event, ConversationUpdated):
            call = call or self.calls.setdefault(event.call_id, _LiveCall())
            call.stats = event.stats
        elif isinstance(event, CardConfirmed) and call is not None:
            pass                              # the card stands either way
        else:
            return
        if call is not None:
            self._changed(event.call_id, call)

    def _changed(self, call_id: str, call: _LiveCall) -> None:
        if call.customer_turns < self.types.min_customer_turns:
            return
        call.dirty = True
        if call.task is None or call.task.done():
            call.task = asyncio.create_task(self._keep_reading(call_id, call),
                                            name=f"call-reading-{call_id}")

    async def _keep_reading(self, call_id: str, call: _LiveCall) -> None:
        """Read the call while something changed, at most once per interval."""
        while call.dirty:
            wait = call.last_read + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            call.dirty = False
            reading = await self._read(call_id, call)
            call.last_read = time.monotonic()
            if self.calls.get(call_id) is call:          # not ended meanwhile
                self._publish(call_id, reading)

    async def _read(self, call_id: str, call: _LiveCall, final: bool = False) -> dict[str, Any]:
        lines, cards = call.snapshot()
        reading = (await asyncio.to_thread(read_call, lines, cards, call.stats, self.types)).to_dict()
        reading["final"] = final
        return reading

    def _publish(self, call_id: str, reading: dict[str, Any]) -> None:
        self.readings += 1
        self.publish(CallReadingUpdated(call_id, reading))

    # --- the end of a call -------------------------------------------------------------

    def _ended(self, call_id: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        if call.task is not None:
            call.task.cancel()
        if call.customer_turns >= self.types.min_customer_turns:
            self._spawn(self._final(call_id, call))

    async def _final(self, call_id: str, call: _LiveCall) -> None:
        reading = await self._read(call_id, call, final=True)
        self._publish(call_id, reading)
        await self._save(call_id, reading)

    async def _reread_revised(self, event: TranscriptRevised) -> None:
        """The post-call transcript is the one QA reads: read the call again from it (with
        the cards as they stood) and store that reading instead."""
        if self.store is None:
            return
        stored = await asyncio.to_thread(self.store.calls.get_call, event.call_id)
        if not stored:
            return
        lines = [{"speaker": line.speaker, "text": line.text, "start": line.start, "end": line.end}
                 for line in event.lines]
        if sum(line["speaker"] == "customer" for line in lines) < self.types.min_customer_turns:
            return
        # the revised lines are numbered afresh, so cards are matched to them by text
        cards = [c for c in stored.get("cards", []) if c.get("status") != "withdrawn"]
        reading = (await asyncio.to_thread(read_call, lines, _cards_on_lines(cards, lines), None,
                                           self.types)).to_dict()
        reading["final"] = True
        reading["transcript"] = event.engine
        await self._save(event.call_id, reading)

    async def _save(self, call_id: str, reading: dict[str, Any]) -> None:
        analytics = getattr(self.store, "analytics", None)
        if analytics is None:
            return
        try:
            await self.store.off_loop(analytics.save_reading, call_id, reading)
        except Exception:                                  # noqa: BLE001 - logged, the call goes on
            log.exception("call %s: the call reading could not be stored", call_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._post_call.add(task)
        task.add_done_callback(self._post_call.discard)

    async def drain(self) -> None:
        """Wait for the readings of ended calls to be published and stored (tests, shutdown)."""
        while self._post_call:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._post_call)


def _cards_on_lines(cards: list[dict[str, Any]], lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards re-attached to the revised transcript: each to the customer line, in order,
    that overlaps the card's time (the revised lines carry their own utterance numbers)."""
    customer = [line for line in lines if line["speaker"] == "customer"]
    out = []
    for card in cards:
        best = None
        for number, line in enumerate(customer):
            if line["start"] is not None and card.get("start") is not None and \
                    line["start"] - 0.5 <= card["start"] <= (line["end"] or line["start"]) + 0.5:
                best = number
                break
        out.append({"category": card["category"], "severity": card["severity"],
                    "speaker": card["speaker"], "utterance": best if card["speaker"] == "customer" else None})
    return out
