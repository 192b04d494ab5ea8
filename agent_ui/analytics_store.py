"""Per-call analytics in the database: the conversation stats (callassist.conversation,
ConversationStats.to_dict()) and the call-level reading (prompts.call_reading,
CallReading.to_dict()), one row per call in `call_analytics` (migration 4), deleted with
the call (retention purge: ON DELETE CASCADE).

AnalyticsStore uses the store's database engine (agent_ui.db); it is reached as
`store.analytics`. Its writes may wait for another process holding the database: call
them off the event loop (`await store.off_loop(store.analytics.save_stats, ...)`, or from
the post-call worker thread as callassist.postcall does).
"""
from __future__ import annotations

import json
import time
from typing import Any

from agent_ui.db import Database, StoreError

_COLUMNS = ("stats", "reading")


class AnalyticsStore:
    """The stats and the reading of each call, each replaced whole when saved again."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def save_stats(self, call_id: str, stats: dict[str, Any], at: float | None = None) -> None:
        self._save(call_id, "stats", stats, at)

    def save_reading(self, call_id: str, reading: dict[str, Any], at: float | None = None) -> None:
        self._save(call_id, "reading", reading, at)

    def _save(self, call_id: str, column: str, document: dict[str, Any], at: float | None) -> None:
        assert column in _COLUMNS
        text = json.dumps(document, ensure_ascii=False, allow_nan=False)
        with self._db.write() as db:
            if db.execute("SELECT 1 FROM calls WHERE call_id = ?", (call_id,)).fetchone() is None:
                raise StoreError(f"call {call_id!r}: no such call, its analytics are not stored")
            db.execute(f"INSERT INTO call_analytics (call_id, {column}, updated_at) VALUES (?, ?, ?) "
                       f"ON CONFLICT(call_id) DO UPDATE SET {column} = excluded.{column}, "
                       f"updated_at = excluded.updated_at",
                       (call_id, text, time.time() if at is None else at))

    def get(self, call_id: str) -> dict[str, Any] | None:
        """{"stats": dict | None, "reading": dict | None, "updated_at": float}, or None
        when nothing is stored for the call."""
        with self._db.read() as db:
            row = db.execute("SELECT stats, reading, updated_at FROM call_analytics WHERE call_id = ?",
                             (call_id,)).fetchone()
        if row is None:
            return None
        out: dict[str, Any] = {name: json.loads(row[name]) if row[name] else None for name in _COLUMNS}
        out["updated_at"] = row["updated_at"]
        return out
