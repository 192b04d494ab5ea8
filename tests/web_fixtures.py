"""Shared by the web tests and benchmarks/bench_ui.py: a real store with users, a real
app served on an ephemeral port, calls simulated through the real pipeline (scripted
speech engine + the real matcher), recordings written as real WAV files, and Debian's
chromium driven by Playwright."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import soundfile
from aiohttp import web

from agent_ui.app import create_app
from agent_ui.auth import hash_password
from agent_ui.store import Store, open_store
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.config import Config, load_config
from callassist.events import (AgentJoined, CallEnded, CallEvent, CallStarted, Card, CardFired,
                               TranscriptUpdate)
from callassist.pipeline import CallPipeline
from prompts.matcher import Matcher
from prompts.playbook import Playbook, load_playbook

PASSWORD = "correct-horse-battery"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RATE = 16000


@dataclass(frozen=True)
class WebUser:
    username: str
    role: str
    endpoints: tuple[str, ...] = ()
    display_name: str = ""


USERS = (
    WebUser("zhang.wei", "agent", ("PJSIP/1001",), "张伟"),
    WebUser("li.na", "agent", ("PJSIP/1002",), "李娜"),
    WebUser("wang.qiang", "supervisor", (), "王强"),
    WebUser("zhao.min", "qa", (), "赵敏"),
    WebUser("root", "admin", (), "管理员"),
)

# A complaint call: the customer threatens media exposure (critical card with script and
# citations), the agent answers with the script's key phrases, then a regulator threat.
COMPLAINT_SCRIPT = {
    "customer": [
        ScriptedUtterance("喂 你好 我 这个 月 话费 怎么 多 扣 了 两百 块", 0.5, 3.0),
        ScriptedUtterance("你们 再 不 解决 我 就 找 媒体 曝光", 6.5, 9.0),
        ScriptedUtterance("我 还要 去 工信部 投诉 你们", 13.0, 15.0),
    ],
    "agent": [
        ScriptedUtterance("您好 请问 有 什么 可以 帮 您", 3.4, 5.5),
        ScriptedUtterance("非常 抱歉 理解 您的 心情 我 马上 为您 核实", 9.6, 12.4),
    ],
}
COMPLAINT_SECONDS = 16.0


SCREENSHOTS_ENV = "CALLASSIST_SCREENSHOTS_DIR"


def screenshots_dir(tmp_path_factory: Any) -> Path:
    """Where the browser tests save screenshots: a temporary folder, or $CALLASSIST_SCREENSHOTS_DIR
    (`CALLASSIST_SCREENSHOTS_DIR=docs/screenshots` refreshes the README's pictures)."""
    chosen = os.environ.get(SCREENSHOTS_ENV, "").strip()
    path = Path(chosen).expanduser() if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_config(data_dir: Path, **web: Any) -> Config:
    env = {"CALLASSIST_STORAGE_DATA_DIR": str(data_dir)}
    env.update({f"CALLASSIST_WEB_{key.upper()}": str(value) for key, value in web.items()})
    return load_config(env=env)


def make_store(config: Config, users: Iterable[WebUser] = USERS) -> Store:
    store = open_store(config)
    password_hash = hash_password(PASSWORD)        # one hash: argon2 is slow on purpose
    for user in users:
        store.accounts.add_user(user.username, user.role, password_hash, user.display_name, user.endpoints)
    return store


class LiveServer:
    """The real app on 127.0.0.1, on an ephemeral port."""

    def __init__(self, app: web.Application, access_log: Any = None) -> None:
        self.app = app
        self.runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=access_log)
        self.url = ""

    async def start(self) -> LiveServer:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]       # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_app(config: Config, store: Store, bus: EventBus,
                    playbook: Playbook | None = None, access_log: Any = None) -> LiveServer:
    return await LiveServer(create_app(config, store, bus, playbook), access_log).start()


def write_wav(path: Path, seconds: float, rate: int = RATE, channels: int = 2,
              silent: bool = False) -> Path:
    """A real WAV file: a quiet two-tone signal (customer left, agent right), or silence."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    if silent:
        data = np.zeros((frames, channels), np.int16)
    else:
        t = np.arange(frames) / rate
        data = np.stack([(0.2 * np.sin(2 * np.pi * (300 + 100 * c) * t) * 32767).astype(np.int16)
                         for c in range(channels)], axis=1)
    soundfile.write(str(path), data, rate, subtype="PCM_16")
    return path


_matcher: Matcher | None = None


def matcher() -> Matcher:
    global _matcher
    if _matcher is None:
        _matcher = Matcher(load_playbook())
    return _matcher


async def simulate_call(bus: EventBus, call_id: str, endpoint: str,
                        script: dict[str, list[ScriptedUtterance]] | None = None,
                        seconds: float = COMPLAINT_SECONDS, caller: str = "13800138000",
                        recording: Path | None = None, end: bool = True,
                        pace: float = 0.0) -> None:
    """A call through the real pipeline: CallStarted, AgentJoined, then both legs' audio
    (20 ms frames) into CallPipeline with the scripted engine and the real matcher, whose
    transcript and card events go on the bus; then CallEnded. `pace`: seconds to sleep
    per second of audio (0: as fast as possible)."""
    bus.publish(CallStarted(call_id, caller=caller, source="demo"))
    bus.publish(AgentJoined(call_id, endpoint))
    pipeline = CallPipeline(call_id, ScriptedEngine(script or COMPLAINT_SCRIPT), matcher(),
                            bus.publish, skip_silence=False)
    frame = np.zeros(RATE // 50, np.int16).tobytes()
    for step in range(int(seconds * 50)):
        for speaker in ("customer", "agent"):
            await pipeline.feed(speaker, frame)
        if pace and step % 5 == 4:
            await asyncio.sleep(pace / 10)
        elif step % 50 == 49:
            await asyncio.sleep(0)
    await pipeline.finish()
    if end:
        bus.publish(CallEnded(call_id, seconds, str(recording) if recording else None))


@dataclass(frozen=True)
class SeedLine:
    """A final transcript line of a seeded call (seconds from the call's start)."""
    speaker: str
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class SeedCard:
    """A card on a seeded call: the playbook category's title, severity and script."""
    category: str
    start: float
    text: str
    speaker: str = "customer"


def record_call(store: Store, call_id: str, started_at: float, endpoint: str = "",
                lines: Iterable[SeedLine] = (), cards: Iterable[SeedCard] = (),
                seconds: float = 60.0, end: bool = True, recording: Path | None = None,
                caller: str = "13800138000") -> None:
    """A whole call stored at a chosen time through the real Store API (the events the
    bus would carry: CallStarted, AgentJoined, final TranscriptUpdates, CardFired,
    CallEnded), for pages that look back over days: the archive, trends."""
    playbook = load_playbook()
    events: list[CallEvent] = [CallStarted(call_id, caller=caller, source="import", at=started_at)]
    if endpoint:
        events.append(AgentJoined(call_id, endpoint, at=started_at))
    lines = sorted(lines, key=lambda line: line.start)
    for index, line in enumerate(lines):
        events.append(TranscriptUpdate(call_id, line.speaker, index, line.text, line.start, line.end, True,
                                       at=started_at + line.end))
    for index, seeded in enumerate(cards):
        category = playbook.category(seeded.category)
        utterance = next((i for i, line in enumerate(lines) if line.speaker == seeded.speaker
                          and line.start <= seeded.start <= line.end), 0)
        events.append(CardFired(call_id, Card(
            card_id=f"{call_id}-card{index}", category=category.id, title=category.title,
            severity=category.severity, speaker=seeded.speaker, text=seeded.text,
            phrase=seeded.text, score=1.0, start=seeded.start, end=seeded.start + 1.0,
            utterance=utterance, script=tuple(category.script), citations=(),
            alert_supervisor=category.severity == "critical", confirmed=True, heard=seeded.text,
            via="chars"), at=started_at + seeded.start))
    if end:
        events.append(CallEnded(call_id, seconds, str(recording) if recording else None,
                                at=started_at + seconds))
    store.events.record_many(events)


async def until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until predicate() is true (the store recorder runs in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def client_session() -> aiohttp.ClientSession:
    """A client that keeps cookies from 127.0.0.1 (aiohttp's default jar refuses IPs)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def http_login(session: aiohttp.ClientSession, base: str, username: str,
                     password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token (from a page's meta)."""
    async with session.get(f"{base}/login") as response:
        form = await response.text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    async with session.post(f"{base}/login", data={"username": username, "password": password,
                                                   "csrf_token": token},
                            allow_redirects=False) as response:
        assert response.status == 303, f"login of {username} failed: HTTP {response.status}"
    async with session.get(f"{base}/qa") as response:
        page = await response.text()
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


async def launch_browser(playwright: Any) -> Any:
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class BrowserEnv:
    """What a browser test module shares: the app on a real store, a bus, Chromium."""
    config: Config
    store: Store
    bus: EventBus
    server: Any
    browser: Any
    screenshots: Path


@contextlib.asynccontextmanager
async def browser_env(config: Config, store: Store, bus: EventBus,
                      tmp_path_factory: Any) -> AsyncIterator[BrowserEnv]:
    """Start the app on `store` (closed afterwards) and Chromium; a module fixture's body."""
    from playwright.async_api import async_playwright
    env = BrowserEnv()
    env.config, env.store, env.bus = config, store, bus
    env.server = await start_app(config, store, bus)
    playwright = await async_playwright().start()
    try:
        env.browser = await launch_browser(playwright)
        env.screenshots = screenshots_dir(tmp_path_factory)
        yield env
    finally:
        if getattr(env, "browser", None) is not None:
            await env.browser.close()
        await playwright.stop()
        await env.server.stop()
        store.close()


async def open_page(env: BrowserEnv, username: str, viewport: dict[str, int],
                    timeout_ms: int = 15000, console: bool = True) -> Any:
    """A new page logged in as `username`; `page.errors` collects the page's uncaught JS
    errors and, with `console`, what it logs as errors (refused requests among them)."""
    context = await env.browser.new_context(viewport=viewport, locale="zh-CN")
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    if console:
        page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    await browser_login(page, env.server.url, username)
    return page


async def browser_login(page: Any, base: str, username: str, password: str = PASSWORD) -> None:
    await page.goto(f"{base}/login")
    await page.fill('input[name="username"]', username)
    await page.fill('input[name="password"]', password)
    async with page.expect_navigation():
        await page.click('.login-box button[type="submit"]')
