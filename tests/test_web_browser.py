"""The web UI in a real browser: Debian's chromium driven by Playwright, against the
real app (real store on disk, real bus, calls through the real pipeline and matcher).
Screenshots of the three screens go to a temporary folder, or to $CALLASSIST_SCREENSHOTS_DIR
when set: `CALLASSIST_SCREENSHOTS_DIR=docs/screenshots` refreshes the README's pictures
(the tests never write into tracked files unless asked to)."""
from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import pytest_asyncio

from agent_ui.views.qa import call_when
from callassist.bus import EventBus
from callassist.events import (AgentJoined, CallEnded, CallStarted, TranscriptLine,
                               TranscriptRevised, TranscriptUpdate)
from asr.fake import ScriptedUtterance
from prompts.playbook import load_playbook
from web_fixtures import (CHROMIUM, COMPLAINT_SECONDS, browser_env, make_config, make_store, open_page,
                          simulate_call, until, write_wav)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed "
                       "(apt-get install chromium)"),
]

ARCHIVED = "1700000000.101"
VIEWPORT = {"width": 1440, "height": 900}
SMALL_SCREEN = {"width": 1366, "height": 768}      # the agents' laptops
NARROW = {"width": 720, "height": 900}
CALM_SCRIPT = {
    "customer": [ScriptedUtterance("你好 我 想 查询 一下 我的 套餐 余量", 0.5, 3.0)],
    "agent": [ScriptedUtterance("好的 请 稍等 我 帮 您 查询", 3.5, 5.5)],
}


BILLING_SCRIPT = {
    "customer": [ScriptedUtterance("我 这个 月 话费 怎么 这么 高 扣 了 我 五百 多", 0.5, 3.5)],
    "agent": [ScriptedUtterance("您 别 着急 我 马上 帮 您 查 一下 费用 构成", 4.0, 5.8)],
}


# Two complaints in one call, both critical with five script steps: media exposure heard
# as written, and 工信部 heard as 公信不 (ASR), a pinyin match.
TWO_CARDS_SCRIPT = {
    "customer": [
        ScriptedUtterance("你们 再 不 解决 我 就 找 记者 曝光", 0.5, 3.5),
        ScriptedUtterance("好的 那 我 现在 就 去 公信 不 投诉 你 母", 7.5, 10.5),
    ],
    "agent": [ScriptedUtterance("非常 理解 您的 心情 我 马上 帮 您 核实", 4.0, 7.0)],
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("web-browser"))
    store = make_store(config)
    async with browser_env(config, store, EventBus(), tmp_path_factory) as e:
        # an archived call with a real recording, for the QA page
        wav = write_wav(e.store.recordings_dir / f"{ARCHIVED}.wav", COMPLAINT_SECONDS)
        await simulate_call(e.bus, ARCHIVED, "PJSIP/1001", recording=wav)
        await until(lambda: (e.store.calls.get_call(ARCHIVED) or {}).get("status") == "ended")
        yield e


async def logged_in_page(env, username, viewport=VIEWPORT):
    return await open_page(env, username, viewport)


async def test_agent_sees_card_live_acknowledges_and_catches_up_after_reconnect(env):
    page = await logged_in_page(env, "zhang.wei")
    assert page.url.endswith("/agent")
    await page.wait_for_selector("body[data-ready]")

    call = "1700000000.201"
    await simulate_call(env.bus, call, "PJSIP/1001", end=False, pace=0.05)
    card = page.locator('.card[data-category="media_exposure"]')
    await card.wait_for()
    assert await card.locator(".script li").count() == 5
    citations = await card.locator(".basis > .citations").inner_text()
    assert "民法典" in citations and "第一千零二十五条" in citations
    assert "找媒体曝光" in await card.locator(".trigger").inner_text()
    await page.wait_for_selector(".line.agent >> text=理解您的心情")
    assert await page.locator(".line.customer").count() >= 3
    assert int(await page.evaluate("document.body.dataset.beeps || 0")) >= 1, "critical card beeps"

    # acknowledge + feedback are stored (POST with the CSRF token)
    await card.locator("button.ack").click()
    await page.wait_for_selector('.card.acknowledged[data-category="media_exposure"]')
    await card.locator("button.fb.yes").click()
    await page.wait_for_selector('.card[data-category="media_exposure"] .fb.yes.chosen')
    stored = env.store.calls.get_card(await card.get_attribute("data-card-id"))
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


async def test_two_live_cards_show_both_scripts_on_a_1366x768_screen_and_read_at_720px(env):
    page = await logged_in_page(env, "zhang.wei", viewport=SMALL_SCREEN)
    await page.wait_for_selector("body[data-ready]")
    call = "1700000000.205"
    await simulate_call(env.bus, call, "PJSIP/1001", script=TWO_CARDS_SCRIPT, seconds=12, end=False,
                        pace=0.05)
    view = page.locator(f'.call[data-call-id="{call}"]')
    regulator = view.locator('.card[data-category="regulator_complaint"]')
    media = view.locator('.card[data-category="media_exposure"]')
    await page.wait_for_selector(f'.call[data-call-id="{call}"] .card.confirmed[data-category="regulator_complaint"]')
    await page.wait_for_selector(f'.call[data-call-id="{call}"] .card.confirmed[data-category="media_exposure"]')
    assert await view.locator(".card").count() == 2
    await page.wait_for_timeout(500)           # the arrival animation

    # both cards' script steps are on screen at once: no page scroll, none below the
    # window or hidden under the card pane's own scroll
    pane = await view.locator(".cards-pane").bounding_box()
    for card in (regulator, media):
        steps = card.locator(".script li")
        assert await steps.count() == 5
        for i in range(5):
            box = await steps.nth(i).bounding_box()
            assert 0 <= box["y"] and box["y"] + box["height"] <= SMALL_SCREEN["height"], (i, box)
            assert box["y"] + box["height"] <= pane["y"] + pane["height"], (i, box, pane)
    assert await page.evaluate("document.scrollingElement.scrollTop") == 0
    assert await page.evaluate("document.querySelector('.cards-pane').scrollTop") == 0
    # the script comes before the citations
    assert await regulator.evaluate("c => c.querySelector('.script').compareDocumentPosition("
                                    "c.querySelector('.basis')) & Node.DOCUMENT_POSITION_FOLLOWING")

    # the words that made it fire, however they matched: 公信不 marked, ≈ 工信部 beside it,
    # still marked in the final text that replaced the partial
    stored = {c["category"]: c for c in env.store.calls.get_call(call)["cards"]}
    assert (stored["regulator_complaint"]["heard"], stored["regulator_complaint"]["via"],
            stored["regulator_complaint"]["phrase"]) == ("公信不", "pinyin", "工信部")
    assert await regulator.locator(".trigger mark").inner_text() == "公信不"
    assert (await regulator.locator(".trigger .canon").inner_text()).strip() == "≈ 工信部"
    assert "公信不投诉你母" in await regulator.locator(".trigger").inner_text()     # the final text
    heard = stored["media_exposure"]["heard"]
    assert heard and heard in "找记者曝光" and stored["media_exposure"]["via"] == "chars"
    assert await media.locator(".trigger mark").inner_text() == heard
    if stored["media_exposure"]["phrase"] == heard:
        assert await media.locator(".trigger .canon").count() == 0

    # the two citations that matter most; the rest behind 更多依据
    playbook = load_playbook()
    with_more = []
    for card, category in ((regulator, "regulator_complaint"), (media, "media_exposure")):
        cited = playbook.citation_views(playbook.category(category))
        shown = card.locator(".basis > .citations li")
        assert await shown.count() == min(2, len(cited))
        assert cited[0].article in await shown.first.inner_text()
        more = card.locator(".more-citations")
        assert await more.count() == (len(cited) > 2)
        if len(cited) > 2:
            assert await more.locator("summary").inner_text() == f"更多依据（{len(cited) - 2}）"
            assert not await more.locator(".citations li").first.is_visible()
            with_more.append(more)
    await page.screenshot(path=str(env.screenshots / "agent.png"))
    for more in with_more:
        await more.locator("summary").click()
        assert await more.locator(".citations li").count() > 0
        assert await more.locator(".citations li").first.is_visible()
        await more.locator("summary").click()

    # 720 px wide: one column, cards first, nothing cut off or squeezed
    await page.set_viewport_size(NARROW)
    await page.wait_for_timeout(300)
    assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    cards_first = await view.evaluate("v => v.querySelector('.cards-pane').getBoundingClientRect().top"
                                      " < v.querySelector('.transcript-pane').getBoundingClientRect().top")
    assert cards_first
    for card in (regulator, media):
        box = await card.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= NARROW["width"]
        assert await card.evaluate("c => c.scrollWidth <= c.clientWidth")
        assert await card.locator(".script li").first.evaluate(
            "li => parseFloat(getComputedStyle(li).fontSize)") >= 15
        assert (await card.locator(".script").bounding_box())["width"] >= 500
        for button in ("已处理", "有用", "没用"):
            b = await card.locator(f"button >> text={button}").bounding_box()
            assert b["x"] + b["width"] <= box["x"] + box["width"]
    await regulator.scroll_into_view_if_needed()
    await regulator.screenshot(path=str(env.screenshots / "card-720.png"))
    env.bus.publish(CallEnded(call, 12.0))
    await page.wait_for_selector(f'.call[data-call-id="{call}"] .status.ended')
    assert page.errors == []
    await page.context.close()


async def test_card_marks_what_was_heard_however_it_matched(env):
    """The trigger line of a card for each way a card fires, and after the final text."""
    page = await logged_in_page(env, "zhang.wei")
    await page.wait_for_selector("body[data-ready]")
    rendered = await page.evaluate("""async () => {
        const { triggerWords } = await import('/static/js/cards.js');
        const show = (text, fired) => {
            const words = triggerWords(text, fired);
            return { text: words.textContent, marked: [...words.querySelectorAll('mark')].map((m) => m.textContent),
                     canon: words.querySelector('.canon')?.textContent.trim() ?? null };
        };
        return {
            literal: show('我要去工信部投诉你们', { heard: '工信部', phrase: '工信部', via: 'chars' }),
            pinyin: show('好的那我现在就去公信不投诉你母', { heard: '公信不', phrase: '工信部', via: 'pinyin' }),
            intent: show('那你们得按两倍退给我', { heard: '得按两倍退', phrase: '得按两倍退', via: 'intent' }),
            final_without: show('我再想想吧', { heard: '公信不', phrase: '工信部', via: 'pinyin' }),
            stored_before_heard: show('我要去工信部投诉你们', { heard: '', phrase: '工信部', via: '' }),
            stored_before_pinyin: show('我要去公信不投诉你们', { heard: '', phrase: '工信部', via: '' }),
            long: show('喂你好我想问一下就是我这个月的话费怎么扣了这么多然后我现在就去公信不投诉你们这个事情必须给我说清楚',
                       { heard: '公信不', phrase: '工信部', via: 'pinyin' }),
        };
    }""")
    assert rendered["literal"] == {"text": "「我要去工信部投诉你们」", "marked": ["工信部"], "canon": None}
    assert rendered["pinyin"]["marked"] == ["公信不"] and rendered["pinyin"]["canon"] == "≈ 工信部"
    assert rendered["intent"]["marked"] == ["得按两倍退"] and rendered["intent"]["canon"] is None
    assert rendered["final_without"]["marked"] == [] and "公信不" in rendered["final_without"]["canon"]
    assert rendered["stored_before_heard"] == {"text": "「我要去工信部投诉你们」", "marked": ["工信部"],
                                               "canon": None}
    assert rendered["stored_before_pinyin"] == {"text": "「我要去公信不投诉你们」 ≈ 工信部", "marked": [],
                                                "canon": "≈ 工信部"}
    long = rendered["long"]
    assert long["marked"] == ["公信不"] and long["text"].startswith("「…")
    assert long["text"].endswith("…」 ≈ 工信部") and len(long["text"]) < 45
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
    await page.screenshot(path=str(env.screenshots / "supervisor.png"))
    # the same call on its own page
    await page.goto(f"{env.server.url}/live/1700000000.302")
    await page.wait_for_selector('.card[data-category="media_exposure"]')
    assert await page.locator(".card .actions").count() == 0     # read-only: no agent buttons
    assert await page.locator(".card button").count() == 0
    assert page.errors == []
    await page.context.close()


async def board_agrees(page) -> int:
    """The header counts exactly the calls listed as in progress; returns that count."""
    header = await page.inner_text("#board-count")
    listed = await page.locator("#live-rows tr[data-call-id]").count()
    assert header == f"{listed} 路", (header, listed)
    return listed


async def test_supervisor_board_counts_what_it_lists_and_shows_a_calls_real_duration(env):
    earlier = "1700000000.398"                # ended two minutes before the board was opened
    env.bus.publish(CallStarted(earlier, caller="13512345678", at=time.time() - 123))
    env.bus.publish(CallEnded(earlier, 3.0, at=time.time() - 120))
    await until(lambda: (env.store.calls.get_call(earlier) or {}).get("status") == "ended")
    page = await logged_in_page(env, "wang.qiang")
    await page.wait_for_selector("body[data-ready]")
    call = "1700000000.311"
    # the call started 9 s ago by the wall clock, but it lasted 4 s: CallEnded comes after
    # the recogniser has finished the last words and the recording is closed
    env.bus.publish(CallStarted(call, caller="13612345678", source="demo", at=time.time() - 9))
    env.bus.publish(AgentJoined(call, "PJSIP/1005"))
    row = page.locator(f'#board tr[data-call-id="{call}"]')
    await page.wait_for_selector(f'#live-rows tr[data-call-id="{call}"]')
    await page.wait_for_function("() => document.querySelector('#board-count').textContent.trim() !== ''")
    await page.wait_for_timeout(300)           # the listing refresh after CallStarted
    before = await board_agrees(page)
    await row.click()
    await page.wait_for_selector(f'#detail .call[data-call-id="{call}"]')

    env.bus.publish(CallEnded(call, 4.0))
    await page.wait_for_selector(f'#ended-rows tr[data-call-id="{call}"]')
    assert await board_agrees(page) == before - 1
    assert await page.locator(f'#live-rows tr[data-call-id="{call}"]').count() == 0
    assert await page.locator("#ended-rows").is_visible()
    assert await row.locator(".duration").inner_text() == "00:04"
    await page.wait_for_timeout(1200)          # the board's clock ticks: an ended call's does not
    assert await row.locator(".duration").inner_text() == "00:04"
    assert await page.inner_text(f'#detail .call[data-call-id="{call}"] .duration') == "00:04"
    assert await page.locator(f'#detail .call[data-call-id="{call}"] .status.ended').count() == 1
    assert await page.locator(f'#detail a[href="/qa/call/{call}"]').count() == 1       # review it next

    # events that come after a call's end never bring it back as a live row (the post-call
    # transcript, of this call or of one that ended before the board opened; a listing
    # fetched just before the end)
    for ended in (call, earlier):
        env.bus.publish(TranscriptRevised(ended, "whisper", (TranscriptLine("customer", 0.5, 2.0, "你好"),)))
    await page.wait_for_timeout(500)
    assert await page.locator(f'#board tr[data-call-id="{earlier}"]').count() == 0
    assert await page.locator(f'#live-rows tr[data-call-id="{call}"]').count() == 0
    await page.evaluate("window.callassist.refresh()")
    assert await board_agrees(page) == before - 1
    assert page.errors == []
    await page.context.close()


async def labels_apart(labels) -> None:
    boxes = [await labels.nth(i).bounding_box() for i in range(await labels.count())]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                     or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])
            assert apart, (a, b)


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
    start = env.store.calls.get_call(ARCHIVED)["cards"]
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
    await page.screenshot(path=str(env.screenshots / "qa.png"), full_page=True)

    # named by its caller and time, not its internal id; the agent named once
    stored = env.store.calls.get_call(ARCHIVED)
    title = f"13800138000 · {call_when(stored['started_at'])}"
    assert await page.inner_text("#call-title") == title
    assert (await page.title()).startswith(title)
    assert ARCHIVED not in await page.inner_text("h1")
    details = await page.inner_text("#call-meta")
    assert details.startswith("坐席 张伟（PJSIP/1001） · 时长 00:16")

    # the trigger's heard words are marked; key phrases not said are neutral, not struck out
    item = page.locator(f'.trigger-item[data-card-id="{media["card_id"]}"]')
    assert await item.locator(".words mark").inner_text() == media["heard"]
    assert await item.locator(".phrases .said").count() >= 1
    unsaid = page.locator(".phrases .unsaid")
    assert await unsaid.count() >= 1
    assert await unsaid.first.evaluate("e => getComputedStyle(e).textDecorationLine") == "none"
    assert "未说" in await unsaid.first.evaluate("e => e.parentElement.textContent")

    # every timeline marker is labelled with its category, the labels do not overlap
    standing = sorted((c for c in stored["cards"] if c["status"] != "withdrawn"), key=lambda c: c["start"])
    labels = page.locator(".timeline-labels .marker-label")
    assert await labels.count() == await page.locator(".timeline .marker").count() == len(standing)
    assert sorted(await labels.all_inner_texts()) == sorted(c["title"] for c in standing)
    await labels_apart(labels)
    await labels.filter(has_text=media["title"]).click()
    await page.wait_for_function("start => Math.abs(document.getElementById('audio').currentTime - start) < 0.5",
                                 arg=media["start"])
    await page.evaluate("document.getElementById('audio').pause()")

    # no default verdict: saving without one is refused with a clear message
    assert await page.evaluate("document.querySelector('#review form').verdict.value") == ""
    await page.click("#review button[type=submit]")
    error = page.locator("#review-error")
    await error.wait_for()
    assert "请先选择质检结论" in await error.inner_text()
    assert env.store.calls.get_call(ARCHIVED)["review"] is None
    assert page.url.endswith(f"/qa/call/{ARCHIVED}")

    # the review form posts (with its CSRF field) and is stored
    await page.check('input[name="verdict"][value="improve"]')
    assert not await error.is_visible()
    await page.fill('textarea[name="notes"]', "安抚到位，但未主动说明处理时限。")
    async with page.expect_navigation():
        await page.click("#review button[type=submit]")
    await page.wait_for_selector("#review-current >> text=需改进")
    review = env.store.calls.get_call(ARCHIVED)["review"]
    assert review["verdict"] == "improve" and review["reviewer"] == "zhao.min"
    assert review["adherence_score"] is not None
    # the reviewer's own verdict comes back; nobody else's is preselected for them
    assert await page.evaluate("document.querySelector('#review form').verdict.value") == "improve"
    # at 720 px: nothing wider than the window, the labels still apart and inside the track
    await page.set_viewport_size(NARROW)
    await page.wait_for_timeout(300)
    assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    await labels_apart(labels)
    track = await page.locator("#timeline").bounding_box()
    for i in range(await labels.count()):
        box = await labels.nth(i).bounding_box()
        assert track["x"] <= box["x"] and box["x"] + box["width"] <= track["x"] + track["width"] + 0.5
    assert page.errors == []
    await page.context.close()

    other = await logged_in_page(env, "root")
    await other.goto(f"{env.server.url}/qa/call/{ARCHIVED}")
    await other.wait_for_selector("#qa-call[data-ready]")
    assert "需改进" in await other.inner_text("#review-current")
    assert await other.evaluate("document.querySelector('#review form').verdict.value") == ""
    await other.context.close()


async def test_qa_details_name_the_agent_once(env):
    """A display name that already says 坐席 (the demo's 坐席 1001) is not labelled twice."""
    env.store.accounts.add_user("desk.1009", "agent", "not-a-login", "坐席 1009", ("PJSIP/1009",))
    call = "1700000000.109"
    await simulate_call(env.bus, call, "PJSIP/1009", script=CALM_SCRIPT, seconds=6, caller="")
    await until(lambda: (env.store.calls.get_call(call) or {}).get("status") == "ended")
    page = await logged_in_page(env, "zhao.min")
    await page.goto(f"{env.server.url}/qa/call/{call}")
    await page.wait_for_selector("#qa-call[data-ready]")
    assert (await page.inner_text("#call-meta")).startswith("坐席 1009（PJSIP/1009） · 时长 00:06")
    assert "坐席 坐席" not in await page.inner_text("#call-meta")
    assert (await page.inner_text("#call-title")).startswith("未知号码 · ")
    vtt = await page.evaluate("url => fetch(url).then((r) => r.text())", f"/qa/call/{call}/export.vtt")
    assert "坐席 1009（PJSIP/1009）" in vtt and "坐席 坐席" not in vtt
    assert page.errors == []
    await page.context.close()
