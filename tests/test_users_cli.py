"""`callassist user ...` (add, list, remove, passwd, role, endpoints, disable, enable,
sessions, logout, audit), run as the real command."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_ui import users_cli
from agent_ui.auth import verify_password
from agent_ui.store import Store

PASSWORD = "s3cret-口令-xyz"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "callassist.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return path


REPO = Path(users_cli.__file__).resolve().parents[1]


def callassist(config: Path, *args: str, password: str | None = PASSWORD,
               stdin: str | None = None) -> subprocess.CompletedProcess:
    """The real command; `stdin`: text piped in (default: no input at all)."""
    exe = shutil.which("callassist")
    command = [exe] if exe else [sys.executable, "-m", "callassist"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLASSIST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if password is not None:
        env["CALLASSIST_PASSWORD"] = password
    result = subprocess.run([*command, "--config", str(config), *args], env=env, text=True,
                            capture_output=True, timeout=120, input=stdin,
                            stdin=subprocess.DEVNULL if stdin is None else None)
    assert PASSWORD not in result.stdout + result.stderr
    return result


def test_add_list_remove(config: Path, tmp_path: Path) -> None:
    added = callassist(config, "user", "add", "alice", "--role", "agent", "--name", "张丽",
                       "--endpoint", "PJSIP/1001", "--endpoint", "PJSIP/1003")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added user alice (agent, endpoints PJSIP/1001, PJSIP/1003)"
    assert callassist(config, "user", "add", "root", "--role", "admin").returncode == 0

    store = Store(tmp_path / "data" / "callassist.db")
    alice = store.accounts.get_user("alice")
    store.close()
    assert alice["role"] == "agent" and alice["display_name"] == "张丽"
    assert alice["endpoints"] == ["PJSIP/1001", "PJSIP/1003"]
    assert verify_password(alice["password_hash"], PASSWORD)
    assert PASSWORD.encode() not in (tmp_path / "data" / "callassist.db").read_bytes()

    listed = callassist(config, "user", "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "NAME", "ENDPOINTS", "CREATED", "STATUS",
                                "SESSIONS"]
    assert lines[1].split()[:4] == ["alice", "agent", "张丽", "PJSIP/1001,PJSIP/1003"]
    assert lines[2].split()[:3] == ["root", "admin", "-"]
    assert "$argon2" not in listed.stdout

    removed = callassist(config, "user", "remove", "alice")
    assert removed.returncode == 0 and "removed user alice" in removed.stdout
    missing = callassist(config, "user", "remove", "alice")
    assert missing.returncode == 1 and "no user 'alice'" in missing.stderr
    assert "alice" not in callassist(config, "user", "list").stdout


def test_add_refuses_bad_input_and_changes_nothing(config: Path) -> None:
    short = callassist(config, "user", "add", "bob", "--role", "qa", password="short")
    assert short.returncode == 1 and "shorter than 8" in short.stderr
    empty = callassist(config, "user", "add", "bob", "--role", "qa", password="")
    assert empty.returncode == 1 and "empty" in empty.stderr
    no_tty = callassist(config, "user", "add", "bob", "--role", "qa", password=None)
    assert no_tty.returncode == 1 and "CALLASSIST_PASSWORD" in no_tty.stderr
    bad_name = callassist(config, "user", "add", "bob smith", "--role", "qa")
    assert bad_name.returncode == 1 and "invalid username" in bad_name.stderr
    assert "no users" in callassist(config, "user", "list").stdout

    assert callassist(config, "user", "add", "bob", "--role", "qa").returncode == 0
    again = callassist(config, "user", "add", "bob", "--role", "qa")
    assert again.returncode == 1 and "already exists" in again.stderr
    taken = [callassist(config, "user", "add", name, "--role", "agent", "--endpoint", "PJSIP/7")
             for name in ("carol", "dave")]
    assert taken[0].returncode == 0
    assert taken[1].returncode == 1 and "already belongs to user 'carol'" in taken[1].stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nretention_days = -1\n")
    result = callassist(bad, "user", "list")
    assert result.returncode == 2 and "retention_days" in result.stderr


def test_passwords_are_never_logged_or_printed(config: Path, monkeypatch, caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CALLASSIST_PASSWORD", PASSWORD)
    args = argparse.Namespace(config=str(config), action="add", username="erin", role="supervisor", name="",
                              endpoint=[])
    assert users_cli.add(args) == 0
    assert users_cli.list_users(argparse.Namespace(config=str(config), action="list")) == 0
    monkeypatch.setenv("CALLASSIST_PASSWORD", "tiny")
    assert users_cli.add(argparse.Namespace(config=str(config), action="add", username="fay", role="qa",
                                            name="", endpoint=[])) == 1
    out = capsys.readouterr()
    for secret in (PASSWORD, "tiny"):
        assert secret not in caplog.text and secret not in out.out + out.err


def test_password_asked_twice_on_a_terminal(config: Path, monkeypatch) -> None:
    monkeypatch.delenv("CALLASSIST_PASSWORD", raising=False)
    monkeypatch.setattr(users_cli, "_stdin_is_terminal", lambda: True)
    answers = iter([PASSWORD, PASSWORD + "typo"])
    monkeypatch.setattr(users_cli.getpass, "getpass", lambda prompt="": next(answers))
    args = argparse.Namespace(config=str(config), action="add", username="gus", role="qa", name="", endpoint=[])
    assert users_cli.add(args) == 1                                  # they differ
    answers = iter([PASSWORD, PASSWORD])
    assert users_cli.add(args) == 0


def stored(tmp_path: Path, username: str) -> dict | None:
    with Store(tmp_path / "data" / "callassist.db") as store:
        return store.accounts.get_user(username)


def test_a_piped_password_is_read_from_stdin_without_a_warning(config: Path, tmp_path: Path) -> None:
    piped = callassist(config, "user", "add", "pia", "--role", "qa", password=None,
                       stdin=PASSWORD + "\n")
    assert piped.returncode == 0, piped.stderr
    assert "GetPassWarning" not in piped.stderr and "password for" not in piped.stderr  # no prompt
    assert verify_password(stored(tmp_path, "pia")["password_hash"], PASSWORD)
    empty = callassist(config, "user", "passwd", "pia", password=None, stdin="")
    assert empty.returncode == 1 and "pipe one line" in empty.stderr
    assert verify_password(stored(tmp_path, "pia")["password_hash"], PASSWORD)   # unchanged


def test_an_agent_without_an_endpoint_is_added_with_a_warning(config: Path) -> None:
    bare = callassist(config, "user", "add", "bob", "--role", "agent")
    assert bare.returncode == 0 and bare.stdout.strip() == "added user bob (agent)"
    assert "warning: agent bob has no endpoint" in bare.stderr
    phoned = callassist(config, "user", "add", "cat", "--role", "agent", "--endpoint", "PJSIP/9")
    assert phoned.returncode == 0 and "warning" not in phoned.stderr       # positive control


def test_confusable_usernames_are_refused(config: Path) -> None:
    assert callassist(config, "user", "add", "admin", "--role", "admin").returncode == 0
    for name, message in (("Admin", "would be confused with the existing user 'admin'"),
                          ("\u0430dmin", "invalid username")):              # Cyrillic а
        refused = callassist(config, "user", "add", name, "--role", "admin")
        assert refused.returncode == 1 and message in refused.stderr, name


def test_manage_a_user_and_read_the_audit_log(config: Path, tmp_path: Path) -> None:
    assert callassist(config, "user", "add", "root", "--role", "admin").returncode == 0
    assert callassist(config, "user", "add", "amy", "--role", "agent", "--endpoint",
                      "PJSIP/1001").returncode == 0

    def open_sessions(count: int = 2) -> list[str]:
        with Store(tmp_path / "data" / "callassist.db") as store:
            return [store.accounts.create_session("amy", address="10.9.8.7")[0] for _ in range(count)]

    def live(tokens: list[str]) -> int:
        with Store(tmp_path / "data" / "callassist.db") as store:
            return sum(store.accounts.get_session(t) is not None for t in tokens)

    tokens = open_sessions()
    listed = callassist(config, "user", "sessions", "amy")
    assert listed.returncode == 0 and listed.stdout.count("10.9.8.7") == 2
    new_password = "another-secret-9"
    changed = callassist(config, "user", "passwd", "amy", password=None, stdin=new_password + "\n")
    assert changed.returncode == 0 and live(tokens) == 0
    assert verify_password(stored(tmp_path, "amy")["password_hash"], new_password)

    for command, check in (
            (("role", "amy", "qa"), lambda u: u["role"] == "qa"),
            (("endpoints", "amy", "PJSIP/1002", "PJSIP/1003"),
             lambda u: u["endpoints"] == ["PJSIP/1002", "PJSIP/1003"]),
            (("disable", "amy"), lambda u: u["disabled"]),
            (("logout", "amy"), lambda u: True)):
        tokens = open_sessions()
        result = callassist(config, "user", *command)
        assert result.returncode == 0, (command, result.stderr)
        assert check(stored(tmp_path, "amy")), command
        assert live(tokens) == 0, command
    enabled = callassist(config, "user", "enable", "amy")
    assert enabled.returncode == 0 and not stored(tmp_path, "amy")["disabled"]
    assert "active" in callassist(config, "user", "list").stdout

    cleared = callassist(config, "user", "endpoints", "amy")
    assert cleared.returncode == 0 and "endpoints of amy: none" in cleared.stdout
    last = callassist(config, "user", "disable", "root")
    assert last.returncode == 1 and "last active admin" in last.stderr
    ghost = callassist(config, "user", "role", "ghost", "qa")
    assert ghost.returncode == 1 and "no user 'ghost'" in ghost.stderr

    audit = callassist(config, "user", "audit", "--user", "amy")
    assert audit.returncode == 0
    actions = [line.split()[3] for line in audit.stdout.splitlines()[1:]]
    assert actions == ["user.add", "user.password", "user.role", "user.endpoints", "user.disable",
                       "user.logout_everywhere", "user.enable", "user.endpoints"]
    assert new_password not in audit.stdout and "$argon2" not in audit.stdout


def test_the_audit_log_escapes_what_strangers_typed(config: Path, tmp_path: Path) -> None:
    assert callassist(config, "user", "add", "root", "--role", "admin").returncode == 0
    with Store(tmp_path / "data" / "callassist.db") as store:
        store.accounts.audit("x\x1b[2Jevil", "login.failed", "x\x1b[2Jevil", "10.0.0.1")
    audit = callassist(config, "user", "audit")
    assert audit.returncode == 0 and "\x1b" not in audit.stdout
    assert "x\\x1b[2Jevil" in audit.stdout and "login.failed" in audit.stdout
