"""What each bus event changes besides its row in `events`: the call's row, its agents,
the final transcript (`utterances`, full-text searchable), the cards and the call's risk.

Used by agent_ui.event_store inside the transaction that records the event, on either
engine (agent_ui.db: the SQL differs only where the Dialect says).

Interim transcripts are kept in `events` only as the latest one per utterance (an
older interim of the same utterance is deleted when a newer one or the final arrives);
final transcripts also go to `utterances`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent_ui.archive_store import search_form
from agent_ui.db import Connection, Dialect
from agent_ui.risk import call_risk
from callassist.events import (AgentJoined, CallEnded, CallEvent, CallFault, CallReadingUpdated, CallStarted,
                               CardConfirmed, CardFired, CardWithdrawn, TranscriptRevised, TranscriptUpdate,
                               event_to_dict)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Duplicate:
    """An event that repeats one already stored: nothing is written or announced."""
    seq: int


class EventProjection:
    """`apply(db, event)` writes the tables an event changes; returns the interim's
    partial key, a Duplicate, or None."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._handlers: dict[type, Callable[[Connection, Any], str | Duplicate | None]] = {
            CallStarted: self._on_call_started, AgentJoined: self._on_agent_joined,
            TranscriptRevised: self._on_transcript_revised,
            TranscriptUpdate: self._on_transcript, CardFired: self._on_card_fired,
            CardConfirmed: self._on_card_confirmed, CardWithdrawn: self._on_card_withdrawn,
            CallEnded: self._on_call_ended, CallFault: self._no_change,
            CallReadingUpdated: self._no_change,
        }

    def apply(self, db: Connection, event: CallEvent) -> str | Duplicate | None:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"not a call event: {type(event).__name__}")
        self._ensure_call(db, event)
        return handler(db, event)

    @staticmethod
    def _ensure_call(db: Connection, event: CallEvent) -> None:
        """Any event may be the first one seen of a call (order across legs is not
        guaranteed): make sure its row exists, started no later than the event."""
        started = event.at - event.duration if isinstance(event, CallEnded) else event.at
        db.execute("INSERT INTO calls (call_id, started_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                   (event.call_id, started))

    def _on_call_started(self, db: Connection, e: CallStarted) -> None:
        # the least start: a repeated CallStarted does not move it; events seen before it
        # (legs are not ordered) made the row with their own, later time.
        # The recording's path is linked as soon as it is opened: a crash cannot lose it.
        db.execute(f"UPDATE calls SET caller = ?, source = ?, started_at = {self._dialect.least}(started_at, ?), "
                   "recording_path = COALESCE(?, recording_path) WHERE call_id = ?",
                   (e.caller, e.source, e.at, e.recording, e.call_id))

    @staticmethod
    def _on_agent_joined(db: Connection, e: AgentJoined) -> None:
        db.execute("INSERT INTO call_agents (call_id, endpoint, joined_at) VALUES (?, ?, ?) "
                   "ON CONFLICT DO NOTHING", (e.call_id, e.endpoint, e.at))
        db.execute("UPDATE calls SET agent_endpoint = ? WHERE call_id = ?", (e.endpoint, e.call_id))

    @staticmethod
    def _on_transcript(db: Connection, e: TranscriptUpdate) -> str | None:
        key = f"{e.call_id}\x1f{e.speaker}\x1f{e.utterance}"
        db.execute("DELETE FROM events WHERE partial_key = ?", (key,))   # older interim
        if not e.final:
            return key
        if e.text.strip():
            db.execute(
                """INSERT INTO utterances (call_id, speaker, utterance, text, start, "end", final,
                                           search_text)
                   VALUES (?, ?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (call_id, speaker, utterance) DO UPDATE SET
                       text = excluded.text, start = excluded.start, "end" = excluded."end",
                       search_text = excluded.search_text""",
                (e.call_id, e.speaker, e.utterance, e.text, e.start, e.end, search_form(e.text)))
        return None

    @staticmethod
    def _on_transcript_revised(db: Connection, e: TranscriptRevised) -> None:
        """The accurate post-call transcript replaces the live one (numbered per speaker)."""
        db.execute("DELETE FROM utterances WHERE call_id = ?", (e.call_id,))
        counters: dict[str, int] = {}
        for line in e.lines:
            index = counters[line.speaker] = counters.get(line.speaker, -1) + 1
            db.execute(
                """INSERT INTO utterances (call_id, speaker, utterance, text, start, "end", final,
                                           search_text) VALUES (?, ?, ?, ?, ?, ?, 1, ?)""",
                (e.call_id, line.speaker, index, line.text, line.start, line.end, search_form(line.text)))

    def _on_card_fired(self, db: Connection, e: CardFired) -> Duplicate | None:
        c = e.card
        known = db.execute("SELECT call_id, status FROM cards WHERE card_id = ?", (c.card_id,)).fetchone()
        if known and known["call_id"] != e.call_id:
            log.error("card %s fired on call %s already belongs to call %s; card not stored",
                      c.card_id, e.call_id, known["call_id"])
            return None
        if known and not (c.confirmed and known["status"] == "fired"):
            # the same card again: nothing changes, so no second event either
            card_id = self._dialect.json_field("payload", "card", "card_id")
            seq = db.execute(f"""SELECT seq FROM events WHERE call_id = ? AND type = 'CardFired'
                                 AND {card_id} = ? ORDER BY seq LIMIT 1""", (e.call_id, c.card_id)).fetchone()
            return Duplicate(seq[0] if seq else 0)
        db.execute(
            """INSERT INTO cards (card_id, call_id, category, title, severity, speaker, text, phrase,
                                  heard, via, score, start, "end", utterance, script, citations,
                                  alert_supervisor, status, fired_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (card_id) DO UPDATE SET status = 'confirmed'
                   WHERE cards.status = 'fired' AND excluded.status = 'confirmed'""",
            (c.card_id, e.call_id, c.category, c.title, c.severity, c.speaker, c.text, c.phrase,
             c.heard, c.via, c.score, c.start, c.end, c.utterance,
             json.dumps(list(c.script), ensure_ascii=False),
             json.dumps(event_to_dict(e)["card"]["citations"], ensure_ascii=False),
             int(c.alert_supervisor), "confirmed" if c.confirmed else "fired", e.at))
        self._update_risk(db, e.call_id)
        return None

    def _on_card_confirmed(self, db: Connection, e: CardConfirmed) -> None:
        db.execute("""UPDATE cards SET status = 'confirmed', text = ?, "end" = ?
                      WHERE card_id = ? AND call_id = ?""", (e.text, e.end, e.card_id, e.call_id))
        self._update_risk(db, e.call_id)

    def _on_card_withdrawn(self, db: Connection, e: CardWithdrawn) -> None:
        db.execute("UPDATE cards SET status = 'withdrawn' WHERE card_id = ? AND call_id = ?",
                   (e.card_id, e.call_id))
        self._update_risk(db, e.call_id)

    @staticmethod
    def _on_call_ended(db: Connection, e: CallEnded) -> None:
        db.execute("""UPDATE calls SET status = 'ended', ended_at = ?, duration = ?,
                                       recording_path = COALESCE(?, recording_path)
                      WHERE call_id = ?""", (e.at, e.duration, e.recording, e.call_id))

    @staticmethod
    def _no_change(db: Connection, e: CallFault | CallReadingUpdated) -> None:
        return None          # the event row is the record (the final reading: store.analytics)

    @staticmethod
    def _update_risk(db: Connection, call_id: str) -> None:
        rows = db.execute("SELECT category, severity FROM cards WHERE call_id = ? AND status != "
                          "'withdrawn'", (call_id,)).fetchall()
        db.execute("UPDATE calls SET risk = ? WHERE call_id = ?",
                   (call_risk((r["category"], r["severity"]) for r in rows), call_id))
