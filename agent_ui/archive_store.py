"""The call archive's queries: list / count / search calls, one call in full, the live
calls, a card. Reached as `store.calls`. Read-only, on the engine's read connection.

Chinese full-text search without a word segmenter: the final transcript's normalised
form (`search_form`) is searched as a substring. 3+ characters use a trigram index
(SQLite: the FTS5 trigram table utterances_fts; PostgreSQL: pg_trgm's GIN index with
LIKE, and for two characters a GIN index of each line's character pairs); shorter queries
scan with LIKE.
"""
from __future__ import annotations

import json
from typing import Any

from agent_ui.db import Connection, Database, StoreError
from prompts.normalize import normalize

CALL_STATUSES = ("live", "ended")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
FTS_MIN_CHARS = 3                      # trigram tokens: shorter queries use LIKE

CALL_COLUMNS = ("c.call_id, c.source, c.caller, c.agent_endpoint, c.started_at, c.ended_at, "
                "c.duration, c.recording_path, c.status, c.risk, "
                "u.username AS agent_username, u.display_name AS agent_name")
CALL_FROM = ("FROM calls c LEFT JOIN user_endpoints ue ON ue.endpoint = c.agent_endpoint "
             "LEFT JOIN users u ON u.username = ue.username")
_FILTERS = ("endpoints", "date_from", "date_to", "category", "severity", "agent", "text", "status", "risk")


def search_form(text: str) -> str:
    """What the full-text index holds and queries are reduced to: the matcher's
    normalisation (no spaces or punctuation, simplified, half-width, lower case), so
    "工信部 投诉" in an ASR result is found by "工信部投訴"."""
    return normalize(text)


def card_dict(row: Any) -> dict[str, Any]:
    """A `cards` row as the views use it."""
    card = dict(row)
    card["script"] = json.loads(card["script"])
    card["citations"] = json.loads(card["citations"])
    card["alert_supervisor"] = bool(card["alert_supervisor"])
    card["helpful"] = None if card["helpful"] is None else bool(card["helpful"])
    card["confirmed"] = card["status"] == "confirmed"
    return card


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class CallArchive:
    """Calls, their transcripts, cards, faults and reviews, as the screens read them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _text_clause(self, text: str) -> tuple[str, str]:
        query = search_form(text)
        if not query:
            return "", ""
        if len(query) >= FTS_MIN_CHARS:
            if self._db.dialect.name == "sqlite":
                return ("c.call_id IN (SELECT u.call_id FROM utterances u WHERE u.id IN "
                        "(SELECT rowid FROM utterances_fts WHERE utterances_fts MATCH ?))",
                        '"' + query.replace('"', '""') + '"')
            # pg_trgm: the GIN index finds candidate rows by trigrams, LIKE checks them
            return ("c.call_id IN (SELECT u.call_id FROM utterances u "
                    "WHERE u.search_text LIKE ? ESCAPE '\\')", _like_pattern(query))
        if len(query) == 2 and self._db.dialect.name == "postgresql":
            # the character-pair index (agent_ui.migrations.postgres step 2): exact for two
            return ("c.call_id IN (SELECT u.call_id FROM utterances u "
                    "WHERE callassist_bigrams(u.search_text) @> ARRAY[?]::text[])", query)
        return ("EXISTS (SELECT 1 FROM utterances u WHERE u.call_id = c.call_id "
                "AND u.search_text LIKE ? ESCAPE '\\')", _like_pattern(query))

    def _call_filters(self, db: Connection, *, endpoints: list[str] | None, date_from: float | None,
                      date_to: float | None, category: str | None, severity: str | None,
                      agent: str | None, text: str | None, status: str | None,
                      risk: str | None) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        values = self._db.dialect.json_values()

        def on_endpoints(names: list[str]) -> None:
            where.append(f"(c.agent_endpoint IN ({values}) OR EXISTS "
                         "(SELECT 1 FROM call_agents a WHERE a.call_id = c.call_id AND a.endpoint IN "
                         f"({values})))")
            params.extend([json.dumps(names)] * 2)

        if endpoints is not None:
            on_endpoints(list(endpoints))
        if agent:
            owned = [r[0] for r in db.execute(
                "SELECT endpoint FROM user_endpoints WHERE username = ?", (agent,))]
            on_endpoints([agent, *owned])
        if date_from is not None:
            where.append("c.started_at >= ?")
            params.append(date_from)
        if date_to is not None:
            where.append("c.started_at <= ?")
            params.append(date_to)
        for column, value in (("category", category), ("severity", severity)):
            if value:
                where.append(f"EXISTS (SELECT 1 FROM cards k WHERE k.call_id = c.call_id "
                             f"AND k.{column} = ? AND k.status != 'withdrawn')")
                params.append(value)
        if status:
            if status not in CALL_STATUSES:
                raise StoreError(f"status must be one of {', '.join(CALL_STATUSES)}, got {status!r}")
            where.append("c.status = ?")
            params.append(status)
        if risk:
            where.append("c.risk = ?")
            params.append(risk)
        if text:
            clause, value = self._text_clause(text)
            if clause:
                where.append(clause)
                params.append(value)
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def list_calls(self, *, endpoints: list[str] | None = None, date_from: float | None = None,
                   date_to: float | None = None, category: str | None = None,
                   severity: str | None = None, agent: str | None = None, text: str | None = None,
                   status: str | None = None, risk: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[dict[str, Any]]:
        """Calls matching every filter given, newest first.

        endpoints: only calls any of these agent endpoints took part in ([] -> none);
        date_from/date_to: epoch seconds, inclusive, on started_at; category/severity:
        calls with a standing (not withdrawn) card of it; agent: an endpoint or a username
        (its endpoints); text: in the final transcript (normalised substring; 3+ characters
        use the trigram index, shorter ones a scan); status: live|ended; risk.
        Each dict: the call columns, agent_username/agent_name, categories (in order of
        first card), max_severity (None without cards), card_count, and with `text`,
        snippets: up to 3 matching utterances."""
        with self._db.read() as db:
            where, params = self._call_filters(
                db, endpoints=endpoints, date_from=date_from, date_to=date_to, category=category,
                severity=severity, agent=agent, text=text, status=status, risk=risk)
            rows = db.execute(f"SELECT {CALL_COLUMNS} {CALL_FROM}{where} "
                              "ORDER BY c.started_at DESC, c.call_id LIMIT ? OFFSET ?",
                              [*params, max(0, int(limit)), max(0, int(offset))]).fetchall()
            calls = [dict(r) for r in rows]
            self._add_card_summary(db, calls)
            if text and search_form(text):
                self._add_snippets(db, calls, search_form(text))
        return calls

    def count_calls(self, **filters: Any) -> int:
        """How many calls list_calls(**filters) would give without limit/offset."""
        filters = {k: filters.get(k) for k in _FILTERS}
        with self._db.read() as db:
            where, params = self._call_filters(db, **filters)
            return int(db.execute(f"SELECT COUNT(*) FROM calls c{where}", params).fetchone()[0])

    def _add_card_summary(self, db: Connection, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            call.update(categories=[], max_severity=None, card_count=0)
        if not calls:
            return
        by_id = {call["call_id"]: call for call in calls}
        rows = db.execute("SELECT call_id, category, severity FROM cards WHERE status != 'withdrawn' "
                          f"AND call_id IN ({self._db.dialect.json_values()}) ORDER BY start",
                          (json.dumps(list(by_id)),)).fetchall()
        for row in rows:
            call = by_id[row["call_id"]]
            call["card_count"] += 1
            if row["category"] not in call["categories"]:
                call["categories"].append(row["category"])
            if call["max_severity"] is None or (SEVERITY_RANK.get(row["severity"], 0)
                                                > SEVERITY_RANK.get(call["max_severity"], 0)):
                call["max_severity"] = row["severity"]

    def _add_snippets(self, db: Connection, calls: list[dict[str, Any]], query: str) -> None:
        contains = self._db.dialect.contains.format("search_text", "?")
        for call in calls:
            rows = db.execute(f"""SELECT speaker, start, "end", text FROM utterances
                                  WHERE call_id = ? AND {contains}
                                  ORDER BY start LIMIT 3""", (call["call_id"], query)).fetchall()
            call["snippets"] = [dict(r) for r in rows]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The call (as in list_calls) plus agents (every endpoint that joined), utterances
        (final, by start), cards (all, withdrawn included, by start), faults, review (the
        latest saved) and reviews (all, latest first)."""
        with self._db.read() as db:
            row = db.execute(f"SELECT {CALL_COLUMNS} {CALL_FROM} WHERE c.call_id = ?",
                             (call_id,)).fetchone()
            if row is None:
                return None
            call = dict(row)
            self._add_card_summary(db, [call])
            call["agents"] = [r[0] for r in db.execute(
                "SELECT endpoint FROM call_agents WHERE call_id = ? ORDER BY joined_at", (call_id,))]
            call["utterances"] = [dict(r) for r in db.execute(
                """SELECT speaker, utterance, text, start, "end", final FROM utterances
                   WHERE call_id = ? ORDER BY start, speaker""", (call_id,))]
            for utt in call["utterances"]:
                utt["final"] = bool(utt["final"])
            call["cards"] = [card_dict(r) for r in db.execute(
                "SELECT * FROM cards WHERE call_id = ? ORDER BY start, fired_at", (call_id,))]
            call["faults"] = [{"problem": json.loads(r["payload"])["problem"], "at": r["at"]}
                              for r in db.execute("SELECT payload, at FROM events WHERE call_id = ? "
                                                  "AND type = 'CallFault' ORDER BY seq", (call_id,))]
            call["reviews"] = [dict(r) for r in db.execute(
                "SELECT * FROM reviews WHERE call_id = ? ORDER BY updated_at DESC", (call_id,))]
            call["review"] = call["reviews"][0] if call["reviews"] else None
        return call

    def live_calls(self) -> list[dict[str, Any]]:
        """Calls in progress, riskiest first, then oldest first."""
        calls = self.list_calls(status="live", limit=10_000)
        calls.sort(key=lambda c: (-("normal", "warning", "critical").index(c["risk"]), c["started_at"]))
        return calls

    def card_call_id(self, card_id: str) -> str | None:
        with self._db.query() as db:
            row = db.execute("SELECT call_id FROM cards WHERE card_id = ?", (card_id,)).fetchone()
        return row[0] if row else None

    def get_card(self, card_id: str) -> dict[str, Any] | None:
        with self._db.query() as db:
            row = db.execute("SELECT * FROM cards WHERE card_id = ?", (card_id,)).fetchone()
        return card_dict(row) if row else None
