"""Crash recovery at start-up: what the last run (killed, crashed, powered off) left.

    recovery = StartupRecovery(store)          # before any call can start: the snapshot
    resumable = recovery.resumable()           # ARI calls to tap again if Asterisk has them
    ... AriApp(..., resumable=resumable).start()
    await recovery.close_out_after_resume(ari) # the others are closed out

Without Asterisk (demo, no [ari] url) everything is closed out at once:
`await asyncio.to_thread(recovery.close_out)`.

A call closed out gets its recording linked (the path stored when it opened, else the
file its id names), repaired (WAV header sizes, an interrupted FLAC encode) and
measured: its duration is the audio's length, not the wall time up to the restart.
Only what the snapshot found is touched, so calls and recordings started by this run
are never taken for leftovers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from ari_app.calls import InterruptedCall
from ari_app.recorder import PARTIAL_SUFFIX, recover_call_recording, recover_partial

if TYPE_CHECKING:
    from agent_ui.store import Store
    from ari_app.app import AriApp
    from callassist.registry import WorkerRegistry

log = logging.getLogger(__name__)

RESUME_WAIT = 15.0     # seconds Asterisk gets at start-up before interrupted calls are closed out


def recording_recovery(recordings_dir: Path) -> Callable[[str, Path | None], tuple[Path, float] | None]:
    """For close_interrupted_calls: a call's recording found, repaired and measured."""
    def recover(call_id: str, stored: Path | None) -> tuple[Path, float] | None:
        found = recover_call_recording(recordings_dir, call_id, stored)
        return None if found is None else (found.path, found.duration)
    return recover


class UnhostedCalls:
    """On a cluster: calls the database says are live that no worker hosts (the whole cluster
    stopped while they were up, or their worker died with no controller left to move them).
    Seen unhosted at two checks `grace` seconds apart (a call being opened or moved is hosted
    again within seconds), they are closed out as start-up recovery closes a single process's
    leftovers: a fault, the recording linked, repaired and measured, the call ended."""

    PROBLEM = "没有识别节点处理此通话（集群曾停止，或其识别节点失联且无控制节点转移），已结束"

    def __init__(self, store: Store, registry: WorkerRegistry, grace: float = 60.0) -> None:
        self.store = store
        self.registry = registry
        self.grace = grace
        self._unhosted: set[str] = set()      # seen unhosted at the last check

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.grace)
            try:
                await self.check()
            except Exception:                 # Redis or the database away: the next check
                log.exception("checking for calls no worker hosts failed")

    async def check(self) -> int:
        """One check; returns how many calls were closed out."""
        live = await asyncio.to_thread(self.store.calls.live_calls)
        hosted = {call_id for worker in await self.registry.live_workers() for call_id in worker.call_ids}
        now = time.time()
        unhosted = {c["call_id"] for c in live if c["call_id"] not in hosted and now - c["started_at"] > self.grace}
        due = unhosted & self._unhosted
        self._unhosted = unhosted - due
        if not due:
            return 0
        closed = await asyncio.to_thread(self.store.recovery.close_interrupted_calls, problem=self.PROBLEM,
                                         recover=recording_recovery(self.store.recordings_dir), call_ids=due)
        log.warning("%d live call(s) no worker hosts were closed out: %s", closed, ", ".join(sorted(due)))
        return closed


class StartupRecovery:
    def __init__(self, store: Store) -> None:
        """Take the snapshot: call before any call of this run can start."""
        self.store = store
        self.interrupted = store.recovery.interrupted_calls()
        self.captures = set(store.recordings_dir.glob("*" + PARTIAL_SUFFIX))   # FLAC captures left

    def resumable(self) -> list[InterruptedCall]:
        """The ARI calls the last run was tapping (the ones to tap again if still up)."""
        return [InterruptedCall(c["call_id"], c["started_at"], c["caller"], c["recording"],
                                c["last_event_at"], c["next_utterance"])
                for c in self.interrupted if c["source"] == "ari"]

    def close_out(self, resumed: Collection[str] = frozenset(),
                  in_use: Collection[Path] = frozenset()) -> int:
        """Close out the interrupted calls not `resumed`, with their recordings, then
        finish any other FLAC capture left (not those `in_use`: being continued).
        Blocking (FLAC encoding): run it in a thread. Returns how many calls were closed."""
        ids = {c["call_id"] for c in self.interrupted} - set(resumed)
        closed = self.store.recovery.close_interrupted_calls(
            recover=recording_recovery(self.store.recordings_dir), call_ids=ids) if ids else 0
        if closed:
            log.warning("%d call(s) were live when callassist last stopped; closed them out with "
                        "their recordings", closed)
        for live in sorted(self.captures - set(in_use)):
            target = live.with_name(live.name.removesuffix(PARTIAL_SUFFIX))
            try:
                if recover_partial(target):
                    log.warning("recovered the recording of an interrupted call: %s", target)
            except (OSError, RuntimeError, ValueError) as exc:
                log.error("could not recover %s: %s", live, exc)
        return closed

    async def close_out_after_resume(self, ari: AriApp, wait: float = RESUME_WAIT) -> int:
        """Once the ARI app has tapped again what Asterisk still has (or Asterisk stayed
        away for `wait` seconds), close out the rest."""
        try:
            await ari.wait_ready(wait)
        except TimeoutError:
            log.warning("Asterisk not reachable within %.0f s of start-up: calls interrupted by the "
                        "last stop are closed out, not tapped again", wait)
        resumed = ari.release_resumable()
        return await asyncio.to_thread(self.close_out, resumed, ari.open_recordings())
