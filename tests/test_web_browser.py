"""The web UI in a real browser: Debian's chromium driven by Playwright, against the
real app (real store on disk, real bus, calls through the real pipeline and matcher).
Screenshots of the three screens go to docs/screenshots/."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import pytest_asyncio

from callassist.bus import EventBus
from callassist.events import CallEnded, TranscriptUpdate
from asr.fake import ScriptedUtterance
from web_fixtures import (CHROMIUM, COMPLAINT_SECONDS, browser_login, launch_browser, make_config,
                          make_store, simulate_call, start_app, until, write_wav)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed "
                       "(apt-get install chromium)"),
]

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ARCHIVED = "1700000000.101"
VIEWPORT = {"width": 1440, "height": 900}
CALM_SCRIPT = {
    "customer": [ScriptedUtterance("你好 我 想 查询 一下 我的 套餐 余量", 0.5, 3.0)],
    "agent": [ScriptedUtterance("好的 请 稍等 我 帮 您 查询", 3.5, 5.5)],
}


BILLING_SCRIPT = {
    "customer": [ScriptedUtterance("我 这个 月 话费 怎么 这么 高 扣 了 我 五百 多", 0.5, 3.5)],
    "agent": [ScriptedUtterance("您 别 着急 我 马上 帮 您 查 一下 费用 构成", 4.0, 5.8)],
}


class Env:
    pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    from playwright.async_api import async_playwright
    e = Env()
    e.config = make_config(tmp_path_factory.mktemp("web-browser"))
    e.store = make_store(e.config)
    e.bus = EventBus()
    e.server = await start_app(e.config, e.store, e.bus)
    # an archived call with a real recording, for the QA page
    wav = write_wav(e.store.recordings_dir / f"{ARCHIVED}.wav", COMPLAINT_SECONDS)
    await simulate_call(e.bus, ARCHIVED, "PJSIP/1001", recording=wav)
    await until(lambda: (e.store.get_call(ARCHIVED) or {}).get("status") == "ended")
    e.playwright = await async_playwright().start()
    e.browser = await launch_browser(e.playwright)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield e
    await e.browser.close()
    await e.playwright.stop()
    await e.server.stop()
    e.store.close()


async def logged_in_page(env, username):
    context = await env.browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    page = await context.new_page()
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await browser_login(page, env.server.url, username)
    page.errors = errors
    return page


async def test_agent_sees_card_live_acknowledges_and_catches_up_after_reconnect(env):
    page = await logged_in_page(env, "zhang.wei")
    assert page.url.endswith("/agent")
    await page.wait_for_selector("body[data-ready]")

    call = "1700000000.201"
    await simulate_call(env.bus, call, "PJSIP/1001", end=False, pace=0.05)
    card = page.locator('.card[data-category="media_exposure"]')
    await card.wait_for()
    assert await card.locator(".script li").count() == 5
    citations = await card.locator(".citations").inner_text()
    assert "民法典" in citations and "第一千零二十五条" in citations
    assert "找媒体曝光" in await card.locator(".trigger").inner_text()
    await page.wait_for_selector(".line.agent >> text=理解您的心情")
    assert await page.locator(".line.customer").count() >= 3
    assert int(await page.evaluate("document.body.dataset.beeps || 0")) >= 1, "critical card beeps"
    await page.wait_for_timeout(500)           # the arrival animation
    await page.screenshot(path=str(SCREENSHOTS / "agent.png"))

    # acknowledge + feedback are stored (POST with the CSRF token)
    await card.locator("button.ack").click()
    await page.wait_for_selector('.card.acknowledged[data-category="media_exposure"]')
    await card.locator("button.fb.yes").click()
    await page.wait_for_selector('.card[data-category="media_exposure"] .fb.yes.chosen')
    stored = env.store.get_card(await card.get_attribute("data-card-id"))
    assert stored["acknowledged_by"] == "zhang.wei" and stored["helpful"] is True
    # a reload shows the call again, acknowledgement and feedback remembered
    await page.reload()
    await page.wait_for_selector('.card.acknowledged[data-category="media_exposure"] .fb.yes.chosen')

    # drop the socket, publish while it is down: it reconnects, catches up, no duplicates
    await page.evaluate("window.callassist.socket.drop()")
    env.bus.publish(TranscriptUpdate(call, "customer", 9, "那 你们 今天 之内 给 我 答复", 16.0, 18.0, True))
    env.bus.publish(CallEnded(call, 18.0))
    await page.wait_for_selector(".line.customer >> text=那你们今天之内给我答复")
    await page.wait_for_selector(f'.call[data-call-id="{call}"] .status.ended')
    ids = await page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.cardId)")
    assert len(ids) == len(set(ids)) and len(ids) >= 2
    lines = await page.eval_on_selector_all(".line", "ls => ls.map(l => l.textContent)")
    assert len(lines) == len(set(lines))
    assert await page.evaluate("window.callassist.socket.duplicates") >= 0
    assert page.errors == []
    await page.context.close()


async def test_another_agent_is_refused_the_call(env):
    page = await logged_in_page(env, "li.na")
    base = env.server.url
    for path in (f"/qa/call/{ARCHIVED}", f"/live/{ARCHIVED}"):
        response = await page.goto(base + path)
        assert response.status == 403, path
        assert "无权访问" in await page.inner_text("main")
    for path in (f"/api/calls/{ARCHIVED}", f"/recordings/{ARCHIVED}", f"/qa/call/{ARCHIVED}/export.json"):
        status = await page.evaluate("url => fetch(url).then(r => r.status)", base + path)
        assert status == 403, path
    # and the archive does not list it
    await page.goto(base + "/qa")
    await page.wait_for_selector("body[data-ready]")
    assert await page.locator(f'tr[data-call-id="{ARCHIVED}"]').count() == 0
    await page.context.close()


async def test_supervisor_board_alerts_when_a_call_turns_critical(env):
    page = await logged_in_page(env, "wang.qiang")
    assert page.url.endswith("/supervisor")
    await page.wait_for_selector("body[data-ready]")
    calm = asyncio.create_task(simulate_call(env.bus, "1700000000.301", "PJSIP/1003", caller="13912345678",
                                             script=CALM_SCRIPT, seconds=6, end=False))
    billing = asyncio.create_task(simulate_call(env.bus, "1700000000.303", "PJSIP/1004",
                                                caller="13788889999", script=BILLING_SCRIPT,
                                                seconds=6, end=False))
    await simulate_call(env.bus, "1700000000.302", "PJSIP/1002", end=False, pace=0.05)
    await calm
    await billing
    row = page.locator('#board tr[data-call-id="1700000000.302"]')
    await page.wait_for_selector('#board tr[data-call-id="1700000000.302"][data-risk="critical"]')
    assert "李娜" in await row.inner_text()
    assert int(await page.evaluate("document.body.dataset.beeps || 0")) >= 1
    # riskiest first
    first = await page.locator("#board tbody tr").first.get_attribute("data-call-id")
    assert first == "1700000000.302"
    await row.click()
    await page.wait_for_selector('#detail .card[data-category="media_exposure"]')
    await page.wait_for_selector("#detail .line.agent")
    await page.wait_for_timeout(1200)          # let the durations tick once
    await page.screenshot(path=str(SCREENSHOTS / "supervisor.png"))
    # the same call on its own page
    await page.goto(f"{env.server.url}/live/1700000000.302")
    await page.wait_for_selector('.card[data-category="media_exposure"]')
    assert await page.locator(".card footer").count() == 0       # read-only: no agent buttons
    assert page.errors == []
    await page.context.close()


async def test_qa_search_in_chinese_plays_and_seeks(env):
    page = await logged_in_page(env, "zhao.min")
    assert page.url.split("?")[0].endswith("/qa")
    await page.fill('input[name="q"]', "工信部投诉")
    await page.click('#filters button[type="submit"]')
    await page.wait_for_selector(f'tr[data-call-id="{ARCHIVED}"]')
    assert "工信部投诉" in await page.locator("tr.snippets").first.inner_text()
    await page.fill('input[name="q"]', "没有人说过的话")
    await page.click('#filters button[type="submit"]')
    await page.wait_for_selector("text=没有符合条件的通话")

    await page.goto(f"{env.server.url}/qa/call/{ARCHIVED}")
    await page.wait_for_selector("#qa-call[data-ready]")
    await page.wait_for_function("() => document.getElementById('audio').readyState >= 1")
    assert abs(await page.evaluate("document.getElementById('audio').duration") - COMPLAINT_SECONDS) < 0.1
    start = env.store.get_call(ARCHIVED)["cards"]
    media = next(c for c in start if c["category"] == "media_exposure")
    await page.click(f'.timeline .marker[data-card-id="{media["card_id"]}"]')
    await page.wait_for_function("start => Math.abs(document.getElementById('audio').currentTime - start) < 0.5",
                                 arg=media["start"])
    await page.wait_for_function("() => !document.getElementById('audio').paused")
    await page.wait_for_function("start => document.getElementById('audio').currentTime > start + 0.2",
                                 arg=media["start"])          # it plays on from there
    # a transcript line seeks too
    await page.click(".transcript-panel .line.agent >> nth=1")
    await page.wait_for_function("() => Math.abs(document.getElementById('audio').currentTime - 9.6) < 0.5")
    assert await page.locator(".trigger-item .adh.ok").count() >= 1        # media_exposure followed
    await page.evaluate("document.getElementById('audio').pause()")
    await page.screenshot(path=str(SCREENSHOTS / "qa.png"), full_page=True)

    # the review form posts (with its CSRF field) and is stored
    await page.select_option('select[name="verdict"]', "improve")
    await page.fill('textarea[name="notes"]', "安抚到位，但未主动说明处理时限。")
    async with page.expect_navigation():
        await page.click("#review button[type=submit]")
    await page.wait_for_selector("#review-current >> text=需改进")
    review = env.store.get_call(ARCHIVED)["review"]
    assert review["verdict"] == "improve" and review["reviewer"] == "zhao.min"
    assert review["adherence_score"] is not None
    assert page.errors == []
    await page.context.close()
