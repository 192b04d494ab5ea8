"""A live call's conversation measures, kept up as the call goes.

The call's pipeline hands over each leg's audio (on the call's timeline) and each final
transcript line; every `interval` seconds the ConversationTracker takes what came, in a
worker thread (its pitch and loudness analysis is numpy work that must not hold up the loop
carrying RTP and ARI; one batch at a time, so the tracker is never used by two threads), and
its snapshot is published as a ConversationUpdated. The live reading (agent_ui.live_reading)
uses it for agitation and talk-over in the escalation score.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from callassist.conversation import ConversationTracker
from callassist.events import CallEvent, ConversationUpdated, Speaker

log = logging.getLogger(__name__)

UPDATE_INTERVAL = 5.0          # seconds between two published snapshots of a call


class LiveConversation:
    def __init__(self, call_id: str, tracker: ConversationTracker, publish: Callable[[CallEvent], None],
                 interval: float = UPDATE_INTERVAL) -> None:
        self.call_id = call_id
        self._tracker = tracker
        self._publish = publish
        self.interval = interval
        self._audio: list[tuple[Speaker, bytes, int]] = []
        self._lines: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None
        self.updates = 0

    @classmethod
    def from_config(cls, analytics: Any, call_id: str, publish: Callable[[CallEvent], None]) -> LiveConversation:
        return cls(call_id, ConversationTracker.from_config(analytics), publish)

    def audio(self, speaker: Speaker, pcm: bytes, at: int) -> None:
        """A leg's audio starting at timeline sample `at`. Never waits."""
        self._audio.append((speaker, pcm, at))
        if self._task is None:
            self._task = asyncio.create_task(self._keep_up(), name=f"conversation-{self.call_id}")

    def line(self, speaker: Speaker, start: float, end: float, text: str) -> None:
        """A final transcript line (seconds on the call's timeline)."""
        self._lines.append({"speaker": speaker, "start": start, "end": end, "text": text})

    async def _keep_up(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.update()

    async def update(self) -> None:
        """Hand what came to the tracker and publish its snapshot (also callable directly)."""
        audio, self._audio = self._audio, []
        lines, self._lines = self._lines, []
        try:
            stats = await asyncio.to_thread(self._analyse, audio, lines)
        except Exception:       # measures are extra: a failure must not touch the call
            log.exception("call %s: conversation measures failed", self.call_id)
            return
        self.updates += 1
        self._publish(ConversationUpdated(self.call_id, stats))

    def _analyse(self, audio: list[tuple[Speaker, bytes, int]], lines: list[dict[str, Any]]) -> dict[str, Any]:
        for speaker, pcm, at in audio:
            self._tracker.feed(speaker, pcm, at)
        for line in lines:
            self._tracker.add_line(line)
        return self._tracker.snapshot().to_dict()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """Stop updating (the post-call pass measures the whole call)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
