"""The PostgreSQL schema, as an ordered list of migration steps (agent_ui.db_postgres).

Same story as the SQLite list (agent_ui.migrations): step N brings the database from
schema_version N-1 to N in one transaction together with its version bump; append-only.
The numbering is this engine's own: step 1 is everything SQLite reached in its steps 1-5.

Differences from SQLite, on purpose:
- key text columns are COLLATE "C" so that ORDER BY compares bytes as SQLite does (the
  same order on every server, whatever its locale);
- full-text search is a pg_trgm GIN index on utterances.search_text (LIKE '%...%' of
  3+ characters uses it; SQLite has an FTS5 trigram table instead), and for two-character
  queries a GIN index of each line's character pairs (step 2);
- payloads stay JSON text, byte for byte what SQLite stores.
"""
from __future__ import annotations

from agent_ui.migrations import Migration

_INITIAL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    """CREATE TABLE users (
        username      text COLLATE "C" PRIMARY KEY,
        role          text NOT NULL CHECK (role IN ('agent', 'supervisor', 'qa', 'admin')),
        display_name  text NOT NULL DEFAULT '',
        password_hash text NOT NULL,
        created_at    double precision NOT NULL,
        disabled_at   double precision
    )""",
    """CREATE TABLE user_endpoints (
        endpoint text COLLATE "C" PRIMARY KEY,
        username text COLLATE "C" NOT NULL REFERENCES users(username) ON DELETE CASCADE
    )""",
    "CREATE INDEX user_endpoints_user ON user_endpoints(username)",
    """CREATE TABLE calls (
        call_id        text COLLATE "C" PRIMARY KEY,
        source         text NOT NULL DEFAULT 'ari',
        caller         text NOT NULL DEFAULT '',
        agent_endpoint text COLLATE "C" NOT NULL DEFAULT '',
        started_at     double precision NOT NULL,
        ended_at       double precision,
        duration       double precision,
        recording_path text,
        status         text NOT NULL DEFAULT 'live' CHECK (status IN ('live', 'ended')),
        risk           text NOT NULL DEFAULT 'normal' CHECK (risk IN ('normal', 'warning', 'critical'))
    )""",
    "CREATE INDEX calls_started ON calls(started_at)",
    "CREATE INDEX calls_status ON calls(status, started_at)",
    "CREATE INDEX calls_agent ON calls(agent_endpoint, started_at)",
    """CREATE TABLE call_agents (
        call_id   text COLLATE "C" NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        endpoint  text COLLATE "C" NOT NULL,
        joined_at double precision NOT NULL,
        PRIMARY KEY (call_id, endpoint)
    )""",
    "CREATE INDEX call_agents_endpoint ON call_agents(endpoint)",
    # seq: assigned inside the single-writer transaction (advisory lock), so seq order
    # is commit order and a follower reading seq > last never skips a later commit
    """CREATE TABLE events (
        seq         bigserial PRIMARY KEY,
        call_id     text COLLATE "C" NOT NULL,
        type        text NOT NULL,
        payload     text NOT NULL,
        at          double precision NOT NULL,
        partial_key text,
        origin      text
    )""",
    "CREATE INDEX events_call ON events(call_id, seq)",
    "CREATE INDEX events_partial ON events(partial_key) WHERE partial_key IS NOT NULL",
    "CREATE UNIQUE INDEX events_origin ON events(origin) WHERE origin IS NOT NULL",
    """CREATE TABLE utterances (
        id          bigserial PRIMARY KEY,
        call_id     text COLLATE "C" NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        speaker     text COLLATE "C" NOT NULL,
        utterance   integer NOT NULL,
        text        text NOT NULL,
        start       double precision NOT NULL,
        "end"       double precision NOT NULL,
        final       integer NOT NULL DEFAULT 1,
        search_text text NOT NULL,
        UNIQUE (call_id, speaker, utterance)
    )""",
    "CREATE INDEX utterances_call ON utterances(call_id, start)",
    "CREATE INDEX utterances_trgm ON utterances USING gin (search_text gin_trgm_ops)",
    """CREATE TABLE cards (
        card_id          text COLLATE "C" PRIMARY KEY,
        call_id          text COLLATE "C" NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        category         text COLLATE "C" NOT NULL,
        title            text NOT NULL,
        severity         text NOT NULL,
        speaker          text NOT NULL,
        text             text NOT NULL,
        phrase           text NOT NULL,
        score            double precision NOT NULL,
        start            double precision NOT NULL,
        "end"            double precision NOT NULL,
        utterance        integer NOT NULL,
        script           text NOT NULL DEFAULT '[]',
        citations        text NOT NULL DEFAULT '[]',
        alert_supervisor integer NOT NULL DEFAULT 0,
        status           text NOT NULL DEFAULT 'fired'
                         CHECK (status IN ('fired', 'confirmed', 'withdrawn')),
        fired_at         double precision NOT NULL,
        acknowledged_by  text,
        acknowledged_at  double precision,
        helpful          integer CHECK (helpful IN (0, 1)),
        feedback_by      text,
        feedback_at      double precision,
        heard            text NOT NULL DEFAULT '',
        via              text NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX cards_call ON cards(call_id, start)",
    "CREATE INDEX cards_category ON cards(category, call_id)",
    """CREATE TABLE reviews (
        call_id         text COLLATE "C" NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
        reviewer        text COLLATE "C" NOT NULL,
        verdict         text NOT NULL,
        notes           text NOT NULL DEFAULT '',
        adherence_score double precision
                        CHECK (adherence_score IS NULL OR adherence_score BETWEEN 0 AND 100),
        updated_at      double precision NOT NULL,
        PRIMARY KEY (call_id, reviewer)
    )""",
    """CREATE TABLE sessions (
        token_hash text COLLATE "C" PRIMARY KEY,
        username   text COLLATE "C" NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        csrf       text NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        address    text NOT NULL DEFAULT '',
        user_agent text NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX sessions_expiry ON sessions(expires_at)",
    "CREATE INDEX sessions_user ON sessions(username)",
    """CREATE TABLE login_attempts (
        id  bigserial PRIMARY KEY,
        key text NOT NULL,
        at  double precision NOT NULL
    )""",
    "CREATE INDEX login_attempts_key ON login_attempts(key, at)",
    """CREATE TABLE audit_log (
        id      bigserial PRIMARY KEY,
        at      double precision NOT NULL,
        actor   text NOT NULL,
        action  text NOT NULL,
        target  text NOT NULL DEFAULT '',
        address text NOT NULL DEFAULT '',
        detail  text NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX audit_log_at ON audit_log(at)",
    "CREATE INDEX audit_log_target ON audit_log(target, id)",
    """CREATE TABLE call_analytics (
        call_id    text COLLATE "C" PRIMARY KEY REFERENCES calls(call_id) ON DELETE CASCADE,
        stats      text,
        reading    text,
        updated_at double precision NOT NULL
    )""",
)

# Two-character queries (投诉, 话费, 退费: most Chinese words) are beyond a trigram index: without
# this they read every utterance (0.45 s at 400,000 lines). Each line's distinct character pairs
# as an array with a GIN index: `callassist_bigrams(search_text) @> ARRAY[query]` answers them
# exactly. An array, not a tsvector: no text parser, so no dependence on the server's locale.
_BIGRAMS = (
    """CREATE FUNCTION callassist_bigrams(t text) RETURNS text[]
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$ SELECT coalesce(array_agg(DISTINCT substr(t, i, 2)), '{}')
              FROM generate_series(1, length(t) - 1) AS i $$""",
    "CREATE INDEX utterances_bigrams ON utterances USING gin (callassist_bigrams(search_text))",
)

PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema (SQLite steps 1-5), pg_trgm search", _INITIAL),
    Migration(2, "two-character search: a GIN index of each line's character pairs", _BIGRAMS),
)
