"""The agent screen: the agent's live calls (transcript + prompt cards over /ws), and
the same view of any one live call (/live/{call_id}) for whoever may see that call."""
from __future__ import annotations

from aiohttp import web

from agent_ui.security import require_call, require_role
from agent_ui.views.qa import call_title
from agent_ui.views.render import page


async def agent_screen(request: web.Request) -> web.StreamResponse:
    user = require_role(request, "agent", "admin")
    return page(request, "agent.html", "坐席助手", script="agent.js",
                endpoints=" ".join(user.get("endpoints") or ()))


async def live_call(request: web.Request) -> web.StreamResponse:
    call = require_call(request, request.match_info["call_id"])
    return page(request, "live.html", call_title(call), script="agent.js",
                call_id=call["call_id"])


def setup(app: web.Application) -> None:
    app.router.add_get("/agent", agent_screen)
    app.router.add_get("/live/{call_id}", live_call)
