"""End to end: the TTS call set (tests/calls.toml) through `analyze` with real Whisper base.

Each call is rendered by callassist.testcalls (utterances cached on disk), recognised by
Whisper base through analyze_recording (the product's CallPipeline: silence gate, one
recogniser stream per leg, incremental matcher), and scored with the benchmark's own
scoring (benchmarks/bench_analyze.py, so the test and the benchmark agree): an expected
category is hit when it fires on the turn's speaker with the trigger's [start, end] within
1 s of the turn's [start, end] (a category the same speaker repeats within its cooldown is
carded once by design, so such repeats form one episode, hit by a trigger on any of its
turns: bench_analyze.Episode); every other trigger, on a turn without `expect` or anywhere
in a neutral call, is a false trigger.

What Whisper base hears changes with the package versions of the recogniser and of the
TTS voice (constraints.txt pins them; without the pins a fresh machine hears other words),
so nothing here hinges on one turn's transcript. The assertions are aggregate floors over
the calls run: recall at least MIN_RECALL, false triggers at most MAX_FALSE_TRIGGERS. Each
miss and false trigger is printed with what was said and what was heard (information, not
an assertion); test_the_floors_reject_a_broken_pipeline shows the floors can fail.

Every call runs (about 200 s of audio; Whisper base needs ~1.1 s of CPU per second of
stereo call here, so ~4 CPU minutes). CALLASSIST_E2E_QUICK=1 runs a representative subset
(E2E_CALLS: wideband and telephone band, calm and agitated, customer and agent categories,
neutral calls). benchmarks/bench_analyze.py runs every call in both bands.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType

import pytest

from callassist.analyze import AnalysisResult
from callassist.config import PROJECT_ROOT, load_config
from callassist.testcalls import BuiltCall, CallScript, TtsUnavailableError, build_call, load_calls
from prompts.matcher import Matcher
from prompts.playbook import Playbook, load_playbook

pytestmark = pytest.mark.slow

# Floors over the calls run, a little below what is measured here with constraints.txt
# (ctranslate2 4.8.5, faster-whisper 1.2.1, onnxruntime 1.32.0), the product's engine (Whisper
# base with the playbook's biasing terms) and matcher (phrases + intent model): 22/23 episodes
# (95.7 %) and 1 false trigger over the 17 calls (without biasing 21/23, 1; phrases alone 21/23, 0). Whisper base mishears a few words (月话费 as 烟花贝, 双倍返还
# as 商品反馆); which ones changes with package versions, so no single miss is asserted
# (20/23 passes, 19/23 fails). A pipeline that loses a leg, shifts times or stops matching
# falls far below the recall floor.
MIN_RECALL = 0.85
MAX_FALSE_TRIGGERS = 2      # triggers near no expected turn, neutral calls included

E2E_CALLS = (                               # the CALLASSIST_E2E_QUICK=1 subset
    "regulator_agitated",                   # wideband, agitated, a cooled repeat
    "lawsuit_calm",                         # wideband, calm
    "media_exposure_telephone",             # telephone band, two categories on one turn
    "unauthorized_charge_mental_distress",  # wideband, agitated
    "agent_forbidden_brushoff_telephone",   # telephone band, agent-side category
    "neutral_balance_query",                # neutral, wideband
    "neutral_password_reset_telephone",     # neutral, telephone band
)


def _quick() -> bool:
    return os.environ.get("CALLASSIST_E2E_QUICK", "") not in ("", "0")


def _load_bench() -> ModuleType:
    path = PROJECT_ROOT / "benchmarks" / "bench_analyze.py"
    spec = importlib.util.spec_from_file_location("bench_analyze", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="session")
def scripts() -> dict[str, CallScript]:
    calls = {c.id: c for c in load_calls()}
    missing = set(E2E_CALLS) - set(calls)
    assert not missing, f"E2E_CALLS names calls not in tests/calls.toml: {sorted(missing)}"
    return calls


@pytest.fixture(scope="session")
def playbook() -> Playbook:
    return load_playbook()


@pytest.fixture(scope="session")
def built(scripts):
    """call id -> the call rendered by the TTS voice (cached on disk), no recogniser."""
    cache: dict[str, BuiltCall] = {}

    def get(call_id: str) -> BuiltCall:
        if call_id not in cache:
            try:
                cache[call_id] = build_call(scripts[call_id])
            except TtsUnavailableError as exc:
                pytest.skip(str(exc))
        return cache[call_id]

    return get


@dataclass
class Analysed:
    call: BuiltCall
    result: AnalysisResult


@pytest.fixture(scope="session")
def product_whisper_engine(whisper_base_model_dir):
    """Whisper base as the product builds it: create_engine with the default configuration,
    so with the playbook's biasing terms (asr.biasing)."""
    from asr import create_engine
    engine = create_engine(load_config(), name="whisper", model=whisper_base_model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def analysed(built, playbook, product_whisper_engine):
    """call id -> the call rendered and analysed once per session (lazily)."""
    matcher = Matcher.from_config(playbook, load_config().matcher)   # as the product runs
    whisper_engine = product_whisper_engine
    cache: dict[str, Analysed] = {}

    def get(call_id: str) -> Analysed:
        if call_id not in cache:
            call = built(call_id)
            cache[call_id] = Analysed(call, asyncio.run(bench.analyze_call(call, whisper_engine, matcher)))
        return cache[call_id]

    return get


def selected_calls() -> list[str]:
    return list(E2E_CALLS) if _quick() else [c.id for c in load_calls()]


def transcript(item: Analysed) -> str:
    lines = [f"  turn {t.index} {t.speaker:8s} {t.start:6.2f}-{t.end:6.2f} expect={list(t.expect)} {t.text}"
             for t in item.call.turns]
    lines += [f"  heard   {u['speaker']:8s} {u['start']:6.2f}-{u['end']:6.2f} {u['text']}"
              for u in item.result.utterances]
    lines += [f"  fired   {t['speaker']:8s} {t['start']:6.2f}-{t['end']:6.2f} {t['category']} "
              f"~{t['phrase']} ({t['score']})" for t in item.result.triggers]
    return "\n".join(lines)


def heard(item: Analysed, speaker: str, start: float, end: float, slack: float = 0.5) -> str:
    """What the recogniser heard on `speaker`'s leg over [start, end] (give or take slack)."""
    texts = [u["text"] for u in item.result.utterances
             if u["speaker"] == speaker and u["start"] < end + slack and u["end"] > start - slack]
    return " / ".join(texts) or "(nothing)"


def report(item: Analysed, score) -> list[str]:
    """One line per missed episode and per false trigger, with what was said and heard."""
    lines = []
    for episode in score.misses:
        said = " | ".join(e.text for e in episode.expected)
        heard_ = " | ".join(heard(item, e.speaker, e.start, e.end) for e in episode.expected)
        lines.append(f"  missed {episode.first.category} ({episode.first.speaker}, "
                     f"{item.call.script.id} turn {[e.turn for e in episode.expected]}): "
                     f"said {said!r}, heard {heard_!r}")
    for trigger in score.false:
        lines.append(f"  false  {trigger['category']} ({trigger['speaker']}, {item.call.script.id} "
                     f"{trigger['start']:.2f}-{trigger['end']:.2f}): heard {trigger['text']!r} "
                     f"~ {trigger['phrase']!r}")
    return lines


def floor_problems(hits: int, expected: int, false: int) -> list[str]:
    """The aggregate assertions: empty when the call set meets both floors."""
    problems = []
    if not expected or hits / expected < MIN_RECALL:
        problems.append(f"recall {hits}/{expected} below the floor of {MIN_RECALL:.0%}")
    if false > MAX_FALSE_TRIGGERS:
        problems.append(f"{false} false triggers, more than the cap of {MAX_FALSE_TRIGGERS}")
    return problems


@pytest.mark.parametrize("call_id", selected_calls())
def test_call_is_heard_on_every_leg_that_speaks(call_id, analysed, playbook):
    """Per call, only what does not hinge on the recogniser's words: each leg that speaks
    is heard on its own channel, inside the call. Misses and false triggers are printed
    (shown with -rP or on failure); test_recall_and_false_triggers_over_the_call_set judges them."""
    item = analysed(call_id)
    score = bench.score_call(item.call, item.result.triggers, playbook)
    print(f"\n{call_id}: {len(score.hits)}/{len(score.episodes)} episodes hit, "
          f"{len(score.false)} false\n" + "\n".join(report(item, score)) + f"\n{transcript(item)}")
    speakers = {t.speaker for t in item.call.turns}
    assert speakers <= {u["speaker"] for u in item.result.utterances}, \
        f"a leg was not heard:\n{transcript(item)}"
    for utterance in item.result.utterances:
        assert 0 <= utterance["start"] <= utterance["end"] <= item.call.duration + 0.05, utterance


def test_recall_and_false_triggers_over_the_call_set(analysed, playbook, capsys):
    hits = expected = false = 0
    lines = []
    for call_id in selected_calls():
        item = analysed(call_id)
        score = bench.score_call(item.call, item.result.triggers, playbook)
        hits += len(score.hits)
        expected += len(score.episodes)
        false += len(score.false)
        lines += report(item, score)
    summary = (f"e2e recall {hits}/{expected} ({hits / max(expected, 1):.1%}, floor {MIN_RECALL:.0%}), "
               f"false triggers {false} (cap {MAX_FALSE_TRIGGERS}) over {len(selected_calls())} calls")
    with capsys.disabled():                 # shown even in -q: the number to watch
        print("\n" + "\n".join([summary, *lines]))
    problems = floor_problems(hits, expected, false)
    assert not problems, "\n".join(problems + lines)


def test_the_floors_reject_a_broken_pipeline(built, playbook):
    """The positive control: the same scoring and floors on made-up triggers. Cards exactly on
    the expected turns pass; no cards, cards on the wrong leg or a few seconds late, or a card
    on every turn fail."""
    calls = [built(call_id) for call_id in selected_calls()]

    def card(category: str, speaker: str, start: float, end: float) -> dict:
        return {"category": category, "speaker": speaker, "start": start, "end": end,
                "text": "", "phrase": "", "score": 100.0}

    def problems(make_triggers) -> list[str]:
        hits = expected = false = 0
        for call in calls:
            score = bench.score_call(call, make_triggers(call), playbook)
            hits, expected, false = hits + len(score.hits), expected + len(score.episodes), false + len(score.false)
        return floor_problems(hits, expected, false)

    def perfect(call: BuiltCall) -> list[dict]:
        return [card(c, t.speaker, t.start, t.end) for t in call.turns for c in t.expect]

    other = {"customer": "agent", "agent": "customer"}
    assert problems(perfect) == []
    assert problems(lambda call: []) and "recall" in problems(lambda call: [])[0]
    wrong_leg = problems(lambda call: [dict(t, speaker=other[t["speaker"]]) for t in perfect(call)])
    assert any("recall" in p for p in wrong_leg) and any("false" in p for p in wrong_leg)
    late = problems(lambda call: [dict(t, start=t["start"] + 3, end=t["end"] + 3) for t in perfect(call)])
    assert any("recall" in p for p in late)
    everywhere = problems(lambda call: perfect(call) + [card("regulator_complaint", t.speaker, t.start, t.end)
                                                        for t in call.turns if not t.expect])
    assert everywhere and all("false" in p for p in everywhere)
