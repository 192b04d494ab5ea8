"""The call-level reading on screen, in a real browser (Debian's chromium via Playwright)
against the real app: real store, real bus, calls through the real pipeline and matcher,
the app's own LiveReader publishing CallReadingUpdated. The agent sees a quiet header
(type, confidence, technique and its first line) once the customer has said three
things; the supervisor board shows type and escalation score and orders rows by risk
level, then score."""
from __future__ import annotations

import shutil

import pytest
import pytest_asyncio

from asr.fake import ScriptedUtterance
from callassist.bus import EventBus
from callassist.events import CallEnded, TranscriptUpdate
from prompts.call_reading import load_call_types
from web_fixtures import (CHROMIUM, browser_env, make_config, make_store, open_page, simulate_call,
                          until)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed "
                       "(apt-get install chromium)"),
]

VIEWPORT = {"width": 1440, "height": 900}


def script(*customer: str, agent: tuple[str, ...] = ()) -> dict[str, list[ScriptedUtterance]]:
    """Customer lines 4 s apart, agent answers in between."""
    return {"customer": [ScriptedUtterance(text, 0.5 + 4 * i, 3.0 + 4 * i) for i, text in enumerate(customer)],
            "agent": [ScriptedUtterance(text, 3.3 + 4 * i, 4.3 + 4 * i) for i, text in enumerate(agent)]}


# money demands one after another: 讹诈型, many warning cards and a lawsuit threat, no critical card
MONEY = script("我 要求 精神 赔偿 五千 块", "你们 必须 赔偿 我 的 误工费 和 间接 损失", "还要 双倍 返还",
               "你们 必须 给 我 道歉", "我 要 找 律师 起诉 你们",
               agent=("您 别 着急", "我 理解 您的 心情", "我 帮 您 核实", "非常 抱歉"))
# a media threat: critical, with a lower score than MONEY
MEDIA = script("我 这个 月 话费 多 扣 了 两百 块", "再 不 解决 我 就 找 媒体 曝光", "我 就是 想 要 个 说法",
               agent=("我 帮 您 查 一下", "理解 您的 心情"))
# one warning card: the same risk level as MONEY, a lower score
CHARGE = script("我 想 问 一下 这个 月 的 账单", "你们 没 经过 我 同意 就 给 我 开 了 业务", "我 今天 就 要 一个 结果",
                agent=("好的 我 帮 您 查", "我 帮 您 核实"))
# two customer turns only: not read yet
SHORT = script("你好 我 想 问 一下 宽带 的 事", "我 家 宽带 昨天 开始 上 不 了 网", agent=("您好 请 讲",))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("web-reading"))
    async with browser_env(config, make_store(config), EventBus(), tmp_path_factory) as e:
        yield e


async def logged_in_page(env, username):
    return await open_page(env, username, VIEWPORT, timeout_ms=20000)


def customer_lines(store, call_id: str) -> int:
    return sum(u["speaker"] == "customer" for u in (store.calls.get_call(call_id) or {}).get("utterances", []))


async def test_agent_sees_a_quiet_reading_header_after_the_third_customer_turn(env):
    page = await logged_in_page(env, "zhang.wei")
    await page.goto(f"{env.server.url}/agent")
    await page.wait_for_selector("body[data-ready='1']")
    call_id = "reading-agent-1"
    await simulate_call(env.bus, call_id, "PJSIP/1001", SHORT, seconds=9.0, end=False)
    section = f"section.call[data-call-id='{call_id}']"
    await page.wait_for_function(
        "sel => document.querySelectorAll(sel).length === 2", arg=f"{section} .line.customer:not(.partial)")
    await until(lambda: customer_lines(env.store, call_id) == 2)
    assert await page.locator(f"{section} .reading-head").count() == 0, "two turns: no reading yet"

    # the third customer turn, as the pipeline would publish it: the header appears
    env.bus.publish(TranscriptUpdate(call_id, "customer", 2, "我 要求 精神 赔偿 五千 块 不 给 钱 就 去 曝光",
                                     10.0, 13.0, final=True))
    head = page.locator(f"{section} .reading-head")
    await head.wait_for()
    technique = await head.get_attribute("data-technique")
    first_line = load_call_types().techniques[technique].script[0]
    text = await head.inner_text()
    assert "把握" in text and "建议" in text and first_line in text
    assert await head.get_attribute("data-complaint") != "ordinary"
    # quiet: not a card, not an alert, above the transcript
    assert await page.locator(f"{section} .card-list .reading-head").count() == 0
    assert await head.get_attribute("role") is None
    order = await page.evaluate("sel => [...document.querySelector(sel).children].map(n => n.className)", section)
    assert order.index("reading-head") < order.index("call-body")
    await head.locator("summary").click()
    assert "精神赔偿" in await head.locator("ol").inner_text(), "the evidence quotes the turn"
    await page.screenshot(path=str(env.screenshots / "agent-reading.png"))
    env.bus.publish(CallEnded(call_id, 14.0))
    assert page.errors == []
    await page.context.close()


async def test_board_shows_type_and_score_and_orders_by_risk_then_score(env):
    # CHARGE starts first: ordered by start alone it would stand above MONEY
    calls = [("board-charge", "PJSIP/1002", CHARGE, 11.0), ("board-money", "PJSIP/1001", MONEY, 20.0),
             ("board-media", "PJSIP/1002", MEDIA, 11.0)]
    for call_id, endpoint, lines, seconds in calls:
        await simulate_call(env.bus, call_id, endpoint, lines, seconds=seconds, end=False)
    await until(lambda: all(customer_lines(env.store, c) == len(s["customer"]) for c, _, s, _ in calls))
    risks = {c: env.store.calls.get_call(c)["risk"] for c, *_ in calls}
    assert risks == {"board-charge": "warning", "board-money": "warning", "board-media": "critical"}

    page = await logged_in_page(env, "wang.qiang")
    await page.goto(f"{env.server.url}/supervisor")
    await page.wait_for_selector("body[data-ready='1']")
    ids = [c for c, *_ in calls]
    # the readings settle (a call is read again at most every 5 s): money scores highest
    await page.wait_for_function(
        """ids => ids.every(id => document.querySelector(`#live-rows tr[data-call-id="${id}"]`)?.dataset.score)
                && Number(document.querySelector('#live-rows tr[data-call-id="board-money"]').dataset.score)
                   > Number(document.querySelector('#live-rows tr[data-call-id="board-media"]').dataset.score)""",
        arg=ids, timeout=30000)
    scores = await page.evaluate("""[...document.querySelectorAll('#live-rows tr')]
        .map(r => [r.dataset.callId, Number(r.dataset.score)])""")
    order = [call_id for call_id, _ in scores if call_id in ids]
    by_id = dict(scores)
    assert by_id["board-money"] > by_id["board-charge"] > 0
    assert order == ["board-media", "board-money", "board-charge"], \
        "critical first even with a lower score; then the higher score before the older call"
    money = page.locator('#live-rows tr[data-call-id="board-money"]')
    assert "讹诈型" in await money.locator("td.reading-type").inner_text()
    assert str(by_id["board-money"]) in await money.locator("td.escalation").inner_text()
    await page.screenshot(path=str(env.screenshots / "supervisor-reading.png"))
    for call_id, *_ in calls:
        env.bus.publish(CallEnded(call_id, 20.0))
    assert page.errors == []
    await page.context.close()
