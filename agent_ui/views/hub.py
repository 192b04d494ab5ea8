"""Routes stored events to the open websockets that want them.

One store listener for the whole app instead of one per socket: each event is handed
only to the sockets watching its call (plus supervisors' sockets, which watch every
call), so with N agents connected an event costs O(1) socket wake-ups, not O(N).

A socket's Feed watches calls, endpoints (an AgentJoined naming one of them makes the
feed watch that call from that event on, decided here, synchronously, so none of
the call's later events can slip past), or everything.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)

Item = tuple[int, dict[str, Any]]


class Feed:
    """One socket's events, in commit order. Bounded: when the socket falls behind by
    `maxsize` events, `overflowed` is set and nothing more is queued (the socket is
    closed and its client catches up from the store on reconnect)."""

    def __init__(self, maxsize: int, every: bool = False, endpoints: Iterable[str] = ()) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)
        self.every = every
        self.endpoints = frozenset(endpoints)
        self.calls: set[str] = set()
        self.overflowed = False

    def offer(self, item: Item) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    async def get(self) -> Item:
        return await self.queue.get()


class LiveHub:
    def __init__(self, store: Any) -> None:
        self.store = store
        self._every: set[Feed] = set()
        self._by_call: dict[str, set[Feed]] = defaultdict(set)
        self._by_endpoint: dict[str, set[Feed]] = defaultdict(set)

    def run(self) -> Coroutine[Any, Any, None]:
        """Listen to the store NOW and return the coroutine that dispatches forever."""
        queue = self.store.events.listen()          # unbounded: the hub itself must not lose events

        async def dispatch_forever() -> None:
            try:
                while True:
                    self.dispatch(*await queue.get())
            finally:
                self.store.events.unlisten(queue)

        return dispatch_forever()

    def attach(self, feed: Feed, calls: Iterable[str] = ()) -> None:
        if feed.every:
            self._every.add(feed)
        for endpoint in feed.endpoints:
            self._by_endpoint[endpoint].add(feed)
        for call_id in calls:
            self.watch(feed, call_id)

    def watch(self, feed: Feed, call_id: str) -> None:
        feed.calls.add(call_id)
        self._by_call[call_id].add(feed)

    def detach(self, feed: Feed) -> None:
        self._every.discard(feed)
        for endpoint in feed.endpoints:
            self._forget(self._by_endpoint, endpoint, feed)
        for call_id in feed.calls:
            self._forget(self._by_call, call_id, feed)

    @staticmethod
    def _forget(index: dict[str, set[Feed]], key: str, feed: Feed) -> None:
        feeds = index.get(key)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del index[key]

    def dispatch(self, seq: int, event: dict[str, Any]) -> None:
        call_id = event.get("call_id", "")
        if event.get("type") == "AgentJoined":
            for feed in self._by_endpoint.get(event.get("endpoint", ""), ()):
                self.watch(feed, call_id)
        targets = self._by_call.get(call_id, set()) | self._every
        for feed in targets:
            feed.offer((seq, event))
        if event.get("type") == "CallEnded":
            # agents' feeds keep a call until the socket closes (a reconnect drops it);
            # nothing more is expected of an ended call, so free the index entry
            for feed in self._by_call.pop(call_id, set()):
                feed.calls.discard(call_id)
