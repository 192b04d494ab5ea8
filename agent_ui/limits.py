"""What one slow or idle client may hold of the web server ([web] in the configuration).

- idle_timeout: aiohttp's keep-alive timer. It starts when a connection opens and again
  when a response ends, and is not pushed back by incoming bytes, so it closes both a
  connection idle between requests and one still trickling a request's headers
  ("slowloris"). aiohttp's own default is an hour.
- request_timeout: a request's body must arrive in full within it (408 after), read
  here before any handler runs (handlers then get it from aiohttp's cache). After a
  408 (or 413) aiohttp reads and drops the rest of the body for LINGERING_TIME, so the
  client sees the answer, then closes (its default, 10 s, would hold a slow client).
- Websockets are limited in agent_ui.views.ws (heartbeat, sockets per user).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from agent_ui.security import APP_CONFIG, Handler, hide_server_software

log = logging.getLogger(__name__)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
LINGERING_TIME = 2.0


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner for an app from agent_ui.app.create_app, with the server's limits."""
    hide_server_software()
    return web.AppRunner(app, keepalive_timeout=app[APP_CONFIG].web.idle_timeout,
                         lingering_time=LINGERING_TIME, **kwargs)


@web.middleware
async def body_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reads a request's body within [web] request_timeout, or answers 408 and closes."""
    if request.body_exists:
        timeout = request.app[APP_CONFIG].web.request_timeout
        try:
            async with asyncio.timeout(timeout):
                if request.content_type in FORM_TYPES:
                    await request.post()       # multipart is parsed from the stream, not read()
                else:
                    await request.read()
        except TimeoutError:
            log.warning("request body from %s not received within %s s: %s %s", request.remote,
                        timeout, request.method, request.path)
            response = web.Response(status=408, text=f"请求超时：请求内容未在 {timeout:g} 秒内传完。",
                                    content_type="text/plain", charset="utf-8")
            response.force_close()
            return response
    return await handler(request)
