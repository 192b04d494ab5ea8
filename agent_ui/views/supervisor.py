"""The supervisor board: every live call, its risk, and any call's live view."""
from __future__ import annotations

from aiohttp import web

from agent_ui.security import require_role
from agent_ui.views.render import page


async def board(request: web.Request) -> web.StreamResponse:
    require_role(request, "supervisor", "admin")
    return page(request, "supervisor.html", "实时监控", script="supervisor.js")


def setup(app: web.Application) -> None:
    app.router.add_get("/supervisor", board)
