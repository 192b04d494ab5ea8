"""The app's open websockets: how many each user holds (a cap), and whether the session
each was opened with is still live.

A socket takes a Place before its handshake (admit, synchronous: concurrent handshakes
cannot overrun the cap) and gives it back when it ends (release). `watch_sessions`
checks the sessions of all open sockets in one query every `interval` seconds
(AccountStore.live_session_tokens, in its own thread: a database read stays off the event loop
that carries calls, and a busy shared pool, say argon2 hashing a burst of logins, cannot
delay it) and sets `ended` on each Place whose session is gone, whatever ended it:
a logout here, `callassist user remove` or a password, role or endpoint change from
another process, disabling, expiry. The socket's handler then closes it.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SESSION_CHECK_INTERVAL = 0.5       # seconds: an ended session's sockets close within ~0.5 s


@dataclass(eq=False)
class Place:
    """One open (or opening) socket's slot."""
    username: str
    token: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ws: Any = None                     # its web.WebSocketResponse once the handshake is done


class OpenSockets:
    def __init__(self, store: Any, per_user: int) -> None:
        self.store = store
        self.per_user = per_user
        self._places: set[Place] = set()
        self._per_user: Counter[str] = Counter()
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="websocket-sessions")

    def admit(self, username: str, token: str) -> Place | None:
        """A slot for a new socket of `username` opened with session `token`; None when
        the user already holds `per_user` sockets."""
        if self._per_user[username] >= self.per_user:
            return None
        place = Place(username, token)
        self._places.add(place)
        self._per_user[username] += 1
        return place

    def release(self, place: Place) -> None:
        if place in self._places:
            self._places.discard(place)
            self._per_user[place.username] -= 1
            if self._per_user[place.username] <= 0:
                del self._per_user[place.username]

    def open_sockets(self) -> list[Any]:
        """The sockets past their handshake (web.WebSocketResponse), e.g. to close on shutdown."""
        return [place.ws for place in self._places if place.ws is not None]

    async def check_sessions(self) -> int:
        """One check of every open socket's session; returns how many sockets it ended."""
        asked = {place.token for place in self._places}
        if not asked:
            return 0
        live = await asyncio.get_running_loop().run_in_executor(
            self._checker, self.store.accounts.live_session_tokens, asked)
        ended = 0
        # sockets admitted during the query were not asked about: only judge the asked
        for place in list(self._places):
            if place.token in asked and place.token not in live and not place.ended.is_set():
                place.ended.set()
                ended += 1
        if ended:
            log.info("closing %d websocket(s) whose session ended", ended)
        return ended

    async def watch_sessions(self, interval: float = SESSION_CHECK_INTERVAL) -> None:
        unreachable = False                # the database is restarting: said once
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.check_sessions()
                    if unreachable:
                        log.info("checking the sessions of open websockets again")
                    unreachable = False
                except Exception as exc:   # a failed check must not stop the next ones
                    if not self.store.db.retry_later(exc):
                        log.exception("checking the sessions of open websockets failed")
                    elif not unreachable:  # the database restarting: once per outage
                        log.warning("cannot check the sessions of open websockets: %s", exc)
                    unreachable = self.store.db.retry_later(exc)
        finally:
            self._checker.shutdown(wait=False)
