"""agent_ui.auth: argon2 passwords, tokens, the login rate limiter, role checks."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent_ui.auth import (LoginRateLimiter, PasswordPolicyError, call_filter, can_manage_users,
                           can_review, can_view_call, can_view_live_board, check_password_policy,
                           hash_password, hash_password_async, needs_rehash, new_token,
                           tokens_match, verify_password, verify_password_async)
from agent_ui.store import Store

SECRET = "correct horse 电池"


@pytest.fixture(scope="module")
def stored_hash() -> str:
    return hash_password(SECRET)


def test_argon2_hash_and_verify(stored_hash: str) -> None:
    assert stored_hash.startswith("$argon2id$") and SECRET not in stored_hash
    assert verify_password(stored_hash, SECRET)
    assert not verify_password(stored_hash, SECRET + " ")
    assert not verify_password(stored_hash, "")
    assert not verify_password(None, SECRET)                      # unknown user
    assert not verify_password("not a hash", SECRET)
    assert hash_password(SECRET) != stored_hash                   # salted
    assert not needs_rehash(stored_hash) and needs_rehash("not a hash")


async def test_async_variants(stored_hash: str) -> None:
    assert await verify_password_async(stored_hash, SECRET)
    assert verify_password(await hash_password_async("another password"), "another password")


def test_password_policy() -> None:
    for bad in ("", "        ", "short12"):
        with pytest.raises(PasswordPolicyError) as err:
            check_password_policy(bad)
        assert bad.strip() == "" or bad not in str(err.value)
    check_password_policy("eight ch")


def test_tokens() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 43
    assert tokens_match(a, a) and not tokens_match(a, b)
    assert not tokens_match(None, None) and not tokens_match("", "") and not tokens_match(a, None)


def test_nothing_secret_is_logged(caplog, stored_hash: str, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    verify_password(stored_hash, SECRET)
    verify_password(stored_hash, "wrong " + SECRET)
    store = Store(tmp_path / "db")
    store.accounts.add_user("alice", "agent", stored_hash)
    token, csrf = store.accounts.create_session("alice")
    store.accounts.get_session(token)
    LoginRateLimiter(1, store).admit("alice", "10.0.0.1")
    store.close()
    for secret in (SECRET, token, csrf, stored_hash):
        assert secret not in caplog.text


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fail(limiter: LoginRateLimiter, username: str, address: str) -> None:
    """One wrong-password login: admitted, and left counted as a failure."""
    assert limiter.admit(username, address).allowed


def test_rate_limiter_locks_the_address_and_only_delays_the_account() -> None:
    clock = FakeClock()
    limiter = LoginRateLimiter(3, clock=clock)
    for _ in range(3):
        fail(limiter, "Alice", "10.0.0.1")
        clock.now += 1
    locked = limiter.admit("alice", "10.0.0.1")
    assert not locked.allowed and locked.retry_after == pytest.approx(57.0)
    assert not limiter.admit("bob", "10.0.0.1").allowed       # the address is locked for anyone
    elsewhere = limiter.admit("ALICE", "10.0.0.9")             # the account is NOT locked elsewhere,
    assert elsewhere.allowed and elsewhere.delay == 0.5        # only slowed (Alice = ALICE = alice)
    limiter.succeeded(elsewhere)                               # a right password costs nothing
    assert limiter.admit("bob", "10.0.0.2").delay == 0.0       # another account: no delay
    clock.now += 57.0                                          # the first failure ages out
    assert limiter.admit("alice", "10.0.0.1").allowed


def test_the_account_delay_doubles_up_to_a_cap() -> None:
    limiter = LoginRateLimiter(2, clock=FakeClock())
    delays = []
    for i in range(10):
        admission = limiter.admit("ａｌｉｃｅ", f"10.0.1.{i}")  # full-width: the same account
        assert admission.allowed
        delays.append(admission.delay)
    assert delays[:5] == [0.0, 0.0, 0.5, 1.0, 2.0]
    assert max(delays) == LoginRateLimiter.ACCOUNT_DELAY_MAX


def test_only_the_first_refusal_of_a_lock_is_reported() -> None:
    clock = FakeClock()
    limiter = LoginRateLimiter(1, clock=clock)
    assert limiter.first_refusal("10.0.0.1", 30.0)
    assert not limiter.first_refusal("10.0.0.1", 29.0)         # the same lock
    assert limiter.first_refusal("10.0.0.2", 30.0)             # another address
    clock.now += 30.0
    assert limiter.first_refusal("10.0.0.1", 30.0)             # a new lock


def test_successful_logins_do_not_count() -> None:
    limiter = LoginRateLimiter(2, clock=FakeClock())
    for _ in range(5):
        admission = limiter.admit("alice", "10.0.0.1")
        assert admission.allowed and admission.delay == 0.0
        limiter.succeeded(admission)


def test_rate_limits_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "db")
    limiter = LoginRateLimiter(2, store, clock=clock)
    fail(limiter, "alice", "10.0.0.1")
    fail(limiter, "alice", "10.0.0.1")
    store.close()
    reopened = Store(tmp_path / "db")
    after_restart = LoginRateLimiter(2, reopened, clock=clock)
    assert not after_restart.admit("carol", "10.0.0.1").allowed
    assert after_restart.admit("alice", "10.0.0.3").delay == 0.5
    clock.now += 61
    assert after_restart.admit("alice", "10.0.0.1").allowed
    reopened.close()


def test_rate_limiter_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError):
        LoginRateLimiter(0)


AGENT = {"username": "a", "role": "agent", "endpoints": ["PJSIP/1001"]}
OTHER_AGENT = {"username": "b", "role": "agent", "endpoints": ["PJSIP/1002"]}
NO_PHONE = {"username": "c", "role": "agent", "endpoints": []}
QA = {"username": "q", "role": "qa", "endpoints": []}
SUPERVISOR = {"username": "s", "role": "supervisor", "endpoints": []}
ADMIN = {"username": "root", "role": "admin", "endpoints": []}
LIVE = {"call_id": "1", "status": "live", "agent_endpoint": "PJSIP/1001"}
ENDED = {"call_id": "2", "status": "ended", "agent_endpoint": "PJSIP/1001"}
TRANSFERRED = {"call_id": "3", "status": "ended", "agent_endpoint": "PJSIP/1002",
               "agents": ["PJSIP/1001", "PJSIP/1002"]}
NO_AGENT = {"call_id": "4", "status": "live", "agent_endpoint": ""}


@pytest.mark.parametrize("user, call, allowed", [
    (AGENT, LIVE, True), (AGENT, ENDED, True), (AGENT, TRANSFERRED, True),
    (OTHER_AGENT, LIVE, False), (OTHER_AGENT, TRANSFERRED, True),
    (NO_PHONE, NO_AGENT, False), (NO_PHONE, LIVE, False),
    (QA, LIVE, False), (QA, ENDED, True),
    (SUPERVISOR, LIVE, True), (SUPERVISOR, NO_AGENT, True), (ADMIN, ENDED, True),
    (None, ENDED, False), (AGENT, None, False), ({"role": "intruder"}, ENDED, False),
])
def test_can_view_call(user, call, allowed) -> None:
    assert can_view_call(user, call) is allowed


def test_role_helpers_and_call_filter() -> None:
    assert call_filter(AGENT) == {"endpoints": ["PJSIP/1001"]}
    assert call_filter(QA) == {"status": "ended"}
    assert call_filter(SUPERVISOR) == {} and call_filter(ADMIN) == {}
    assert call_filter({"role": "intruder"}) == {"endpoints": []}
    assert [can_view_live_board(u) for u in (AGENT, QA, SUPERVISOR, ADMIN)] == [False, False, True, True]
    assert [can_review(u) for u in (AGENT, QA, SUPERVISOR, ADMIN)] == [False, True, True, True]
    assert [can_manage_users(u) for u in (AGENT, QA, SUPERVISOR, ADMIN)] == [False, False, False, True]
    assert not can_view_live_board(None) and not can_review(None) and not can_manage_users(None)
