"""The intent model and its place in the matcher: paraphrases fire, phrase hits that mean
something else are vetoed, exclusions and speaker scoping hold, the card says why, the
incremental CallMatcher keeps its rules, the shipped model is the one the corpus makes,
and the recogniser's accuracy on the blind test set stays above its floor."""
from __future__ import annotations

import numpy as np
import pytest

from prompts.corpus import (BLIND_FILE, AsrNoise, CorpusError, Example, corpus_digest, is_dev,
                            read_tsv, train_dev)
from prompts.evaluate import evaluate
from prompts.intent import IntentModel, IntentModelError, features
from prompts.matcher import CallMatcher, Matcher
from prompts.normalize import fold_pinyin, normalize, to_pinyin
from prompts.playbook import load_playbook


@pytest.fixture(scope="module")
def playbook():
    return load_playbook()


@pytest.fixture(scope="module")
def model():
    return IntentModel.load()


@pytest.fixture(scope="module")
def matcher(playbook, model):
    return Matcher(playbook, intent=model)


@pytest.fixture(scope="module")
def phrases_only(playbook):
    return Matcher(playbook)


def fired(matcher, text, speaker="customer"):
    return {m.category.id for m in matcher.match(text, speaker)}


# ---------------------------------------------------------------- features

def test_features_cover_characters_syllables_and_number_sizes():
    chars = normalize("扣了八百多块")
    found = {f for f, _, _ in features(chars, fold_pinyin(to_pinyin(chars)))}
    assert {"c扣", "c扣了", "pkou_le", "#800", "cHH"} <= found
    assert "c多块" in found and "cH多块" in found


def test_homophones_share_pinyin_features():
    def pinyin_features(text):
        chars = normalize(text)
        return {f for f, _, _ in features(chars, fold_pinyin(to_pinyin(chars))) if f[0] == "p"}
    assert pinyin_features("公信部") == pinyin_features("工信部")
    assert pinyin_features("基站") != pinyin_features("机场")


# ---------------------------------------------------------------- the hybrid decision

@pytest.mark.parametrize("text, category", [
    ("得按两倍给我退回来", "double_refund"),
    ("我要找电视台的来拍你们", "media_exposure"),
    ("电话突然打不出去了说是被停了", "service_suspension"),
    ("你们把我吓得好几天没睡着觉这个得赔", "mental_distress_compensation"),
    ("上个月扣了八百多我平时也就用三四十", "bill_shock"),
])
def test_paraphrases_beyond_the_listed_phrases_fire(matcher, phrases_only, text, category):
    assert category in fired(matcher, text)


def test_model_fires_where_the_phrase_matcher_alone_is_silent(matcher, phrases_only):
    # the positive control for the test above: the phrase list alone misses these
    text = "得按两倍给我退回来"
    assert "double_refund" not in fired(phrases_only, text)
    [match] = [m for m in matcher.match(text, "customer") if m.category.id == "double_refund"]
    assert match.via == "intent"
    # the card highlights the heard words that weighed most: a literal part of the text
    assert match.phrase and match.phrase in normalize(text)
    assert normalize(text)[slice(*match.span)] == match.phrase


@pytest.mark.parametrize("text, category, positive", [
    ("我在律所上班平时挺忙的", "lawsuit_threat", "我要请律师起诉你们"),
    ("我表妹是电视台主持人", "media_exposure", "我要找电视台曝光你们"),
    ("基站修好以后网速快多了谢谢", "base_station_radiation", "楼顶的基站辐射太大了赶紧拆掉"),
])
def test_self_description_and_good_news_do_not_fire(matcher, text, category, positive):
    assert category not in fired(matcher, text)
    assert category in fired(matcher, positive)


def test_model_vetoes_a_phrase_hit_that_means_something_else(matcher, phrases_only):
    text = "我在律所上班平时挺忙的"
    vetoed = fired(phrases_only, text) - fired(matcher, text)
    assert fired(phrases_only, text) == set() or vetoed, "no phrase hit to veto here"


def test_exclusions_still_hold(matcher):
    assert "mental_distress_compensation" not in fired(matcher, "我今天精神挺好就是想问问套餐")
    assert "mental_distress_compensation" in fired(matcher, "你们得赔我精神损失费")


def test_speaker_scoping(matcher):
    customer_words = "你们再不解决我就去工信部投诉"
    assert "regulator_complaint" in fired(matcher, customer_words, "customer")
    assert not fired(matcher, customer_words, "agent") & {"regulator_complaint"}
    agent_words = "爱找谁找谁去反正我也管不了"
    assert "agent_forbidden_phrase" in fired(matcher, agent_words, "agent")
    assert "agent_forbidden_phrase" not in fired(matcher, agent_words, "customer")


def test_without_a_model_the_phrase_matcher_decides(playbook, phrases_only):
    assert phrases_only.intent is None
    assert {m.via for m in phrases_only.match("我要去工信部投诉你们", "customer")} <= {"chars", "pinyin"}


# ---------------------------------------------------------------- incremental matching

def test_call_matcher_fires_on_a_partial_and_confirms_on_the_final(matcher):
    call = CallMatcher(matcher, "c1")
    partial = call.on_transcript("customer", 0, "得按两倍给我退", 1.0, 2.0, final=False)
    assert [e.card.category for e in partial if hasattr(e, "card")] == ["double_refund"]
    card = partial[0].card
    assert card.via == "intent" and card.heard and card.heard in card.text   # what to highlight
    final = call.on_transcript("customer", 0, "得按两倍给我退回来", 1.0, 3.0, final=True)
    assert [type(e).__name__ for e in final] == ["CardConfirmed"]
    again = call.on_transcript("customer", 0, "得按两倍给我退回来", 1.0, 3.0, final=True)
    assert again == []                                     # never twice per utterance


def test_call_matcher_withdraws_what_the_final_does_not_support(matcher):
    call = CallMatcher(matcher, "c2")
    partial = call.on_transcript("customer", 0, "得按两倍给我退", 1.0, 2.0, final=False)
    assert partial, "the partial must fire for this test to mean anything"
    final = call.on_transcript("customer", 0, "你好我想问问流量套餐", 1.0, 3.0, final=True)
    assert [type(e).__name__ for e in final] == ["CardWithdrawn"]


# ---------------------------------------------------------------- the model file and corpus

def test_shipped_model_matches_playbook_and_corpus(playbook, model):
    for speaker in ("customer", "agent"):
        assert model.categories(speaker) == [c.id for c in playbook.categories if c.speaker == speaker]
    train, dev = train_dev(playbook)
    assert model.meta["corpus"] == corpus_digest(train + dev), \
        "corpus changed: rebuild with 'python -m prompts.intent_train'"


def test_retraining_reproduces_the_shipped_model(tmp_path, playbook, model):
    pytest.importorskip("sklearn")
    from prompts.intent_train import main as train_main
    out = tmp_path / "model.npz"
    assert train_main(["--out", str(out)]) == 0
    rebuilt = IntentModel.load(out)
    train, dev = train_dev(playbook)
    for speaker in ("customer", "agent"):
        lines = [e for e in dev if e.speaker == speaker][:200]
        for example in lines:
            chars = normalize(example.text)
            folded = fold_pinyin(to_pinyin(chars))
            a, b = model.read(chars, folded, speaker), rebuilt.read(chars, folded, speaker)
            for category in model.categories(speaker):
                assert a.probability(category) == pytest.approx(b.probability(category), abs=0.02)


def test_model_file_errors_are_clear(tmp_path):
    with pytest.raises(IntentModelError, match="prompts.intent_train"):
        IntentModel.load(tmp_path / "missing.npz")
    stale = tmp_path / "stale.npz"
    np.savez(stale, meta=np.array('{"feature_version": 0, "speakers": []}'))
    with pytest.raises(IntentModelError, match="feature version"):
        IntentModel.load(stale)


def test_corpus_errors_name_file_and_line(tmp_path, playbook):
    bad = tmp_path / "bad.tsv"
    bad.write_text("# header\nmedia_exposure\tcustomer\t我要曝光你们\nmedia_exposure\tagent\t曝光\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:3: media_exposure is a customer category"):
        read_tsv(bad, playbook)
    bad.write_text("nonsense_category\tcustomer\t随便说说\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:1: unknown category"):
        read_tsv(bad, playbook)
    bad.write_text("-\tcustomer 只有两列\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:1: expected labels"):
        read_tsv(bad, playbook)


def test_split_is_by_text_not_by_order():
    a = Example("customer", "我要去工信部投诉你们", frozenset({"regulator_complaint"}))
    b = Example("customer", "我 要 去 工信部 投诉 你们。", frozenset({"regulator_complaint"}))
    assert is_dev(a) == is_dev(b)


def test_asr_noise_is_deterministic_and_changes_text():
    pool = "工公功攻供宫信新心部不步布"
    first = [AsrNoise(pool, seed=1, substitute=0.5)("我要去工信部投诉") for _ in range(3)]
    second = [AsrNoise(pool, seed=1, substitute=0.5)("我要去工信部投诉") for _ in range(3)]
    assert first == second
    noise = AsrNoise(pool, seed=1, substitute=0.5)
    assert any(noise("我要去工信部投诉") != "我要去工信部投诉" for _ in range(20))


# ---------------------------------------------------------------- accuracy floors

# Measured on the blind test set (prompts/corpus/README.md tells how it was made): recall
# 87 %, 6.6 false triggers per 200 ordinary lines (phrases alone: 36 %, 19.7). The
# floors sit a little below, so a change that loses recognition fails here. Never tune
# the model or the playbook on this set: that would make the number meaningless.
BLIND_RECALL_FLOOR = 0.80
BLIND_FALSE_PER_200_CAP = 12.0


def test_blind_set_accuracy_floor(matcher, phrases_only, playbook):
    examples = read_tsv(BLIND_FILE, playbook)
    result = evaluate(matcher, examples)
    before = evaluate(phrases_only, examples)
    assert result.total.recall >= BLIND_RECALL_FLOOR
    assert result.false_per_200_ordinary <= BLIND_FALSE_PER_200_CAP
    assert result.total.recall > before.total.recall      # the model adds recognition


# ---------------------------------------------------------------- callassist eval

def test_eval_command_reports_per_category_and_false_triggers(tmp_path, capsys):
    from callassist.cli import main
    corpus = tmp_path / "mine.tsv"
    corpus.write_text("# a tiny corpus\n"
                      "regulator_complaint\tcustomer\t我要去工信部投诉你们\n"
                      "-\tcustomer\t我想查一下这个月的流量还剩多少\n"
                      "agent_forbidden_phrase\tagent\t你去告吧随便你\n", encoding="utf-8")
    assert main(["eval", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "regulator_complaint" in out and "1/1" in out
    assert "false triggers on ordinary lines: 0 (0.0 per 200)" in out
    assert main(["eval", "--phrases-only", str(corpus)]) == 0
    assert "phrases only" in capsys.readouterr().out


def test_eval_command_bad_input_is_one_clear_line(tmp_path, capsys):
    from callassist.cli import main
    bad = tmp_path / "bad.tsv"
    bad.write_text("regulator_complaint\tcustomer\n", encoding="utf-8")
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callassist eval: ") and "bad.tsv:1" in err
    assert main(["eval", str(tmp_path / "missing.tsv")]) == 2
    assert "missing.tsv" in capsys.readouterr().err


@pytest.mark.parametrize("final, kept", [
    # the final adds a clause the model reads as something else: the words said are still there
    ("我要求生被返还 不然我去消息投诉。", True),
    # control: the final no longer has the words the partial fired on
    ("我要求先查一下账单 不然我去消息投诉。", False),
])
def test_a_card_fired_on_a_partial_stays_while_the_final_still_holds_its_words(matcher, final, kept):
    from callassist.events import CardConfirmed, CardFired, CardWithdrawn
    call = CallMatcher(matcher, "call-1")
    fired = [e.card for e in call.on_transcript("customer", 0, "我要求生被返还", 0.0, 1.5, final=False)
             if isinstance(e, CardFired)]
    assert [c.category for c in fired] == ["double_refund"]
    events = call.on_transcript("customer", 0, final, 0.0, 3.0, final=True)
    confirmed = [e.card_id for e in events if isinstance(e, CardConfirmed)]
    withdrawn = [e.card_id for e in events if isinstance(e, CardWithdrawn)]
    assert (confirmed, withdrawn) == (([fired[0].card_id], []) if kept else ([], [fired[0].card_id]))
    if kept:     # and the clause the model read as something else gets its own card
        assert "regulator_complaint" in {e.card.category for e in events if isinstance(e, CardFired)}
