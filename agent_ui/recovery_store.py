"""After a crash: the calls a previous run left 'live', and closing them with a fault
and an end (callassist.recovery drives it at start-up). Reached as `store.recovery`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from agent_ui.db import Database
from agent_ui.event_store import EventLog
from agent_ui.recordings_store import Recordings
from callassist.events import CallEnded, CallFault

log = logging.getLogger(__name__)

# (call id, its stored recording inside data_dir/recordings or None) -> (file, seconds) or None
RecordingRecovery = Callable[[str, "Path | None"], "tuple[Path, float] | None"]


class CallRecovery:
    def __init__(self, db: Database, events: EventLog, recordings: Recordings) -> None:
        self._db = db
        self._events = events
        self._recordings = recordings

    def interrupted_calls(self) -> list[dict[str, Any]]:
        """Calls a previous run left 'live' (call at start-up, before any call can start):
        call_id, source, caller, started_at, recording (its stored file inside
        data_dir/recordings, or None), last_event_at and next_utterance (the utterance
        numbers below it are taken), for tapping them again if they are still up."""
        utterance = self._db.dialect.json_field("e.payload", "utterance", integer=True)
        with self._db.query() as db:
            rows = db.execute(
                f"""SELECT c.call_id, c.source, c.caller, c.started_at, c.recording_path,
                          (SELECT MAX(e.at) FROM events e WHERE e.call_id = c.call_id) AS last_event_at,
                          (SELECT COALESCE(MAX({utterance}), -1) + 1
                           FROM events e WHERE e.call_id = c.call_id AND e.type = 'TranscriptUpdate'
                          ) AS next_utterance
                   FROM calls c WHERE c.status = 'live' ORDER BY c.started_at""").fetchall()
        return [{"call_id": r["call_id"], "source": r["source"], "caller": r["caller"] or "",
                 "started_at": r["started_at"], "recording": self._recordings.inside(r["recording_path"]),
                 "last_event_at": r["last_event_at"], "next_utterance": int(r["next_utterance"])}
                for r in rows]

    def close_interrupted_calls(self, now: float | None = None,
                                problem: str = "callassist restarted during the call", *,
                                recover: RecordingRecovery | None = None,
                                call_ids: Collection[str] | None = None) -> int:
        """Mark calls left 'live' by a previous run as ended: a CallFault and a CallEnded
        each. `recover(call_id, stored recording or None)` makes the call's recording
        whole and returns (its path, seconds of audio in it): the CallEnded links that
        file and gives that length, so the downtime is not counted as call time.
        Without a recording a call lasts until its last stored event. With `call_ids`,
        only those (the ones found live at start-up: calls started since are not
        leftovers). It may take a while (FLAC is encoded here); returns how many were closed."""
        now = time.time() if now is None else now
        with self._db.query() as db:
            rows = db.execute(
                """SELECT c.call_id, c.started_at, c.recording_path,
                          (SELECT MAX(e.at) FROM events e WHERE e.call_id = c.call_id) AS last_at
                   FROM calls c WHERE c.status = 'live'""").fetchall()
        closed = 0
        for row in rows:
            call_id = row["call_id"]
            if call_ids is not None and call_id not in call_ids:
                continue
            problems = [problem]
            recording: str | None = None
            duration = max(0.0, (row["last_at"] or row["started_at"]) - row["started_at"])
            if recover is not None:
                try:
                    found = recover(call_id, self._recordings.inside(row["recording_path"]))
                except Exception as exc:       # a damaged file: keep it and the stored link
                    log.error("call %s: recording not recovered: %s", call_id, exc)
                    problems.append(f"recording not recovered: {exc}")
                else:
                    if found is not None:
                        recording, duration = str(found[0]), found[1]
            self._events.record_many([
                CallFault(call_id, "; ".join(problems), at=now),
                CallEnded(call_id, round(duration, 3), recording=recording,
                          at=row["started_at"] + duration)])
            closed += 1
        return closed
