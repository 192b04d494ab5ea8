"""The QA conversation timeline and the trends page in a real browser: Debian's chromium
driven by Playwright against the real app, with a real store on disk whose calls were
recorded on several days through the Store API and a real WAV recording to seek in.

Screenshots go to a temporary folder, or to $CALLASSIST_SCREENSHOTS_DIR (web_fixtures.screenshots_dir)."""
from __future__ import annotations

import datetime as dt
import shutil

import pytest
import pytest_asyncio

from callassist.bus import EventBus
from web_fixtures import (CHROMIUM, SeedCard, SeedLine, browser_env, make_config, make_store, open_page,
                          record_call, write_wav)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed "
                       "(apt-get install chromium)"),
]

VIEWPORT = {"width": 1280, "height": 900}

QA_CALL = "qa-0305"                     # the reviewed call: 40 s, recorded
PLAIN_CALL = "qa-0306"                  # a call without analytics
SECONDS = 40.0
QA_LINES = [
    SeedLine("customer", 0.5, 5.0, "喂 你好 我 这个 月 话费 怎么 多 扣 了 两百 块"),
    SeedLine("agent", 5.5, 8.0, "您好 请问 您的 号码 是 多少"),
    SeedLine("customer", 7.4, 12.0, "你们 再 不 解决 我 就 找 媒体 曝光"),
    SeedLine("agent", 12.5, 16.0, "非常 抱歉 理解 您的 心情 我 马上 为您 核实"),
    SeedLine("customer", 22.0, 26.0, "我 还要 去 工信部 投诉 你们"),
    SeedLine("agent", 25.2, 30.0, "您 先 别 着急 我 给 您 一个 答复 时间"),
    SeedLine("customer", 31.0, 34.0, "那 好 吧 今天 之内 给 我 答复"),
]
QA_CARDS = [SeedCard("media_exposure", 9.0, "找媒体曝光"), SeedCard("regulator_complaint", 23.0, "工信部投诉")]
# The analytics step's ConversationStats for QA_CALL (agent_ui.analytics_store, as
# callassist.conversation.ConversationStats.to_dict() gives it)
QA_STATS = {
    "duration": SECONDS,
    "legs": {
        "customer": {"talk_seconds": 16.1, "talk_share": 0.56, "speaking_rate": 212.0, "loudness_db": -21.5,
                     "pitch_hz": 231.0, "agitation": [{"t": 2.0, "value": 0.3}, {"t": 9.0, "value": 0.8},
                                                      {"t": 24.0, "value": 0.9}, {"t": 32.0, "value": 0.4}]},
        "agent": {"talk_seconds": 12.3, "talk_share": 0.44, "speaking_rate": 188.0, "loudness_db": -24.0,
                  "pitch_hz": 142.0, "agitation": [{"t": 6.0, "value": 0.2}, {"t": 14.0, "value": 0.25},
                                                   {"t": 27.0, "value": 0.3}]},
    },
    "silences": [{"start": 16.0, "end": 22.0}],
    "talk_over": [{"start": 7.4, "end": 8.0, "by": "customer"}, {"start": 25.2, "end": 26.0, "by": "agent"}],
    "sentiment": [{"t": 2.0, "value": -0.3}, {"t": 9.0, "value": -0.8}, {"t": 24.0, "value": -0.6},
                  {"t": 32.0, "value": 0.2}],
}

CALM = [SeedLine("customer", 0.5, 2.5, "我 想 查 一下 套餐 余量"), SeedLine("agent", 3.0, 5.0, "好的 请 稍等")]
THREAT = [SeedLine("customer", 0.5, 3.0, "你们 再 不 解决 我 就 找 媒体 曝光"),
          SeedLine("agent", 3.5, 7.0, "非常 抱歉 理解 您的 心情 我 马上 为您 核实")]
BILL = [SeedLine("customer", 0.5, 3.0, "我 这个 月 话费 怎么 扣 了 五百 多"),
        SeedLine("agent", 3.5, 6.0, "我 马上 帮 您 查 一下 费用 构成")]
# the trends' calls, 3-12 March 2025: (call id, day, hour, endpoint, lines, cards)
TREND_CALLS = [
    ("t-03a", 3, 9, "PJSIP/1001", THREAT, [SeedCard("media_exposure", 1.0, "找媒体曝光")]),
    ("t-03b", 3, 14, "PJSIP/1001", BILL, [SeedCard("bill_shock", 1.0, "话费怎么扣了五百多")]),
    ("t-03c", 3, 16, "PJSIP/1002", CALM, []),
    ("t-04a", 4, 10, "PJSIP/1002", THREAT, [SeedCard("media_exposure", 1.0, "找媒体曝光")]),
    ("t-07a", 7, 11, "PJSIP/1001", CALM, []),
    ("t-10a", 10, 9, "PJSIP/1002", BILL, [SeedCard("bill_shock", 1.0, "话费怎么扣了五百多")]),
    ("t-10b", 10, 10, "PJSIP/1002", CALM, []),
    ("t-12a", 12, 15, "PJSIP/1001", THREAT, [SeedCard("media_exposure", 1.0, "找媒体曝光")]),
]
TREND_RANGE = "from=2025-03-03&to=2025-03-12"


def at(day: int, hour: int) -> float:
    return dt.datetime(2025, 3, day, hour).timestamp()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("qa-timeline"))
    store = make_store(config)
    wav = write_wav(store.recordings_dir / f"{QA_CALL}.wav", SECONDS)
    record_call(store, QA_CALL, at(5, 10), "PJSIP/1001", QA_LINES, QA_CARDS, seconds=SECONDS, recording=wav)
    record_call(store, PLAIN_CALL, at(6, 10), "PJSIP/1001", CALM, [], seconds=6.0)
    for call_id, day, hour, endpoint, lines, cards in TREND_CALLS:
        record_call(store, call_id, at(day, hour), endpoint, lines, cards, seconds=30.0)
    store.analytics.save_stats(QA_CALL, QA_STATS)
    async with browser_env(config, store, EventBus(), tmp_path_factory) as e:
        yield e


async def logged_in_page(env, username):
    return await open_page(env, username, VIEWPORT)


async def open_call(page, env, call_id):
    await page.goto(f"{env.server.url}/qa/call/{call_id}")
    await page.wait_for_selector("#qa-call[data-ready]")


async def svg_x(page, seconds, length=SECONDS) -> float:
    """Where the timeline draws `seconds`, in page coordinates."""
    box = await page.locator("#timeline svg").bounding_box()
    gutter = await page.evaluate("parseFloat(getComputedStyle(document.querySelector('.conversation'))"
                                 ".getPropertyValue('--gutter'))")
    assert gutter > 0                      # the lane names' column, left of the plot
    return box["x"] + gutter + (box["width"] - gutter) * seconds / length


async def current_time_near(page, seconds, within=0.3):
    await page.wait_for_function(
        "([t, d]) => Math.abs(document.getElementById('audio').currentTime - t) < d", arg=[seconds, within])


async def test_timeline_draws_both_speakers_and_the_triggers_and_seeks(env):
    page = await logged_in_page(env, "zhao.min")
    await open_call(page, env, QA_CALL)
    await page.wait_for_function("() => document.getElementById('audio').readyState >= 1")
    svg = page.locator("#timeline svg.conversation-svg")
    # one bar per final line on its speaker's lane, where and as long as it was said
    for speaker in ("customer", "agent"):
        lines = [line for line in QA_LINES if line.speaker == speaker]
        bars = svg.locator(f"rect.talk.{speaker}")
        assert await bars.count() == len(lines)
        for i, line in enumerate(lines):
            box = await bars.nth(i).bounding_box()
            assert box["x"] == pytest.approx(await svg_x(page, line.start), abs=1.5)
            assert box["x"] + box["width"] == pytest.approx(await svg_x(page, line.end), abs=1.5)
    customer_top = (await svg.locator("rect.talk.customer").first.bounding_box())["y"]
    agent_top = (await svg.locator("rect.talk.agent").first.bounding_box())["y"]
    assert agent_top > customer_top                       # two lanes, customer above

    # the triggers as markers with their titles
    stored = {c["category"]: c for c in env.store.calls.get_call(QA_CALL)["cards"]}
    markers = svg.locator("rect.marker")
    assert await markers.count() == len(QA_CARDS)
    titles = await svg.locator("rect.marker > title").all_text_contents()
    assert titles == [f"00:09 {stored['media_exposure']['title']}", f"00:23 {stored['regulator_complaint']['title']}"]
    regulator = svg.locator(f'rect.marker[data-card-id="{stored["regulator_complaint"]["card_id"]}"]')
    assert (await regulator.bounding_box())["x"] + 6 == pytest.approx(await svg_x(page, 23.0), abs=1.5)

    # click a trigger: the recording goes there; click anywhere else: it goes to that moment
    assert await page.evaluate("document.getElementById('audio').currentTime") < 1
    await regulator.click()
    await current_time_near(page, 23.0)
    box = await svg.bounding_box()
    await page.mouse.click(await svg_x(page, 35.0), box["y"] + box["height"] - 3)
    await current_time_near(page, 35.0, within=0.5)
    # the playhead follows playback
    await page.evaluate("document.getElementById('audio').pause()")
    await page.evaluate("window.callassist.seek(3.0)")
    await current_time_near(page, 3.0, within=0.5)
    playhead = svg.locator("line.playhead")
    first = float(await playhead.get_attribute("x1"))
    await page.wait_for_function("() => document.getElementById('audio').currentTime > 4.5")
    assert float(await playhead.get_attribute("x1")) > first
    await page.evaluate("document.getElementById('audio').pause()")
    assert page.errors == []
    await page.context.close()


async def test_analytics_curves_silences_and_talk_over_show_when_present_and_hide_when_not(env):
    page = await logged_in_page(env, "zhao.min")
    # a call without analytics: talk and triggers only (the call below is the positive control)
    await open_call(page, env, PLAIN_CALL)
    plain = page.locator("#timeline svg")
    assert await plain.locator("rect.talk").count() == len(CALM)
    for absent in (".silence", ".overlap", ".curve", ".curves"):
        assert await plain.locator(absent).count() == 0, absent
    assert not await page.locator("#conversation-stats").is_visible()
    assert await page.locator("#timeline-legend li").all_inner_texts() == ["客户说话", "坐席说话", "触发"]

    await open_call(page, env, QA_CALL)
    svg = page.locator("#timeline svg")
    silence = svg.locator("rect.silence")
    assert await silence.count() == 1
    box = await silence.bounding_box()
    assert box["x"] == pytest.approx(await svg_x(page, 16.0), abs=1.5)
    assert box["x"] + box["width"] == pytest.approx(await svg_x(page, 22.0), abs=1.5)
    assert await silence.locator("title").text_content() == "静默 00:16–00:22（6 秒）"
    overlaps = svg.locator("rect.overlap")
    assert await overlaps.count() == 2
    assert [await overlaps.nth(i).get_attribute("data-by") for i in range(2)] == ["customer", "agent"]
    assert "坐席打断客户" in await overlaps.nth(1).locator("title").text_content()
    for leg, points in (("customer", 4), ("agent", 3)):
        assert await svg.locator(f".curve.agitation.{leg} circle.point").count() == points
    # the highest agitation is drawn highest, the most negative sentiment lowest
    customer = svg.locator(".curve.agitation.customer circle.point")
    ys = [float(await customer.nth(i).get_attribute("cy")) for i in range(4)]
    assert min(ys) == ys[2] and max(ys) == ys[0]
    sentiment = svg.locator(".curve.sentiment circle.point")
    assert await sentiment.count() == 4
    sy = [float(await sentiment.nth(i).get_attribute("cy")) for i in range(4)]
    assert max(sy) == sy[1] and min(sy) == sy[3]
    assert await page.locator("#timeline-legend li").all_inner_texts() == [
        "客户说话", "坐席说话", "静默（1）", "抢话（2）", "客户激动度", "坐席激动度", "客户情绪", "触发"]
    stats = page.locator("#conversation-stats")
    assert await stats.is_visible()
    assert "客户说话 00:16（56%）" in (await stats.inner_text()).replace("\n", "")
    # a click inside the silence hears what follows it
    await silence.click()
    await current_time_near(page, 19.0, within=0.5)
    await page.evaluate("document.getElementById('audio').pause(); window.callassist.seek(0)")
    await page.evaluate("document.getElementById('audio').pause()")
    await page.locator(".player").screenshot(path=str(env.screenshots / "qa-timeline.png"))
    assert page.errors == []
    await page.context.close()


async def test_technique_adherence_lists_evidence_that_seeks(env):
    page = await logged_in_page(env, "zhao.min")
    await open_call(page, env, QA_CALL)
    detail = await page.evaluate(f"fetch('/api/calls/{QA_CALL}').then((r) => r.json())")
    techniques = detail["adherence"].get("techniques")
    section = page.locator("#techniques")
    assert techniques and await section.is_visible()
    items = section.locator("#technique-list > li")
    assert await items.count() == len(techniques)
    for i, technique in enumerate(techniques):
        assert technique["name"] in await items.nth(i).inner_text()
    with_evidence = [(i, t) for i, t in enumerate(techniques) if t["evidence"]]
    assert with_evidence, techniques
    i, technique = with_evidence[-1]
    evidence = technique["evidence"][0]
    await items.nth(i).locator(".evidence button.seek").first.click()
    await current_time_near(page, evidence["start"], within=0.5)
    await page.evaluate("document.getElementById('audio').pause()")
    assert page.errors == []
    await page.context.close()


async def test_trends_chart_table_and_export(env):
    page = await logged_in_page(env, "wang.qiang")
    await page.goto(f"{env.server.url}/trends?{TREND_RANGE}")
    await page.wait_for_selector("body[data-ready] #chart svg")
    assert await page.locator('nav a[href="/trends"][aria-current="page"]').count() == 1
    # calls per agent per day, stacked: one bar per agent and day with calls, as tall as its count
    bars = page.locator("#chart rect.bar")
    expected = {("zhang.wei", "2025-03-03"): 2, ("li.na", "2025-03-03"): 1, ("li.na", "2025-03-04"): 1,
                ("zhang.wei", "2025-03-05"): 1, ("zhang.wei", "2025-03-06"): 1, ("zhang.wei", "2025-03-07"): 1,
                ("li.na", "2025-03-10"): 2, ("zhang.wei", "2025-03-12"): 1}
    drawn = {}
    heights = {}
    for i in range(await bars.count()):
        bar = bars.nth(i)
        key = (await bar.get_attribute("data-group"), await bar.get_attribute("data-period"))
        drawn[key] = int(await bar.get_attribute("data-value"))
        heights[key] = float(await bar.get_attribute("height"))
    assert drawn == expected
    one = heights[("li.na", "2025-03-04")]
    assert heights[("zhang.wei", "2025-03-03")] == pytest.approx(2 * one, rel=0.01)
    assert await page.locator("#legend li").all_inner_texts() == ["张伟", "李娜"]
    assert await page.locator("#totals tbody tr").count() == 2
    assert (await page.locator('#totals tr[data-group="zhang.wei"] td').first.inner_text()) == "6"
    assert await page.locator("#detail thead th").count() == 1 + 10      # the agent column and ten days
    await page.locator(".trends").screenshot(path=str(env.screenshots / "trends.png"))

    # a share as lines, one per agent; 100 % is the top of the axis
    await page.select_option('select[name="metric"]', "critical_share")
    await page.wait_for_selector("#chart svg.metric-critical_share")
    assert await page.locator("#chart path.line").count() == 2
    points = page.locator('#chart circle.point[data-group="li.na"]')
    assert [await points.nth(i).get_attribute("data-period") for i in range(await points.count())] == [
        "2025-03-03", "2025-03-04", "2025-03-10"]
    top = float(await page.locator('#chart circle.point[data-group="li.na"][data-period="2025-03-04"]').get_attribute("cy"))
    zero = float(await page.locator('#chart circle.point[data-group="li.na"][data-period="2025-03-03"]').get_attribute("cy"))
    assert zero - top == pytest.approx(300 - 14 - 40, abs=0.5)         # the plot's full height
    assert "明细：高风险占比" == await page.inner_text("#detail-title")
    assert "100.0%" in await page.locator('#detail tr[data-group="li.na"]').inner_text()

    # by category, by week; the date pickers narrow the range
    await page.select_option('select[name="by"]', "category")
    await page.wait_for_function("() => document.querySelector('#legend').textContent.includes('媒体曝光威胁')")
    await page.select_option('select[name="period"]', "week")
    await page.wait_for_selector('body[data-ready] #chart circle.point[data-period="2025-03-10"]')
    assert await page.locator("#detail thead th").count() == 1 + 2
    await page.fill('input[name="from"]', "2025-03-10")
    await page.click('#trend-filters button[type="submit"]')
    await page.wait_for_function("() => document.querySelector('#trend-summary').textContent.startsWith('2025-03-10')")
    assert await page.locator('#chart circle.point[data-period="2025-03-03"]').count() == 0
    # a start after the end is refused before asking the server
    await page.fill('input[name="from"]', "2025-03-20")
    await page.click('#trend-filters button[type="submit"]')
    await page.wait_for_selector("#trend-error >> text=开始日期不能晚于结束日期")

    # the export link carries the query on the page
    await page.fill('input[name="from"]', "2025-03-03")
    await page.click('#trend-filters button[type="submit"]')
    await page.wait_for_selector("body[data-ready] #chart svg")
    href = await page.get_attribute("#export-csv", "href")
    assert "by=category" in href and "period=week" in href and "from=2025-03-03" in href
    csv_text = await page.evaluate("url => fetch(url).then((r) => r.text())", href)
    assert csv_text.lstrip("\ufeff").startswith("类别,周期（周）,通话数")
    assert "媒体曝光威胁,2025-03-03,3" in csv_text          # t-03a, t-04a and the QA call
    # 720 px: the chart is drawn again at the new width; the page itself does not scroll sideways
    await page.set_viewport_size({"width": 720, "height": 900})
    await page.wait_for_function("() => document.querySelector('#chart svg').getAttribute('width') < 700")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 720
    assert page.errors == []
    await page.context.close()
