"""Web UI latency and load time, in a real browser against the real app.

    python benchmarks/bench_ui.py [--agents 50] [--rounds 40] [--interval 0.25] [--loads 5]
                                  [--pattern burst|spread|both]

1. Card latency: `--agents` agents connected at once (one Chromium page on /agent plus
   agents-1 aiohttp websocket clients, each logged in as its own agent with its own
   live call). Each round publishes one CardFired per call on the bus (plus a partial
   transcript per call, as a live matcher would produce), all at once ("burst": the
   worst case, every agent's card in the same instant) or spread evenly over the
   round ("spread": agents talking independently), and measures, for the
   browser's card, publish (time.time() before bus.publish) to the card element being
   added to the DOM (a MutationObserver stamping performance.timeOrigin + now()); and
   for the websocket clients, publish to message received. Prints p50/p95/max.
2. QA page load: a synthetic 30-minute call (an utterance every 3 s, a card every
   30 s, a silent 30-minute WAV recording) opened on /qa/call/{id} `--loads` times;
   prints the time until the page is rendered (#qa-call[data-ready]) and the
   /api/calls/{id} response time.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from agent_ui.auth import hash_password  # noqa: E402
from callassist.bus import EventBus  # noqa: E402
from callassist.events import (AgentJoined, CallEnded, CallStarted, Card, CardFired,  # noqa: E402
                               TranscriptUpdate)
from prompts.playbook import load_playbook  # noqa: E402
from web_fixtures import (PASSWORD, browser_login, client_session, http_login,  # noqa: E402
                          launch_browser, make_config, start_app, write_wav)
from agent_ui.store import open_store  # noqa: E402

PLAYBOOK = load_playbook()
OBSERVER = """() => {
  window.__seen = {};
  new MutationObserver((mutations) => {
    const at = performance.timeOrigin + performance.now();
    for (const m of mutations) for (const node of m.addedNodes) {
      if (node.dataset && node.dataset.cardId && !(node.dataset.cardId in window.__seen)) {
        window.__seen[node.dataset.cardId] = at;
      }
    }
  }).observe(document.getElementById('calls'), { childList: true, subtree: true });
}"""


def make_card(card_id: str, index: int, start: float) -> Card:
    category = PLAYBOOK.categories[index % len(PLAYBOOK.categories)]
    return Card(card_id=card_id, category=category.id, title=category.title,
                severity=category.severity, speaker=category.speaker,
                text=category.examples[0] if category.examples else category.phrases[0],
                phrase=category.phrases[0], score=95.0, start=start, end=start + 2.0,
                utterance=index, script=category.script,
                citations=PLAYBOOK.citation_views(category),
                alert_supervisor=category.alert_supervisor, confirmed=True)


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return "no samples"
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms  max {ms[-1]:6.1f} ms  (n={len(ms)})"


async def ws_client(url: str, username: str, received: dict[str, float], ready: asyncio.Event,
                    stop: asyncio.Event) -> None:
    async with client_session() as http:
        await http_login(http, url, username)
        ws = await http.ws_connect(f"{url}/ws", origin=url)
        await ws.send_json({"last_seq": 0})
        while not stop.is_set():
            try:
                message = await ws.receive_json(timeout=0.5)
            except asyncio.TimeoutError:
                continue
            if message.get("type") == "ready":
                ready.set()
            elif message.get("event", {}).get("type") == "CardFired":
                received.setdefault(message["event"]["card"]["card_id"], time.time())
        await ws.close()


async def measure_round_trips(bus: EventBus, page, calls: list[str], received: dict[str, float],
                              rounds: int, interval: float, pattern: str) -> None:
    """`rounds` rounds, `interval` s apart; each round one partial transcript and one card
    per call, all at once ("burst") or evenly spread over the interval ("spread")."""
    published: dict[str, float] = {}
    gap = interval / len(calls) if pattern == "spread" else 0.0
    for r in range(rounds):
        for i, call in enumerate(calls):
            bus.publish(TranscriptUpdate(call, "customer", 1000 + r, "我 要 投诉 你们", r * 3.0,
                                         r * 3.0 + 1, False))
            if gap:
                await asyncio.sleep(gap / 2)
        for i, call in enumerate(calls):
            card_id = f"{call}-{pattern}-{r}"
            published[card_id] = time.time()
            bus.publish(CardFired(call, make_card(card_id, r, r * 3.0)))
            if gap:
                await asyncio.sleep(gap / 2)
        if not gap:
            await asyncio.sleep(interval)
    await asyncio.sleep(2.0)
    seen = await page.evaluate("() => window.__seen")
    browser_latency = [seen[c] / 1000 - published[c] for c in published if c in seen and c.startswith(calls[0] + "-")]
    ws_latency = [received[c] - published[c] for c in published if c in received]
    others = len(calls) - 1
    print(f"[{pattern}] publish -> card in the DOM (browser, {rounds} cards): {percentiles(browser_latency)}")
    print(f"[{pattern}] publish -> card on the socket ({others} clients): {percentiles(ws_latency)}")
    print(f"[{pattern}] cards not delivered: {rounds + others * rounds - len(browser_latency) - len(ws_latency)}")


async def card_latency(playwright, base_dir: Path, agents: int, rounds: int, interval: float,
                       patterns: list[str]) -> None:
    config = make_config(base_dir / "latency")
    store = open_store(config)
    password_hash = hash_password(PASSWORD)
    names = [f"agent{i:02d}" for i in range(agents)]
    for i, name in enumerate(names):
        store.accounts.add_user(name, "agent", password_hash, f"坐席{i:02d}", [f"PJSIP/{2000 + i}"])
    bus = EventBus()
    server = await start_app(config, store, bus, PLAYBOOK)
    calls = [f"bench.{i}" for i in range(agents)]
    for i, call in enumerate(calls):
        bus.publish(CallStarted(call, caller=f"1380000{i:04d}", source="demo"))
        bus.publish(AgentJoined(call, f"PJSIP/{2000 + i}"))

    browser = await launch_browser(playwright)
    page = await (await browser.new_context(viewport={"width": 1440, "height": 900})).new_page()
    await browser_login(page, server.url, names[0])
    await page.wait_for_selector("body[data-ready]")
    await page.evaluate(OBSERVER)

    stop = asyncio.Event()
    received: dict[str, float] = {}
    readies = [asyncio.Event() for _ in names[1:]]
    clients = [asyncio.create_task(ws_client(server.url, name, received, ready, stop))
               for name, ready in zip(names[1:], readies)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), timeout=300)
    print(f"{agents} agents connected (1 browser page + {agents - 1} websocket clients)")

    for pattern in patterns:
        await measure_round_trips(bus, page, calls, received, rounds, interval, pattern)
    stop.set()
    await asyncio.gather(*clients)
    await browser.close()
    await server.stop()
    store.close()


async def qa_page_load(playwright, base_dir: Path, loads: int) -> None:
    config = make_config(base_dir / "qa")
    store = open_store(config)
    store.accounts.add_user("qa", "qa", hash_password(PASSWORD), "质检")
    call, minutes = "bench.qa", 30
    seconds = minutes * 60.0
    recording = write_wav(store.recordings_dir / f"{call}.wav", seconds, rate=8000, channels=2, silent=True)
    events: list = [CallStarted(call, caller="13800000000", source="demo"), AgentJoined(call, "PJSIP/1001")]
    t, n = 0.0, 0
    while t < seconds - 3:
        speaker = "customer" if n % 2 == 0 else "agent"
        text = "我 这个 月 话费 怎么 多 扣 了 两百 块 你们 给 我 查 一下" if speaker == "customer" \
            else "非常 抱歉 理解 您的 心情 我 马上 为您 核实 稍后 给您 答复"
        events.append(TranscriptUpdate(call, speaker, n, text, t, t + 2.5, True))
        if n % 10 == 0:
            events.append(CardFired(call, make_card(f"qa-{n}", n // 10, t)))
        t, n = t + 3.0, n + 1
    events.append(CallEnded(call, seconds, str(recording)))
    store.events.record_many(events)
    stored = store.calls.get_call(call)
    print(f"30-minute call: {len(stored['utterances'])} utterances, {len(stored['cards'])} cards, "
          f"recording {recording.stat().st_size / 1e6:.1f} MB")
    server = await start_app(config, store, EventBus(), PLAYBOOK)
    async with client_session() as http:
        await http_login(http, server.url, "qa")
        api = []
        for _ in range(loads):
            start = time.perf_counter()
            async with http.get(f"{server.url}/api/calls/{call}") as response:
                size = len(await response.read())
            api.append(time.perf_counter() - start)
    print(f"/api/calls/{{id}} ({size / 1024:.0f} KiB): {percentiles(api)}")

    browser = await launch_browser(playwright)
    page = await (await browser.new_context(viewport={"width": 1440, "height": 900})).new_page()
    await browser_login(page, server.url, "qa")
    rendered, loaded = [], []
    for _ in range(loads):
        await page.goto(f"{server.url}/qa/call/{call}")
        await page.wait_for_selector("#qa-call[data-ready]")
        rendered.append(int(await page.get_attribute("#qa-call", "data-ready")) / 1000)
        loaded.append(await page.evaluate(
            "() => performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
    print(f"QA page, 30-minute call, navigation -> rendered: {percentiles(rendered)}")
    print(f"QA page, 30-minute call, navigation -> load event: {percentiles(loaded)}")
    await browser.close()
    await server.stop()
    store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--pattern", choices=("burst", "spread", "both"), default="both")
    args = parser.parse_args()
    from playwright.async_api import async_playwright
    with tempfile.TemporaryDirectory() as tmp:
        async with async_playwright() as playwright:
            patterns = ["burst", "spread"] if args.pattern == "both" else [args.pattern]
            await card_latency(playwright, Path(tmp), args.agents, args.rounds, args.interval, patterns)
            if args.loads:
                await qa_page_load(playwright, Path(tmp), args.loads)


if __name__ == "__main__":
    asyncio.run(main())
