"""Login and logout.

The login form is protected by a double-submit token (a cookie set with the form,
echoed in a hidden field) since there is no session yet. Failed attempts are rate
limited per account and per address (auth.LoginRateLimiter). The password is passed
to verify_password_async and nowhere else: never logged, never echoed.
"""
from __future__ import annotations

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
    limiter = request.app[APP_LIMITER]
    wait = limiter.retry_after(username, address)
    if wait > 0:
        log.warning("login refused (rate limit) for %r from %s", username, address)
        response = _login_page(request, f"尝试次数过多，请 {math.ceil(wait)} 秒后再试。",
                               username, next_, status=429)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    store = request.app[APP_STORE]
    user = store.get_user(username) if username else None
    ok = await verify_password_async(user["password_hash"] if user else None, password)
    del password
    if not ok or user is None:
        limiter.record_failure(username, address)
        log.info("login failed for %r from %s", username, address)
        return _login_page(request, "用户名或密码错误。", username, next_, status=401)
    token, _csrf = store.create_session(user["username"], SESSION_TTL)
    log.info("login: %s (%s) from %s", user["username"], user["role"], address)
    response = redirect(next_ or home_of(user["role"]))
    set_cookie(request, response, SESSION_COOKIE, token, max_age=int(SESSION_TTL))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    token = request.get(REQ_SESSION)
    if token:
        request.app[APP_STORE].delete_session(token)
        log.info("logout: %s", request[REQ_USER]["username"])
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
