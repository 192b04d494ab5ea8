"""agent_ui.adherence (technique adherence by meaning) on hand-made cards and calls, and
the technique recogniser (prompts.techniques) on its dev set."""
from __future__ import annotations

import pytest

from agent_ui.adherence import assess, assess_call, phrase_said, phrases_said
from callassist.cli import main
from prompts.evaluate_techniques import CORPUS, DEV_FILE, read_turns, score_turns
from prompts.intent import IntentModel
from prompts.matcher import Matcher
from prompts.playbook import Category, Playbook, load_playbook
from prompts.techniques import KEYS, TechniqueReader

WINDOW = 30.0
DEV2_FILE = CORPUS / "techniques_dev2.tsv"


def category(cid: str, speaker: str, severity: str, key_phrases: tuple[str, ...]) -> Category:
    return Category(id=cid, title=cid.upper(), severity=severity, speaker=speaker, phrases=("x",),
                    exclude=(), script=(), key_phrases=key_phrases, citations=(),
                    alert_supervisor=False, cooldown=60.0, threshold=None, examples=(),
                    counter_examples=())


PLAYBOOK = Playbook(categories=(
    category("media_exposure", "customer", "critical", ("理解您的心情", "马上为您核实", "非常抱歉")),
    category("bill_shock", "customer", "warning", ("详单", "费用构成")),
    category("network_quality", "customer", "info", ()),             # nothing to judge
    category("agent_forbidden_phrase", "agent", "critical", ("刚才我没有表达清楚", "抱歉")),
    category("agent_overpromise", "agent", "warning", ("以核实后为准",)),
), citations={})


def card(card_id: str, cat: str, start: float, speaker: str = "customer", severity: str = "warning",
         status: str = "confirmed", utterance: int = 0) -> dict:
    return {"card_id": card_id, "category": cat, "title": "", "severity": severity, "speaker": speaker,
            "text": "……", "start": start, "end": start + 2, "status": status, "utterance": utterance}


def agent(text: str, start: float, utterance: int = 0) -> dict:
    return {"speaker": "agent", "utterance": utterance, "text": text, "start": start, "end": start + 3}


def customer(text: str, start: float) -> dict:
    return {"speaker": "customer", "utterance": 0, "text": text, "start": start, "end": start + 3}


@pytest.mark.parametrize("phrase, text, said", [
    ("理解您的心情", "我 理解 您的 心情", True),                 # Vosk spacing
    ("理解您的心情", "我非常理解你的心情", True),               # one character off: fuzzy
    ("马上为您核实", "我马上为您合适一下", True),               # ASR homophone (he shi): pinyin
    ("马上为您核实", "好的 我立刻帮你查一下", True),            # by meaning: synonyms (issue 11)
    ("给您答复", "明天上午给您回电话", True),
    ("非常抱歉", "真不好意思让您久等了", True),
    ("马上为您核实", "马上为您办理", False),                    # a different step is not the phrase
    ("详单", "我给您发个详单", True),
    ("详单", "我给您发个账单", False),                         # short phrases: exact only
    ("非常抱歉", "非常好", False),
    ("理解您的心情", "", False),
    ("", "什么都行", False),
])
def test_phrase_said(phrase, text, said) -> None:
    assert phrase_said(phrase, text) is said


def test_window_is_measured_from_the_card() -> None:
    utterances = [agent("非常抱歉", 5.0),                  # 5-8: over before the card
                  agent("马上为您核实", 40.5),              # after card start + window
                  customer("理解您的心情", 12.0),           # the customer's words do not count
                  agent("理解您的心情", 9.0, 1)]            # 9-12: overlaps the card's start
    said, first = phrases_said(("理解您的心情", "马上为您核实", "非常抱歉"), utterances, 10.0, WINDOW)
    assert said == ("理解您的心情",) and first == 9.0
    said, _ = phrases_said(("马上为您核实",), [agent("马上为您核实", 40.0)], 10.0, WINDOW)
    assert said == ("马上为您核实",)                       # the window's end is inclusive


def script_result(result):
    return [(c.card_id, c.followed) for c in result.cards]


def test_the_script_input_counts_key_phrases_by_meaning() -> None:
    cards = [card("k1", "media_exposure", 10.0, severity="critical"), card("k2", "bill_shock", 60.0)]
    utterances = [customer("我要找媒体曝光", 10.0), agent("我非常理解您的心情 马上帮您查一下", 14.0),
                  customer("话费怎么这么高", 60.0), agent("我给您发一份详单", 65.0)]
    result = assess(cards, utterances, PLAYBOOK, WINDOW)
    assert result.judged == 2 and result.followed == 2
    assert result.cards[0].said == ("理解您的心情", "马上为您核实") and result.cards[0].first_said_at == 14.0
    assert result.violations == ()
    missed = assess(cards, [customer("我要找媒体曝光", 10.0), agent("请您稍等", 14.0)], PLAYBOOK, WINDOW)
    assert script_result(missed) == [("k1", False), ("k2", False)]          # positive control


def test_withdrawn_and_unjudgeable_cards_and_violations() -> None:
    cards = [card("k1", "media_exposure", 10.0, severity="critical"),
             card("k2", "bill_shock", 60.0),
             card("k3", "agent_forbidden_phrase", 70.0, speaker="agent", severity="critical", utterance=3),
             card("k4", "bill_shock", 100.0, status="withdrawn"),          # ignored
             card("k5", "network_quality", 120.0),                         # no key phrases
             card("k6", "no_longer_in_playbook", 130.0)]                   # cannot judge
    utterances = [agent("我非常理解您的心情", 14.0, 1),
                  agent("这个不归我管 抱歉", 70.0, 3),                        # the offence itself
                  agent("详单您自己去营业厅打", 95.0, 4)]                      # after the window of k2
    result = assess(cards, utterances, PLAYBOOK, WINDOW)
    assert script_result(result) == [("k1", True), ("k2", False)]
    assert result.violations[0].category == "agent_forbidden_phrase"
    assert result.violations[0].corrected is False                       # 抱歉 inside the offence
    assert result.technique("no_forbidden").passed is False
    assert result.score is not None and result.score <= 59              # uncorrected critical: capped


def test_a_corrected_offence_is_not_capped() -> None:
    cards = [card("k3", "agent_forbidden_phrase", 70.0, speaker="agent", severity="critical", utterance=3)]
    opening = [customer("我要投诉你们乱扣费", 60.0), agent("您别着急 我理解您的心情", 64.0, 1),
               customer("那你快点查", 67.0), agent("这个不归我管", 70.0, 3)]
    closing = [customer("好", 80.0), agent("感谢您的耐心 再见", 84.0, 6)]
    corrected = opening + [agent("抱歉 刚才我没有表达清楚 您是要我们查清楚这笔扣费 对吗 明天上午给您答复",
                                 74.0, 4)] + closing
    result = assess(cards, corrected, PLAYBOOK, WINDOW)
    assert [v.corrected for v in result.violations] == [True]
    passed = {t.key for t in result.techniques if t.passed}
    assert passed == set(KEYS) - {"no_forbidden"}
    # weights (prompts/techniques.toml) 15+10+20+15+10 passed of 95; no customer card: no script input
    assert result.score == round(100 * 70 / 95)
    uncorrected = assess(cards, opening + [agent("您是要我们查清楚这笔扣费 对吗 明天上午给您答复", 74.0, 4)]
                         + closing, PLAYBOOK, WINDOW)
    assert uncorrected.violations[0].corrected is False and uncorrected.score == 59


def test_nothing_to_judge_gives_no_score_and_the_floor_is_zero() -> None:
    assert assess([], [], PLAYBOOK, WINDOW).score is None
    assert assess([card("k", "network_quality", 1.0)], [], PLAYBOOK, WINDOW).score is None
    assert all(t.passed is None for t in assess([], [], PLAYBOOK, WINDOW).techniques)
    many = [card(f"v{i}", "agent_forbidden_phrase", 10.0 * i, speaker="agent", severity="critical",
                 utterance=i) for i in range(8)]
    assert assess(many, [], PLAYBOOK, WINDOW).score == 0


# --- whole calls, the shipped playbook (its Matcher and intent model judge no_forbidden) ----

def call_of(*turns: tuple[str, str]) -> dict:
    return {"cards": [], "utterances": [
        {"speaker": "agent" if who == "a" else "customer", "utterance": i, "text": text,
         "start": 5.0 * i, "end": 5.0 * i + 4} for i, (who, text) in enumerate(turns)]}


GOOD_CALL = call_of(
    ("a", "您好 工号1001 很高兴为您服务"),
    ("c", "你们乱扣我话费 扣了三百多 气死我了"),
    ("a", "请问您的手机号码是多少"),                                   # asking before calming is fine
    ("c", "13912345678"),
    ("a", "先生您别着急 换作是我也会生气 我马上帮您查一下"),
    ("c", "我要你们把钱退给我"),
    ("a", "我跟您确认一下 您是希望把多扣的三百元退给您 对吗"),
    ("c", "对"),
    ("a", "好的 退费申请已经提交 三个工作日内退回您的账户"),
    ("c", "行吧"),
    ("a", "感谢您的耐心 还有什么可以帮您的吗"))

BAD_CALL = call_of(
    ("c", "你们乱扣我话费 扣了三百多 气死我了"),
    ("a", "系统显示是您自己用的流量 按标准资费收的"),
    ("c", "我要投诉"),
    ("a", "你去投诉吧 随便你"),
    ("c", "什么态度 短信我根本没收到"),
    ("a", "短信都发了 你自己不看怪谁"),
    ("c", "我要你们退钱"),
    ("a", "退不了 我们会尽快处理的"),
    ("a", "嗯"))


def verdicts(call: dict) -> dict[str, bool | None]:
    return {t["key"]: t["passed"] for t in assess_call(call, load_playbook(), WINDOW).to_dict()["techniques"]}


def test_a_good_call_passes_every_technique_and_a_bad_one_fails_them() -> None:
    good = assess_call(GOOD_CALL, load_playbook(), WINDOW)
    assert verdicts(GOOD_CALL) == dict.fromkeys(KEYS, True) and good.score == 100
    assert good.technique("empathy_first").evidence[0].utterance == 4
    assert good.technique("repeat_back").evidence[0].utterance == 6
    assert good.technique("time_bound_next_step").evidence[0].text.endswith("三个工作日内退回您的账户")
    bad = assess_call(BAD_CALL, load_playbook(), WINDOW)
    assert verdicts(BAD_CALL) == dict.fromkeys(KEYS, False)
    assert [e.utterance for e in bad.technique("no_forbidden").evidence] == [3, 5]
    assert [e.utterance for e in bad.technique("no_rhetorical").evidence] == [5]
    assert bad.score == 0


def test_empathy_must_come_before_the_facts() -> None:
    late = call_of(("c", "我家宽带断了一个礼拜了"), ("a", "您的宽带欠费了所以停了"),
                   ("c", "我交过钱的"), ("a", "我理解您的心情 我帮您查一下"))
    assert verdicts(late)["empathy_first"] is False
    early = call_of(("c", "我家宽带断了一个礼拜了"), ("a", "我理解您的心情 我帮您查一下"),
                    ("c", "我交过钱的"), ("a", "您的宽带欠费了所以停了"))
    assert verdicts(early)["empathy_first"] is True


def test_listening_before_the_empathy_is_not_yet_the_facts() -> None:
    listened = call_of(("c", "你们宽带三天两头断 我受够了"), ("a", "您好 好的 您慢慢说"),
                       ("c", "今天又断了"), ("a", "三天两头断网 换了谁都窝火 我先帮您看线路"))
    assert verdicts(listened)["empathy_first"] is True
    facts = call_of(("c", "你们宽带三天两头断 我受够了"), ("a", "您那边线路在割接 下午恢复"),
                    ("c", "今天又断了"), ("a", "三天两头断网 换了谁都窝火 我先帮您看线路"))
    assert verdicts(facts)["empathy_first"] is False


def test_a_next_step_needs_a_time_unless_the_call_solved_it() -> None:
    vague = call_of(("c", "钱什么时候退给我"), ("a", "核实后我们会尽快退给您的"))
    timed = call_of(("c", "钱什么时候退给我"), ("a", "核实后二十四小时内退回您的账户"))
    solved = call_of(("c", "帮我把彩铃退了"), ("a", "好的 已经帮您退订了"))
    assert verdicts(vague)["time_bound_next_step"] is False
    assert verdicts(timed)["time_bound_next_step"] is True
    assert verdicts(solved)["time_bound_next_step"] is None


def test_a_standing_agent_card_fails_no_forbidden_even_when_the_words_read_clean() -> None:
    call = call_of(("c", "你们这什么服务"), ("a", "您好 请稍等"))
    assert verdicts(call)["no_forbidden"] is True
    call["cards"] = [card("k", "agent_forbidden_phrase", 5.0, speaker="agent", severity="critical", utterance=1)]
    result = assess_call(call, load_playbook(), WINDOW)
    assert result.technique("no_forbidden").passed is False
    assert [e.utterance for e in result.technique("no_forbidden").evidence] == [1]


def test_assess_call_dict_keeps_the_old_fields_and_adds_techniques() -> None:
    call = {"cards": [card("k1", "bill_shock", 1.0)], "utterances": [agent("费用构成是这样的", 3.0)]}
    data = assess_call(call, PLAYBOOK, WINDOW).to_dict()
    assert data["cards"][0]["followed"] is True and data["judged"] == 1 and data["followed"] == 1
    assert set(data) >= {"score", "judged", "followed", "cards", "violations", "techniques"}
    assert [t["key"] for t in data["techniques"]] == list(KEYS)
    for technique in data["techniques"]:
        assert set(technique) == {"key", "name", "passed", "evidence", "note"} and technique["name"]
    closing = next(t for t in data["techniques"] if t["key"] == "proper_close")
    assert closing["passed"] is False and closing["evidence"] == [{"utterance": 0, "start": 3.0,
                                                                   "text": "费用构成是这样的"}]


# --- the turn recogniser: families of signs, its dev sets, the evaluation command -------

READER = TechniqueReader(None)          # the rules; forbidden phrases are not judged here


@pytest.mark.parametrize("text", [        # a feeling word acknowledged, in words no list holds
    "被扣成这样 任谁心里都来气 我先把明细拉出来",
    "这么晚还打不通电话 您肯定急坏了 我马上处理",
    "修了三回还没好 这份郁闷我能理解 我先看下工单",
    "听起来这次的经历确实憋屈 我先登记一下",
    "又让您白跑一趟 真是对不住 我来跟进",
    "您 肯定 很 窝火 我 帮 您 查 一下",                   # Vosk spacing
])
def test_empathy_is_a_feeling_acknowledged_however_it_is_phrased(text: str) -> None:
    assert READER.read_turn(text).shows("empathy_first"), text


@pytest.mark.parametrize("text", [
    "您冷静一下 我们按流程来",                           # telling, not acknowledging
    "麻烦您提供一下号码",                                 # 麻烦您 is a request, not 添麻烦
    "您的套餐是按两年合约办理的 系统到期会自动续约 我理解您很着急",   # after the facts
    "我理解您着急 但是规定就是这样",                       # dismissed
])
def test_no_empathy_without_an_acknowledged_feeling_before_the_facts(text: str) -> None:
    assert not READER.read_turn(text).shows("empathy_first"), text


@pytest.mark.parametrize("text", [        # 反问 and blame addressed as 您, not only 你
    "合同上不是写得很清楚吗",
    "我不是跟您讲过了吗 要带身份证",
    "这能怪我们吗",
    "您自己不看账单 现在来找我们",
    "您记错了吧 系统不会错",
    "那您到底想怎么样",
    "您确定是我们的师傅弄坏的吗",
    "跟您说了三遍了有什么用",
    "难道我们还会故意扣您钱",
])
def test_rhetorical_questions_and_blame_are_caught_in_polite_form(text: str) -> None:
    assert READER.read_turn(text).rhetorical is not None, text


@pytest.mark.parametrize("text", [        # 征询: a question to the customer is not a 反问
    "请问您方便提供一下机主姓名吗",
    "您是想先复机再处理退费 对吗",
    "您还有没有别的问题呢",
    "这个不怪您 是我们没提醒到位",
    "没关系 我一步一步教您",
    "您看这样处理可以吗",
])
def test_consulting_questions_are_not_rhetorical(text: str) -> None:
    assert READER.read_turn(text).rhetorical is None, text


@pytest.mark.parametrize("path, floor", [(DEV_FILE, 0.9), (DEV2_FILE, 0.85)])
def test_the_dev_sets_score_as_measured(path, floor: float) -> None:
    reader = TechniqueReader(Matcher(load_playbook(), intent=IntentModel.load()))
    counts = score_turns(reader, read_turns(path))
    assert set(counts) == set(KEYS)
    for key, c in counts.items():
        assert c.tp >= c.n // 3 and c.tn >= c.n // 3, key     # both labels present and mostly right
        assert c.accuracy is not None and c.accuracy >= floor, (key, c)


def test_eval_techniques_prints_each_technique_and_rejects_a_bad_file(tmp_path, capsys) -> None:
    good = tmp_path / "turns.tsv"
    good.write_text("# comment\nempathy_first\t1\t我气死了\t您先消消气 我理解您的心情\n"
                    "empathy_first\t0\t我气死了\t请提供您的号码\n", encoding="utf-8")
    assert main(["eval-techniques", str(good)]) == 0
    out = capsys.readouterr().out
    assert "empathy_first" in out and "proper_close" in out
    row = next(line for line in out.splitlines() if line.startswith("empathy_first"))
    assert row.split()[1:5] == ["2", "100", "100", "100"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("empathy_first\tyes\t\t您好\n", encoding="utf-8")
    assert main(["eval-techniques", str(bad)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
