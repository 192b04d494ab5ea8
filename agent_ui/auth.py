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
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

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

def normalise_username(username: str) -> str:
    """The form usernames are compared in for look-alikes and rate limits: NFKC case
    folding (full-width letters, ligatures and case all fold: Ａｄｍｉｎ, ADMIN -> admin)."""
    nfkc = unicodedata.normalize("NFKC", username.strip())
    return unicodedata.normalize("NFKC", nfkc.casefold())


@dataclass(frozen=True)
class LoginAdmission:
    """What LoginRateLimiter.admit decided for one login attempt.

    retry_after > 0: refuse now (HTTP 429, Retry-After). Otherwise wait `delay` seconds
    (asyncio.sleep) before checking the password; the attempt is already counted as a
    failure (`ticket`) and LoginRateLimiter.succeeded forgets it."""
    retry_after: float
    delay: float
    ticket: tuple[int, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.retry_after <= 0.0


class FailedLoginLedger(Protocol):
    """Where failed logins are counted: AccountStore (the database) or _MemoryAttempts."""

    def reserve_login_attempt(self, address_key: str, account_key: str, limit: int,
                              window: float, account_window: float,
                              now: float) -> tuple[float, int, tuple[int, ...]]: ...

    def forget_login_attempt(self, ids: Collection[int]) -> None: ...


class _MemoryAttempts:
    """In-memory failed logins (tests, tools): the AccountStore methods' semantics."""

    def __init__(self) -> None:
        self._times: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self._next_id = 0

    def reserve_login_attempt(self, address_key: str, account_key: str, limit: int,
                              window: float, account_window: float,
                              now: float) -> tuple[float, int, tuple[int, ...]]:
        # synchronous, no await inside: atomic on the event loop
        horizon = now - max(window, account_window)
        for key in (address_key, account_key):
            self._times[key] = [(at, i) for at, i in self._times[key] if at > horizon]
        recent = sorted(at for at, _ in self._times[address_key] if at > now - window)
        if len(recent) >= limit:
            return max(recent[-limit] + window - now, 0.001), 0, ()
        account_failures = sum(1 for at, _ in self._times[account_key] if at > now - account_window)
        ids = []
        for key in (address_key, account_key):
            self._next_id += 1
            self._times[key].append((now, self._next_id))
            ids.append(self._next_id)
        return 0.0, account_failures, tuple(ids)

    def forget_login_attempt(self, ids: Collection[int]) -> None:
        for key, times in self._times.items():
            self._times[key] = [(at, i) for at, i in times if i not in ids]


class LoginRateLimiter:
    """Failed logins, limited so that nobody can lock an account out from everywhere:

    - per client ADDRESS, a lock: at most `attempts_per_minute` failures in any sliding
      60 s window (any usernames); past that, that address gets 429 until the oldest
      failure ages out;
    - per ACCOUNT (the normalised username: Admin, ADMIN and ａｄｍｉｎ are one account),
      never a lock but a growing delay before the password is checked: from
      `attempts_per_minute` failures in the last 15 minutes on, 0.5 s doubling per
      further failure, at most ACCOUNT_DELAY_MAX. The owner logging in from another
      address waits at most that long; a guesser spread over many addresses is slowed
      down as well as limited per address.

    Atomic under concurrency: `admit` records the attempt as a failure BEFORE the
    password is checked, in one transaction with the check of the limit (so 40 parallel
    wrong passwords cannot all pass the check), and `succeeded` forgets it. With a
    `store`, failures are in the database (login_attempts), so a restart and other
    processes see them; without one, in memory.

        admission = limiter.admit(username, address)
        if not admission.allowed: ... 429, Retry-After: admission.retry_after
        await asyncio.sleep(admission.delay); ... verify ...
        if ok: limiter.succeeded(admission)
    """

    WINDOW = 60.0
    ACCOUNT_WINDOW = 900.0
    ACCOUNT_DELAY_BASE = 0.5
    ACCOUNT_DELAY_MAX = 8.0
    MAX_TRACKED_LOCKS = 10_000

    def __init__(self, attempts_per_minute: int, store: Store | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if attempts_per_minute < 1:
            raise ValueError("attempts_per_minute must be at least 1")
        self.limit = attempts_per_minute
        self._attempts: FailedLoginLedger = (store.accounts if store is not None
                                             else _MemoryAttempts())
        self._clock = clock
        self._refused_until: dict[str, float] = {}

    def account_delay(self, account_failures: int) -> float:
        if account_failures < self.limit:
            return 0.0
        excess = min(account_failures - self.limit, 16)       # 2**16: far past the cap
        return min(self.ACCOUNT_DELAY_BASE * 2 ** excess, self.ACCOUNT_DELAY_MAX)

    def admit(self, username: str, address: str) -> LoginAdmission:
        retry_after, account_failures, ticket = self._attempts.reserve_login_attempt(
            f"addr:{address or '?'}", f"acct:{normalise_username(username)}", self.limit,
            self.WINDOW, self.ACCOUNT_WINDOW, self._clock())
        if retry_after > 0:
            return LoginAdmission(retry_after, 0.0)
        return LoginAdmission(0.0, self.account_delay(account_failures), ticket)

    def first_refusal(self, address: str, retry_after: float) -> bool:
        """True for the first refusal of `address` in its lock period. Only that one is
        audited: a flood of refused attempts must not flood the audit log (and the disk)."""
        now = self._clock()
        if len(self._refused_until) > self.MAX_TRACKED_LOCKS:
            self._refused_until = {a: t for a, t in self._refused_until.items() if t > now}
        if self._refused_until.get(address, 0.0) > now:
            return False
        self._refused_until[address] = now + retry_after
        return True

    def succeeded(self, admission: LoginAdmission) -> None:
        """The password was right: the attempt costs nothing."""
        self._attempts.forget_login_attempt(admission.ticket)


# --- roles ----------------------------------------------------------------------------
# `user`: a dict as returned by Store.get_user (role, endpoints); `call`: a dict from
# CallArchive.get_call / list_calls (status, agent_endpoint and, from get_call, agents).

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
    """CallArchive.list_calls keyword arguments that restrict a listing to what `user` may see."""
    role = user.get("role")
    if role == "agent":
        return {"endpoints": list(_endpoints(user))}
    if role == "qa":
        return {"status": "ended"}
    if role in ("supervisor", "admin"):
        return {}
    return {"endpoints": []}            # unknown role: nothing


def can_view_live_board(user: Mapping[str, Any] | None) -> bool:
    return user is not None and user.get("role") in ("supervisor", "admin")


def can_review(user: Mapping[str, Any] | None) -> bool:
    return user is not None and user.get("role") in ("qa", "supervisor", "admin")


def can_manage_users(user: Mapping[str, Any] | None) -> bool:
    return user is not None and user.get("role") == "admin"
