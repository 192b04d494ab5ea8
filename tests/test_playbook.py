"""The shipped playbook and citations pass `callassist playbook check`, and the
checker reports broken playbooks with a message that names the problem."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from callassist.cli import main
from prompts.check import (LEGAL_TABLE, REQUIRED_IDS, check_files, check_playbook, incomplete_reason,
                           parse_legal_table)
from prompts.playbook import load_playbook

# A few rows of a legal table in the format of shared/domain/legal-citations.md
# (1q, 1o, 1u as in the shared table: a lead-in and its items, a sentence cut at "，").
LEGAL_MD = """\
| # | Law (full name) | Version in force | Art. | Key sentence(s), verbatim | Source | Status |
|---|---|---|---|---|---|---|
| 1d | 中华人民共和国民法典 | same | 第一千一百八十三条 | 「侵害自然人人身权益造成严重精神损害的，被侵权人有权请求精神损害赔偿。」 | LRB; FLK | VERIFIED |
| 1q | 民法典 (extra) | same | 第一千零二十五条 | 「行为人为公共利益实施新闻报道、舆论监督等行为，影响他人名誉的，不承担民事责任，但是有下列情形之一的除外：」「（一）捏造、歪曲事实；」 | LRB; FLK | VERIFIED |
| 1o | 民法典 (extra) | same | 第一百七十九条 | 「承担民事责任的方式主要有：」…「（十）消除影响、恢复名誉；」「（十一）赔礼道歉。」 | LRB; FLK | VERIFIED |
| 1u | 民法典 (extra) | same | 第九百八十五条 | 「得利人没有法律根据取得不当利益的，受损失的人可以请求得利人返还取得的利益，」 | LRB; FLK | VERIFIED |
| 4f | 申诉办法 | same | **Article number UNVERIFIED** | 「申诉受理机构应当自收到全部申诉材料之日起30日内向申诉人作出答复，将申诉处理情况告知申诉人。」 | P-HUBCA | TEXT VERIFIED / ART. NO. UNVERIFIED |
"""

CITATIONS = """\
[civil_code_1183]
law = "中华人民共和国民法典"
article = "第一千一百八十三条"
quote = "侵害自然人人身权益造成严重精神损害的，被侵权人有权请求精神损害赔偿。"
source_row = "1d"
"""

CATEGORY = """\
[[category]]
id = "mental_distress_compensation"
title = "精神损害赔偿要求"
severity = "warning"
speaker = "customer"
phrases = ["精神赔偿", "精神损失费"]
exclude = ["精神挺好"]
script = ["先处理情绪再处理事情。", "说明需要严重精神损害。", "给出回复时间。"]
key_phrases = ["非常抱歉", "给您答复"]
citations = ["civil_code_1183"]
examples = ["我要精神赔偿"]
counter_examples = ["我今天精神挺好"]
"""


@pytest.fixture(scope="module")
def shipped():
    return load_playbook()


def write_case(tmp_path: Path, category: str = CATEGORY, citations: str = CITATIONS,
               legal: str | None = LEGAL_MD) -> tuple[Path, Path, Path]:
    playbook = tmp_path / "playbook.toml"
    playbook.write_text("[defaults]\ncooldown = 60.0\n\n" + category, encoding="utf-8")
    cits = tmp_path / "citations.toml"
    cits.write_text(citations, encoding="utf-8")
    legal_md = tmp_path / "legal-citations.md"
    if legal is not None:
        legal_md.write_text(legal, encoding="utf-8")
    return playbook, cits, legal_md


def problems_of(tmp_path: Path, match_examples: bool = False, **texts) -> list[str]:
    playbook, cits, legal_md = write_case(tmp_path, **texts)
    found = check_files(playbook, cits, legal_md, match_examples=match_examples)
    # the minimal case lacks the other required categories; that is not what these tests check
    return [p for p in found if not p.startswith("required category")]


# ------------------------------------------------------------------ the shipped playbook

def test_shipped_playbook_passes_the_check(shipped):
    notes: list[str] = []
    problems = check_playbook(shipped, intent_model=True, notes=notes)
    assert problems == []
    if LEGAL_TABLE.is_file():
        assert notes == []        # citations were checked against the verified table


def test_cli_check_exits_zero(capsys):
    assert main(["playbook", "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_required_categories_and_escalation_severities(shipped):
    ids = {c.id for c in shipped.categories}
    assert set(REQUIRED_IDS) <= ids
    for cid in ("media_exposure", "regulator_complaint", "violence_threat", "extortion",
                "agent_forbidden_phrase"):
        category = shipped.category(cid)
        assert category.severity == "critical" and category.alert_supervisor, cid
    assert shipped.category("agent_forbidden_phrase").speaker == "agent"
    assert all(c.speaker == "customer" for c in shipped.categories if not c.id.startswith("agent_"))


def test_court_words_are_scoped_by_speaker(shipped):
    from prompts.matcher import Matcher
    matcher = Matcher(shipped)
    agent = {m.category.id for m in matcher.match("你可以上法院告我们", "agent")}
    customer = {m.category.id for m in matcher.match("我要去法院起诉你们", "customer")}
    assert "agent_forbidden_phrase" in agent and "lawsuit_threat" not in agent
    assert "lawsuit_threat" in customer and "agent_forbidden_phrase" not in customer


def test_renumbered_law_shows_the_version_in_force(shipped):
    privacy = shipped.category("privacy_leak")
    before = {v.key: v.article for v in shipped.citation_views(privacy, dt.date(2025, 6, 1))}
    after = {v.key: v.article for v in shipped.citation_views(privacy, dt.date(2026, 3, 1))}
    assert before["cybersecurity_law_personal_info"] == "第四十二条"
    assert after["cybersecurity_law_personal_info"] == "第四十四条"
    assert before["pipl_57"] == after["pipl_57"] == "第五十七条"
    # 治安管理处罚法: the table quotes the 2012 articles only as fragments, so before 2026
    # the card shows no version rather than a cut-off sentence
    extortion = shipped.category("extortion")
    before = {v.key for v in shipped.citation_views(extortion, dt.date(2025, 6, 1))}
    after = {v.key: v.article for v in shipped.citation_views(extortion, dt.date(2026, 3, 1))}
    assert "public_security_penalty_extortion" not in before
    assert after["public_security_penalty_extortion"] == "第五十八条"


def test_shipped_citations_are_complete_provisions(shipped):
    quotes = {c.quote: key for key, versions in shipped.citations.items() for c in versions}
    assert {q: incomplete_reason(q) for q in quotes if incomplete_reason(q)} == {}
    # the fragments the first look found are gone or whole
    assert "（一）与经营者协商和解；" not in quotes
    assert not [q for q in quotes if q.endswith(("，", "：")) or q.startswith(("（", "("))]
    media = {v.key: v.quote for v in shipped.citation_views(shipped.category("media_exposure"))}
    assert media["civil_code_1025"].endswith("但是有下列情形之一的除外：（一）捏造、歪曲事实；")


def test_no_unverified_rows_are_cited(shipped):
    if not LEGAL_TABLE.is_file():
        pytest.skip(f"{LEGAL_TABLE} not present")
    rows = parse_legal_table(LEGAL_TABLE)
    cited = {c.source_row for versions in shipped.citations.values() for c in versions}
    assert cited and all(rows[r].status.startswith("VERIFIED") for r in cited)


# ------------------------------------------------------------------ broken playbooks

def test_minimal_case_is_clean(tmp_path):
    assert problems_of(tmp_path, match_examples=True) == []


def test_unknown_citation_key(tmp_path):
    category = CATEGORY.replace('citations = ["civil_code_1183"]', 'citations = ["civil_code_1183", "civil_code_9999"]')
    assert problems_of(tmp_path, category=category) == [
        "category mental_distress_compensation: unknown citation key 'civil_code_9999'"]


def test_missing_script(tmp_path):
    category = CATEGORY.replace('script = ["先处理情绪再处理事情。", "说明需要严重精神损害。", "给出回复时间。"]\n', "")
    assert problems_of(tmp_path, category=category) == ["category mental_distress_compensation: no script"]


def test_duplicate_phrase_within_a_category(tmp_path):
    category = CATEGORY.replace('"精神损失费"]', '"精神损失费", "精神 赔偿"]')
    assert problems_of(tmp_path, category=category) == [
        "category mental_distress_compensation: duplicate phrase '精神 赔偿' (same as '精神赔偿')"]


def test_duplicate_phrase_across_categories_of_one_speaker(tmp_path):
    other = CATEGORY.replace('id = "mental_distress_compensation"', 'id = "other_demand"')
    problems = problems_of(tmp_path, category=CATEGORY + "\n" + other)
    assert ("category other_demand: phrase '精神赔偿' duplicates '精神赔偿' of category "
            "mental_distress_compensation (customer side)") in problems
    # the same phrase on the agent side is a different matcher index: allowed
    agent = other.replace('speaker = "customer"', 'speaker = "agent"')
    assert not [p for p in problems_of(tmp_path, category=CATEGORY + "\n" + agent) if "duplicates" in p]


def test_quote_not_in_the_legal_table(tmp_path):
    citations = CITATIONS.replace("造成严重精神损害的", "造成精神损害的")
    problems = problems_of(tmp_path, citations=citations)
    assert len(problems) == 1
    assert problems[0].startswith("citation civil_code_1183: quote is not a verbatim substring "
                                  "of a 「」 quotation in row 1d")


ARTICLES = {"1d": "第一千一百八十三条", "1q": "第一千零二十五条", "1o": "第一百七十九条", "1u": "第九百八十五条"}


def citation(key: str, quote: str, row: str) -> str:
    return (f'[{key}]\nlaw = "中华人民共和国民法典"\narticle = "{ARTICLES[row]}"\nquote = "{quote}"\n'
            f'source_row = "{row}"\n')


LEAD_IN_1025 = "行为人为公共利益实施新闻报道、舆论监督等行为，影响他人名誉的，不承担民事责任，但是有下列情形之一的除外："


@pytest.mark.parametrize("quote, row, problem", [
    ("得利人没有法律根据取得不当利益的，受损失的人可以请求得利人返还取得的利益，", "1u",
     "it ends mid-sentence in '，'"),
    (LEAD_IN_1025, "1q", "it ends mid-sentence in '：'"),
    ("（一）捏造、歪曲事实；", "1q", "it is a bare list item （一） without its lead-in"),
    ("（十一）赔礼道歉。", "1o", "it is a bare list item （十一） without its lead-in"),
    ("被侵权人有权请求精神损害赔偿。", "1d", "it starts mid-sentence in row 1d"),
], ids=["ends-in-comma", "lead-in-only", "bare-item", "bare-last-item", "starts-mid-sentence"])
def test_fragment_quote_is_refused(tmp_path, quote, row, problem):
    """A quote a card cannot read aloud: cut at a comma or colon, a list item without the
    sentence that introduces it, or taken from the middle of a sentence."""
    problems = problems_of(tmp_path, citations=CITATIONS + citation("fragment", quote, row))
    assert len(problems) == 1, problems
    assert problems[0].startswith("citation fragment: quote is not a complete provision: ")
    assert problem in problems[0]


def test_fragment_quote_fails_the_check_command(tmp_path, monkeypatch, capsys):
    """`callassist playbook check` exits 1 naming the fragment (playbook and citations as files)."""
    import prompts.check
    fragment = citation("civil_code_985", "得利人没有法律根据取得不当利益的，受损失的人可以请求得利人返还取得的利益，", "1u")
    playbook, cits, legal_md = write_case(tmp_path, category=CATEGORY.replace(
        '["civil_code_1183"]', '["civil_code_1183", "civil_code_985"]'), citations=CITATIONS + fragment)
    monkeypatch.setattr(prompts.check, "LEGAL_TABLE", legal_md)
    monkeypatch.setattr(prompts.check, "load_playbook", lambda: load_playbook(playbook, cits))
    assert main(["playbook", "check"]) == 1
    err = capsys.readouterr().err
    assert ("error: citation civil_code_985: quote is not a complete provision: it ends mid-sentence "
            "in '，'") in err


@pytest.mark.parametrize("quote, row", [
    (LEAD_IN_1025 + "（一）捏造、歪曲事实；", "1q"),                       # lead-in and item, side by side
    ("承担民事责任的方式主要有：……（十）消除影响、恢复名誉；（十一）赔礼道歉。", "1o"),   # …… for items left out
], ids=["lead-in-and-item", "lead-in-ellipsis-items"])
def test_list_item_with_its_lead_in_is_complete(tmp_path, quote, row):
    assert problems_of(tmp_path, citations=CITATIONS + citation("whole", quote, row)) == []


@pytest.mark.parametrize("quote, row", [
    ("（十一）赔礼道歉。……承担民事责任的方式主要有：", "1o"),          # parts out of the row's order
    ("承担民事责任的方式主要有：（十一）赔礼道歉。", "1o"),             # joined without …… over a gap
    (LEAD_IN_1025 + "（一）捏造事实；", "1q"),                             # not the law's words
], ids=["out-of-order", "gap-without-ellipsis", "not-verbatim"])
def test_joined_quote_must_follow_the_row(tmp_path, quote, row):
    problems = problems_of(tmp_path, citations=CITATIONS + citation("joined", quote, row))
    assert any(p.startswith("citation joined: quote is not a verbatim substring") for p in problems), problems


def test_unverified_or_missing_row(tmp_path):
    unverified = CITATIONS.replace('source_row = "1d"', 'source_row = "4f"').replace(
        "侵害自然人人身权益造成严重精神损害的，被侵权人有权请求精神损害赔偿。",
        "申诉受理机构应当自收到全部申诉材料之日起30日内向申诉人作出答复")
    problems = problems_of(tmp_path, citations=unverified)
    assert any("row 4f is not VERIFIED" in p for p in problems)
    missing = CITATIONS.replace('source_row = "1d"', 'source_row = "99z"')
    assert problems_of(tmp_path, citations=missing) == [
        "citation civil_code_1183: source_row '99z' is not a row of legal-citations.md"]


def test_missing_legal_table_is_a_note_not_a_problem(tmp_path):
    playbook, cits, legal_md = write_case(tmp_path, legal=None)
    notes: list[str] = []
    problems = check_playbook(load_playbook(playbook, cits), legal_md, match_examples=False, notes=notes)
    assert [p for p in problems if not p.startswith("required category")] == []
    assert len(notes) == 1 and "not checked" in notes[0]


def test_versions_must_meet_day_to_day(tmp_path):
    versions = """\
[civil_code_1183]
versions = [
  { law = "中华人民共和国民法典", article = "第一千一百八十三条", quote = "侵害自然人人身权益造成严重精神损害的，被侵权人有权请求精神损害赔偿。", source_row = "1d", in_force_until = 2025-12-31 },
  { law = "中华人民共和国民法典", article = "第一千一百八十三条", quote = "侵害自然人人身权益造成严重精神损害的，被侵权人有权请求精神损害赔偿。", source_row = "1d", in_force_from = 2026-02-01 },
]
"""
    assert problems_of(tmp_path, citations=versions) == [
        "citation civil_code_1183: versions must follow each other day to day (2025-12-31 then 2026-02-01)"]


def test_structural_error_is_reported(tmp_path):
    category = CATEGORY.replace('severity = "warning"', 'severity = "urgent"')
    problems = problems_of(tmp_path, category=category)
    assert problems == ["playbook.toml: category mental_distress_compensation: severity must be one of "
                        "info, warning, critical, got 'urgent'"]


def test_examples_are_checked_with_the_matcher(tmp_path):
    category = CATEGORY.replace('examples = ["我要精神赔偿"]', 'examples = ["我要退订流量包"]').replace(
        'counter_examples = ["我今天精神挺好"]', 'counter_examples = ["你们得给我精神赔偿"]')
    problems = problems_of(tmp_path, category=category, match_examples=True)
    assert "category mental_distress_compensation: example does not fire it: 我要退订流量包" in problems
    assert any(p.startswith("category mental_distress_compensation: counter-example fires it via phrase "
                            "'精神赔偿'") for p in problems)


def test_citation_versions_that_are_not_a_list_of_tables(tmp_path):
    """`versions` must be an array of tables; anything else is reported, not a crash."""
    broken = CITATIONS.replace('source_row = "1d"\n', 'source_row = "1d"\nversions = 3\n')
    assert problems_of(tmp_path, citations=broken)[:1] == [
        "citations.toml: [civil_code_1183] versions: must be an array of tables"]
    assert problems_of(tmp_path) == []          # positive control: the same case without it
