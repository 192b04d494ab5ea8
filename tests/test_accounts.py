"""Accounts (agent_ui.account_store, auth.LoginRateLimiter, the login view): usernames
without look-alikes, every end of a session deletes it, disabled users have no
session, the audit log, and a login rate limit that holds under 40 parallel attempts
without locking an account out from everywhere. Real SQLite, real aiohttp server."""
from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from agent_ui.account_store import AccountError
from agent_ui.auth import hash_password, normalise_username
from agent_ui.migrations import MIGRATIONS
from agent_ui.store import Store, StoreError
from callassist.bus import EventBus
from web_fixtures import PASSWORD, WebUser, http_login, make_config, make_store, start_app

LIMIT = 5
ATTACKER, OWNER, THIRD = "127.0.0.1", "127.0.0.2", "127.0.0.3"     # loopback addresses


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "callassist.db")
    yield s
    s.close()


# --- usernames ----------------------------------------------------------------------

def test_normalised_usernames_fold_case_and_width() -> None:
    assert normalise_username("Admin") == normalise_username("ADMIN") == "admin"
    assert normalise_username("ａｄｍｉｎ") == "admin"                     # full-width
    assert normalise_username("аdmin") != "admin"                       # Cyrillic а stays apart


def test_confusable_and_colliding_usernames_are_refused(store: Store) -> None:
    accounts = store.accounts
    accounts.add_user("admin", "admin", "h")
    for look_alike in ("аdmin", "ａｄｍｉｎ", "admin\u200b", "张丽"):      # Cyrillic, full-width, ZWSP, CJK
        with pytest.raises(AccountError, match="invalid username"):
            accounts.add_user(look_alike, "agent", "h")
    with pytest.raises(AccountError, match="confused with the existing user 'admin'"):
        accounts.add_user("Admin", "agent", "h")
    with pytest.raises(StoreError):                                      # still a StoreError
        accounts.add_user("ADMIN", "agent", "h")
    accounts.add_user("admin.2", "agent", "h", endpoints=["PJSIP/1"])   # positive control
    assert [u["username"] for u in accounts.list_users()] == ["admin", "admin.2"]


# --- every end of a session deletes it -------------------------------------------------

def _sessions_of(store: Store, username: str) -> int:
    return store.db._db.execute("SELECT count(*) FROM sessions WHERE username = ?",
                             (username,)).fetchone()[0]


def test_each_change_ends_the_users_sessions(store: Store) -> None:
    accounts = store.accounts
    accounts.add_user("root", "admin", "h")
    accounts.add_user("alice", "agent", "h", endpoints=["PJSIP/1001"])
    bystander, _ = accounts.create_session("root")
    changes = {
        "password": lambda: accounts.set_password_hash("alice", "h2", actor="root"),
        "role": lambda: accounts.set_role("alice", "qa", actor="root"),
        "endpoints": lambda: accounts.set_endpoints("alice", ["PJSIP/1002"], actor="root"),
        "disable": lambda: accounts.set_disabled("alice", True, actor="root"),
        "logout everywhere": lambda: accounts.delete_user_sessions("alice", actor="root"),
    }
    for name, change in changes.items():
        accounts.set_disabled("alice", False)
        tokens = [accounts.create_session("alice")[0] for _ in range(2)]
        assert all(accounts.get_session(t) for t in tokens), name            # live before
        change()
        assert [accounts.get_session(t) for t in tokens] == [None, None], name
        assert _sessions_of(store, "alice") == 0, name                        # rows deleted
        assert accounts.get_session(bystander) is not None, name              # others untouched
    actions = [e["action"] for e in accounts.audit_log(target="alice")]
    assert actions == ["user.logout_everywhere", "user.disable", "user.endpoints", "user.role",
                       "user.password"]
    token, _ = accounts.create_session("alice")
    assert accounts.remove_user("alice", actor="root") and accounts.get_session(token) is None
    assert accounts.audit_log(1)[0]["action"] == "user.remove"


def test_own_password_change_keeps_only_the_current_session(store: Store) -> None:
    accounts = store.accounts
    accounts.add_user("root", "admin", "h")
    here, _ = accounts.create_session("root")
    elsewhere, _ = accounts.create_session("root")
    accounts.set_password_hash("root", "h2", keep_token=here, actor="root")
    assert accounts.get_session(here) is not None and accounts.get_session(elsewhere) is None


def test_a_disabled_user_has_no_session_even_if_a_row_survived(store: Store) -> None:
    accounts = store.accounts
    accounts.add_user("alice", "qa", "h")
    token, _ = accounts.create_session("alice")
    store.db._db.execute("UPDATE users SET disabled_at = 1 WHERE username = 'alice'")  # row kept
    assert _sessions_of(store, "alice") == 1 and accounts.get_session(token) is None
    store.db._db.execute("UPDATE users SET disabled_at = NULL WHERE username = 'alice'")
    assert accounts.get_session(token) is not None                        # positive control


def test_the_last_active_admin_cannot_be_removed_demoted_or_disabled(store: Store) -> None:
    accounts = store.accounts
    accounts.add_user("root", "admin", "h")
    for change in (lambda: accounts.set_role("root", "qa"), lambda: accounts.set_disabled("root", True),
                   lambda: accounts.remove_user("root")):
        with pytest.raises(AccountError, match="last active admin"):
            change()
    assert accounts.get_user("root")["role"] == "admin" and not accounts.get_user("root")["disabled"]
    accounts.add_user("root2", "admin", "h")                              # with a second admin: fine
    accounts.set_disabled("root", True)
    assert accounts.get_user("root")["disabled"]


def test_endpoints_are_replaced_checked_and_kept_on_conflict(store: Store) -> None:
    accounts = store.accounts
    accounts.add_user("alice", "agent", "h", endpoints=["PJSIP/1001"])
    accounts.add_user("bob", "agent", "h", endpoints=["PJSIP/1002"])
    with pytest.raises(AccountError, match="already belongs to user 'bob'"):
        accounts.set_endpoints("alice", ["PJSIP/1003", "PJSIP/1002"])
    assert accounts.get_user("alice")["endpoints"] == ["PJSIP/1001"]     # nothing half-done
    assert accounts.set_endpoints("alice", ["PJSIP/1003", "PJSIP/1001"]) == ["PJSIP/1003", "PJSIP/1001"]
    assert accounts.user_for_endpoint("PJSIP/1003")["username"] == "alice"


def test_schema_2_database_migrates_keeping_users_and_sessions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:2]:
        for statement in step.statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO users VALUES ('old', 'qa', '', 'h', 1)")
    db.close()
    with Store(path) as store:
        assert store.schema_version >= 3
        assert store.accounts.get_user("old")["disabled"] is False
        token, _ = store.accounts.create_session("old", address="10.1.2.3")
        assert store.accounts.list_sessions("old")[0]["address"] == "10.1.2.3"
        assert store.accounts.get_session(token)["username"] == "old"


# --- the login rate limit on a real server -----------------------------------------------

@pytest_asyncio.fixture
async def site(tmp_path: Path):
    config = make_config(tmp_path / "data", login_attempts_per_minute=LIMIT)
    store = make_store(config, (WebUser("admin", "admin"), WebUser("alice", "qa")))
    server = await start_app(config, store, EventBus())
    yield server, store
    await server.stop()
    store.close()


def client_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from `address` (any 127.x.y.z is this machine)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login_token(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/login") as response:
        return re.search(r'name="csrf_token" value="([^"]+)"', await response.text()).group(1)


async def post_login(http: aiohttp.ClientSession, url: str, token: str, username: str,
                     password: str) -> tuple[int, dict[str, str]]:
    async with http.post(f"{url}/login", allow_redirects=False, data={
            "username": username, "password": password, "csrf_token": token}) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_parallel_wrong_logins_hit_the_limit_without_locking_the_account_elsewhere(site):
    server, store = site
    async with client_from(ATTACKER) as attacker:
        token = await login_token(attacker, server.url)
        results = await asyncio.gather(*(post_login(attacker, server.url, token, "Admin",
                                                    f"guess-{i}") for i in range(40)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [401] * LIMIT + [429] * (40 - LIMIT), statuses
        assert all(int(h["Retry-After"]) > 0 for s, h in results if s == 429)
        # the attacker's address is locked, even with the right password
        assert (await post_login(attacker, server.url, token, "admin", PASSWORD))[0] == 429
    async with client_from(OWNER) as owner:                 # the owner, elsewhere, gets in
        token = await login_token(owner, server.url)
        status, headers = await post_login(owner, server.url, token, "admin", PASSWORD)
        assert status == 303 and headers["Location"] == "/supervisor"
    async with client_from(THIRD) as third:                 # a wrong guess elsewhere: 401, not 429
        token = await login_token(third, server.url)
        assert (await post_login(third, server.url, token, "ADMIN", "another-guess"))[0] == 401
        assert (await post_login(third, server.url, token, "alice", PASSWORD))[0] == 303

    log = store.accounts.audit_log(100)
    by_action: dict[str, list[dict]] = {}
    for entry in log:
        by_action.setdefault(entry["action"], []).append(entry)
    assert len(by_action["login.failed"]) == LIMIT + 1
    # one audit row per locked address and lock period, not one per refused request
    assert [e["address"] for e in by_action["login.rate_limited"]] == [ATTACKER]
    assert [(e["target"], e["address"]) for e in by_action["login"]] == [("alice", THIRD),
                                                                         ("admin", OWNER)]


async def test_the_account_delay_grows_but_never_locks(site):
    server, _store = site
    async with client_from(ATTACKER) as http:
        token = await login_token(http, server.url)
        for _ in range(LIMIT):
            assert (await post_login(http, server.url, token, "alice", "wrong-one"))[0] == 401
    async with client_from(OWNER) as owner:
        token = await login_token(owner, server.url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await post_login(owner, server.url, token, "alice", PASSWORD))[0] == 303
        waited = loop.time() - started
    # LIMIT failures of the account: the owner waits the first step (0.5 s), not a lock
    assert 0.5 <= waited < 5.0, waited


async def test_logout_and_disabled_login_are_audited(site):
    server, store = site
    async with client_from(OWNER) as http:
        token = await login_token(http, server.url)
        assert (await post_login(http, server.url, token, "alice", PASSWORD))[0] == 303
        async with http.get(f"{server.url}/qa") as response:
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', await response.text()).group(1)
        async with http.post(f"{server.url}/logout", data={"csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.status == 303
        store.accounts.add_user("bob", "qa", hash_password(PASSWORD))
        store.accounts.add_user("root", "admin", "h")
        store.accounts.set_disabled("bob", True, actor="root")
        token = await login_token(http, server.url)
        assert (await post_login(http, server.url, token, "bob", PASSWORD))[0] == 403
        assert store.db._db.execute("SELECT count(*) FROM sessions WHERE username = 'bob'").fetchone()[0] == 0
    actions = [(e["action"], e["target"]) for e in store.accounts.audit_log(4)]
    assert actions == [("login.disabled", "bob"), ("user.disable", "bob"), ("logout", "alice"),
                       ("login", "alice")]


async def test_an_admin_changing_their_own_password_keeps_only_this_session(site):
    server, store = site
    async with client_from(OWNER) as here, client_from(THIRD) as elsewhere:
        csrf = await http_login(here, server.url, "admin")
        await http_login(elsewhere, server.url, "admin")
        async with here.post(f"{server.url}/api/users/admin/password", json={"password": "x" * 12},
                             headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200, await response.text()
        for http, expected in ((here, 200), (elsewhere, 401)):
            async with http.get(f"{server.url}/api/me") as response:
                assert response.status == expected
    assert [e["action"] for e in store.accounts.audit_log(1)] == ["user.password"]
    assert store.accounts.audit_log(1)[0]["detail"] == {"sessions_ended": 1}
