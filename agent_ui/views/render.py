"""HTML pages: a page body from agent_ui/templates/ inside the common layout.

Templates hold `{{name}}` placeholders, always HTML-escaped on substitution. The
pages carry no data beyond names and ids: the ES modules fetch the rest as JSON and
build the DOM with textContent (so nothing from a transcript is ever parsed as HTML).
"""
from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

from agent_ui.security import REQ_CSRF, REQ_USER

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
ROLE_NAMES = {"agent": "坐席", "supervisor": "班长", "qa": "质检", "admin": "管理员"}
NAV = (  # (path, label, roles)
    ("/agent", "坐席助手", ("agent", "admin")),
    ("/supervisor", "实时监控", ("supervisor", "admin")),
    ("/qa", "质检回放", ("agent", "supervisor", "qa", "admin")),
    ("/trends", "趋势分析", ("supervisor", "qa", "admin")),
    ("/users", "用户管理", ("admin",)),
)


@lru_cache(maxsize=None)
def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def fill(text: str, values: dict[str, Any], raw: frozenset[str] = frozenset()) -> str:
    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template value {key!r} missing")
        value = "" if values[key] is None else str(values[key])
        return value if key in raw else html.escape(value, quote=True)
    return _PLACEHOLDER.sub(substitute, text)


def _nav(user: dict[str, Any] | None, current: str) -> str:
    if not user:
        return ""
    links = []
    for path, label, roles in NAV:
        if user["role"] in roles:
            label = "我的通话" if path == "/qa" and user["role"] == "agent" else label
            active = ' aria-current="page"' if current.startswith(path) else ""
            links.append(f'<a href="{path}"{active}>{html.escape(label)}</a>')
    return "".join(links)


# The modules each page module imports: fetched alongside it, not one after another.
_LIVE = ("common.js", "cards.js", "live.js", "socket.js")
IMPORTS = {"agent.js": _LIVE, "supervisor.js": _LIVE, "qa_list.js": ("common.js",),
           "qa_call.js": ("common.js", "cards.js"), "trends.js": ("common.js",)}


def _scripts(script: str | None) -> str:
    if not script:
        return ""
    preloads = "".join(f'<link rel="modulepreload" href="/static/js/{name}">\n'
                       for name in IMPORTS.get(script, ()))
    return f'{preloads}<script type="module" src="/static/js/{script}"></script>'


def page(request: web.Request, name: str, title: str, script: str | None = None,
         status: int = 200, **values: Any) -> web.Response:
    """Render templates/<name> inside templates/layout.html."""
    user = request.get(REQ_USER)
    body = fill(template(name), values)
    layout = {
        "title": title,
        "body": body,
        "nav": _nav(user, request.path),
        "csrf": request.get(REQ_CSRF, ""),
        "user_name": (user.get("display_name") or user["username"]) if user else "",
        "role_name": ROLE_NAMES.get(user["role"], "") if user else "",
        "user_class": "" if user else "hidden",
        "script": _scripts(script),
    }
    text = fill(template("layout.html"), layout, raw=frozenset({"body", "nav", "script"}))
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
