"""`callassist user add | list | remove`, run as the real command."""
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


def callassist(config: Path, *args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess:
    exe = shutil.which("callassist")
    command = [exe] if exe else [sys.executable, "-m", "callassist"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLASSIST_")}
    if password is not None:
        env["CALLASSIST_PASSWORD"] = password
    result = subprocess.run([*command, "--config", str(config), *args], env=env, text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert PASSWORD not in result.stdout + result.stderr
    return result


def test_add_list_remove(config: Path, tmp_path: Path) -> None:
    added = callassist(config, "user", "add", "alice", "--role", "agent", "--name", "张丽",
                       "--endpoint", "PJSIP/1001", "--endpoint", "PJSIP/1003")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added user alice (agent, endpoints PJSIP/1001, PJSIP/1003)"
    assert callassist(config, "user", "add", "root", "--role", "admin").returncode == 0

    store = Store(tmp_path / "data" / "callassist.db")
    alice = store.get_user("alice")
    store.close()
    assert alice["role"] == "agent" and alice["display_name"] == "张丽"
    assert alice["endpoints"] == ["PJSIP/1001", "PJSIP/1003"]
    assert verify_password(alice["password_hash"], PASSWORD)
    assert PASSWORD.encode() not in (tmp_path / "data" / "callassist.db").read_bytes()

    listed = callassist(config, "user", "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "NAME", "ENDPOINTS", "CREATED"]
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
    args = argparse.Namespace(config=str(config), username="erin", role="supervisor", name="",
                              endpoint=[])
    assert users_cli.add(args) == 0
    assert users_cli.list_users(argparse.Namespace(config=str(config))) == 0
    monkeypatch.setenv("CALLASSIST_PASSWORD", "tiny")
    assert users_cli.add(argparse.Namespace(config=str(config), username="fay", role="qa",
                                            name="", endpoint=[])) == 1
    out = capsys.readouterr()
    for secret in (PASSWORD, "tiny"):
        assert secret not in caplog.text and secret not in out.out + out.err


def test_password_asked_twice_on_a_terminal(config: Path, monkeypatch) -> None:
    monkeypatch.delenv("CALLASSIST_PASSWORD", raising=False)
    answers = iter([PASSWORD, PASSWORD + "typo"])
    monkeypatch.setattr(users_cli.getpass, "getpass", lambda prompt="": next(answers))
    args = argparse.Namespace(config=str(config), username="gus", role="qa", name="", endpoint=[])
    assert users_cli.add(args) == 1                                  # they differ
    answers = iter([PASSWORD, PASSWORD])
    assert users_cli.add(args) == 0
