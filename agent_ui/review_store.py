"""What people do with calls after the fact: agents acknowledge cards and say whether
one helped, QA reviewers save a review of a call. Reached as `store.reviews`. These write:
from the event loop, call them through Store.off_loop, e.g.
`await store.off_loop(store.reviews.save_review, ...)`.
"""
from __future__ import annotations

import time

from agent_ui.db import Database, StoreError


class CardReviews:
    """Card acknowledgements and feedback, and QA reviews."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def acknowledge_card(self, card_id: str, username: str, at: float | None = None) -> bool:
        """The agent saw the card. The first acknowledgement is kept. False: no such card."""
        with self._db.write() as db:
            db.execute("""UPDATE cards SET acknowledged_by = ?, acknowledged_at = ?
                          WHERE card_id = ? AND acknowledged_by IS NULL""",
                       (username, time.time() if at is None else at, card_id))
            return db.execute("SELECT 1 FROM cards WHERE card_id = ?", (card_id,)).fetchone() is not None

    def card_feedback(self, card_id: str, username: str, helpful: bool, at: float | None = None) -> bool:
        """Was the card helpful? The latest answer counts. False: no such card."""
        with self._db.write() as db:
            cur = db.execute("UPDATE cards SET helpful = ?, feedback_by = ?, feedback_at = ? "
                             "WHERE card_id = ?", (int(bool(helpful)), username,
                                                   time.time() if at is None else at, card_id))
            return cur.rowcount > 0

    def save_review(self, call_id: str, reviewer: str, verdict: str, notes: str = "",
                    adherence_score: float | None = None) -> bool:
        """Create or replace `reviewer`'s review of the call. False: no such call."""
        if not verdict:
            raise StoreError("a review needs a verdict")
        if adherence_score is not None and not 0 <= adherence_score <= 100:
            raise StoreError(f"adherence_score must be between 0 and 100, got {adherence_score}")
        with self._db.write() as db:
            if db.execute("SELECT 1 FROM calls WHERE call_id = ?", (call_id,)).fetchone() is None:
                return False
            db.execute("""INSERT INTO reviews (call_id, reviewer, verdict, notes, adherence_score,
                                               updated_at) VALUES (?, ?, ?, ?, ?, ?)
                          ON CONFLICT (call_id, reviewer) DO UPDATE SET verdict = excluded.verdict,
                              notes = excluded.notes, adherence_score = excluded.adherence_score,
                              updated_at = excluded.updated_at""",
                       (call_id, reviewer, verdict, notes, adherence_score, time.time()))
        return True
