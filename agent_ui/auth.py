"""Passwords, session tokens, login rate limits and who may see what.

Passwords are hashed with argon2id (argon2-cffi defaults). They are never logged,
printed or stored in clear; functions here take them as arguments and drop them.
Hashing and verifying cost tens of milliseconds of CPU: from the event loop, use
the `*_async` variants, which run in a worker thread.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

if TYPE_CHECKING:
    from agent_ui.store import Store

ROLES: tuple[str, ...] = ("agent", "supervisor", "qa", "admin")
MIN_PASSWORD_LENGTH = 8
SESSION_TTL = 12 * 3600.0          # seconds; one working shift with margin

_hasher = PasswordHasher()


class PasswordPolicyError(ValueError):
    """The password does not meet the policy; the message says why (never the password)."""


def check_password_policy(password: str) -> None:
    if not password or not password.strip():
        raise PasswordPolicyError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the password is shorter than {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if `password` matches. Pass None for an unknown user: the same work is done
    (against a dummy hash), so response time does not tell which usernames exist."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's defaults."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)


# --- tokens ---------------------------------------------------------------------------

def new_token() -> str:
    """An unguessable token (256 bits, URL-safe): session ids and CSRF tokens."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the store keeps instead of a session token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison (CSRF tokens)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


# --- login rate limiting --------------------------------------------------------------

class LoginRateLimiter:
    """At most `attempts_per_minute` FAILED logins per account and per client address
    in any sliding 60 s window. Successful logins cost nothing.

    With a `store`, failures are kept in the database (table login_attempts), so a
    restart does not reset the limits; without one, in memory (tests, tools).

        wait = limiter.retry_after(username, address)   # > 0: refuse (HTTP 429)
        ... verify ...
        if not ok: limiter.record_failure(username, address)
    """

    WINDOW = 60.0

    def __init__(self, attempts_per_minute: int, store: Store | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if attempts_per_minute < 1:
            raise ValueError("attempts_per_minute must be at least 1")
        self.limit = attempts_per_minute
        self._store = store
        self._clock = clock
        self._memory: dict[str, deque[float]] = defaultdict(deque)

    @staticmethod
    def keys(username: str, address: str) -> tuple[str, ...]:
        keys = [f"user:{username.strip().lower()}"] if username.strip() else []
        if address:
            keys.append(f"addr:{address}")
        return tuple(keys)

    def _times(self, key: str, since: float) -> list[float]:
        if self._store is not None:
            return self._store.login_failures(key, since)
        times = self._memory[key]
        while times and times[0] <= since:
            times.popleft()
        return list(times)

    def retry_after(self, username: str, address: str) -> float:
        """0.0 if a login may be attempted now, else seconds until one may."""
        now = self._clock()
        wait = 0.0
        for key in self.keys(username, address):
            times = self._times(key, now - self.WINDOW)
            if len(times) >= self.limit:
                # allowed again when enough of the window's failures have aged out
                wait = max(wait, times[-self.limit] + self.WINDOW - now)
        return max(wait, 0.0)

    def allowed(self, username: str, address: str) -> bool:
        return self.retry_after(username, address) <= 0.0

    def record_failure(self, username: str, address: str) -> None:
        now = self._clock()
        for key in self.keys(username, address):
            if self._store is not None:
                self._store.add_login_failure(key, now)
            else:
                self._memory[key].append(now)


# --- roles ----------------------------------------------------------------------------
# `user`: a dict as returned by Store.get_user (role, endpoints); `call`: a dict from
# Store.get_call / list_calls (status, agent_endpoint and, from get_call, agents).

def _endpoints(user: Mapping[str, Any]) -> Collection[str]:
    return user.get("endpoints") or ()


def can_view_call(user: Mapping[str, Any] | None, call: Mapping[str, Any] | None) -> bool:
    """agent: only calls on their own endpoints (live or archived); supervisor, admin:
    every call; qa: archived (ended) calls only — QA reviews after the fact."""
    if not user or not call:
        return False
    role = user.get("role")
    if role in ("supervisor", "admin"):
        return True
    if role == "qa":
        return call.get("status") == "ended"
    if role == "agent":
        mine = set(_endpoints(user))
        agents = {call.get("agent_endpoint")} | set(call.get("agents") or ())
        return bool(mine & (agents - {None, ""}))
    return False


def call_filter(user: Mapping[str, Any]) -> dict[str, Any]:
    """Store.list_calls keyword arguments that restrict a listing to what `user` may see."""
    role = user.get("role")
    if role == "agent":
        return {"endpoints": list(_endpoints(user))}
    if role == "qa":
        return {"status": "ended"}
    if role in ("supervisor", "admin"):
        return {}
    return {"endpoints": []}            # unknown role: nothing


def can_view_live_board(user: Mapping[str, Any] | None) -> bool:
    return bool(user) and user.get("role") in ("supervisor", "admin")


def can_review(user: Mapping[str, Any] | None) -> bool:
    return bool(user) and user.get("role") in ("qa", "supervisor", "admin")


def can_manage_users(user: Mapping[str, Any] | None) -> bool:
    return bool(user) and user.get("role") == "admin"
