"""TTS test calls (callassist/testcalls.py) and the call set tests/calls.toml.

Uses the real shared TTS voice (onnxruntime); skipped with the reason when it is missing.
Synthesis goes to a per-session temporary cache so "cached" is really tested; the last
test renders the whole call set through the user's default cache (slow only the first time).
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from callassist import testcalls
from callassist.testcalls import (
    AGITATED, CallScript, CallScriptError, Synthesizer, TtsUnavailableError, Turn, build_call,
    find_tts_model, from_telephone, load_calls, telephone_band,
)

RATE = 16000
SILENT = 8          # |sample| at or below this is digital silence (dither-free zeros in practice)
CATEGORIES_WANTED = {
    "mental_distress_compensation", "media_exposure", "regulator_complaint", "lawsuit_threat",
    "unauthorized_charge", "excessive_compensation", "double_refund", "base_station_radiation",
    "privacy_leak", "network_quality", "bill_shock", "service_suspension", "unfair_terms",
    "false_advertising", "apology_demand", "supervisor_demand", "violence_threat",
    "repeated_complaint", "agent_forbidden_phrase",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    try:
        model_dir = find_tts_model()
    except TtsUnavailableError as exc:
        pytest.skip(str(exc))
    return Synthesizer(model_dir, cache_dir=tmp_path_factory.mktemp("tts-cache"))


@pytest.fixture(scope="module")
def three_turn_call(synth):
    script = CallScript("t", (
        Turn("customer", "我要去工信部投诉你们。", pause=0.4, agitated=True, expect=("regulator_complaint",)),
        Turn("agent", "您先别着急。", pause=0.6),
        Turn("customer", "好的，谢谢。", pause=0.5),
    ))
    return build_call(script, synthesizer=synth)


def frame_rms(x: np.ndarray, frame: int = RATE // 100) -> np.ndarray:
    n = len(x) // frame
    return np.sqrt(np.mean(x[:n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1))


def band_fraction(x: np.ndarray, rate: int, low: float, high: float = np.inf) -> float:
    """Share of the signal's energy between `low` and `high` Hz."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


# ---------------------------------------------------------------- synthesis

def test_synthesis_gives_speech_and_is_cached(synth, tmp_path):
    before = synth.synthesized
    pcm = synth.synthesize("你好，我想查一下话费。")
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert 1.0 < len(pcm) / RATE < 5.0
    assert frame_rms(pcm).max() > 1000                      # real speech, not a whisper
    assert synth.synthesized == before + 1
    assert synth.cache_path("你好，我想查一下话费。", testcalls.CALM).is_file()

    again = synth.synthesize("你好，我想查一下话费。")
    assert synth.synthesized == before + 1                  # no second model run
    assert np.array_equal(again, pcm)                       # the model is stochastic: equal = cache hit
    fresh = Synthesizer(synth.model_dir, cache_dir=synth.cache_dir)
    assert np.array_equal(fresh.synthesize("你好，我想查一下话费。"), pcm)
    assert fresh.synthesized == 0 and fresh.cached == 1


def test_agitated_voice_is_faster_and_cached_separately(synth):
    calm = synth.synthesize("你们再不解决我就找记者曝光。")
    agitated = synth.synthesize("你们再不解决我就找记者曝光。", agitated=True)
    assert synth.cache_path("你们再不解决我就找记者曝光。", AGITATED) != \
        synth.cache_path("你们再不解决我就找记者曝光。", testcalls.CALM)
    assert len(agitated) < 0.95 * len(calm)                 # speed ratio 0.85


def test_speech_is_trimmed_to_its_edges(synth):
    pcm = synth.synthesize("我要去工信部投诉你们。")
    rms = frame_rms(pcm)
    loud = np.flatnonzero(rms > 150)
    assert loud[0] <= 5 and loud[-1] >= len(rms) - 6        # at most ~50 ms of quiet at either end


def test_damaged_cache_file_is_replaced(synth):
    path = synth.cache_path("好的，谢谢。", testcalls.CALM)
    synth.synthesize("好的，谢谢。")
    path.write_bytes(b"not numpy")
    pcm = synth.synthesize("好的，谢谢。")
    assert len(pcm) > RATE // 2 and np.load(path).shape == pcm.shape


def test_empty_text_and_missing_voice_give_clear_errors(synth, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        synth.synthesize("  ")
    with pytest.raises(TtsUnavailableError, match="missing fastspeech2_quan.onnx"):
        find_tts_model({"CALLASSIST_TTS_MODEL": str(tmp_path)})


# ---------------------------------------------------------------- building calls

def test_build_call_puts_customer_left_agent_right(three_turn_call, tmp_path):
    call = three_turn_call
    assert call.audio.dtype == np.int16 and call.audio.shape[1] == 2 and call.sample_rate == RATE
    for t in call.turns:
        own, other = call.channel(t.speaker), call.channel("agent" if t.speaker == "customer" else "customer")
        a, b = int(t.start * RATE), int(t.end * RATE)
        assert frame_rms(own[a:b]).max() > 1000, t
        assert np.abs(other[a:b]).max() <= SILENT, t
    assert call.pcm("customer") == call.audio[:, 0].astype("<i2").tobytes()

    path = call.write_wav(tmp_path / "call.wav")
    data, rate = sf.read(path, dtype="int16")
    assert rate == RATE and np.array_equal(data, call.audio)
    narrow, rate8 = sf.read(call.write_wav(tmp_path / "call8.wav", rate=8000), dtype="int16")
    assert rate8 == 8000 and narrow.shape[1] == 2 and abs(len(narrow) - len(data) / 2) <= 2


def test_turn_times_match_the_audio_energy(three_turn_call):
    call = three_turn_call
    step = 0.01
    for speaker in ("customer", "agent"):
        loud = np.flatnonzero(frame_rms(call.channel(speaker)) > 150) * step
        windows = [(t.start, t.end) for t in call.turns if t.speaker == speaker]
        # every loud 10 ms frame lies inside one of the speaker's turns ...
        assert all(any(s - step <= x <= e for s, e in windows) for x in loud), speaker
        # ... and each turn starts and ends within 50 ms of its loud frames
        for s, e in windows:
            inside = loud[(loud >= s - step) & (loud <= e)]
            assert abs(inside[0] - s) < 0.05 and abs(inside[-1] + step - e) < 0.05
    # turns follow each other with their pauses; the call ends after a short tail
    for prev, t in zip(call.turns, call.turns[1:]):
        assert t.start == pytest.approx(prev.end + t.turn.pause, abs=1 / RATE)
    assert call.turns[0].start == pytest.approx(0.4, abs=1 / RATE)
    assert call.duration == pytest.approx(call.turns[-1].end + 0.5, abs=1 / RATE)
    assert call.expectations() == [("regulator_complaint", "customer", call.turns[0].start, call.turns[0].end)]


def test_scripted_utterances_follow_the_turns(three_turn_call):
    script = three_turn_call.scripted_utterances()
    assert [u.text for u in script["customer"]] == ["我 要 去 工 信 部 投 诉 你 们", "好 的 谢 谢"]
    assert script["agent"][0].start == three_turn_call.turns[1].start


def test_build_call_rejects_an_empty_script(synth):
    with pytest.raises(CallScriptError, match="no turns"):
        build_call(CallScript("empty", ()), synthesizer=synth)


# ---------------------------------------------------------------- telephone line

def test_telephone_band_removes_everything_above_3400_hz(synth):
    speech = synth.synthesize("我已经请了律师，准备起诉你们。")
    narrow = telephone_band(speech)
    assert narrow.dtype == np.int16 and abs(len(narrow) - len(speech) / 2) <= 2
    assert band_fraction(speech, RATE, 3500) > 0.005        # the wide-band voice has highs ...
    assert band_fraction(narrow, 8000, 3500) < 1e-3         # ... the line does not
    assert band_fraction(narrow, 8000, 0, 200) < 1e-3       # nor the lowest bass
    back = from_telephone(narrow)
    assert len(back) == pytest.approx(len(speech), abs=4)
    assert band_fraction(back, RATE, 3500) < 1e-3


def test_telephone_filter_on_white_noise():
    noise = (np.random.default_rng(1).standard_normal(RATE * 2) * 3000).astype(np.int16)
    narrow = telephone_band(noise, ulaw=False)
    spectrum = np.abs(np.fft.rfft(narrow.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(narrow), 1 / 8000)
    passband = spectrum[(freqs > 500) & (freqs < 3000)].mean()
    assert spectrum[freqs > 3600].mean() < passband * 1e-4   # > 40 dB down
    assert spectrum[freqs < 150].mean() < passband * 1e-3


def test_build_call_on_the_telephone_band(synth):
    script = CallScript("tel", (Turn("customer", "我要去工信部投诉你们。", pause=0.2),), telephone=True)
    call = build_call(script, synthesizer=synth)
    assert call.telephone and call.sample_rate == RATE
    assert band_fraction(call.channel("customer"), RATE, 3500) < 1e-3
    assert not build_call(script, telephone=False, synthesizer=synth).telephone


# ---------------------------------------------------------------- call sets

def test_load_calls_reports_bad_scripts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[call]]\nid = "x"\n[[call.turn]]\nspeaker = "caller"\ntext = "你好"\n', encoding="utf-8")
    with pytest.raises(CallScriptError, match=r"call #1 \(x\) turn #1: speaker must be one of"):
        load_calls(bad)
    bad.write_text('[[call]]\nid = "x"\n[[call.turn]]\nspeaker = "agent"\ntext = "你好"\nexpct = ["a"]\n',
                   encoding="utf-8")
    with pytest.raises(CallScriptError, match="unknown key"):
        load_calls(bad)
    bad.write_text('[[call]]\nid = "x"\n[[call.turn]]\nspeaker = "agent"\ntext = "a"\n' * 2, encoding="utf-8")
    with pytest.raises(CallScriptError, match="used twice"):
        load_calls(bad)
    bad.write_text("[[call]\n", encoding="utf-8")
    with pytest.raises(CallScriptError, match="not valid TOML"):
        load_calls(bad)
    with pytest.raises(CallScriptError, match="no such file"):
        load_calls(tmp_path / "missing.toml")


def test_call_set_covers_the_playbook_and_its_words_mean_what_they_expect():
    from callassist.config import load_config
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    playbook = load_playbook()
    by_id = {c.id: c for c in playbook.categories}
    # the product's recogniser (phrases and intent model), so a turn may say things in
    # words the playbook does not list
    matcher = Matcher.from_config(playbook, load_config().matcher)
    calls = load_calls()
    assert 12 <= len(calls) <= 20
    assert sum(c.neutral for c in calls) >= 3
    assert any(c.telephone for c in calls) and any(not c.telephone for c in calls)
    assert any(t.agitated for c in calls for t in c.turns) and any(not t.agitated for c in calls for t in c.turns)
    assert CATEGORIES_WANTED <= {cat for c in calls for cat in c.categories}
    expected = found = 0
    wrong = []
    for call in calls:
        for t in call.turns:
            for cat in t.expect:
                assert cat in by_id, f"{call.id}: unknown category {cat}"
                assert by_id[cat].speaker == t.speaker, f"{call.id}: {cat} is a {by_id[cat].speaker} category"
            # the words themselves (before any ASR error) mean what the turn expects; the
            # recogniser is statistical, so this is an aggregate, as on audio
            fired = {m.category.id for m in matcher.match(t.text, t.speaker)}
            expected += len(t.expect)
            found += len(fired & set(t.expect))
            wrong += [(call.id, t.text, cat) for cat in fired - set(t.expect)]
    assert found >= 0.95 * expected, f"the scripts' own words: {found}/{expected} expectations met"
    assert len(wrong) <= 1, f"categories fired that no turn expects: {wrong}"


@pytest.mark.slow
def test_every_call_renders_within_10_to_25_seconds():
    """Uses the default cache (~/.cache/callassist/tts): about 20 s of synthesis the first time."""
    try:
        find_tts_model()
    except TtsUnavailableError as exc:
        pytest.skip(str(exc))
    for script in load_calls():
        call = build_call(script)
        assert 10.0 <= call.duration <= 25.0, f"{script.id}: {call.duration:.1f} s"
