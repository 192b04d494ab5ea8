"""Recall and false triggers of `callassist analyze` on the TTS call set (tests/calls.toml).

    python benchmarks/bench_analyze.py [--calls tests/calls.toml] [--only ID]... [--engine whisper]
                                       [--bands script|both] [--verbose]

Every call is rendered with callassist.testcalls (cached on disk) and run through
analyze_recording, i.e. the product's CallPipeline with a real engine. Each call is
recognised ONCE per band; its transcript updates are then matched three times, by a fresh
CallMatcher: the product's (phrases + intent model), phrases alone with pinyin matching on,
and with it off, so the columns differ only in what the model and pinyin buy, not in ASR
noise.

Recall is counted per episode: the turns of a call expecting one category on one speaker
within that category's cooldown of the first (the product cards such a repeat once; see
Episode). An episode is hit when a trigger of its category and speaker has [start, end]
within TOLERANCE seconds of the [start, end] of one of its turns; every trigger near no
expected turn is a false trigger.

Bands: `script` renders each call as tests/calls.toml says; `both` (default) renders every
call wideband (16 kHz) AND through the telephone band (300-3400 Hz, 8 kHz, mu-law), so the
band comparison is over the same words. Also prints the real-time factor of analyze per
engine (wall time / audio duration, one call at a time, CPU time too).

Vosk: runs only when a Chinese Vosk model is found (asr.models.find_model); the Korean
test model cannot recognise Mandarin, so it is never used here.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from callassist.analyze import AnalysisResult, analyze_recording, summarise  # noqa: E402
from callassist.audio import Recording  # noqa: E402
from callassist.events import CallEvent, TranscriptUpdate  # noqa: E402
from callassist.testcalls import BuiltCall, CallScript, build_call, load_calls  # noqa: E402
from prompts.intent import IntentModel  # noqa: E402
from prompts.matcher import CallMatcher, Matcher  # noqa: E402
from prompts.playbook import Playbook, load_playbook  # noqa: E402

TOLERANCE = 1.0       # seconds between a trigger's start/end and its turn's start/end


# --- running a call -----------------------------------------------------------------

def recording_of(call: BuiltCall) -> Recording:
    """The built call as analyze reads a stereo file: left customer, right agent."""
    return Recording(channels=(call.channel("customer"), call.channel("agent")),
                     sample_rate=call.sample_rate, source_rate=call.sample_rate)


async def analyze_call(call: BuiltCall, engine, matcher: Matcher) -> AnalysisResult:
    return await analyze_recording(recording_of(call), engine, matcher, call_id=call.script.id)


def rematch(result: AnalysisResult, matcher: Matcher, call_id: str = "rematch") -> AnalysisResult:
    """The same transcript updates, in the same order, through a fresh CallMatcher with
    another matcher: what the pipeline would have carded with it, without recognising again."""
    call_matcher = CallMatcher(matcher, call_id)
    events: list[CallEvent] = []
    for event in result.events:
        if isinstance(event, TranscriptUpdate):
            events.append(event)
            events.extend(call_matcher.on_transcript(event.speaker, event.utterance, event.text,
                                                     event.start, event.end, event.final))
    return summarise(events, result.duration)


# --- scoring --------------------------------------------------------------------------

@dataclass(frozen=True)
class Expected:
    call_id: str
    turn: int
    category: str
    speaker: str
    start: float
    end: float
    text: str
    agitated: bool
    telephone: bool


@dataclass
class Episode:
    """Expectations of one category on one speaker's turns, each within the category's
    cooldown of the first: the product cards such an episode once, so one trigger near
    any of its turns is a hit (a customer repeating a threat does not need a second card)."""
    expected: list[Expected]

    @property
    def first(self) -> Expected:
        return self.expected[0]

    @property
    def key(self) -> tuple[str, int, str]:
        """(call id, turn index, category) of the episode's first turn."""
        return self.first.call_id, self.first.turn, self.first.category


@dataclass
class CallScore:
    call_id: str
    telephone: bool
    hits: list[tuple[Episode, dict[str, Any]]] = field(default_factory=list)
    misses: list[Episode] = field(default_factory=list)
    false: list[dict[str, Any]] = field(default_factory=list)

    @property
    def episodes(self) -> list[Episode]:
        return [e for e, _ in self.hits] + self.misses


def expectations(call: BuiltCall) -> list[Expected]:
    return [Expected(call.script.id, t.index, category, t.speaker, t.start, t.end, t.text,
                     t.turn.agitated, call.telephone)
            for t in call.turns for category in t.expect]


def episodes(call: BuiltCall, playbook: Playbook) -> list[Episode]:
    found: list[Episode] = []
    for exp in sorted(expectations(call), key=lambda e: e.start):
        cooldown = playbook.category(exp.category).cooldown
        episode = next((e for e in found if e.first.category == exp.category
                        and e.first.speaker == exp.speaker and exp.start - e.first.start < cooldown), None)
        if episode:
            episode.expected.append(exp)
        else:
            found.append(Episode([exp]))
    return found


def near(trigger: dict[str, Any], exp: Expected, tolerance: float = TOLERANCE) -> bool:
    return (trigger["category"] == exp.category and trigger["speaker"] == exp.speaker
            and abs(trigger["start"] - exp.start) <= tolerance
            and abs(trigger["end"] - exp.end) <= tolerance)


def score_call(call: BuiltCall, triggers: Sequence[dict[str, Any]], playbook: Playbook,
               tolerance: float = TOLERANCE) -> CallScore:
    """Hits and misses per episode; every trigger near no expected turn is a false trigger."""
    score = CallScore(call.script.id, call.telephone)
    unused = list(triggers)
    for episode in episodes(call, playbook):
        matched = [t for t in unused if any(near(t, exp, tolerance) for exp in episode.expected)]
        if matched:
            score.hits.append((episode, matched[0]))
            unused = [t for t in unused if t not in matched]
        else:
            score.misses.append(episode)
    score.false = unused
    return score


@dataclass
class Tally:
    expected: int = 0
    hits: int = 0
    false: int = 0

    @property
    def recall(self) -> float:
        return self.hits / self.expected if self.expected else float("nan")

    def cell(self) -> str:
        recall = f"{100 * self.recall:5.1f}%" if self.expected else "    - "
        return f"{self.hits:3d}/{self.expected:<3d} {recall}  fp {self.false:2d}"


def tally(scores: Iterable[CallScore], *, agitated: bool | None = None) -> Tally:
    """Episodes hit / expected, and false triggers (all of them unless split by agitation,
    where an episode counts as agitated when its first turn is)."""
    out = Tally()
    for s in scores:
        wanted = [e for e in s.episodes if agitated is None or e.first.agitated == agitated]
        out.expected += len(wanted)
        out.hits += sum(1 for e, _ in s.hits if agitated is None or e.first.agitated == agitated)
        if agitated is None:
            out.false += len(s.false)
    return out


# --- the benchmark --------------------------------------------------------------------

@dataclass
class Run:
    """One engine, one call, one band: the ASR result and its scores with and without pinyin."""
    engine: str
    call: BuiltCall
    result: AnalysisResult
    wall: float
    cpu: float
    scores: dict[str, CallScore]          # "intent" / "pinyin" / "chars" -> score


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_engine(name: str, engine, calls: list[BuiltCall], playbook: Playbook,
               matchers: dict[str, Matcher], verbose: bool) -> list[Run]:
    runs = []
    for call in calls:
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = asyncio.run(analyze_call(call, engine, next(iter(matchers.values()))))
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        scores = {mode: score_call(call, rematch(result, m, call.script.id).triggers, playbook)
                  for mode, m in matchers.items()}
        runs.append(Run(name, call, result, wall, cpu, scores))
        band = "tel" if call.telephone else "wide"
        print(f"  {name:7s} {call.script.id:38s} {band:4s} {call.duration:5.1f}s audio  "
              f"{wall:5.1f}s wall  {cpu:5.1f}s cpu", file=sys.stderr, flush=True)
        if verbose:
            print_details(runs[-1])
    return runs


def print_details(run: Run) -> None:
    for utt in run.result.utterances:
        print(f"      {utt['start']:5.2f}-{utt['end']:5.2f} {utt['speaker']:8s} {utt['text']}")
    for mode, score in run.scores.items():
        for episode in score.misses:
            for exp in episode.expected:
                print(f"      [{mode}] MISS  {exp.category} turn {exp.turn} ({exp.start:.2f}-{exp.end:.2f}) {exp.text}")
        for trig in score.false:
            print(f"      [{mode}] FALSE {trig['category']} {trig['speaker']} "
                  f"({trig['start']:.2f}-{trig['end']:.2f}) {trig['text']} ~ {trig['phrase']}")


MODE_LABELS = {"intent": "phrases + intent", "pinyin": "phrases, pinyin ON",
               "chars": "phrases, pinyin OFF"}


def print_report(runs: list[Run]) -> None:
    modes = tuple(runs[0].scores)
    header = f"{'':44s}" + "".join(f"{MODE_LABELS.get(m, m):>26s}" for m in modes)
    engines = list(dict.fromkeys(r.engine for r in runs))
    for engine in engines:
        mine = [r for r in runs if r.engine == engine]
        print(f"\n== {engine}: episodes hit/expected, recall, false triggers (tolerance {TOLERANCE:.1f} s) ==")
        print(header)
        for r in mine:
            label = f"{r.call.script.id} [{'tel' if r.call.telephone else 'wide'}]"
            print(f"{label:44s}" + "".join(f"{tally([r.scores[m]]).cell():>26s}" for m in modes))
        print("-" * (44 + 26 * len(modes)))
        rows: list[tuple[str, list[Run], bool | None]] = [
            ("wideband calls", [r for r in mine if not r.call.telephone], None),
            ("telephone-band calls", [r for r in mine if r.call.telephone], None),
            ("agitated turns", mine, True),
            ("calm turns", mine, False),
            ("neutral calls (false triggers only)", [r for r in mine if r.call.script.neutral], None),
            ("TOTAL", mine, None),
        ]
        for label, subset, agitated in rows:
            if not subset:
                continue
            cells = []
            for m in modes:
                t = tally((r.scores[m] for r in subset), agitated=agitated)
                cells.append(t.cell() if agitated is None else
                             f"{t.hits:3d}/{t.expected:<3d} {100 * t.recall:5.1f}%        ")
            print(f"{label:44s}" + "".join(f"{c:>26s}" for c in cells))
        neutral = [r for r in mine if r.call.script.neutral]
        neutral_hours = sum(r.call.duration for r in neutral) / 3600
        if neutral_hours:
            print(f"{'false triggers per hour of neutral calls':44s}" + "".join(
                f"{sum(len(r.scores[m].false) for r in neutral) / neutral_hours:>19.1f} /hour"
                for m in modes))
        audio = sum(r.call.duration for r in mine)
        wall = sum(r.wall for r in mine)
        cpu = sum(r.cpu for r in mine)
        print(f"real-time factor of analyze ({engine}): wall {wall / audio:.3f}, cpu {cpu / audio:.3f} "
              f"({audio:.1f} s of stereo audio, {wall:.1f} s wall, {cpu:.1f} s cpu)")
        for m in modes:
            missed = [e.first for r in mine for e in r.scores[m].misses]
            false = [(r.call.script.id, t) for r in mine for t in r.scores[m].false]
            if missed:
                print(f"  [{m}] misses: " + ", ".join(
                    f"{e.call_id}#{e.turn}{'/tel' if e.telephone else ''}:{e.category}" for e in missed))
            if false:
                print(f"  [{m}] false:  " + ", ".join(
                    f"{cid}:{t['category']}({t['text']}~{t['phrase']})" for cid, t in false))


def open_engines(which: str):
    """(name, engine) for each engine asked for and available; prints why one is skipped."""
    from asr import create_engine
    from asr.engine import ModelNotFoundError
    from callassist.config import load_config

    config = load_config()
    names = ["whisper", "vosk"] if which == "all" else [which]
    for name in names:
        try:
            t0 = time.perf_counter()
            engine = create_engine(config, name=name)
            print(f"{name}: model loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        except ModelNotFoundError as exc:
            print(f"{name}: SKIPPED, no model ({str(exc).splitlines()[0][:160]})")
            continue
        yield name, engine


def build_calls(scripts: list[CallScript], bands: str) -> list[BuiltCall]:
    calls = []
    for script in scripts:
        if bands == "both":
            calls += [build_call(script, telephone=False), build_call(script, telephone=True)]
        else:
            calls.append(build_call(script))
    return calls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default=str(REPO / "tests" / "calls.toml"))
    parser.add_argument("--only", action="append", default=[], help="call id (repeatable)")
    parser.add_argument("--engine", choices=["whisper", "vosk", "all"], default="all")
    parser.add_argument("--bands", choices=["script", "both"], default="both")
    parser.add_argument("--verbose", "-v", action="store_true", help="print transcripts, misses, false triggers")
    args = parser.parse_args(argv)

    scripts = load_calls(args.calls)
    if args.only:
        scripts = [s for s in scripts if s.id in args.only]
    t0 = time.perf_counter()
    calls = build_calls(scripts, args.bands)
    print(f"rendered {len(calls)} calls ({sum(c.duration for c in calls):.0f} s of audio) "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    playbook = load_playbook()
    matchers = {"intent": Matcher(playbook, intent=IntentModel.load()),
                "pinyin": Matcher(playbook, use_pinyin=True), "chars": Matcher(playbook, use_pinyin=False)}
    runs: list[Run] = []
    for name, engine in open_engines(args.engine):
        try:
            runs += run_engine(name, engine, calls, playbook, matchers, args.verbose)
        finally:
            engine.close()
    if runs:
        print_report(runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
