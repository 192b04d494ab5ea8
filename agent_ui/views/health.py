"""Monitoring endpoints, no login needed:

  GET /healthz   JSON verdict (callassist.health): 200 when ok or degraded, 503 when down
  GET /metrics   Prometheus text format (callassist.metrics); from loopback only unless
                 [web] metrics_remote = true (behind a reverse proxy on the same host every
                 request looks local: block /metrics in the proxy)
"""
from __future__ import annotations

import ipaddress
import json

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from agent_ui.security import APP_CONFIG
from callassist.health import ServiceHealth
from callassist.metrics import ServiceMetrics

APP_HEALTH: web.AppKey[ServiceHealth] = web.AppKey("health", ServiceHealth)
APP_METRICS: web.AppKey[ServiceMetrics] = web.AppKey("metrics", ServiceMetrics)


async def healthz(request: web.Request) -> web.Response:
    report = await request.app[APP_HEALTH].assess()
    return web.Response(status=report.http_status, content_type="application/json",
                        text=json.dumps(report.as_dict(), ensure_ascii=False))


async def metrics(request: web.Request) -> web.Response:
    if not (request.app[APP_CONFIG].web.metrics_remote or _loopback(request.remote)):
        raise web.HTTPForbidden(text="/metrics is served to loopback only ([web] metrics_remote)\n")
    body = generate_latest(request.app[APP_METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
    return response


def _loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False            # a Unix socket or no address: not known to be local
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def setup(app: web.Application, health: ServiceHealth, bus: object = None, *, count_stored: bool = True) -> None:
    """`bus`: the calls' events to count (active calls, card latency); `count_stored`: also
    count the store's commits (not on a node that does not serve screens)."""
    app[APP_HEALTH] = health
    app[APP_METRICS] = service_metrics = ServiceMetrics(health)
    app.cleanup_ctx.append(service_metrics.follow_context(bus, health.store if count_stored else None))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
