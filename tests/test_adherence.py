"""agent_ui.adherence on hand-made cards and utterances."""
from __future__ import annotations

import pytest

from agent_ui.adherence import assess, assess_call, phrase_said, phrases_said
from prompts.playbook import Category, Playbook

WINDOW = 30.0


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


def test_a_call_that_followed_the_script() -> None:
    cards = [card("k1", "media_exposure", 10.0, severity="critical"), card("k2", "bill_shock", 60.0)]
    utterances = [customer("我要找媒体曝光", 10.0), agent("我非常理解您的心情 马上为您核实", 14.0),
                  customer("话费怎么这么高", 60.0), agent("我给您发一份详单", 65.0)]
    result = assess(cards, utterances, PLAYBOOK, WINDOW)
    assert result.score == 100 and result.judged == 2 and result.followed == 2
    assert result.cards[0].said == ("理解您的心情", "马上为您核实") and result.cards[0].first_said_at == 14.0
    assert result.violations == ()


def test_a_call_that_missed_a_script_and_said_a_forbidden_phrase() -> None:
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
    assert [c.card_id for c in result.cards] == ["k1", "k2"]
    assert [c.followed for c in result.cards] == [True, False]
    assert result.violations[0].category == "agent_forbidden_phrase"
    assert result.violations[0].corrected is False                       # 抱歉 inside the offence
    assert result.score == 100 * 1 // 2 - 20


def test_a_corrected_violation_costs_half() -> None:
    cards = [card("k3", "agent_forbidden_phrase", 70.0, speaker="agent", severity="critical", utterance=3),
             card("k4", "agent_overpromise", 80.0, speaker="agent", severity="warning", utterance=5)]
    utterances = [agent("这个不归我管", 70.0, 3), agent("抱歉 刚才我没有表达清楚", 74.0, 4),
                  agent("肯定给您全额赔偿", 80.0, 5)]
    result = assess(cards, utterances, PLAYBOOK, WINDOW)
    assert [v.corrected for v in result.violations] == [True, False]
    assert result.score == 100 - 10 - 10
    assert result.to_dict()["violations"][0]["corrected"] is True


def test_nothing_to_judge_gives_no_score_and_the_floor_is_zero() -> None:
    assert assess([], [], PLAYBOOK, WINDOW).score is None
    assert assess([card("k", "network_quality", 1.0)], [], PLAYBOOK, WINDOW).score is None
    many = [card(f"v{i}", "agent_forbidden_phrase", 10.0 * i, speaker="agent", severity="critical",
                 utterance=i) for i in range(8)]
    assert assess(many, [], PLAYBOOK, WINDOW).score == 0


def test_assess_call_takes_a_store_call_dict() -> None:
    call = {"cards": [card("k1", "bill_shock", 1.0)], "utterances": [agent("费用构成是这样的", 3.0)]}
    result = assess_call(call, PLAYBOOK, WINDOW)
    assert result.score == 100
    data = result.to_dict()
    assert data["cards"][0]["followed"] is True and data["judged"] == 1 and data["followed"] == 1
