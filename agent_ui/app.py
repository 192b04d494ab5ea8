"""The web app: agent screen, supervisor board, QA review, JSON API and /ws.

    app = create_app(config, store, bus, playbook)
    runner = agent_ui.limits.make_runner(app)     # the server's timeouts ([web] idle_timeout)

Pages (Chinese UI, plain ES modules, no build step):
  GET  /login, POST /login, POST /logout, GET / (-> the role's home page)
  GET  /agent                   agent: their live calls, prompt cards (roles agent, admin)
  GET  /live/{call_id}          the same view of one call (whoever may view the call)
  GET  /supervisor              every live call with risk and alerts (supervisor, admin)
  GET  /qa                      call archive with filters and full-text search
  GET  /qa/call/{call_id}       recording, transcript, trigger timeline, adherence, review
  POST /qa/call/{call_id}/review
  GET  /qa/call/{call_id}/export.{json,vtt,csv}
  GET  /recordings/{call_id}    the call's recording (Range requests), from the DB path only
  GET  /trends                  calls, risk, adherence per agent or category over days/weeks
                                (supervisor, qa, admin; agent_ui.views.trends, /api/trends)
  GET  /users                   user management and the audit log (admin; agent_ui.views.users)
  GET  /healthz, /metrics       monitoring, no login (agent_ui.views.health; /metrics from loopback)
JSON: GET /api/me, /api/meta, /api/calls, /api/calls/{call_id}, /api/live;
      POST /api/cards/{card_id}/ack, /api/cards/{card_id}/feedback
Websocket: GET /ws[?call=ID] (agent_ui.views.ws): stored events pushed as committed,
routed by agent_ui.views.hub.LiveHub (one store listener for all sockets).

With `bus`, the app records the bus into the store for its lifetime (store.events.run), so
the screens see exactly what is stored, and reads each live call as a whole
(agent_ui.live_reading: CallReadingUpdated on the bus); pass bus=None when something else
runs the store's recorder.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from agent_ui.auth import LoginRateLimiter
from agent_ui.limits import body_deadline_middleware
from agent_ui.security import (APP_CONFIG, APP_PLAYBOOK, APP_STORE, APP_TLS, add_security_headers,
                               csrf_middleware, session_middleware)
from agent_ui.views import agent, api, health, login, qa, supervisor, trends, users, ws

STATIC_DIR = Path(__file__).resolve().parent / "static"
APP_LIVE_READER: web.AppKey[Any] = web.AppKey("live_reader", object)
MAX_REQUEST_BYTES = 1024 * 1024


def create_app(config: Any, store: Any, bus: Any = None, playbook: Any = None,
               service_health: Any = None) -> web.Application:
    """`config`: callassist.config.Config; `store`: agent_ui.store.Store; `bus`:
    callassist.bus.EventBus or None; `playbook`: prompts.playbook.Playbook (default: the
    shipped playbook), for category names and script adherence; `service_health`:
    callassist.health.ServiceHealth (serve passes its engine and ARI app; default: the
    store only)."""
    if playbook is None:
        from prompts.playbook import load_playbook
        playbook = load_playbook()
    # the body is read (within [web] request_timeout) before a session or CSRF check
    app = web.Application(middlewares=[body_deadline_middleware, session_middleware, csrf_middleware],
                          client_max_size=MAX_REQUEST_BYTES)
    app[APP_STORE] = store
    app[APP_CONFIG] = config
    app[APP_PLAYBOOK] = playbook
    app[APP_TLS] = bool(config.web.tls_cert)
    app[login.APP_LIMITER] = LoginRateLimiter(config.web.login_attempts_per_minute, store)
    app.on_response_prepare.append(add_security_headers)
    for module in (login, agent, supervisor, qa, trends, api, users, ws):
        module.setup(app)
    if service_health is None:
        from callassist.health import ServiceHealth
        service_health = ServiceHealth(store)
    health.setup(app, service_health, bus)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False, append_version=False)
    if bus is not None:
        app.cleanup_ctx.append(_recorder(store, bus))
        app.cleanup_ctx.append(_live_reading(store, bus))
    return app


def _live_reading(store: Any, bus: Any):
    def reader(app: web.Application) -> Coroutine[Any, Any, None]:
        from agent_ui.live_reading import LiveReader
        live = app[APP_LIVE_READER] = LiveReader(bus.publish, store)
        return live.run(bus)
    return _for_lifetime("live-reading", reader)


def _recorder(store: Any, bus: Any):
    return _for_lifetime("store-recorder", lambda app: store.events.run(bus))


def _for_lifetime(name: str, start: Callable[[web.Application], Coroutine[Any, Any, None]]):
    """An aiohttp cleanup_ctx running `start(app)`'s coroutine as a task while the app runs."""
    async def run(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(start(app), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return run
