"""User management for admins: the page /users and its JSON API.

    GET  /users                                  the page (admin only)
    GET  /api/users                              every user, with live session counts
    GET  /api/users/audit?user=NAME&limit=N      the audit log, newest first
    GET  /api/users/{username}/sessions          the user's live sessions
    POST /api/users/{username}/password          {"password": "..."}
    POST /api/users/{username}/role              {"role": "qa"}
    POST /api/users/{username}/endpoints         {"endpoints": ["PJSIP/1001"]}
    POST /api/users/{username}/disable | enable | logout

Every POST carries the session's CSRF token (security.csrf_middleware) and is audited
(actor, action, target, address) in the same transaction as the change. Each change
that alters what a user may do ends their sessions (AccountStore, one transaction run
off the event loop by Store.off_loop); admins changing
their own password keep the session they are using. Admins cannot disable themselves
or change their own role here (they would lock themselves out mid-click); the CLI can.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent_ui.account_store import AccountError, AccountStore
from agent_ui.auth import MIN_PASSWORD_LENGTH, ROLES, hash_password_async
from agent_ui.security import APP_STORE, REQ_SESSION, require_role
from agent_ui.views.render import page

User = dict[str, Any]
# A change on the target user: (accounts, acting admin, target, client address) ->
# extra fields for the JSON answer (a warning, a count) or None.
Change = Callable[[AccountStore, User, User, str], Awaitable[dict[str, Any] | None]]

AUDIT_PAGE = 200
MAX_ENDPOINTS = 50
MAX_PASSWORD = 1024


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}


def _error(status: int, message: str) -> web.HTTPException:
    """A JSON error the page shows as it is (Chinese)."""
    return _ERRORS[status](text=json.dumps({"error": message}, ensure_ascii=False),
                           content_type="application/json")


def _admin(request: web.Request) -> dict[str, Any]:
    return require_role(request, "admin")


def _accounts(request: web.Request) -> AccountStore:
    return request.app[APP_STORE].accounts


async def _off_loop(request: web.Request, method: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> Any:
    """An account change may wait for another process's write lock: not on the loop."""
    return await request.app[APP_STORE].off_loop(method, *args, **kwargs)


def _target(request: web.Request) -> dict[str, Any]:
    user = _accounts(request).get_user(request.match_info["username"])
    if user is None:
        raise _error(404, "没有这个用户")
    return user


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _error(400, "请求格式错误（需要 JSON）") from None
    if not isinstance(body, dict):
        raise _error(400, "请求格式错误（需要 JSON 对象）")
    return body


def _user_row(user: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a user (no password hash)."""
    return {"username": user["username"], "role": user["role"],
            "display_name": user.get("display_name") or "", "endpoints": user["endpoints"],
            "disabled": user["disabled"], "created_at": user["created_at"],
            "sessions": user.get("sessions", 0)}


async def users_page(request: web.Request) -> web.StreamResponse:
    _admin(request)
    return page(request, "users.html", "用户管理", script="users.js")


async def list_users(request: web.Request) -> web.Response:
    _admin(request)
    return web.json_response({"users": [_user_row(u) for u in _accounts(request).list_users()],
                              "roles": list(ROLES)})


async def audit_log(request: web.Request) -> web.Response:
    _admin(request)
    try:
        limit = int(request.query.get("limit", AUDIT_PAGE))
    except ValueError:
        raise _error(400, "limit 必须是整数") from None
    target = request.query.get("user") or None
    return web.json_response({"entries": _accounts(request).audit_log(limit, target)})


async def sessions(request: web.Request) -> web.Response:
    _admin(request)
    user = _target(request)
    return web.json_response({"sessions": _accounts(request).list_sessions(user["username"])})


async def _change(request: web.Request, change: Change) -> web.Response:
    """Run `change(accounts, admin, target, address)`; AccountError -> 409 in Chinese."""
    admin = _admin(request)
    target = _target(request)
    try:
        result = await change(_accounts(request), admin, target, request.remote or "")
    except AccountError as exc:
        raise _error(409, exc.zh) from None
    user = _accounts(request).get_user(target["username"])
    if user is None:                                   # removed meanwhile (CLI)
        raise _error(404, "没有这个用户")
    row = _user_row({**user, "sessions": len(_accounts(request).list_sessions(user["username"]))})
    return web.json_response({"user": row, **(result or {})})


def _not_self(admin: dict[str, Any], target: dict[str, Any], what: str) -> None:
    if admin["username"] == target["username"]:
        raise _error(409, f"不能{what}自己的账号（会把自己锁在外面）；请用命令行 callassist user")


async def set_password(request: web.Request) -> web.Response:
    body = await _body(request)
    password = body.get("password")
    if not isinstance(password, str) or not password.strip():
        raise _error(400, "请输入新密码")
    if len(password) < MIN_PASSWORD_LENGTH or len(password) > MAX_PASSWORD:
        raise _error(400, f"密码长度须为 {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD} 个字符")

    async def change(accounts: AccountStore, admin: User, target: User,
                     address: str) -> dict[str, Any] | None:
        password_hash = await hash_password_async(password)
        own = admin["username"] == target["username"]
        await _off_loop(request, accounts.set_password_hash, target["username"], password_hash,
                        actor=admin["username"], address=address,
                        keep_token=request.get(REQ_SESSION) if own else None)
        return None
    return await _change(request, change)


async def set_role(request: web.Request) -> web.Response:
    role = (await _body(request)).get("role")
    if role not in ROLES:
        raise _error(400, "未知角色")

    async def change(accounts: AccountStore, admin: User, target: User,
                     address: str) -> dict[str, Any] | None:
        _not_self(admin, target, "修改")
        await _off_loop(request, accounts.set_role, target["username"], role,
                        actor=admin["username"], address=address)
        if role == "agent" and not target["endpoints"]:
            return {"warning": "该坐席还没有分机，看不到任何通话；请为其设置分机。"}
        return None
    return await _change(request, change)


async def set_endpoints(request: web.Request) -> web.Response:
    endpoints = (await _body(request)).get("endpoints")
    if (not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS
            or not all(isinstance(e, str) for e in endpoints)):
        raise _error(400, f"分机须为字符串列表（最多 {MAX_ENDPOINTS} 个）")

    async def change(accounts: AccountStore, admin: User, target: User,
                     address: str) -> dict[str, Any] | None:
        stored = await _off_loop(request, accounts.set_endpoints, target["username"], endpoints,
                                 actor=admin["username"], address=address)
        if target["role"] == "agent" and not stored:
            return {"warning": "该坐席没有分机，将看不到任何通话。"}
        return None
    return await _change(request, change)


async def disable(request: web.Request) -> web.Response:
    async def change(accounts: AccountStore, admin: User, target: User,
                     address: str) -> dict[str, Any] | None:
        _not_self(admin, target, "停用")
        await _off_loop(request, accounts.set_disabled, target["username"], True,
                        actor=admin["username"], address=address)
        return None
    return await _change(request, change)


async def enable(request: web.Request) -> web.Response:
    async def change(accounts: AccountStore, admin: User, target: User,
                     address: str) -> dict[str, Any] | None:
        await _off_loop(request, accounts.set_disabled, target["username"], False,
                        actor=admin["username"], address=address)
        return None
    return await _change(request, change)


async def logout_everywhere(request: web.Request) -> web.Response:
    async def change(accounts: AccountStore, admin: User, target: User,
                     address: str) -> dict[str, Any] | None:
        ended = await _off_loop(request, accounts.delete_user_sessions, target["username"],
                                actor=admin["username"], address=address)
        return {"sessions_ended": ended}
    return await _change(request, change)


def setup(app: web.Application) -> None:
    app.router.add_get("/users", users_page)
    app.router.add_get("/api/users", list_users)
    app.router.add_get("/api/users/audit", audit_log)
    app.router.add_get("/api/users/{username}/sessions", sessions)
    for action, handler in (("password", set_password), ("role", set_role),
                            ("endpoints", set_endpoints), ("disable", disable),
                            ("enable", enable), ("logout", logout_everywhere)):
        app.router.add_post(f"/api/users/{{username}}/{action}", handler)
