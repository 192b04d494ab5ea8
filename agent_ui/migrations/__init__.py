"""The SQLite schema, as an ordered list of migration steps.

Step N brings a database from `PRAGMA user_version` N-1 to N; agent_ui.store applies
each pending step in its own transaction. Steps are append-only: never edit a step
that has shipped, add a new one. Each step is a tuple of single SQL statements
(executed one by one, so a step is atomic together with its version bump).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_INITIAL = (
    """CREATE TABLE users (
        username      TEXT PRIMARY KEY,
        role          TEXT NOT NULL CHECK (role IN ('agent', 'supervisor', 'qa', 'admin')),
        display_name  TEXT NOT NULL DEFAULT '',
        password_hash TEXT NOT NULL,
        created_at    REAL NOT NULL
    )""",
    # One endpoint belongs to one user, so a live call maps to exactly one agent screen.
    """CREATE TABLE user_endpoints (
        endpoint TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE
    )""",
    "CREATE INDEX user_endpoints_user ON user_endpoints(username)",
    """CREATE TABLE calls (
        call_id        TEXT PRIMARY KEY,
        source         TEXT NOT NULL DEFAULT 'ari',
        caller         TEXT NOT NULL DEFAULT '',
        agent_endpoint TEXT NOT NULL DEFAULT '',
        started_at     REAL NOT NULL,
        ended_at       REAL,
        duration       REAL,
        recording_path TEXT,
        status         TEXT NOT NULL DEFAULT 'live' CHECK (status IN ('live', 'ended')),
        risk           TEXT NOT NULL DEFAULT 'normal' CHECK (risk IN ('normal', 'warning', 'critical'))
    )""",
    "CREATE INDEX calls_started ON calls(started_at)",
    "CREATE INDEX calls_status ON calls(status, started_at)",
    "CREATE INDEX calls_agent ON calls(agent_endpoint, started_at)",
    # Every agent endpoint that joined a call (a transfer adds a second one);
    # calls.agent_endpoint is the latest.
    """CREATE TABLE call_agents (
        call_id   TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        endpoint  TEXT NOT NULL,
        joined_at REAL NOT NULL,
        PRIMARY KEY (call_id, endpoint)
    )""",
    "CREATE INDEX call_agents_endpoint ON call_agents(endpoint)",
    # The bus events in order. partial_key is set on interim transcripts only, so the
    # previous interim of the same utterance can be dropped (only the latest is kept).
    """CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id     TEXT NOT NULL,
        type        TEXT NOT NULL,
        payload     TEXT NOT NULL,
        at          REAL NOT NULL,
        partial_key TEXT
    )""",
    "CREATE INDEX events_call ON events(call_id, seq)",
    "CREATE INDEX events_partial ON events(partial_key) WHERE partial_key IS NOT NULL",
    """CREATE TABLE utterances (
        id          INTEGER PRIMARY KEY,
        call_id     TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        speaker     TEXT NOT NULL,
        utterance   INTEGER NOT NULL,
        text        TEXT NOT NULL,
        start       REAL NOT NULL,
        "end"       REAL NOT NULL,
        final       INTEGER NOT NULL DEFAULT 1,
        search_text TEXT NOT NULL,
        UNIQUE (call_id, speaker, utterance)
    )""",
    "CREATE INDEX utterances_call ON utterances(call_id, start)",
    # Trigram tokens: substring search in Chinese without a word segmenter.
    """CREATE VIRTUAL TABLE utterances_fts USING fts5(
        search_text, content='utterances', content_rowid='id', tokenize='trigram')""",
    """CREATE TRIGGER utterances_ai AFTER INSERT ON utterances BEGIN
        INSERT INTO utterances_fts(rowid, search_text) VALUES (new.id, new.search_text);
    END""",
    """CREATE TRIGGER utterances_ad AFTER DELETE ON utterances BEGIN
        INSERT INTO utterances_fts(utterances_fts, rowid, search_text)
            VALUES ('delete', old.id, old.search_text);
    END""",
    """CREATE TRIGGER utterances_au AFTER UPDATE OF search_text ON utterances BEGIN
        INSERT INTO utterances_fts(utterances_fts, rowid, search_text)
            VALUES ('delete', old.id, old.search_text);
        INSERT INTO utterances_fts(rowid, search_text) VALUES (new.id, new.search_text);
    END""",
    """CREATE TABLE cards (
        card_id          TEXT PRIMARY KEY,
        call_id          TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        category         TEXT NOT NULL,
        title            TEXT NOT NULL,
        severity         TEXT NOT NULL,
        speaker          TEXT NOT NULL,
        text             TEXT NOT NULL,
        phrase           TEXT NOT NULL,
        score            REAL NOT NULL,
        start            REAL NOT NULL,
        "end"            REAL NOT NULL,
        utterance        INTEGER NOT NULL,
        script           TEXT NOT NULL DEFAULT '[]',
        citations        TEXT NOT NULL DEFAULT '[]',
        alert_supervisor INTEGER NOT NULL DEFAULT 0,
        status           TEXT NOT NULL DEFAULT 'fired'
                         CHECK (status IN ('fired', 'confirmed', 'withdrawn')),
        fired_at         REAL NOT NULL,
        acknowledged_by  TEXT,
        acknowledged_at  REAL,
        helpful          INTEGER CHECK (helpful IN (0, 1)),
        feedback_by      TEXT,
        feedback_at      REAL
    )""",
    "CREATE INDEX cards_call ON cards(call_id, start)",
    "CREATE INDEX cards_category ON cards(category, call_id)",
    """CREATE TABLE reviews (
        call_id         TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        reviewer        TEXT NOT NULL,
        verdict         TEXT NOT NULL,
        notes           TEXT NOT NULL DEFAULT '',
        adherence_score REAL CHECK (adherence_score IS NULL OR adherence_score BETWEEN 0 AND 100),
        updated_at      REAL NOT NULL,
        PRIMARY KEY (call_id, reviewer)
    )""",
    # Only a hash of the token is stored: a copy of the database opens no session.
    """CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        csrf       TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX sessions_expiry ON sessions(expires_at)",
    # Failed logins, keyed "user:<name>" / "addr:<ip>", so a restart keeps the limits.
    """CREATE TABLE login_attempts (
        key TEXT NOT NULL,
        at  REAL NOT NULL
    )""",
    "CREATE INDEX login_attempts_key ON login_attempts(key, at)",
)

# How a card fired (callassist.events.Card.heard / .via): the words of `text` that made
# it fire, and chars | pinyin (a playbook phrase matched) | intent (the model). Cards
# stored before this step have neither ('').
_CARD_HEARD_VIA = (
    "ALTER TABLE cards ADD COLUMN heard TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE cards ADD COLUMN via TEXT NOT NULL DEFAULT ''",
)

# Accounts (agent_ui.account_store): a user can be disabled (NULL: active); a session
# remembers where it was opened, for the admin's session list; the audit log keeps
# logins and user management (no foreign key: history outlives a removed user).
_ACCOUNTS = (
    "ALTER TABLE users ADD COLUMN disabled_at REAL",
    "ALTER TABLE sessions ADD COLUMN address TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sessions ADD COLUMN user_agent TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX sessions_user ON sessions(username)",
    """CREATE TABLE audit_log (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      REAL NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        target  TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '',
        detail  TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX audit_log_at ON audit_log(at)",
    "CREATE INDEX audit_log_target ON audit_log(target, id)",
)

# Conversation analytics and the call-level reading of each call (agent_ui.analytics_store):
# JSON documents, one row per call, gone with the call.
_CALL_ANALYTICS = (
    """CREATE TABLE call_analytics (
        call_id    TEXT PRIMARY KEY REFERENCES calls(call_id) ON DELETE CASCADE,
        stats      TEXT,
        reading    TEXT,
        updated_at REAL NOT NULL
    )""",
)

# Where an event came from on a message bus (the stream entry id, agent_ui.store record_many's
# `origins`): an event delivered again after a store writer died before acknowledging it is
# recognised and not stored twice.
_EVENT_ORIGIN = (
    "ALTER TABLE events ADD COLUMN origin TEXT",
    "CREATE UNIQUE INDEX events_origin ON events(origin) WHERE origin IS NOT NULL",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _INITIAL),
    Migration(2, "cards: heard and via", _CARD_HEARD_VIA),
    Migration(3, "accounts: disabled users, session origin, audit log", _ACCOUNTS),
    Migration(4, "call analytics: conversation stats and call reading", _CALL_ANALYTICS),
    Migration(5, "events: origin on the message bus", _EVENT_ORIGIN),
)
