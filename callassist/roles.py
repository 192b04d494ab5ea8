"""`callassist serve` on several machines: the roles of one node (docs/deployment.md).

With [cluster] bus_url set, a process runs the roles in [cluster] role, talking to the
others over Redis Streams (callassist.redis_bus) and sharing the store ([storage]
database_url, PostgreSQL) and the recordings directory:

    ari     ari_app.AriApp on the Asterisk in [ari]; each call's media on a worker
            (ari_app.remote_media.RemoteMediaHost), moved to another when its worker dies
    worker  RTP in, recognition, matching, recording (callassist.worker.WorkerService),
            and, for its own calls, the post-call pass and the live call reading: they
            follow the worker's calls on an in-process ForwardingBus whose events also go
            to the cluster's bus
    web     the web app; while it holds the store-writer lease, also the writer that
            records the bus into the store (callassist.store_feed.StoreFeed). Screens follow
            the store (every web node hears each commit: PostgreSQL LISTEN/NOTIFY), so any
            node serves any agent and a reconnecting screen catches up by seq.

Every role serves GET /healthz and /metrics on [web] host:port (the web role: with the app).
Without bus_url, serve runs everything in one process (callassist.serve).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from callassist.config import Config

log = logging.getLogger("callassist")
CONTROLLER_LEASE_TTL = 5.0     # s: a standby ARI controller takes over within this


def node_name(config: Config) -> str:
    """This node's name on the bus: [cluster] node_id, else host name and process id."""
    return config.cluster.node_id or f"{socket.gethostname()}-{os.getpid()}"


def _health_app(config: Config, health: Any, calls_bus: Any) -> web.Application:
    """/healthz and /metrics for a node without the web role; a worker's metrics count its
    own calls (`calls_bus`: its in-process bus)."""
    from agent_ui.security import APP_CONFIG
    from agent_ui.views import health as health_views
    app = web.Application()
    app[APP_CONFIG] = config
    health_views.setup(app, health, calls_bus, count_stored=False)
    return app


async def run_node(config: Config, stop: asyncio.Event, *, ssl_context: Any = None,
                   on_listening: Callable[[str], None] = print) -> None:
    """Run this node's roles until `stop` is set."""
    from agent_ui.limits import make_runner
    from agent_ui.store import open_store
    from callassist.health import ServiceHealth
    from callassist.redis_bus import RedisEventBus, stop_task

    roles = config.cluster.roles
    node_id = node_name(config)
    store = open_store(config)
    bus = RedisEventBus(config.cluster.bus_url, node_id)
    await bus.start()
    tasks: list[asyncio.Task] = []
    closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
    engine = None
    local_bus = None                     # a worker's own calls (callassist.bus.ForwardingBus)

    def spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_report_failure)
        tasks.append(task)

    try:
        if "worker" in roles:
            engine, local_bus = await _start_worker(config, store, bus, node_id, spawn, closers)
        health = ServiceHealth(store, engine, ari_url=config.ari.url if "ari" in roles else "")
        if "web" in roles:
            app = _start_web(config, store, bus, node_id, health, spawn)
        else:
            app = _health_app(config, health, local_bus)
        runner = make_runner(app, access_log=None)
        await runner.setup()
        closers.append(runner.cleanup)
        site = web.TCPSite(runner, config.web.host, config.web.port, ssl_context=ssl_context)
        await site.start()
        on_listening(f"callassist: node {node_id} ({', '.join(sorted(roles))}) on "
                     f"{config.web.host}:{config.web.port}, bus {_safe_url(config.cluster.bus_url)}")
        if "ari" in roles:
            spawn(Controller(config, bus, node_id, health).run(), "ari-controller")
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:               # redis-py may swallow a cancellation: see stop_task
            await stop_task(task)
        for close in reversed(closers):
            try:
                await close()
            except Exception:
                log.exception("closing %s", getattr(close, "__qualname__", close))
        await bus.close()
        if engine is not None:
            engine.close()
        store.close()


def _start_web(config: Config, store: Any, bus: Any, node_id: str, health: Any,
               spawn: Callable[[Coroutine[Any, Any, Any], str], None]) -> web.Application:
    """The web role: the app, and, each while this node holds its lease, the store feed
    (bus -> store) and the housekeeping (retention, calls no worker hosts)."""
    from agent_ui.app import create_app
    from callassist.leases import Lease
    from callassist.recovery import UnhostedCalls
    from callassist.registry import WorkerRegistry
    from callassist.serve import purge_daily
    from callassist.store_feed import StoreFeed
    from prompts.playbook import load_playbook

    unhosted = UnhostedCalls(store, WorkerRegistry(bus.redis, config.cluster.worker_timeout_s))

    async def housekeeping() -> None:
        await asyncio.gather(purge_daily(store, config), unhosted.run())
    spawn(StoreFeed(bus, store, node_id).run(), "store-feed")
    spawn(Lease(bus.redis, "housekeeping", node_id).run(housekeeping), "housekeeping")
    return create_app(config, store, None, load_playbook(), health)


async def _start_worker(config: Config, store: Any, bus: Any, node_id: str,
                        spawn: Callable[[Coroutine[Any, Any, Any], str], None],
                        closers: list[Callable[[], Coroutine[Any, Any, None]]]) -> tuple[Any, Any]:
    """The worker role; returns its live engine and the in-process bus of its calls."""
    from agent_ui.live_reading import LiveReader
    from callassist.bus import ForwardingBus
    from callassist.postcall import PostCallPass
    from callassist.serve import _live_engine, post_call_engine
    from callassist.worker import WorkerService
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    engine = _live_engine(config)
    matcher = Matcher.from_config(load_playbook(), config.matcher)
    local = ForwardingBus(bus.publish)
    factory, owns_engine = post_call_engine(config, engine)
    post_call = PostCallPass(factory, matcher, local, owns_engine=owns_engine,
                             save_stats=store.analytics.save_stats, analytics=config.analytics)
    spawn(post_call.run(), "post-call")
    spawn(LiveReader(local.publish, store).run(local), "live-reading")
    worker = WorkerService(config, local, engine, matcher, store.recordings_dir, config.cluster.bus_url, node_id)
    await worker.start()
    closers.append(worker.stop)
    return engine, local


class Controller:
    """The ARI role for one Asterisk. Controllers of the same Asterisk ([ari] url) take turns
    through the lease "ari:<url>": the holder runs the ARI application (Asterisk gives an app's
    events to one websocket), a standby takes over within the lease's ttl when the holder
    dies. Each call's media is on a worker (RemoteMediaHost); when its worker dies the call
    is moved."""

    def __init__(self, config: Config, bus: Any, node_id: str, health: Any) -> None:
        from redis.asyncio import Redis

        from ari_app.remote_media import RemoteMediaHost
        from callassist.leases import Lease
        from callassist.registry import WorkerRegistry

        self.config = config
        self.bus = bus
        self.health = health
        self._redis = Redis.from_url(config.cluster.bus_url)
        registry = WorkerRegistry(self._redis, config.cluster.worker_timeout_s)
        self.media = RemoteMediaHost(config.cluster.bus_url, node_id, registry, self._worker_lost,
                                     heartbeat_s=config.cluster.heartbeat_s)
        self.lease = Lease(bus.redis, f"ari:{config.ari.url}", node_id, ttl=CONTROLLER_LEASE_TTL)
        self.app: Any = None

    async def run(self) -> None:
        await self.media.start()
        self.health.ari_standby = True
        try:
            await self.lease.run(self._control)
        finally:
            await self.media.close()
            await self._redis.aclose()

    async def _control(self) -> None:
        """While this node holds the Asterisk's lease: the ARI application."""
        from ari_app.app import AriApp
        self.app = AriApp(self.config, self.bus, media=self.media)
        self.health.ari, self.health.ari_standby = self.app, False
        log.info("ARI application '%s': connecting to Asterisk at %s", self.config.ari.app, self.config.ari.url)
        await self.app.start()
        try:
            await asyncio.Event().wait()              # until the lease is lost or the node stops
        finally:
            await self.app.stop()
            self.health.ari, self.health.ari_standby, self.app = None, True, None

    async def _worker_lost(self, call_ids: list[str], worker: str) -> None:
        if self.app is not None:
            await asyncio.gather(*(self.app.move_call(call_id, f"识别节点 {worker} 失联") for call_id in call_ids),
                                 return_exceptions=True)


def _safe_url(url: str) -> str:
    """The bus address without a password, for the log."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…@{rest.rpartition('@')[2]}"


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())
