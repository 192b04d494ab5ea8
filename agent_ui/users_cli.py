"""`callassist user add | list | remove`: web accounts, kept in data_dir/callassist.db.

The password comes from $CALLASSIST_PASSWORD (scripts) or is asked for twice on the
terminal. It is never echoed, printed or logged.
"""
from __future__ import annotations

import getpass
import os
import sys
import time

from agent_ui.auth import PasswordPolicyError, check_password_policy, hash_password
from agent_ui.store import Store, StoreError, open_store
from callassist.config import ConfigError, load_config

PASSWORD_ENV = "CALLASSIST_PASSWORD"


class _Abort(Exception):
    """Stop the command with this message and exit code 1 (or `code`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _open(args) -> Store:
    try:
        return open_store(load_config(getattr(args, "config", None)))
    except ConfigError as exc:
        raise _Abort(str(exc), 2) from None
    except StoreError as exc:
        raise _Abort(str(exc), 2) from None


def _read_password(username: str) -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        password = from_env
    else:
        try:
            password = getpass.getpass(f"password for {username}: ")
            if getpass.getpass("again: ") != password:
                raise _Abort("the passwords differ; nothing changed")
        except EOFError:
            raise _Abort(f"no password: set ${PASSWORD_ENV} or run on a terminal") from None
    try:
        check_password_policy(password)
    except PasswordPolicyError as exc:
        raise _Abort(f"{exc}; nothing changed") from None
    return password


def _run(command, args) -> int:
    try:
        return command(args)
    except _Abort as exc:
        print(f"callassist user: {exc}", file=sys.stderr)
        return exc.code


def add(args) -> int:
    def command(args) -> int:
        store = _open(args)
        try:
            Store.check_username(args.username)
            if store.get_user(args.username) is not None:     # before asking for a password
                raise _Abort(f"user {args.username!r} already exists")
            password = _read_password(args.username)
            store.add_user(args.username, args.role, hash_password(password),
                           display_name=args.name or "", endpoints=args.endpoint or ())
        except StoreError as exc:
            raise _Abort(str(exc)) from None
        finally:
            store.close()
        endpoints = f", endpoints {', '.join(args.endpoint)}" if args.endpoint else ""
        print(f"added user {args.username} ({args.role}{endpoints})")
        return 0
    return _run(command, args)


def list_users(args) -> int:
    def command(args) -> int:
        store = _open(args)
        try:
            users = store.list_users()
        finally:
            store.close()
        if not users:
            print("no users; add one with: callassist user add NAME --role admin")
            return 0
        rows = [("USERNAME", "ROLE", "NAME", "ENDPOINTS", "CREATED")]
        rows += [(u["username"], u["role"], u["display_name"], ",".join(u["endpoints"]) or "-",
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(u["created_at"]))) for u in users]
        widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths)).rstrip())
        return 0
    return _run(command, args)


def remove(args) -> int:
    def command(args) -> int:
        store = _open(args)
        try:
            removed = store.remove_user(args.username)
        finally:
            store.close()
        if not removed:
            raise _Abort(f"no user {args.username!r}")
        print(f"removed user {args.username} (and their sessions)")
        return 0
    return _run(command, args)


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if ord(ch) >= 0x1100 and not 0xFF61 <= ord(ch) <= 0xFFDC else 1 for ch in text)
