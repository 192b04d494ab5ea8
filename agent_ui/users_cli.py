"""`callassist user ...`: web accounts, kept in data_dir/callassist.db.

    add NAME --role R [--name N] [--endpoint E]...   list   remove NAME
    passwd NAME   role NAME ROLE   endpoints NAME [E...]   disable NAME   enable NAME
    sessions NAME   logout NAME (everywhere)   audit [--user NAME] [--limit N]

The password comes from $CALLASSIST_PASSWORD, else from the terminal (asked twice,
not echoed), else, when standard input is not a terminal (a pipe), from its first
line. It is never echoed, printed or logged. Every change is written to the audit
log as done by "cli:<OS user>"; each one that alters what a user may do (password,
role, endpoints, disable, remove) ends all their sessions.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence

from agent_ui.account_store import AccountStore, check_username
from agent_ui.auth import PasswordPolicyError, check_password_policy, hash_password
from agent_ui.store import Store, StoreError, open_store
from callassist.config import ConfigError, load_config

PASSWORD_ENV = "CALLASSIST_PASSWORD"


class _Abort(Exception):
    """Stop the command with this message and exit code 1 (or `code`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _open(args: argparse.Namespace) -> Store:
    try:
        return open_store(load_config(getattr(args, "config", None)), create=args.action == "add")
    except ConfigError as exc:
        raise _Abort(str(exc), 2) from None
    except StoreError as exc:
        raise _Abort(str(exc), 2) from None


def _actor() -> str:
    """Who the audit log names for a command-line change."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):          # no such uid in the passwd file (containers)
        return f"cli:{os.getuid()}"


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


def _read_password(username: str) -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        password = from_env
    elif _stdin_is_terminal():
        try:
            password = getpass.getpass(f"password for {username}: ")
            if getpass.getpass("again: ") != password:
                raise _Abort("the passwords differ; nothing changed")
        except EOFError:
            raise _Abort(f"no password: set ${PASSWORD_ENV} or type it on the terminal") from None
    else:
        # a pipe: one line, without its line ending (getpass would warn and echo here)
        line = sys.stdin.readline() if sys.stdin is not None else ""
        password = line.removesuffix("\n").removesuffix("\r")
        if not line:
            raise _Abort(f"no password: pipe one line on standard input, set ${PASSWORD_ENV} "
                         "or run on a terminal; nothing changed")
    try:
        check_password_policy(password)
    except PasswordPolicyError as exc:
        raise _Abort(f"{exc}; nothing changed") from None
    return password


def _with_accounts(action: Callable[[AccountStore, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Open the store, run `action` on its accounts, close it; errors -> one line, exit 1."""
    def command(args: argparse.Namespace) -> int:
        try:
            store = _open(args)
            try:
                return action(store.accounts, args)
            except StoreError as exc:
                raise _Abort(str(exc)) from None
            finally:
                store.close()
        except _Abort as exc:
            print(f"callassist user: {exc}", file=sys.stderr)
            return exc.code
    return command


def _no_endpoint_warning(username: str) -> None:
    print(f"warning: agent {username} has no endpoint, so they see no calls; add one with "
          f"`callassist user endpoints {username} PJSIP/1001`", file=sys.stderr)


def _add(accounts: AccountStore, args: argparse.Namespace) -> int:
    try:
        check_username(args.username)
    except StoreError as exc:
        raise _Abort(str(exc)) from None
    if accounts.get_user(args.username) is not None:     # before asking for a password
        raise _Abort(f"user {args.username!r} already exists")
    password = _read_password(args.username)
    accounts.add_user(args.username, args.role, hash_password(password),
                      display_name=args.name or "", endpoints=args.endpoint or (), actor=_actor())
    endpoints = f", endpoints {', '.join(args.endpoint)}" if args.endpoint else ""
    print(f"added user {args.username} ({args.role}{endpoints})")
    if args.role == "agent" and not args.endpoint:
        _no_endpoint_warning(args.username)
    return 0


def _list(accounts: AccountStore, args: argparse.Namespace) -> int:
    users = accounts.list_users()
    if not users:
        print("no users; add one with: callassist user add NAME --role admin")
        return 0
    rows = [("USERNAME", "ROLE", "NAME", "ENDPOINTS", "CREATED", "STATUS", "SESSIONS")]
    rows += [(u["username"], u["role"], u["display_name"], ",".join(u["endpoints"]) or "-",
              _when(u["created_at"]), "disabled" if u["disabled"] else "active",
              str(u["sessions"])) for u in users]
    _print_table(rows)
    return 0


def _remove(accounts: AccountStore, args: argparse.Namespace) -> int:
    if not accounts.remove_user(args.username, actor=_actor()):
        raise _Abort(f"no user {args.username!r}")
    print(f"removed user {args.username} (and their sessions)")
    return 0


def _require(accounts: AccountStore, username: str) -> dict:
    user = accounts.get_user(username)
    if user is None:
        raise _Abort(f"no user {username!r}")
    return user


def _passwd(accounts: AccountStore, args: argparse.Namespace) -> int:
    _require(accounts, args.username)                     # before asking for a password
    password = _read_password(args.username)
    accounts.set_password_hash(args.username, hash_password(password), actor=_actor())
    print(f"password of {args.username} changed; their sessions ended")
    return 0


def _role(accounts: AccountStore, args: argparse.Namespace) -> int:
    user = _require(accounts, args.username)
    accounts.set_role(args.username, args.role, actor=_actor())
    print(f"role of {args.username}: {args.role}" +
          ("; their sessions ended" if user["role"] != args.role else " (unchanged)"))
    if args.role == "agent" and not user["endpoints"]:
        _no_endpoint_warning(args.username)
    return 0


def _endpoints(accounts: AccountStore, args: argparse.Namespace) -> int:
    user = _require(accounts, args.username)
    stored = accounts.set_endpoints(args.username, args.endpoints, actor=_actor())
    print(f"endpoints of {args.username}: {', '.join(stored) or 'none'}")
    if user["role"] == "agent" and not stored:
        _no_endpoint_warning(args.username)
    return 0


def _disable(accounts: AccountStore, args: argparse.Namespace) -> int:
    _require(accounts, args.username)
    accounts.set_disabled(args.username, True, actor=_actor())
    print(f"disabled user {args.username}; their sessions ended")
    return 0


def _enable(accounts: AccountStore, args: argparse.Namespace) -> int:
    _require(accounts, args.username)
    accounts.set_disabled(args.username, False, actor=_actor())
    print(f"enabled user {args.username}")
    return 0


def _sessions(accounts: AccountStore, args: argparse.Namespace) -> int:
    _require(accounts, args.username)
    sessions = accounts.list_sessions(args.username)
    if not sessions:
        print(f"{args.username} has no live sessions")
        return 0
    _print_table([("SESSION", "CREATED", "EXPIRES", "ADDRESS", "BROWSER")] + [
        (s["id"], _when(s["created_at"]), _when(s["expires_at"]), s["address"] or "-",
         (s["user_agent"] or "-")[:60]) for s in sessions])
    return 0


def _logout(accounts: AccountStore, args: argparse.Namespace) -> int:
    _require(accounts, args.username)
    ended = accounts.delete_user_sessions(args.username, actor=_actor())
    print(f"logged {args.username} out everywhere ({ended} session{'s' if ended != 1 else ''} ended)")
    return 0


def _audit(accounts: AccountStore, args: argparse.Namespace) -> int:
    entries = accounts.audit_log(args.limit, args.user)
    if not entries:
        print("the audit log is empty")
        return 0
    _print_table([("WHEN", "ACTOR", "ACTION", "TARGET", "ADDRESS", "DETAIL")] + [
        (_when(e["at"], seconds=True), e["actor"], e["action"], e["target"] or "-",
         e["address"] or "-", json.dumps(e["detail"], ensure_ascii=False) if e["detail"] else "")
        for e in reversed(entries)])                      # oldest first, like a log
    return 0


add = _with_accounts(_add)
list_users = _with_accounts(_list)
remove = _with_accounts(_remove)
passwd = _with_accounts(_passwd)
role = _with_accounts(_role)
endpoints = _with_accounts(_endpoints)
disable = _with_accounts(_disable)
enable = _with_accounts(_enable)
sessions = _with_accounts(_sessions)
logout = _with_accounts(_logout)
audit = _with_accounts(_audit)


def _when(epoch: float, seconds: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(epoch))


def _printable(text: str) -> str:
    """Control and format characters escaped: the audit log holds usernames typed by
    anyone at the login form, which must not drive the admin's terminal."""
    return "".join(ch if unicodedata.category(ch)[0] != "C" else ascii(ch)[1:-1] for ch in text)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths)).rstrip())


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if ord(ch) >= 0x1100 and not 0xFF61 <= ord(ch) <= 0xFFDC else 1 for ch in text)
