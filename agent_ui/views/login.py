"""Login and logout.

The login form is protected by a double-submit token (a cookie set with the form,
echoed in a hidden field) since there is no session yet. Failed attempts are rate
limited (auth.LoginRateLimiter: a lock per address, a growing delay per account).
Logins, failures and refusals go to the audit log (AccountStore.audit). The password
is passed to verify_password_async and nowhere else: never logged, never echoed.
Every write (attempts, audit rows, sessions) runs through Store.off_loop: a login never
stalls the event loop while another process holds the database.
"""
from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web

from agent_ui.auth import SESSION_TTL, LoginRateLimiter, new_token, verify_password_async
from agent_ui.security import (APP_STORE, LOGIN_CSRF_COOKIE, REQ_SESSION, REQ_USER,
                               SESSION_COOKIE, redirect, safe_next, set_cookie)
from agent_ui.views.render import page

log = logging.getLogger(__name__)

APP_LIMITER: web.AppKey[LoginRateLimiter] = web.AppKey("login_limiter", LoginRateLimiter)
HOME = {"agent": "/agent", "supervisor": "/supervisor", "qa": "/qa", "admin": "/supervisor"}
MAX_FIELD = 256


def home_of(role: str) -> str:
    return HOME.get(role, "/qa")


def _login_page(request: web.Request, error: str = "", username: str = "", next_: str = "",
                status: int = 200) -> web.Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
    response = page(request, "login.html", "登录", status=status, error=error,
                    login_csrf=token, next=next_, username=username)
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    if request.get(REQ_USER):
        raise web.HTTPFound(home_of(request[REQ_USER]["role"]))
    return _login_page(request, next_=safe_next(request.query.get("next"), ""))


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    username = str(form.get("username", "")).strip()[:MAX_FIELD]
    password = str(form.get("password", ""))[:MAX_FIELD * 4]
    next_ = safe_next(str(form.get("next", "")), "")
    address = request.remote or ""
    store = request.app[APP_STORE]
    accounts = store.accounts
    limiter = request.app[APP_LIMITER]
    admission = await store.off_loop(limiter.admit, username, address)
    if not admission.allowed:
        wait = math.ceil(admission.retry_after)
        log.warning("login refused (rate limit) for %r from %s", username, address)
        if limiter.first_refusal(address, admission.retry_after):
            await store.off_loop(accounts.audit, username, "login.rate_limited", username, address,
                                 {"retry_after": wait})
        response = _login_page(request, f"尝试次数过多，请 {wait} 秒后再试。",
                               username, next_, status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    if admission.delay > 0:              # this account had many failures: slow guessing down
        await asyncio.sleep(admission.delay)
    user = accounts.get_user(username) if username else None
    ok = await verify_password_async(user["password_hash"] if user else None, password)
    del password
    if not ok or user is None:
        log.info("login failed for %r from %s", username, address)
        await store.off_loop(accounts.audit, username, "login.failed", username, address,
                             {"known_user": user is not None})
        return _login_page(request, "用户名或密码错误。", username, next_, status=401)
    await store.off_loop(limiter.succeeded, admission)     # the right password costs no attempt
    if user["disabled"]:
        log.info("login refused for disabled user %s from %s", user["username"], address)
        await store.off_loop(accounts.audit, user["username"], "login.disabled", user["username"],
                             address)
        return _login_page(request, "该账号已停用，请联系管理员。", username, next_, status=403)
    token, _csrf = await store.off_loop(accounts.create_session, user["username"], SESSION_TTL,
                                        address=address,
                                        user_agent=request.headers.get("User-Agent", ""))
    await store.off_loop(accounts.audit, user["username"], "login", user["username"], address)
    log.info("login: %s (%s) from %s", user["username"], user["role"], address)
    response = redirect(next_ or home_of(user["role"]))
    set_cookie(request, response, SESSION_COOKIE, token, max_age=int(SESSION_TTL))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    token = request.get(REQ_SESSION)
    if token:
        username = request[REQ_USER]["username"]
        store = request.app[APP_STORE]
        await store.off_loop(store.accounts.delete_session, token, actor=username,
                             address=request.remote or "")
        log.info("logout: %s", username)
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(home_of(request[REQ_USER]["role"]))


def setup(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
