"""The call-level reading (prompts/call_reading.py, prompts/call_types.toml): types from the
seeds, evidence turns, stats-driven signs, the escalation score, the dev-set figures, the
CallReadingUpdated event, and the live reader on a real bus and a real store."""
from __future__ import annotations

import asyncio
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import opencc
import pytest

from agent_ui.live_reading import LiveReader
from agent_ui.risk import FACTOR_CAPS, call_risk, escalation_score
from agent_ui.store import open_store
from callassist.bus import EventBus
from callassist.cli import main as cli_main
from callassist.events import (EVENT_TYPES, CallEnded, CallReadingUpdated, CallStarted, Card,
                               CardFired, TranscriptLine, TranscriptRevised, TranscriptUpdate,
                               event_from_dict, event_to_dict)
from prompts.call_reading import (ReadingModel, ReadingModelError, cards_from_matcher, features_of,
                                  load_call_types, load_reading_model, read_call)
from prompts.call_reading_train import TRAIN_FILES, fit, load_dataset, predict, stratified_folds, train
from prompts.evaluate import CALLS_DEV_FILE, evaluate_calls, read_calls
from prompts.matcher import Matcher
from prompts.playbook import load_playbook
from web_fixtures import make_config, until

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
T2S = opencc.OpenCC("t2s")


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(load_playbook())


def customer(*texts: str) -> list[dict[str, str]]:
    return [{"speaker": "customer", "text": t} for t in texts]


def dialogue(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"speaker": {"c": "customer", "a": "agent"}[s], "text": t} for s, t in pairs]


# --- the data ---------------------------------------------------------------------------

@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds not beside the checkout")
def test_every_type_and_technique_is_named_in_the_seed_it_cites():
    types = load_call_types()
    seeds = {path.name[:3]: T2S.convert(path.read_text(encoding="utf-8")) for path in SEEDS.glob("0*.txt")}
    for spec in (*types.complaint_types, *types.customer_types):
        core = spec.name.split("（")[0].removesuffix("型")
        assert core in seeds[spec.seed], f"{spec.key}: {core} not in seed {spec.seed}"
        assert spec.technique in types.techniques
    for technique in types.techniques.values():
        assert technique.seed in seeds and technique.script
    # a name that is in no seed is caught (positive control of the check above)
    assert "没有这种型" not in seeds["000"]


# --- reading single calls, with evidence ----------------------------------------------------

def test_rising_demands_read_as_chameleon_with_the_turns_that_changed(matcher):
    lines = dialogue(("c", "宽带断了一个星期 你们得免我一个月的费用"),
                     ("a", "非常抱歉 我们可以按故障时长给您减免"),
                     ("c", "一个月不够 光免一个月不行 至少免三个月"),
                     ("a", "按规定是按故障时长减免"),
                     ("c", "那我不管 我邻居上次断网你们赔了他两千块 我也要三千块现金"),
                     ("a", "现金赔偿这个我们做不到"),
                     ("c", "那不行 还得给我书面道歉 再加上误工费"))
    reading = read_call(lines, cards_from_matcher(matcher, lines))
    assert reading.customer_type.key == "chameleon"
    assert reading.interest.key == "material"
    utterances = {e.turn.utterance for e in reading.customer_type.evidence}
    assert utterances == {1, 2, 3}, "the evidence is the turns where the demand changed"
    # the stronger reading's technique: 重复法 for the money, or confirming the plan for the shifts
    assert reading.technique.key in ("repetition", "confirm_and_close")
    # control: the same complaint asked once, without raising it, is no chameleon
    steady = customer("宽带断了一个星期 你们得免我一个月的费用", "就免一个月 别的不要", "好的 谢谢")
    assert read_call(steady, cards_from_matcher(matcher, steady)).customer_type.key != "chameleon"


def test_a_quoted_article_reads_as_know_it_all_and_an_unquoted_law_does_not(matcher):
    cited = customer("我想提前解约", "按照合同法第九十四条 服务达不到约定我有解除权",
                     "电信条例第三十四条也写得很清楚")
    reading = read_call(cited, cards_from_matcher(matcher, cited))
    assert reading.customer_type.key == "know_it_all"
    assert [e.turn.utterance for e in reading.customer_type.evidence] == [1, 2]
    assert reading.technique.key == "respectful_restate"
    plain = customer("我想提前解约", "服务达不到约定我想解除合约", "你们帮我看看怎么办")
    assert read_call(plain, cards_from_matcher(matcher, plain)).customer_type.key == "ordinary"


def test_money_with_a_threat_reads_as_extortion_and_the_same_call_without_money_does_not(matcher):
    lines = customer("你们营业员说免费送路由器 结果扣了我两百",
                     "我要五千块 不然我把录音发到网上",
                     "五千 少一分都不行")
    reading = read_call(lines, cards_from_matcher(matcher, lines))
    assert reading.complaint_type.key == "extortion"
    assert reading.interest.key == "material"
    assert 1 in {e.turn.utterance for e in reading.complaint_type.evidence}
    no_money = customer("你们营业员说免费送路由器 结果扣了我两百",
                        "我要你们道歉 不然我把录音发到网上", "必须公开道歉")
    assert read_call(no_money, cards_from_matcher(matcher, no_money)).complaint_type.key != "extortion"


def test_a_calm_question_reads_as_ordinary_with_the_default_technique(matcher):
    lines = customer("你好 我想问一下话费怎么多了三十块", "好的 麻烦你了", "那能退掉吗")
    reading = read_call(lines, cards_from_matcher(matcher, lines))
    assert (reading.complaint_type.key, reading.customer_type.key) == ("ordinary", "ordinary")
    assert reading.technique.key == "listen_ask_soothe_confirm"
    assert reading.escalation.score < 20
    data = reading.to_dict()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert set(data) >= {"complaint_type", "customer_type", "technique", "escalation"}
    assert data["technique"]["script"] and data["complaint_type"]["name"] == "普通投诉"


AGITATED_STATS = {
    "duration": 95.0,
    "legs": {"customer": {"agitation": [{"t": 2.0, "value": 0.2}, {"t": 20.0, "value": 0.85}]},
             "agent": {"agitation": []}},
    "talk_over": [{"start": 18.0, "end": 19.0, "by": "customer"},
                  {"start": 21.0, "end": 21.6, "by": "customer"},
                  {"start": 30.0, "end": 30.4, "by": "agent"}],
}


def test_agitation_and_talk_over_make_a_grenade_and_raise_the_escalation(matcher):
    lines = [{"speaker": "customer", "text": "我的号码怎么停了", "start": 1.0, "end": 3.0},
             {"speaker": "agent", "text": "您好 我帮您查一下", "start": 3.5, "end": 5.0},
             {"speaker": "customer", "text": "你们到底什么意思", "start": 19.0, "end": 22.0},
             {"speaker": "customer", "text": "马上给我恢复", "start": 40.0, "end": 42.0}]
    cards = cards_from_matcher(matcher, lines)
    calm = read_call(lines, cards, None)
    hot = read_call(lines, cards, AGITATED_STATS)
    assert calm.customer_type.key == "ordinary"
    assert hot.customer_type.key == "grenade"
    assert [e.turn.utterance for e in hot.customer_type.evidence] == [1], "the turn nearest the peak"
    factors = {f.name: f.value for f in hot.escalation.factors}
    assert factors["agitation"] == pytest.approx(0.85 * FACTOR_CAPS["agitation"])
    assert factors["talk_over"] > 0, "only the customer's two talk-overs count"
    assert hot.escalation.score > calm.escalation.score


# --- the escalation score -------------------------------------------------------------------

def test_escalation_score_names_its_factors_caps_them_and_keeps_the_risk_levels():
    quiet = escalation_score([])
    assert quiet.score == 0 and [f.name for f in quiet.factors] == list(FACTOR_CAPS)
    one = escalation_score([("media_exposure", "critical")])
    two = escalation_score([("media_exposure", "critical"), ("regulator_complaint", "critical")])
    assert 0 < one.score < two.score
    worst = escalation_score([("media_exposure", "critical")] * 9 + [("extortion", "critical"),
                              ("lawsuit_threat", "warning"), ("violence_threat", "critical")],
                             repeats=9, agitation=3.0, talk_overs=40, seconds=3600)
    assert worst.score == 100
    assert all(f.value <= FACTOR_CAPS[f.name] for f in worst.factors)
    longer = escalation_score([], seconds=600)
    assert longer.score == 5 and escalation_score([], seconds=60).score == 0
    assert call_risk([("media_exposure", "critical")]) == "critical"     # unchanged
    assert worst.to_dict()["factors"][0] == {"name": "triggers", "label": "触发提示", "value": 40.0}


# --- the dev set ------------------------------------------------------------------------------

def test_dev_sets_per_type_precision_and_recall(matcher):
    """Both labelled dev files are the model's training data, so this is a floor that catches
    a model out of step with the features, not a measure of accuracy: the train script
    prints the cross-validated figures."""
    for path in TRAIN_FILES:
        calls = read_calls(path)
        assert len(calls) >= 40
        result = evaluate_calls(matcher, calls)
        for kind in ("complaint_type", "customer_type", "interest"):
            print(path.name, kind, {v: (round(s.precision, 2), round(s.recall, 2))
                                    for v, s in result.per_label[kind].items()})
            assert result.correct[kind] / result.calls >= 0.8, (path.name, kind)
        every = {v for kind in result.per_label.values() for v in kind}
        assert {"venting", "justice", "extortion", "publicity", "attack", "chameleon", "grenade",
                "know_it_all", "professional", "violent", "publicizer"} <= every


# --- the learned model ------------------------------------------------------------------------

def test_the_bundled_model_was_trained_on_the_dev_files_only_and_on_todays_features():
    model = load_reading_model()
    assert sorted(model.meta["files"]) == sorted(p.name for p in TRAIN_FILES)
    assert not any("blind" in f for f in model.meta["files"])
    assert model.names == tuple(features_of(customer("你好")))
    assert set(model.heads) == {"complaint_type", "customer_type", "interest"}


def test_a_model_trained_on_other_features_is_refused_with_how_to_retrain(tmp_path):
    lines = customer("我要精神赔偿", "不给钱我就去曝光", "至少五千块")
    good = load_reading_model()
    assert read_call(lines, model=good).complaint_type.key == "extortion"      # positive control
    stale = ReadingModel(good.names[:-1] + ("family:retired",), good.mean, good.scale, good.heads, good.meta)
    stale.save(tmp_path / "stale.npz")
    with pytest.raises(ReadingModelError, match="call_reading_train"):
        read_call(lines, model=load_reading_model(tmp_path / "stale.npz"))


def test_fit_learns_a_separable_problem_and_folds_partition_every_label():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 4))
    y = np.argmax(z[:, :3] * [2.0, 1.0, 1.5], axis=1)                # three linearly separable classes
    w, b = fit(z, y, 3, 0.001)
    assert np.mean(predict(w, b, z) == y) >= 0.9
    assert np.mean(predict(*fit(z, y, 3, 100.0), z) == y) < 0.9, "a huge L2 cannot fit it"
    folds = stratified_folds(y, 5, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))
    for label in np.unique(y):
        sizes = [int(np.sum(y[f] == label)) for f in folds]
        assert max(sizes) - min(sizes) <= 1


def test_training_writes_a_model_read_call_uses(tmp_path):
    data = load_dataset(TRAIN_FILES[:1])
    out = io.StringIO()
    with redirect_stdout(out):
        model = train(data, tmp_path / "model.npz", strengths=(0.3,), repeats=1)
    assert "cross-validated" in out.getvalue() and "precision" in out.getvalue()
    loaded = load_reading_model(tmp_path / "model.npz")
    assert loaded.names == model.names and loaded.meta["files"] == [TRAIN_FILES[0].name]
    lines = customer("我要精神赔偿", "不给钱我就去曝光", "至少五千块")
    assert read_call(lines, model=loaded).complaint_type.key == "extortion"


def test_eval_calls_prints_per_type_figures_and_names_a_bad_line(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["eval-calls", str(CALLS_DEV_FILE)]) == 0
    text = out.getvalue()
    assert "complaint_type" in text and "know_it_all" in text and "precision" in text
    bad = tmp_path / "bad.jsonl"
    good = CALLS_DEV_FILE.read_text(encoding="utf-8").splitlines()[0]
    bad.write_text(good + "\n" + json.dumps({"id": "x", "complaint_type": "angry"}) + "\n", encoding="utf-8")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert cli_main(["eval-calls", str(bad)]) == 2
    assert f"{bad}:2" in err.getvalue() and "complaint_type" in err.getvalue()


# --- the event and the live reader ---------------------------------------------------------------

def test_call_reading_event_round_trips_and_is_stored(tmp_path, matcher):
    lines = customer("我要精神赔偿", "不给钱我就去曝光", "至少五千块")
    reading = read_call(lines, cards_from_matcher(matcher, lines)).to_dict()
    event = CallReadingUpdated("c-1", reading)
    assert EVENT_TYPES["CallReadingUpdated"] is CallReadingUpdated
    wire = json.loads(json.dumps(event_to_dict(event), ensure_ascii=False))
    assert event_from_dict(wire) == event
    store = open_store(make_config(tmp_path))
    try:
        store.events.record(CallStarted("c-1", at=1.0))
        seq = store.events.record(event)
        stored = [e for s, e in store.events.events_since(0) if s == seq]
        assert stored and stored[0]["reading"]["complaint_type"]["key"] == "extortion"
    finally:
        store.close()


def card(card_id: str, category: str, severity: str, utterance: int, text: str) -> Card:
    return Card(card_id, category, category, severity, "customer", text, text, 100.0, 0.0, 1.0,
                utterance, (), (), False)


async def _run_live(tmp_path: Path, interval: float):
    store = open_store(make_config(tmp_path))
    bus = EventBus()
    recorder = asyncio.create_task(store.events.run(bus))
    reader = LiveReader(bus.publish, store, interval=interval)
    follower = asyncio.create_task(reader.run(bus))
    seen: list[CallReadingUpdated] = []
    watch = bus.subscribe()

    async def collect() -> None:
        async for event in watch:
            if isinstance(event, CallReadingUpdated):
                seen.append(event)
    collector = asyncio.create_task(collect())
    return store, bus, reader, seen, [recorder, follower, collector]


LIVE_LINES = ["我这个月话费多扣了两百块", "我要精神赔偿 五千块", "不给钱我就去找媒体曝光",
              "一万块 少一分都不行", "我告诉你 你们等着"]


def publish_line(bus: EventBus, call_id: str, n: int, text: str) -> None:
    bus.publish(TranscriptUpdate(call_id, "customer", n, text, 4.0 * n, 4.0 * n + 3, final=True))


@pytest.mark.asyncio
async def test_live_reader_waits_for_three_turns_reads_at_most_once_per_interval_and_stores_the_final(tmp_path):
    store, bus, reader, seen, tasks = await _run_live(tmp_path, interval=3600.0)
    try:
        bus.publish(CallStarted("live-1", at=1.0))
        publish_line(bus, "live-1", 0, LIVE_LINES[0])
        publish_line(bus, "live-1", 1, LIVE_LINES[1])
        bus.publish(CardFired("live-1", card("k1", "mental_distress_compensation", "warning", 1, LIVE_LINES[1])))
        await until(lambda: len(store.events.events_since(0)) >= 4)
        assert seen == [], "two customer turns: not read yet"
        publish_line(bus, "live-1", 2, LIVE_LINES[2])          # the third: read now
        bus.publish(CardFired("live-1", card("k2", "extortion", "critical", 2, LIVE_LINES[2])))
        await until(lambda: len(seen) >= 1)
        publish_line(bus, "live-1", 3, LIVE_LINES[3])
        publish_line(bus, "live-1", 4, LIVE_LINES[4])
        live = reader.calls["live-1"]
        await until(lambda: live.customer_turns == 5 and live.dirty)   # changes after the reading
        await until(lambda: len(store.events.events_since(0)) >= 9)   # every line and card recorded
        assert len(seen) == 1, "within the interval the changes wait"
        assert seen[0].reading["final"] is False and seen[0].reading["customer_turns"] >= 3
        bus.publish(CallEnded("live-1", 20.0))
        await until(lambda: len(seen) == 2)
        await reader.drain()
        final = seen[1].reading
        assert final["final"] is True and final["customer_turns"] == 5
        assert final["complaint_type"]["key"] == "extortion"
        assert final["escalation"]["score"] >= 30
        await until(lambda: (store.analytics.get("live-1") or {}).get("reading") is not None)
        assert store.analytics.get("live-1")["reading"] == final
        # the post-call transcript replaces the stored reading with one read from it
        bus.publish(TranscriptRevised("live-1", "whisper", tuple(
            TranscriptLine("customer", 4.0 * n, 4.0 * n + 3, text) for n, text in enumerate(LIVE_LINES))))
        await until(lambda: store.analytics.get("live-1")["reading"].get("transcript") == "whisper")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()


@pytest.mark.asyncio
async def test_live_reader_with_no_interval_reads_every_change(tmp_path):
    """Positive control of the interval above: the same lines with interval 0 give a
    reading per change once three customer turns are in."""
    store, bus, reader, seen, tasks = await _run_live(tmp_path, interval=0.0)
    try:
        bus.publish(CallStarted("live-2", at=1.0))
        for n, text in enumerate(LIVE_LINES):
            publish_line(bus, "live-2", n, text)
            if n >= 2:
                await until(lambda n=n: len(seen) >= n - 1)
        assert len(seen) == 3
        assert [e.reading["customer_turns"] for e in seen] == [3, 4, 5]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
