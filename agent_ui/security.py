"""Web security: who is logged in (session cookie), CSRF on every state change,
security headers on every response, and the checks handlers use (role, call access,
same-origin websockets).

Default deny: every route needs a session except PUBLIC_PATHS and /static/. Without
one, a page request is redirected to the login page and anything else (API, export,
recording, websocket) gets 401.
"""
from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from agent_ui.auth import can_view_call, tokens_match

log = logging.getLogger(__name__)

SESSION_COOKIE = "ca_session"
LOGIN_CSRF_COOKIE = "ca_login_csrf"     # double-submit token of the login form (no session yet)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# /healthz and /metrics: for monitoring, which has no session (agent_ui.views.health:
# /metrics is further limited to loopback unless [web] metrics_remote)
PUBLIC_PATHS = frozenset({"/login", "/favicon.ico", "/healthz", "/metrics"})
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SERVER_NAME = "callassist"              # the Server header: no product versions to look up
# Requests answered with a status code rather than a redirect to the login page.
API_PREFIXES = ("/api/", "/ws", "/recordings/")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self'; connect-src 'self'; font-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The app's shared state (set by agent_ui.app.create_app).
APP_STORE: web.AppKey[Any] = web.AppKey("store", object)             # agent_ui.store.Store
APP_PLAYBOOK: web.AppKey[Any] = web.AppKey("playbook", object)       # prompts.playbook.Playbook
APP_CONFIG: web.AppKey[Any] = web.AppKey("config", object)           # callassist.config.Config
APP_TLS: web.AppKey[bool] = web.AppKey("tls", bool)


def _request_key(name: str) -> Any:
    return web.RequestKey(name, object) if hasattr(web, "RequestKey") else name   # aiohttp < 3.12


# What session_middleware puts on each request.
REQ_USER = _request_key("user")            # Store.get_user without password_hash, or None
REQ_CSRF = _request_key("csrf")            # the session's CSRF token
REQ_SESSION = _request_key("session_token")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def wants_status_code(request: web.Request) -> bool:
    """API-like requests get 401/403 bodies; pages get redirects and HTML."""
    path = request.path
    return (path.startswith(API_PREFIXES) or "/export." in path
            or request.method not in SAFE_METHODS
            or "application/json" in request.headers.get("Accept", ""))


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def redirect(location: str, status: int = 303) -> web.Response:
    """A redirect as a plain Response (cookies can be set on it)."""
    return web.Response(status=status, headers={"Location": location})


def secure_cookies(request: web.Request) -> bool:
    return request.secure or bool(request.app[APP_TLS])


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="Strict", secure=secure_cookies(request))


# --- middlewares ------------------------------------------------------------------------

@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loads request[REQ_USER] (Store.get_user without the password hash), request[REQ_CSRF]
    and request[REQ_SESSION] from the session cookie; refuses anonymous access."""
    if request.path.startswith(PUBLIC_PREFIXES):          # static files: no lookup needed
        request[REQ_USER] = None
        return await handler(request)
    store = request.app[APP_STORE]
    token = request.cookies.get(SESSION_COOKIE, "")
    session = store.accounts.get_session(token) if token else None
    user = store.accounts.get_user(session["username"]) if session else None
    if session is not None and user is not None:
        user = {k: v for k, v in user.items() if k != "password_hash"}
        request[REQ_USER], request[REQ_CSRF], request[REQ_SESSION] = user, session["csrf"], token
    else:
        request[REQ_USER] = None
    if user is None and not is_public(request.path):
        if wants_status_code(request):
            return json_error(401, "未登录或会话已过期")
        target = request.path_qs if request.method in SAFE_METHODS else "/"
        raise web.HTTPFound(f"/login?next={quote(target, safe='')}")
    return await handler(request)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every state-changing request carries the session's CSRF token (X-CSRF-Token header
    or csrf_token form field); the login form carries its double-submit cookie's token."""
    if request.method in SAFE_METHODS:
        return await handler(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in ("application/x-www-form-urlencoded",
                                                   "multipart/form-data"):
        form_value = (await request.post()).get(CSRF_FIELD)
        given = form_value if isinstance(form_value, str) else None
    expected = request.get(REQ_CSRF) if request.get(REQ_USER) else request.cookies.get(LOGIN_CSRF_COOKIE)
    if not tokens_match(expected, given):
        log.warning("CSRF check failed: %s %s from %s", request.method, request.path, request.remote)
        if wants_status_code(request) and request.path != "/login":
            return json_error(403, "CSRF 校验失败")
        return web.Response(status=403, text="CSRF 校验失败，请刷新页面后重试。",
                            content_type="text/plain", charset="utf-8")
    return await handler(request)


def hide_server_software() -> None:
    """aiohttp's own answers to a malformed request (bad request line or header: no app
    code runs, so no on_response_prepare) carry its default Server header, which names
    the Python and aiohttp versions; that default is module state in aiohttp."""
    import aiohttp.web_response
    aiohttp.web_response.SERVER_SOFTWARE = SERVER_NAME


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, errors, static files and websockets included."""
    headers = response.headers
    headers["Server"] = SERVER_NAME
    headers.setdefault("Content-Security-Policy", CSP)
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if secure_cookies(request):
        headers["Strict-Transport-Security"] = "max-age=31536000"
    if not request.path.startswith(PUBLIC_PREFIXES):
        headers.setdefault("Cache-Control", "no-store")


# --- checks for handlers ----------------------------------------------------------------

def current_user(request: web.Request) -> dict[str, Any]:
    user = request.get(REQ_USER)
    if user is None:                      # unreachable behind session_middleware
        raise web.HTTPUnauthorized()
    return user


def forbidden(request: web.Request, message: str = "无权访问") -> web.HTTPException:
    if wants_status_code(request):
        return web.HTTPForbidden(text=json.dumps({"error": message}, ensure_ascii=False),
                                 content_type="application/json")
    from agent_ui.views.render import page          # views import this module
    body = page(request, "message.html", "无权访问", heading="无权访问",
                message=f"{message}：您的账号不能查看此页面或此通话。", back="/",
                back_label="返回首页").text
    return web.HTTPForbidden(text=body, content_type="text/html")


def require_role(request: web.Request, *roles: str) -> dict[str, Any]:
    user = current_user(request)
    if user["role"] not in roles:
        raise forbidden(request)
    return user


def require_call(request: web.Request, call_id: str) -> dict[str, Any]:
    """The call (CallArchive.get_call) if the user may see it: 404 unknown, 403 not theirs."""
    user = current_user(request)
    call = request.app[APP_STORE].calls.get_call(call_id)
    if call is None:
        raise web.HTTPNotFound(text="没有这个通话", content_type="text/plain")
    if not can_view_call(user, call):
        log.info("user %s refused call %s", user["username"], call_id)
        raise forbidden(request)
    return call


def same_origin(request: web.Request) -> bool:
    """The Origin header (sent by every browser on websockets) names this server."""
    origin = request.headers.get("Origin")
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


# Printable ASCII but space and backslash: what a checked target keeps unencoded.
_NEXT_SAFE_CHARS = "".join(chr(c) for c in range(0x21, 0x7f) if chr(c) != "\\")
_NEXT_UNQUOTE_ROUNDS = 5


def _local_path(text: str) -> bool:
    """A path on this site: one leading slash, no backslash (browsers read it as a
    slash) and no control, format or line-separator character (browsers drop tabs and
    newlines from URLs, so "/\t/evil.example" would become "//evil.example")."""
    return (text.startswith("/") and not text.startswith("//") and "\\" not in text
            and not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text))


def safe_next(target: str | None, default: str) -> str:
    """A post-login redirect target: a local path only, as given and percent-decoded
    (any number of times: %2509 is %09 is a tab), with no whitespace as given;
    otherwise `default`. Non-ASCII comes back percent-encoded (a Location header)."""
    if not target or any(ch.isspace() for ch in target) or not _local_path(target):
        return default
    decoded = target
    for _ in range(_NEXT_UNQUOTE_ROUNDS):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
        if not _local_path(decoded):
            return default
    else:
        return default                            # still encoded after that many rounds
    return quote(target, safe=_NEXT_SAFE_CHARS)


def public_user(user: Mapping[str, Any]) -> dict[str, Any]:
    return {"username": user["username"], "role": user["role"],
            "display_name": user.get("display_name") or user["username"],
            "endpoints": list(user.get("endpoints") or ())}
