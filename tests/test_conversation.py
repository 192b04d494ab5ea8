"""Conversation analytics against calls whose truth is built in (tests/conversation_calls.py:
real TTS and Mandarin audio mixed into two legs with known talk, overlaps and silences).
Bounds are generous; benchmarks/bench_conversation.py prints the actual errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

import conversation_calls as calls
from callassist.conversation import ConversationTracker, Voice, agitation, analyse_call, yin_pitch
from callassist.sentiment import sentiment, spoken_chars

pytestmark = pytest.mark.skipif(not calls.available(), reason="needs ../shared/audio")


@pytest.fixture(scope="module")
def call() -> calls.MixedCall:
    return calls.complaint_call()


@pytest.fixture(scope="module")
def stats(call):
    return analyse_call(call.legs, call.lines).to_dict()


def test_talk_time_per_leg_within_0_3_s(call, stats):
    for speaker in ("customer", "agent"):
        assert stats["legs"][speaker]["talk_seconds"] == pytest.approx(call.talk_seconds(speaker), abs=0.3)
    shares = [stats["legs"][s]["talk_share"] for s in ("customer", "agent")]
    assert sum(shares) == pytest.approx(1.0, abs=0.002) and shares[0] > shares[1]


def test_every_overlap_is_found_with_who_cut_in(call, stats):
    truth = [o for o in call.overlaps() if o["end"] - o["start"] >= 0.5]
    assert {o["by"] for o in truth} == {"customer", "agent"}, "the call has both kinds"
    for o in truth:
        found = [m for m in stats["talk_over"] if m["start"] < o["end"] and o["start"] < m["end"]]
        assert len(found) == 1, (o, stats["talk_over"])
        assert found[0]["by"] == o["by"]
        assert found[0]["start"] == pytest.approx(o["start"], abs=0.3)
        assert found[0]["end"] == pytest.approx(o["end"], abs=0.3)
    assert len(stats["talk_over"]) == len(truth)


def test_silences_found_within_0_3_s_and_short_pauses_are_not(call, stats):
    truth = call.silences(5.0)
    assert len(truth) == 2
    assert len(stats["silences"]) == len(truth)
    for found, expected in zip(stats["silences"], truth):
        assert found["start"] == pytest.approx(expected["start"], abs=0.3)
        assert found["end"] == pytest.approx(expected["end"], abs=0.3)
    # positive control: the 3.5 s pause is there, just under the 5 s threshold
    shorter = analyse_call(call.legs, call.lines, min_silence=3.0).to_dict()["silences"]
    assert len(shorter) == len(call.silences(3.0)) == 3


def test_agitated_rendering_scores_higher_than_calm_on_most_sentences(call, stats):
    points = stats["legs"]["customer"]["agitation"]
    customer_lines = [line for line in call.lines if line["speaker"] == "customer"]
    assert len(points) == len(customer_lines)
    value = {}
    for line, point in zip(customer_lines, points):
        assert point["t"] == pytest.approx(line["start"], abs=0.01)
        value[line["clip"]] = point["value"]            # the later (post-baseline) calm one wins
    higher = sum(value[f"agitated/s{i}"] > value[f"calm/s{i}"] for i in range(1, 6))
    assert higher >= 3, value
    assert all(0.0 <= p["value"] <= 1.0 for p in points)


def test_speaking_rate_from_the_transcript(call, stats):
    for speaker in ("customer", "agent"):
        chars = sum(spoken_chars(line["text"]) for line in call.lines if line["speaker"] == speaker)
        truth = chars / call.talk_seconds(speaker) * 60
        assert stats["legs"][speaker]["speaking_rate"] == pytest.approx(truth, rel=0.05)


def test_pitch_and_loudness_follow_a_known_change_of_a_real_voice():
    """A real speaker played 1.15x faster (pitch x1.15) and 4 dB louder."""
    for key in ("01", "03", "07", "09"):
        clip = calls.clip(f"real/{key}")
        plain = analyse_call(calls.mix([("customer", 0.5, clip)]).legs).legs["customer"]
        changed = analyse_call(calls.mix([("customer", 0.5, calls.sped_up(clip, 1.15, 4.0))]).legs).legs["customer"]
        assert changed.pitch_hz / plain.pitch_hz == pytest.approx(1.15, abs=0.04), key
        assert changed.loudness_db - plain.loudness_db == pytest.approx(4.0, abs=1.5), key
        assert 75 < plain.pitch_hz < 400


def test_yin_on_tones_of_known_pitch():
    t = np.arange(4000) / 16000
    for f0 in (90.0, 155.0, 240.0, 380.0):
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        windows = np.lib.stride_tricks.sliding_window_view(tone, 640)[::160]
        assert np.median(yin_pitch(windows)) == pytest.approx(f0, rel=0.01)
    noise = np.random.default_rng(1).normal(0, 1, (20, 640))
    assert np.isnan(yin_pitch(noise)).mean() > 0.8      # no period: no pitch


def test_agitation_formula():
    base = Voice(loudness=-30.0, pitch=200.0, pitch_range=6.0, rate=300.0)
    assert agitation(base, base) == 0.0
    shouting = Voice(loudness=-20.0, pitch=200.0 * 2 ** (5 / 12), pitch_range=11.0, rate=450.0)
    assert agitation(shouting, base) == 1.0
    quieter = Voice(loudness=-40.0, pitch=150.0, pitch_range=3.0, rate=200.0)
    assert agitation(quieter, base) == 0.0                  # falls are not agitation
    louder_only = Voice(loudness=-26.0, pitch=None, pitch_range=None, rate=None)
    assert agitation(louder_only, base) == pytest.approx(0.5)   # the missing measures are left out
    assert agitation(Voice(None, None, None, 300.0), base) is None


def test_live_tracker_fed_in_frames_agrees_with_the_post_call_analysis(call, stats):
    tracker = ConversationTracker()
    step = 320                                           # 20 ms, as the snoop channels send
    agent_from = int(call.lines[0]["start"] * 16000) // step * step + 8 * step   # the agent joins late
    hold = calls.complaint_call().silences(5.0)[0]
    mid = None
    for pos in range(0, len(call.legs["customer"]), step):
        tracker.feed("customer", call.legs["customer"][pos:pos + step].tobytes())
        if pos >= agent_from:
            tracker.feed("agent", call.legs["agent"][pos:pos + step].tobytes(), pos)
        if mid is None and pos / 16000 >= hold["start"] + 5.5:
            mid = tracker.snapshot().to_dict()
    for line in call.lines:
        tracker.add_line(line)
    final = tracker.snapshot(ended=True).to_dict()
    assert json.loads(json.dumps(final)) == stats         # JSON-able, and the same as post-call
    # mid-hold, live: the hold going on now is already a silence, up to now
    assert mid["silences"] and mid["silences"][-1]["start"] == pytest.approx(hold["start"], abs=0.3)
    assert mid["silences"][-1]["end"] == pytest.approx(mid["duration"], abs=0.05)
    assert mid["legs"]["agent"]["talk_seconds"] > 0 and mid["sentiment"] == []


def test_a_transcript_without_audio_gives_rate_and_sentiment_only():
    tracker = ConversationTracker()
    tracker.add_line({"speaker": "customer", "start": 1.0, "end": 4.0, "text": "你们乱扣我话费，我要精神赔偿！"})
    tracker.add_line({"speaker": "agent", "start": 4.5, "end": 6.5, "text": "非常抱歉，我马上为您核实。"})
    out = tracker.snapshot(ended=True).to_dict()
    assert out["legs"]["customer"]["speaking_rate"] == pytest.approx(13 / 3.0 * 60, rel=0.01)
    assert out["legs"]["customer"]["talk_seconds"] == 0 and out["legs"]["customer"]["agitation"] == []
    assert [p["t"] for p in out["sentiment"]] == [1.0] and out["sentiment"][0]["value"] < -0.5
    assert out["duration"] == 6.5 and out["silences"] == [] and out["talk_over"] == []


@pytest.mark.parametrize("text, sign", [
    ("你们乱扣我话费，我要精神赔偿。", -1),
    ("再不解决我就找记者曝光你们。", -1),
    ("我 要 去 工信部 投诉 你们", -1),          # Vosk's spaces
    ("我不满意", -1),
    ("不是很满意", -1),                         # negated praise
    ("好的，谢谢你，辛苦了", 1),
    ("没问题，你们服务不错", 1),
    ("我不生气，就是想问清楚", 1),               # negated complaint: mildly positive
    ("我想查一下我的套餐", 0),
    ("不好意思，请问营业厅几点开门", 0),          # 不好意思 is politeness, not 不好
])
def test_sentiment_signs(text, sign):
    value = sentiment(text)
    assert -1.0 <= value <= 1.0
    assert (value > 0.1) - (value < -0.1) == sign, value


def test_sentiment_intensifiers_and_exclamations_strengthen():
    assert sentiment("我生气") > sentiment("我非常生气") > -1.0
    assert sentiment("太过分了") > sentiment("太过分了！！！")
    assert sentiment("我不生气") > 0 > sentiment("我生气")
