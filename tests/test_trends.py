"""Trends per agent and per category over days and weeks (/api/trends, its CSV, the
page's access and navigation): the real app on a real port, a real store on disk with
calls recorded on chosen days through the Store API, real HTTP with a real login."""
from __future__ import annotations

import csv
import datetime as dt
import io
from statistics import fmean

import pytest
import pytest_asyncio

from agent_ui.adherence import assess_call
from agent_ui.app import create_app
from agent_ui.views.trends import APP_ADHERENCE, parse_query, periods
from callassist.events import TranscriptUpdate
from callassist.config import Config
from prompts.playbook import load_playbook
from web_fixtures import (LiveServer, SeedCard, SeedLine, client_session, http_login, make_config,
                          make_store, record_call)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MONDAY = dt.date(2025, 3, 3)            # two weeks: 3-9 March and 10-16 March 2025
RANGE = {"from": "2025-03-03", "to": "2025-03-16"}


def at(day: int, hour: int = 10) -> float:
    """Local time on 2025-03-`day`."""
    return dt.datetime(2025, 3, day, hour).timestamp()


FOLLOWED = [SeedLine("customer", 0.5, 3.0, "你们 再 不 解决 我 就 找 媒体 曝光"),
            SeedLine("agent", 3.5, 7.0, "非常 抱歉 理解 您的 心情 我 马上 为您 核实")]
IGNORED = [SeedLine("customer", 0.5, 3.0, "我 这个 月 话费 怎么 扣 了 五百 多"),
           SeedLine("agent", 3.5, 6.0, "这个 我 也 不 清楚 你 自己 去 营业厅 看")]
CALM = [SeedLine("customer", 0.5, 2.5, "我 想 查 一下 套餐 余量"),
        SeedLine("agent", 3.0, 5.0, "好的 请 稍等")]

# call id -> (started_at, agent endpoint, lines, cards, ended)
CALLS = {
    "z-0303-a": (at(3), "PJSIP/1001", FOLLOWED, [SeedCard("media_exposure", 1.0, "找媒体曝光")], True),
    "z-0303-b": (at(3, 15), "PJSIP/1001", IGNORED, [SeedCard("bill_shock", 1.0, "话费怎么扣了五百多")], True),
    "z-0305": (at(5), "PJSIP/1001", CALM, [], True),
    "l-0304": (at(4), "PJSIP/1002", FOLLOWED, [SeedCard("regulator_complaint", 1.0, "工信部"),
                                              SeedCard("media_exposure", 2.0, "找媒体曝光")], True),
    "l-0311": (at(11), "PJSIP/1002", CALM, [SeedCard("network_quality", 1.0, "信号差")], True),
    "n-0312": (at(12), "", IGNORED, [SeedCard("bill_shock", 1.0, "话费怎么扣了五百多")], True),
    "z-0312-live": (at(12, 11), "PJSIP/1001", FOLLOWED, [SeedCard("media_exposure", 1.0, "找媒体曝光")], False),
    "z-0220": (dt.datetime(2025, 2, 20, 10).timestamp(), "PJSIP/1001", CALM, [], True),   # before the range
}


class Site:
    pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory):
    s = Site()
    s.config = make_config(tmp_path_factory.mktemp("trends"))
    s.store = make_store(s.config)
    s.store.accounts.add_user("formula", "agent", "not-a-login", "=HYPERLINK(1)", ("PJSIP/1003",))
    for call_id, (started, endpoint, lines, cards, ended) in CALLS.items():
        record_call(s.store, call_id, started, endpoint, lines, cards, seconds=30.0, end=ended)
    record_call(s.store, "f-0306", at(6), "PJSIP/1003", CALM, [])
    s.server = await LiveServer(create_app(s.config, s.store, None)).start()
    s.sessions = {}
    yield s
    for session in s.sessions.values():
        await session.close()
    await s.server.stop()
    s.store.close()


async def as_user(site, username):
    if username not in site.sessions:
        site.sessions[username] = client_session()
        await http_login(site.sessions[username], site.server.url, username)
    return site.sessions[username]


async def get_json(site, username, **query):
    session = await as_user(site, username)
    async with session.get(f"{site.server.url}/api/trends", params=query) as response:
        return response.status, await response.json()


def cells(result):
    return {(c["group"], c["period"]): c for c in result["cells"]}


def adherence_of(store, config: Config, *call_ids):
    playbook = load_playbook()
    return [assess_call(store.calls.get_call(c), playbook, config.web.adherence_window).to_dict()["score"]
            for c in call_ids]


async def test_per_agent_per_day_counts_shares_and_adherence(site):
    status, result = await get_json(site, "wang.qiang", by="agent", period="day", **RANGE)
    assert status == 200, result
    assert result["periods"] == [(MONDAY + dt.timedelta(days=i)).isoformat() for i in range(14)]
    names = {g["key"]: g["name"] for g in result["groups"]}
    assert names == {"zhang.wei": "张伟", "li.na": "李娜", "": "未分配坐席", "formula": "=HYPERLINK(1)"}
    assert result["groups"][0]["key"] == "zhang.wei"            # most calls first (3 ended + 1 live)
    by = cells(result)
    day1 = by[("zhang.wei", "2025-03-03")]
    assert (day1["calls"], day1["cards_per_call"], day1["critical_share"], day1["escalated_share"]) == (2, 1.0, 0.5, 0.5)
    # the mean of the QA page's own score for each call; the two calls differ, so a
    # mean of the wrong calls (or of one) would not pass
    followed, ignored = adherence_of(site.store, site.config, "z-0303-a", "z-0303-b")
    assert followed is not None and ignored is not None and followed != ignored
    assert day1["adherence"] == round(fmean([followed, ignored]), 1)
    assert day1["adherence_calls"] == 2
    assert by[("zhang.wei", "2025-03-05")]["calls"] == 1
    assert by[("zhang.wei", "2025-03-05")]["cards_per_call"] == 0
    assert by[("zhang.wei", "2025-03-12")]["calls"] == 1       # the live call: supervisors see it
    li = by[("li.na", "2025-03-04")]
    assert (li["calls"], li["cards_per_call"], li["critical_share"], li["escalated_share"]) == (1, 2.0, 1.0, 1.0)
    assert by[("", "2025-03-12")]["calls"] == 1
    # only days with calls are cells; nothing from before the range
    assert ("zhang.wei", "2025-03-04") not in by
    assert sum(c["calls"] for c in result["cells"]) == 8
    assert all(c["period"] >= "2025-03-03" for c in result["cells"])
    total = next(g for g in result["groups"] if g["key"] == "zhang.wei")["total"]
    assert (total["calls"], total["critical_share"]) == (4, 0.5)


async def test_per_category_per_week_counts_a_call_in_each_of_its_categories(site):
    status, result = await get_json(site, "zhao.min", by="category", period="week", **RANGE)
    assert status == 200, result
    assert result["periods"] == ["2025-03-03", "2025-03-10"]
    names = {g["key"]: g["name"] for g in result["groups"]}
    playbook = load_playbook()
    assert names["media_exposure"] == playbook.category("media_exposure").title == "媒体曝光威胁"
    by = cells(result)
    assert by[("media_exposure", "2025-03-03")]["calls"] == 2          # z-0303-a and l-0304
    assert by[("regulator_complaint", "2025-03-03")]["calls"] == 1     # l-0304 counted here too
    assert by[("bill_shock", "2025-03-03")]["calls"] == 1
    assert by[("bill_shock", "2025-03-10")]["calls"] == 1
    assert by[("network_quality", "2025-03-10")]["calls"] == 1
    # QA sees ended calls only: the live media call of 12 March is not counted (a
    # supervisor's answer has it: the positive control)
    assert ("media_exposure", "2025-03-10") not in by
    _, supervisor = await get_json(site, "wang.qiang", by="category", period="week", **RANGE)
    assert cells(supervisor)[("media_exposure", "2025-03-10")]["calls"] == 1
    assert "" not in names                          # calls without cards are in no category


async def test_week_periods_start_on_monday_and_the_range_defaults_to_30_days():
    query = parse_query({"period": "week", "from": "2025-03-05", "to": "2025-03-18"})
    assert periods(query) == ["2025-03-03", "2025-03-10", "2025-03-17"]
    default = parse_query({}, today=dt.date(2025, 3, 31))
    assert (default.by, default.period, default.first_day, default.last_day) == (
        "agent", "day", dt.date(2025, 3, 2), dt.date(2025, 3, 31))
    assert len(periods(default)) == 30
    # the last day is included up to its end
    assert default.date_to - default.date_from == pytest.approx(30 * 86400 - 0.001, abs=3700)


async def test_escalation_score_is_averaged_where_readings_are_stored(site):
    _, before = await get_json(site, "wang.qiang", by="agent", period="day", **RANGE)
    assert before["has_escalation"] is False                       # no readings yet: no number
    assert all(c["escalation"] is None for c in before["cells"])
    analytics = site.store.analytics
    analytics.save_reading("l-0304", {"escalation": {"score": 80, "factors": []}})
    analytics.save_reading("z-0303-a", {"escalation": {"score": 40, "factors": []}})
    analytics.save_reading("z-0303-b", {"escalation": {"score": 20, "factors": []}})
    _, result = await get_json(site, "wang.qiang", by="agent", period="day", **RANGE)
    assert result["has_escalation"] is True
    by = cells(result)
    assert by[("li.na", "2025-03-04")]["escalation"] == 80.0
    assert by[("zhang.wei", "2025-03-03")]["escalation"] == 30.0
    assert by[("zhang.wei", "2025-03-03")]["escalation_calls"] == 2
    assert by[("zhang.wei", "2025-03-05")]["escalation"] is None      # no reading: no number


async def test_adherence_is_assessed_again_only_when_a_call_changes(site):
    day = {"from": "2025-04-01", "to": "2025-04-01"}
    record_call(site.store, "z-0401", dt.datetime(2025, 4, 1, 10).timestamp(), "PJSIP/1001", IGNORED,
                [SeedCard("bill_shock", 1.0, "话费怎么扣了五百多")])
    scores = site.server.app[APP_ADHERENCE]
    before = scores.assessed
    _, first = await get_json(site, "wang.qiang", **day)
    assert scores.assessed == before + 1
    _, again = await get_json(site, "wang.qiang", **day)
    assert scores.assessed == before + 1 and again["cells"] == first["cells"]      # remembered
    # the agent's later words (a revised transcript, say) change the call: assessed again
    site.store.events.record(TranscriptUpdate("z-0401", "agent", 9, "非常 抱歉 我 马上 帮 您 查 一下 费用 构成 详单",
                                       6.5, 10.0, True))
    _, changed = await get_json(site, "wang.qiang", **day)
    assert scores.assessed == before + 2
    expected, = adherence_of(site.store, site.config, "z-0401")
    assert changed["cells"][0]["adherence"] == expected


async def test_csv_export_has_chinese_headers_a_row_per_cell_and_totals(site):
    session = await as_user(site, "wang.qiang")
    async with session.get(f"{site.server.url}/trends/export.csv",
                           params={"by": "agent", "period": "week", **RANGE}) as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        assert "attachment" in response.headers["Content-Disposition"]
        text = await response.text()
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0][:4] == ["坐席", "周期（周）", "通话数", "每通触发数"]
    assert "平均话术分" in rows[0]
    body = {(r[0], r[1]): r for r in rows[1:]}
    assert body[("张伟", "2025-03-03")][2] == "3"
    assert body[("张伟", "2025-03-10")][2] == "1"
    assert body[("张伟", "合计")][2] == "4"
    assert body[("李娜", "合计")][2] == "2"
    # a display name that looks like a formula is text in a spreadsheet
    assert ("'=HYPERLINK(1)", "2025-03-03") in body
    assert len(rows) == 1 + 6 + 4                  # header, cells, one total per group


@pytest.mark.parametrize("query, message", [
    ({"by": "caller"}, "by"),
    ({"period": "month"}, "period"),
    ({"from": "2025-03-10", "to": "2025-03-01"}, "开始日期不能晚于结束日期"),
    ({"from": "2024-01-01", "to": "2025-03-01"}, "最多 366 天"),
    ({"from": "3/1/2025"}, "YYYY-MM-DD"),
])
async def test_bad_queries_are_refused_with_a_reason(site, query, message):
    status, body = await get_json(site, "wang.qiang", **query)
    assert status == 400 and message in body["error"]


async def test_only_supervisors_qa_and_admins_see_trends(site):
    agent = await as_user(site, "zhang.wei")
    for path in ("/trends", "/api/trends", "/trends/export.csv"):
        async with agent.get(site.server.url + path) as response:
            assert response.status == 403, path
    async with agent.get(site.server.url + "/qa") as response:
        assert 'href="/trends"' not in await response.text()
    for username in ("wang.qiang", "zhao.min", "root"):
        session = await as_user(site, username)
        async with session.get(site.server.url + "/trends") as response:
            assert response.status == 200
            page = await response.text()
        assert '<a href="/trends" aria-current="page">趋势分析</a>' in page
        assert '<script type="module" src="/static/js/trends.js">' in page
