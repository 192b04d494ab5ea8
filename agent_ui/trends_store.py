"""Read-only queries behind the trends page (agent_ui.views.trends): every call that
started in a date range, with what the trends count about it, reached as `store.trends`.

One snapshot (Database.read) per query, a handful of SELECTs for the whole range rather
than one per call. Nothing here writes and nothing needs a migration: the trends are
computed from calls, cards, users' endpoints, the final transcript and, once the
analytics step has stored readings (table call_analytics), the escalation score.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent_ui.archive_store import CALL_COLUMNS, CALL_FROM, card_dict
from agent_ui.db import Connection, Database
from agent_ui.risk import ESCALATION_THREATS

ANALYTICS_TABLE = "call_analytics"


@dataclass
class TrendCall:
    """One call as the trends see it. `agent`: the username of the agent endpoint's
    owner, else the endpoint, else "" (no agent joined); `categories`: the categories
    of its standing cards, in order of first card; `escalated`: the customer threatened
    to take it outside (a standing customer card in agent_ui.risk.ESCALATION_THREATS);
    `escalation_score`: the stored reading's escalation score (0-100) or None;
    `detail`: the call with `cards` and `utterances` as CallArchive.get_call gives them
    (only when asked for: what adherence is assessed on)."""
    call_id: str
    started_at: float
    status: str
    risk: str
    agent: str
    agent_name: str
    card_count: int = 0
    categories: list[str] = field(default_factory=list)
    escalated: bool = False
    escalation_score: float | None = None
    detail: dict[str, Any] | None = None


class TrendStore:
    """The trends' queries, on the engine's read connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def calls(self, date_from: float, date_to: float, *, status: str | None = None,
              with_detail: bool = False) -> list[TrendCall]:
        """Calls with date_from <= started_at <= date_to (epoch seconds), oldest first;
        `status`: only live or only ended calls (QA sees ended calls only);
        `with_detail`: also load each call's cards and final utterances."""
        where = "c.started_at >= ? AND c.started_at <= ?"
        params: list[Any] = [date_from, date_to]
        if status is not None:
            where += " AND c.status = ?"
            params.append(status)
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT {CALL_COLUMNS} {CALL_FROM} WHERE {where} "
                "ORDER BY c.started_at, c.call_id", params).fetchall()
            calls: dict[str, TrendCall] = {}
            details: dict[str, dict[str, Any]] = {}
            for row in rows:
                agent = row["agent_username"] or row["agent_endpoint"] or ""
                calls[row["call_id"]] = TrendCall(
                    call_id=row["call_id"], started_at=row["started_at"], status=row["status"],
                    risk=row["risk"], agent=agent,
                    agent_name=row["agent_name"] or agent)
                if with_detail:
                    details[row["call_id"]] = dict(row) | {"cards": [], "utterances": []}
            if not calls:
                return []
            in_range = f"SELECT c.call_id FROM calls c WHERE {where}"
            for card in db.execute(f"SELECT * FROM cards WHERE call_id IN ({in_range}) "
                                   "ORDER BY call_id, start, fired_at", params):
                call = calls[card["call_id"]]
                if with_detail:
                    details[card["call_id"]]["cards"].append(card_dict(card))
                if card["status"] == "withdrawn":
                    continue
                call.card_count += 1
                if card["category"] not in call.categories:
                    call.categories.append(card["category"])
                if card["speaker"] == "customer" and card["category"] in ESCALATION_THREATS:
                    call.escalated = True
            if with_detail:
                for utt in db.execute(
                        f"""SELECT call_id, speaker, utterance, text, start, "end", final FROM utterances
                            WHERE call_id IN ({in_range}) ORDER BY call_id, start, speaker""", params):
                    line = dict(utt)
                    line["final"] = bool(line["final"])
                    details[line.pop("call_id")]["utterances"].append(line)
                for call_id, detail in details.items():
                    calls[call_id].detail = detail
            for call_id, score in self._escalation_scores(db, in_range, params):
                calls[call_id].escalation_score = score
        return list(calls.values())

    def _escalation_scores(self, db: Connection, in_range: str,
                           params: list[Any]) -> list[tuple[str, float]]:
        """(call id, escalation score) of the calls whose stored reading has one; none
        before the analytics migration has created call_analytics."""
        if db.execute(self._db.dialect.table_exists, (ANALYTICS_TABLE,)).fetchone() is None:
            return []
        scores = []
        for call_id, reading in db.execute(
                f"SELECT call_id, reading FROM {ANALYTICS_TABLE} WHERE reading IS NOT NULL "
                f"AND call_id IN ({in_range})", params):
            try:
                score = json.loads(reading)["escalation"]["score"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(score, (int, float)) and not isinstance(score, bool):
                scores.append((call_id, float(score)))
        return scores
