"""`callassist serve` and `callassist demo`: the web app plus a source of calls.

serve: calls come from Asterisk (ARI) when [ari] url is set.
demo:  a simulated complaint call is replayed through the real pipeline, into a
       separate data directory (data_dir/demo) with demo logins, so a new user sees
       the product work without a PBX and without touching real data.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import secrets
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from callassist.bus import EventBus
from callassist.config import DATA_DIR_SETTING, Config, ConfigError, load_config

log = logging.getLogger("callassist")

DEMO_USERS = (("agent1", "agent", "坐席 1001", ("PJSIP/1001",)),
              ("supervisor", "supervisor", "值班主管", ()),
              ("qa", "qa", "质检员", ()),
              ("admin", "admin", "管理员", ()))


class WebPortError(RuntimeError):
    """The web app cannot listen on its port; the message says how to choose another."""


def _port_problem(config: Config, exc: OSError) -> str:
    where = f"{config.web.host}:{config.web.port}"
    why = ("is already in use" if exc.errno == errno.EADDRINUSE
           else f"cannot be opened ({exc.strerror or exc})")
    return (f"the web app's address {where} {why}; choose another port with --port N, "
            f"$CALLASSIST_WEB_PORT or [web] port in the configuration file")


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.web.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.web.tls_cert, config.web.tls_key)
    return context


def _live_engine(config: Config):
    """The configured live engine, for serve and demo alike: [asr] engine = "auto" falls
    back to Whisper when no Vosk Chinese model is installed (asr.choose_engine decides)."""
    from asr import create_engine
    from asr.engine import ModelNotFoundError
    try:
        return create_engine(config)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"[asr] engine = {config.asr.engine!r}: {exc}") from None


def _demo_logins(store, data_dir: Path) -> list[tuple[str, str, str]]:
    """Demo users, created once with random passwords kept in data_dir/demo-logins.txt."""
    from agent_ui.auth import hash_password
    logins_file = data_dir / "demo-logins.txt"
    if logins_file.exists():
        rows = [line.split("\t") for line in logins_file.read_text().splitlines() if line]
        return [(username, role, password) for username, role, password in rows]
    logins = []
    for username, role, name, endpoints in DEMO_USERS:
        password = secrets.token_urlsafe(9)
        if store.accounts.get_user(username) is None:
            store.accounts.add_user(username, role, hash_password(password), name, endpoints)
            logins.append((username, role, password))
    logins_file.write_text("".join("\t".join(row) + "\n" for row in logins))
    logins_file.chmod(0o600)
    return logins


def post_call_engine(config: Config, engine: Any) -> tuple[Callable[[], Any] | None, bool]:
    """The post-call pass's engine factory (None: no re-transcription) and whether the pass
    owns (closes) what it makes. The live engine's own exact pass is worth running when its
    live decodes are cut for speed (Whisper); sharing it, the post-call work waits for the
    live calls (asr.scheduler BATCH)."""
    from asr import create_engine
    post_engine = config.asr.post_call_engine
    shared = post_engine == engine.name
    if not post_engine or (shared and engine.live_is_exact):
        return None, not shared
    if shared:
        return (lambda: engine), False
    return (lambda: create_engine(config, name=post_engine)), True


async def run_services(config: Config, *, demo: bool, once: bool = False) -> None:
    from agent_ui.app import create_app
    from agent_ui.limits import make_runner
    from agent_ui.store import open_store
    from callassist.recovery import StartupRecovery
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    # First: a stop asked for during the seconds of start-up (model loading) is then a clean
    # one once start-up is done, not the default death by signal.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # Absolute, so recording paths stored in the archive stay valid from any directory.
    data_dir = config.data_dir.resolve() / ("demo" if demo else "")
    config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, data_dir=str(data_dir)))
    if config.cluster.distributed and not demo:       # one node of several (callassist.roles)
        from callassist.roles import run_node
        print(f"callassist: data directory {data_dir} (recordings; {DATA_DIR_SETTING})", flush=True)
        try:
            await run_node(config, stop, ssl_context=_ssl_context(config),
                           on_listening=lambda line: print(line, flush=True))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise WebPortError(_port_problem(config, exc)) from None
            raise
        return
    store = open_store(config)
    where = f"the demo's own, inside {DATA_DIR_SETTING}" if demo else DATA_DIR_SETTING
    print(f"callassist: data directory {data_dir} ({where})", flush=True)
    # what the last run left: with Asterisk, its calls still up are tapped again
    recovery = StartupRecovery(store)
    resumable = recovery.resumable() if config.ari.url and not demo else []
    if not resumable:
        await asyncio.to_thread(recovery.close_out)
    bus = EventBus()
    playbook = load_playbook()
    matcher = Matcher.from_config(playbook, config.matcher)
    engine = _live_engine(config)
    recordings_dir = store.recordings_dir

    from callassist.health import ServiceHealth
    health = ServiceHealth(store, engine, ari_url="" if demo else config.ari.url)
    runner = make_runner(create_app(config, store, bus, playbook, health), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.web.host, config.web.port, ssl_context=_ssl_context(config))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        engine.close()
        store.close()
        raise WebPortError(_port_problem(config, exc)) from None
    scheme = "https" if config.web.tls_cert else "http"
    print(f"callassist: web app on {scheme}://{config.web.host}:{config.web.port}/", flush=True)

    tasks: list[asyncio.Task] = [asyncio.create_task(purge_daily(store, config), name="retention")]
    from callassist.postcall import PostCallPass
    factory, owns_engine = post_call_engine(config, engine)
    post_call = PostCallPass(factory, matcher, bus, owns_engine=owns_engine,
                             save_stats=store.analytics.save_stats, analytics=config.analytics)
    tasks.append(asyncio.create_task(post_call.run(), name="post-call"))
    ari = None
    if demo:
        from callassist.demo import run_demo_calls
        print(f"callassist: the demo logins below are demo users in the demo's own database "
              f"({data_dir}); real users are added with `callassist user add` and log in to "
              f"`callassist serve` (data in {data_dir.parent})", flush=True)
        for username, role, password in _demo_logins(store, config.data_dir):
            print(f"  demo login ({role}): {username} / {password}", flush=True)
        tasks.append(asyncio.create_task(run_demo_calls(
            engine, matcher, bus.publish, recordings_dir, once=once,
            recording_format=config.recording.format, analytics=config.analytics), name="demo"))
    elif config.ari.url:
        from ari_app.app import AriApp
        ari = AriApp.from_config(config, bus, engine, matcher, recordings_dir, resumable=resumable)
        health.ari = ari
        # Not "on Asterisk" yet: the supervisor logs "ARI events: connected" or why it cannot
        # (401 wrong username/password, connection refused), and /healthz says the same.
        print(f"callassist: ARI application '{config.ari.app}': connecting to Asterisk at "
              f"{config.ari.url} (the log says when it is connected, or why not; "
              f"GET /healthz tells monitoring)", flush=True)
        await ari.start()
        if resumable:
            tasks.append(asyncio.create_task(recovery.close_out_after_resume(ari), name="crash-recovery"))
    else:
        print("callassist: no Asterisk configured ([ari] url); run `callassist demo` for a demo call",
              flush=True)

    for task in tasks:
        task.add_done_callback(_report_failure)
    try:
        await stop.wait()
    finally:
        if ari is not None:
            await ari.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        engine.close()
        store.close()


def _report_failure(task: asyncio.Task) -> None:
    """A background job that dies must say so at once, not when it is garbage-collected."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())


async def purge_daily(store, config: Config) -> None:
    if not config.storage.retention_days:
        return
    while True:
        removed = await asyncio.to_thread(store.retention.purge, config.storage.retention_days)
        if removed:
            log.info("retention: removed %d call(s) older than %d days", removed, config.storage.retention_days)
        await asyncio.sleep(24 * 3600)


def with_role(config: Config, role: str) -> Config:
    """`serve --role`: the configuration with [cluster] role replaced, checked as the file's is."""
    from callassist.config import ROLES, _roles
    if problem := _roles(role):
        raise ConfigError([f"--role: {problem}, got {role!r}"])
    cluster = dataclasses.replace(config.cluster, role=role)
    if cluster.roles != frozenset(ROLES[1:]) and not cluster.bus_url:
        raise ConfigError([f"--role {role}: needs [cluster] bus_url (redis://host:6379/0): "
                           f"the roles talk over the bus"])
    return dataclasses.replace(config, cluster=cluster)


def _main(args, *, demo: bool) -> int:
    from asr.engine import ModelNotFoundError
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)   # one line per segment otherwise
    try:
        config = load_config(args.config)
        if getattr(args, "port", None) is not None:
            config = dataclasses.replace(config, web=dataclasses.replace(config.web, port=args.port))
        if getattr(args, "role", None):
            config = with_role(config, args.role)
        for warning in config.warnings:
            log.warning("%s", warning)
        asyncio.run(run_services(config, demo=demo, once=getattr(args, "once", False)))
    except (ConfigError, ModelNotFoundError, OSError, WebPortError) as exc:
        print(f"callassist: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args) -> int:
    return _main(args, demo=False)


def run_demo(args) -> int:
    return _main(args, demo=True)
