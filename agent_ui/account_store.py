"""Accounts in the database: users and their endpoints, sessions, failed-login records
(for auth.LoginRateLimiter) and the audit log of logins and user management.

AccountStore uses the store's database engine (agent_ui.db: SQLite or PostgreSQL, one
migration list per engine); it is reached as `store.accounts`.

Sessions: a session is live iff `get_session(token)` returns it. Every end of a
session deletes its row (logout, removal, password/role/endpoint change, disabling,
"log out everywhere"), and get_session returns None for a disabled user, so whatever
polls get_session (the websocket watcher) sees the end at once. When users change
their OWN password in the web app, the session they did it from is kept (keep_token)
and every other one ends; everywhere else (CLI, an admin changing someone else's
password) all of the user's sessions end.

Mutations take `actor` (who does it, e.g. a username or "cli:root") and `address`;
with an actor, an audit row is written in the same transaction as the change.
"""
from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable
from typing import Any

from agent_ui.auth import ROLES, SESSION_TTL, hash_token, new_token, normalise_username
from agent_ui.db import Connection, Database, StoreError

USERNAME_MAX = 64
# Usernames made from now on: ASCII letters, digits and . _ @ - (starting with a letter
# or digit). No other script, so no look-alikes (Cyrillic а for Latin a, full-width
# letters); uniqueness is checked on the normalised form (NFKC + casefold), so Admin
# cannot be created beside admin. Older names outside this set keep working.
USERNAME_PUNCTUATION = "._@-"
AUDIT_FIELD_MAX = 256
SESSION_ID_CHARS = 16           # sessions are named by a prefix of their token's hash


class AccountError(StoreError):
    """A request about accounts that cannot be satisfied; the message says why (in
    English for the CLI; `zh` in Chinese for the web page)."""

    def __init__(self, message: str, zh: str = "") -> None:
        super().__init__(message)
        self.zh = zh or "操作失败：" + message


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def check_username(username: str) -> None:
    """The rule for new usernames (see USERNAME_PUNCTUATION); AccountError says why not."""
    if (not username or len(username) > USERNAME_MAX or not _ascii_alnum(username[0])
            or not all(_ascii_alnum(ch) or ch in USERNAME_PUNCTUATION for ch in username)):
        raise AccountError(f"invalid username {username!r}: use 1-{USERNAME_MAX} ASCII letters, "
                           "digits and . _ @ - (starting with a letter or digit)",
                           f"用户名只能由 1-{USERNAME_MAX} 个英文字母、数字和 . _ @ - 组成，"
                           "并以字母或数字开头")


def check_endpoints(endpoints: Iterable[str]) -> list[str]:
    """The endpoints without duplicates; AccountError for a blank one or one with spaces."""
    cleaned = list(dict.fromkeys(e.strip() for e in endpoints))
    for endpoint in cleaned:
        if not endpoint or any(ch.isspace() for ch in endpoint):
            raise AccountError(f"invalid endpoint {endpoint!r} (expected e.g. PJSIP/1001)",
                               f"分机格式不对：{endpoint!r}（例如 PJSIP/1001，不能含空格）")
    return cleaned


def _clip(text: str) -> str:
    return text[:AUDIT_FIELD_MAX]


class AccountStore:
    """Users, sessions, failed logins and the audit log."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- users ----------------------------------------------------------------------

    def add_user(self, username: str, role: str, password_hash: str, display_name: str = "",
                 endpoints: Iterable[str] = (), *, actor: str | None = None,
                 address: str = "") -> None:
        check_username(username)
        self._check_role(role)
        endpoints = check_endpoints(endpoints)
        key = normalise_username(username)
        with self._db.write() as db:
            if db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"user {username!r} already exists", f"用户 {username} 已存在")
            for (existing,) in db.execute("SELECT username FROM users"):
                if normalise_username(existing) == key:
                    raise AccountError(f"user {username!r} would be confused with the existing "
                                       f"user {existing!r} (same name ignoring case and width)",
                                       f"用户名 {username} 与已有用户 {existing} 易混淆（忽略大小写后相同）")
            self._claim_endpoints(db, username, endpoints)
            db.execute("INSERT INTO users (username, role, display_name, password_hash, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (username, role, display_name, password_hash,
                                                  time.time()))
            db.executemany("INSERT INTO user_endpoints (endpoint, username) VALUES (?, ?)",
                           [(e, username) for e in endpoints])
            self._audit(db, actor, "user.add", username, address,
                        {"role": role, "endpoints": endpoints})

    @staticmethod
    def _check_role(role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}",
                               f"未知角色：{role!r}")

    @staticmethod
    def _claim_endpoints(db: Connection, username: str, endpoints: list[str]) -> None:
        for endpoint in endpoints:
            owner = db.execute("SELECT username FROM user_endpoints WHERE endpoint = ?",
                               (endpoint,)).fetchone()
            if owner and owner[0] != username:
                raise AccountError(f"endpoint {endpoint} already belongs to user {owner[0]!r}",
                                   f"分机 {endpoint} 已属于用户 {owner[0]}")

    @staticmethod
    def _user(db: Connection, row: Any) -> dict[str, Any] | None:
        if row is None:
            return None
        user = dict(row)
        user["endpoints"] = [r[0] for r in db.execute(
            "SELECT endpoint FROM user_endpoints WHERE username = ? ORDER BY endpoint",
            (user["username"],))]
        user["disabled"] = user.get("disabled_at") is not None
        return user

    def get_user(self, username: str) -> dict[str, Any] | None:
        """username, role, display_name, password_hash (for login only: never send it
        to a browser), created_at, disabled_at, disabled, endpoints."""
        with self._db.read() as db:
            return self._user(db, db.execute("SELECT * FROM users WHERE username = ?",
                                             (username,)).fetchone())

    def user_for_endpoint(self, endpoint: str) -> dict[str, Any] | None:
        with self._db.read() as db:
            return self._user(db, db.execute(
                "SELECT u.* FROM users u JOIN user_endpoints e ON e.username = u.username "
                "WHERE e.endpoint = ?", (endpoint,)).fetchone())

    def list_users(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every user without the password hash, by username, with `sessions`: how many
        live sessions they have."""
        now = time.time() if now is None else now
        with self._db.read() as db:
            users = [self._user(db, r) for r in db.execute(
                """SELECT username, role, display_name, created_at, disabled_at,
                          (SELECT count(*) FROM sessions s WHERE s.username = u.username
                           AND s.expires_at > ?) AS sessions
                   FROM users u ORDER BY username""", (now,))]
        return users  # type: ignore[return-value]

    def _require(self, db: Connection, username: str) -> Any:
        row = db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise AccountError(f"no user {username!r}", f"没有用户 {username}")
        return row

    @staticmethod
    def _keep_an_admin(db: Connection, username: str, what: str) -> None:
        """Refuse a change that would leave no active admin (nobody could manage users)."""
        others = db.execute("SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL "
                            "AND username != ?", (username,)).fetchone()[0]
        if others == 0:
            raise AccountError(f"{username!r} is the last active admin: cannot {what} "
                               "(add or enable another admin first)",
                               f"{username} 是最后一个启用的管理员，不能执行此操作（请先添加或启用另一个管理员）")

    def set_password_hash(self, username: str, password_hash: str, *, keep_token: str | None = None,
                          actor: str | None = None, address: str = "") -> bool:
        """New password; ends every session of the user except `keep_token`'s. False: no such user."""
        with self._db.write() as db:
            if db.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                          (password_hash, username)).rowcount == 0:
                return False
            ended = self._end_sessions(db, username, keep_token)
            self._audit(db, actor, "user.password", username, address, {"sessions_ended": ended})
        return True

    def set_role(self, username: str, role: str, *, actor: str | None = None,
                 address: str = "") -> None:
        """New role; ends the user's sessions (their screens change)."""
        self._check_role(role)
        with self._db.write() as db:
            row = self._require(db, username)
            if row["role"] == role:
                return
            if row["role"] == "admin" and row["disabled_at"] is None:
                self._keep_an_admin(db, username, "change the role")
            db.execute("UPDATE users SET role = ? WHERE username = ?", (role, username))
            ended = self._end_sessions(db, username)
            self._audit(db, actor, "user.role", username, address,
                        {"from": row["role"], "to": role, "sessions_ended": ended})

    def set_endpoints(self, username: str, endpoints: Iterable[str], *, actor: str | None = None,
                      address: str = "") -> list[str]:
        """Replace the user's endpoints; ends their sessions (what they may see changed).
        Returns the endpoints as stored."""
        endpoints = check_endpoints(endpoints)
        with self._db.write() as db:
            self._require(db, username)
            before = [r[0] for r in db.execute("SELECT endpoint FROM user_endpoints WHERE "
                                               "username = ? ORDER BY endpoint", (username,))]
            self._claim_endpoints(db, username, endpoints)
            db.execute("DELETE FROM user_endpoints WHERE username = ?", (username,))
            db.executemany("INSERT INTO user_endpoints (endpoint, username) VALUES (?, ?)",
                           [(e, username) for e in endpoints])
            ended = self._end_sessions(db, username) if sorted(endpoints) != before else 0
            self._audit(db, actor, "user.endpoints", username, address,
                        {"from": before, "to": endpoints, "sessions_ended": ended})
        return endpoints

    def set_disabled(self, username: str, disabled: bool, *, actor: str | None = None,
                     address: str = "", now: float | None = None) -> None:
        """Disable (ends every session; logins are refused) or enable again."""
        with self._db.write() as db:
            row = self._require(db, username)
            if disabled == (row["disabled_at"] is not None):
                return
            if disabled:
                if row["role"] == "admin":
                    self._keep_an_admin(db, username, "disable them")
                db.execute("UPDATE users SET disabled_at = ? WHERE username = ?",
                           (time.time() if now is None else now, username))
                ended = self._end_sessions(db, username)
                self._audit(db, actor, "user.disable", username, address, {"sessions_ended": ended})
            else:
                db.execute("UPDATE users SET disabled_at = NULL WHERE username = ?", (username,))
                self._audit(db, actor, "user.enable", username, address, {})

    def remove_user(self, username: str, *, actor: str | None = None, address: str = "") -> bool:
        """Remove the user, their endpoints and sessions. Their reviews, card
        acknowledgements and audit rows stay (history). False: no such user."""
        with self._db.write() as db:
            row = db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                return False
            if row["role"] == "admin" and row["disabled_at"] is None:
                self._keep_an_admin(db, username, "remove them")
            ended = self._end_sessions(db, username)
            db.execute("DELETE FROM users WHERE username = ?", (username,))
            self._audit(db, actor, "user.remove", username, address, {"sessions_ended": ended})
        return True

    # --- sessions -------------------------------------------------------------------

    def create_session(self, username: str, ttl: float = SESSION_TTL, now: float | None = None,
                       *, address: str = "", user_agent: str = "") -> tuple[str, str]:
        """A new session: (token for the cookie, CSRF token for forms and websocket)."""
        now = time.time() if now is None else now
        token, csrf = new_token(), new_token()
        try:
            with self._db.write() as db:
                db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
                db.execute("INSERT INTO sessions (token_hash, username, csrf, created_at, expires_at, "
                           "address, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (hash_token(token), username, csrf, now, now + ttl, _clip(address),
                            _clip(user_agent)))
        except self._db.integrity_errors:
            raise AccountError(f"no user {username!r}", f"没有用户 {username}") from None
        return token, csrf

    def get_session(self, token: str, now: float | None = None) -> dict[str, Any] | None:
        """username, csrf, created_at, expires_at; None if unknown, expired or the user is
        disabled. THE test of whether a session is live."""
        if not token:
            return None
        now = time.time() if now is None else now
        with self._db.query() as db:
            row = db.execute(
                "SELECT s.username, s.csrf, s.created_at, s.expires_at, u.disabled_at "
                "FROM sessions s JOIN users u ON u.username = s.username WHERE s.token_hash = ?",
                (hash_token(token),)).fetchone()
        if row is None or row["disabled_at"] is not None:
            return None
        if row["expires_at"] <= now:
            self.delete_session(token)
            return None
        session = dict(row)
        del session["disabled_at"]
        return session

    def live_session_tokens(self, tokens: Iterable[str], now: float | None = None) -> set[str]:
        """Those of `tokens` whose session get_session would return (same test: row present,
        not expired, user not disabled), in one query per 500: the websocket watcher
        checks every open socket's session twice a second (agent_ui.views.sockets)."""
        now = time.time() if now is None else now
        by_hash = {hash_token(token): token for token in tokens if token}
        hashes = list(by_hash)
        live: set[str] = set()
        with self._db.query() as db:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start:start + 500]
                live.update(by_hash[row[0]] for row in db.execute(
                    "SELECT s.token_hash FROM sessions s JOIN users u ON u.username = s.username "
                    "WHERE s.expires_at > ? AND u.disabled_at IS NULL AND s.token_hash IN "
                    f"({','.join('?' * len(chunk))})", (now, *chunk)))
        return live

    def delete_session(self, token: str, *, actor: str | None = None, address: str = "") -> bool:
        """Log out one session (actor: audits it as a logout)."""
        with self._db.write() as db:
            row = db.execute("SELECT username FROM sessions WHERE token_hash = ?",
                             (hash_token(token),)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM sessions WHERE token_hash = ?", (hash_token(token),))
            self._audit(db, actor, "logout", row[0], address, {})
        return True

    def delete_user_sessions(self, username: str, *, keep_token: str | None = None,
                             actor: str | None = None, address: str = "") -> int:
        """Log the user out everywhere (but `keep_token`'s session); how many ended."""
        with self._db.write() as db:
            ended = self._end_sessions(db, username, keep_token)
            self._audit(db, actor, "user.logout_everywhere", username, address,
                        {"sessions_ended": ended})
        return ended

    @staticmethod
    def _end_sessions(db: Connection, username: str, keep_token: str | None = None) -> int:
        keep = hash_token(keep_token) if keep_token else ""
        return db.execute("DELETE FROM sessions WHERE username = ? AND token_hash != ?",
                          (username, keep)).rowcount

    def list_sessions(self, username: str, now: float | None = None) -> list[dict[str, Any]]:
        """The user's live sessions, newest first: id (a prefix of the token's hash: it
        names the session and opens nothing), created_at, expires_at, address, user_agent."""
        now = time.time() if now is None else now
        with self._db.query() as db:
            rows = db.execute(
                "SELECT substr(token_hash, 1, ?) AS id, created_at, expires_at, address, user_agent "
                "FROM sessions WHERE username = ? AND expires_at > ? ORDER BY created_at DESC",
                (SESSION_ID_CHARS, username, now)).fetchall()
        return [dict(r) for r in rows]

    # --- failed logins (agent_ui.auth.LoginRateLimiter) -------------------------------

    def reserve_login_attempt(self, address_key: str, account_key: str, limit: int,
                              window: float, account_window: float,
                              now: float) -> tuple[float, int, tuple[int, ...]]:
        """Atomically (one write transaction: concurrent logins, even from another
        process, queue here): if `address_key` has fewer than `limit` failures in the
        last `window` seconds, record this attempt as a failure of the address and the
        account in advance. Returns (retry_after, account failures in the last
        `account_window` before this one, ids of the recorded rows); retry_after > 0:
        refused, nothing recorded. A successful login forgets its rows (forget_login_attempt)."""
        with self._db.write() as db:
            db.execute("DELETE FROM login_attempts WHERE key IN (?, ?) AND at <= ?",
                       (address_key, account_key, now - max(window, account_window)))
            times = [r[0] for r in db.execute(
                "SELECT at FROM login_attempts WHERE key = ? AND at > ? ORDER BY at",
                (address_key, now - window))]
            if len(times) >= limit:
                return max(times[-limit] + window - now, 0.001), 0, ()
            account_failures = db.execute(
                "SELECT count(*) FROM login_attempts WHERE key = ? AND at > ?",
                (account_key, now - account_window)).fetchone()[0]
            ids = tuple(int(db.execute("INSERT INTO login_attempts (key, at) VALUES (?, ?) "
                                       f"RETURNING {self._db.dialect.rowid}", (key, now)).fetchone()[0])
                        for key in (address_key, account_key))
        return 0.0, account_failures, ids

    def forget_login_attempt(self, ids: Collection[int]) -> None:
        ids = list(ids)
        if ids:
            with self._db.write() as db:
                dialect = self._db.dialect
                db.execute(f"DELETE FROM login_attempts WHERE {dialect.rowid} IN "
                           f"({dialect.json_values('bigint')})", (json.dumps(ids),))

    def add_login_failure(self, key: str, at: float) -> None:
        with self._db.write() as db:
            db.execute("DELETE FROM login_attempts WHERE key = ? AND at < ?", (key, at - 3600))
            db.execute("INSERT INTO login_attempts (key, at) VALUES (?, ?)", (key, at))

    def login_failures(self, key: str, since: float) -> list[float]:
        """Times of failed logins for `key` after `since`, oldest first."""
        with self._db.query() as db:
            return [r[0] for r in db.execute(
                "SELECT at FROM login_attempts WHERE key = ? AND at > ? ORDER BY at", (key, since))]

    # --- audit log ------------------------------------------------------------------

    @staticmethod
    def _audit(db: Connection, actor: str | None, action: str, target: str, address: str,
               detail: dict[str, Any], at: float | None = None) -> None:
        if actor is None:
            return
        db.execute("INSERT INTO audit_log (at, actor, action, target, address, detail) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (time.time() if at is None else at, _clip(actor), action, _clip(target),
                    _clip(address), json.dumps(detail, ensure_ascii=False)))

    def audit(self, actor: str, action: str, target: str = "", address: str = "",
              detail: dict[str, Any] | None = None, at: float | None = None) -> None:
        """One audit row on its own (logins, refused logins)."""
        with self._db.write() as db:
            self._audit(db, actor, action, target, address, detail or {}, at)

    def audit_log(self, limit: int = 200, target: str | None = None) -> list[dict[str, Any]]:
        """Newest first: at, actor, action, target, address, detail (a dict)."""
        query = "SELECT id, at, actor, action, target, address, detail FROM audit_log"
        params: list[Any] = []
        if target is not None:
            query += " WHERE target = ? OR actor = ?"
            params += [target, target]
        query += " ORDER BY id DESC LIMIT ?"
        with self._db.query() as db:
            rows = db.execute(query, (*params, max(1, min(limit, 10_000)))).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    def purge(self, now: float, audit_days: float) -> None:
        """Expired sessions, failed logins older than a day, audit rows older than `audit_days`."""
        with self._db.write() as db:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM login_attempts WHERE at < ?", (now - 86400,))
            db.execute("DELETE FROM audit_log WHERE at < ?", (now - audit_days * 86400,))
