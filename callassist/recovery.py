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
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from ari_app.calls import InterruptedCall
from ari_app.recorder import PARTIAL_SUFFIX, recover_call_recording, recover_partial

if TYPE_CHECKING:
    from agent_ui.store import Store
    from ari_app.app import AriApp

log = logging.getLogger(__name__)

RESUME_WAIT = 15.0     # seconds Asterisk gets at start-up before interrupted calls are closed out


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
        def recover(call_id: str, stored: Path | None) -> tuple[Path, float] | None:
            found = recover_call_recording(self.store.recordings_dir, call_id, stored)
            return None if found is None else (found.path, found.duration)

        ids = {c["call_id"] for c in self.interrupted} - set(resumed)
        closed = self.store.recovery.close_interrupted_calls(recover=recover, call_ids=ids) if ids else 0
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
