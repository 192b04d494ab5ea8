"""Retention: ended calls older than [storage] retention_days go, with every row that
hangs off them and their recording files; expired sessions, old failed logins and old
audit rows go too (agent_ui.account_store). Reached as `store.retention`.
"""
from __future__ import annotations

import json
import logging
import time

from agent_ui.account_store import AccountStore
from agent_ui.db import Database
from agent_ui.recordings_store import Recordings

log = logging.getLogger(__name__)

AUDIT_RETENTION_DAYS = 400           # logins and user changes: over a year of history
PURGE_BATCH = 200                      # calls deleted per transaction


class Retention:
    def __init__(self, db: Database, accounts: AccountStore, recordings: Recordings) -> None:
        self._db = db
        self._accounts = accounts
        self._recordings = recordings

    def purge(self, retention_days: float, now: float | None = None) -> int:
        """Delete ended calls that started more than `retention_days` ago, with all their
        rows and their recording files (only files inside data_dir/recordings are ever
        deleted). 0 keeps everything. Also drops expired sessions and old login
        attempts. Returns the number of calls deleted."""
        now = time.time() if now is None else now
        self._accounts.purge(now, AUDIT_RETENTION_DAYS)
        if retention_days <= 0:
            return 0
        cutoff = now - retention_days * 86400
        values = self._db.dialect.json_values()
        deleted = 0
        while True:
            # in batches: each transaction (and the lock it holds) stays short
            with self._db.write() as db:
                rows = db.execute("SELECT call_id, recording_path FROM calls WHERE status = 'ended' "
                                  "AND started_at < ? LIMIT ?", (cutoff, PURGE_BATCH)).fetchall()
                ids = json.dumps([r["call_id"] for r in rows])
                db.execute(f"DELETE FROM events WHERE call_id IN ({values})", (ids,))
                db.execute(f"DELETE FROM calls WHERE call_id IN ({values})", (ids,))
            for row in rows:
                self._recordings.delete(row["recording_path"])
            deleted += len(rows)
            if len(rows) < PURGE_BATCH:
                break
        if deleted:
            log.info("retention: deleted %d calls older than %s days", deleted, retention_days)
        return deleted
