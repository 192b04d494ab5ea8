"""How well the recogniser reads a labelled corpus: per-category precision, recall, F1,
false triggers per 200 ordinary lines and the confusion pairs.

    callassist eval [FILE ...] [--phrases-only] [--noisy N] [--misses]

With no FILE, the blind test set (prompts/corpus/blind.tsv). `--noisy N` also scores N
ASR-noised copies of every line (prompts.corpus.AsrNoise, a fixed seed).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prompts.corpus import BLIND_FILE, AsrNoise, CorpusError, Example, character_pool, noisy_copies, read_tsv
from prompts.matcher import Matcher

ORDINARY_LINES_PER_REPORT = 200


@dataclass
class CategoryStats:
    true_positives: int = 0
    false_negatives: int = 0
    false_positives: int = 0

    @property
    def precision(self) -> float:
        fired = self.true_positives + self.false_positives
        return self.true_positives / fired if fired else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Evaluation:
    lines: int = 0
    ordinary_lines: int = 0                   # lines labelled with no category
    false_on_ordinary: int = 0                # categories fired on those
    per_category: dict[str, CategoryStats] = field(default_factory=dict)
    confusions: Counter = field(default_factory=Counter)  # (expected, fired instead) -> n
    misses: list[tuple[Example, str]] = field(default_factory=list)
    false_triggers: list[tuple[Example, str, str]] = field(default_factory=list)  # + why

    def stats(self, category: str) -> CategoryStats:
        return self.per_category.setdefault(category, CategoryStats())

    @property
    def total(self) -> CategoryStats:
        total = CategoryStats()
        for s in self.per_category.values():
            total.true_positives += s.true_positives
            total.false_negatives += s.false_negatives
            total.false_positives += s.false_positives
        return total

    @property
    def false_per_200_ordinary(self) -> float:
        return (ORDINARY_LINES_PER_REPORT * self.false_on_ordinary / self.ordinary_lines
                if self.ordinary_lines else 0.0)


def evaluate(matcher: Matcher, examples: list[Example]) -> Evaluation:
    result = Evaluation()
    for example in examples:
        matches = {m.category.id: m for m in matcher.match(example.text, example.speaker)}
        fired = set(matches)
        result.lines += 1
        if not example.labels:
            result.ordinary_lines += 1
            result.false_on_ordinary += len(fired)
        for category in example.labels & fired:
            result.stats(category).true_positives += 1
        for category in example.labels - fired:
            result.stats(category).false_negatives += 1
            result.misses.append((example, category))
            for wrong in fired - example.labels:
                result.confusions[(category, wrong)] += 1
        for category in fired - example.labels:
            result.stats(category).false_positives += 1
            m = matches[category]
            result.false_triggers.append((example, category, f"{m.via}:{m.phrase}"))
    return result


def report(result: Evaluation, title: str, details: bool = False) -> str:
    lines = [f"== {title}: {result.lines} lines, {result.ordinary_lines} ordinary"]
    lines.append(f"{'category':30} {'recall':>11} {'precision':>10} {'F1':>6} {'false':>6}")
    for category in sorted(result.per_category):
        s = result.per_category[category]
        expected = s.true_positives + s.false_negatives
        lines.append(f"{category:30} {s.true_positives:4}/{expected:<4}{100 * s.recall:4.0f}% "
                     f"{100 * s.precision:9.0f}% {s.f1:6.2f} {s.false_positives:6}")
    t = result.total
    expected = t.true_positives + t.false_negatives
    lines.append(f"{'ALL':30} {t.true_positives:4}/{expected:<4}{100 * t.recall:4.0f}% "
                 f"{100 * t.precision:9.0f}% {t.f1:6.2f} {t.false_positives:6}")
    lines.append(f"false triggers on ordinary lines: {result.false_on_ordinary} "
                 f"({result.false_per_200_ordinary:.1f} per {ORDINARY_LINES_PER_REPORT})")
    if result.confusions:
        pairs = ", ".join(f"{a}->{b} {n}" for (a, b), n in result.confusions.most_common(8))
        lines.append(f"confusions (expected -> fired instead): {pairs}")
    if details:
        for example, category in result.misses:
            lines.append(f"  MISS  {category:28} {example.speaker}: {example.text}")
        for example, category, why in result.false_triggers:
            lines.append(f"  FALSE {category:28} {example.speaker}: {example.text}  [{why}]")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from callassist.config import ConfigError, load_config
    from prompts.playbook import PlaybookError, load_playbook
    try:
        config = load_config(args.config)
        playbook = load_playbook()
        files = [Path(f) for f in args.files] or [BLIND_FILE]
        examples = [e for path in files for e in read_tsv(path, playbook)]
        matcher = Matcher.from_config(playbook, config.matcher, intent=not args.phrases_only)
    except (ConfigError, PlaybookError, CorpusError, OSError) as exc:
        print(f"callassist eval: {exc}", file=sys.stderr)
        return 2
    label = "phrases only" if args.phrases_only else "phrases + intent model"
    names = ", ".join(str(f) for f in files)
    print(report(evaluate(matcher, examples), f"{names} ({label})", args.details))
    if args.noisy:
        noisy = noisy_copies(examples, AsrNoise(character_pool(examples, playbook), seed=3), args.noisy)
        print()
        print(report(evaluate(matcher, noisy), f"{names}, {args.noisy} ASR-noised copies ({label})",
                     args.details))
    return 0


# --- whole calls: the call-level reading (prompts.call_reading) ----------------------------
#
#     callassist eval-calls [FILE ...] [--details]
#
# With no FILE: the dev set (prompts/corpus/calls_dev.jsonl) and, when present, the blind set
# (calls_blind.jsonl, written apart from the reader and never tuned on). One JSON object a
# line: {"id", "complaint_type", "interest", "customer_type", "turns": [{"speaker", "text"}],
# "agent_techniques": {...}, "note"}. Cards come from the matcher run on every turn.

CALLS_DEV_FILE = Path(__file__).with_name("corpus") / "calls_dev.jsonl"
CALLS_BLIND_FILE = Path(__file__).with_name("corpus") / "calls_blind.jsonl"
CALL_LABELS = ("complaint_type", "customer_type", "interest")
CALL_LABEL_VALUES = {
    "complaint_type": ("venting", "justice", "extortion", "publicity", "attack", "ordinary"),
    "customer_type": ("chameleon", "grenade", "know_it_all", "professional", "violent", "publicizer",
                      "ordinary"),
    "interest": ("material", "non_material"),
}


@dataclass(frozen=True)
class LabelledCall:
    id: str
    labels: dict[str, str]                 # complaint_type, customer_type, interest
    turns: tuple[dict[str, str], ...]
    note: str = ""


def read_calls(path: Path) -> list[LabelledCall]:
    """A labelled-calls JSONL file; CorpusError names the file and line of a bad one."""
    import json
    calls = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CorpusError(f"{where}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CorpusError(f"{where}: a call must be a JSON object")
        labels = {}
        for key in CALL_LABELS:
            if data.get(key) not in CALL_LABEL_VALUES[key]:
                raise CorpusError(f"{where}: {key} must be one of {', '.join(CALL_LABEL_VALUES[key])}, "
                                  f"got {data.get(key)!r}")
            labels[key] = data[key]
        turns = data.get("turns")
        if not isinstance(turns, list) or not turns or not all(
                isinstance(t, dict) and t.get("speaker") in ("customer", "agent")
                and isinstance(t.get("text"), str) for t in turns):
            raise CorpusError(f"{where}: turns must be a list of {{\"speaker\": customer|agent, \"text\"}}")
        calls.append(LabelledCall(str(data.get("id", f"line {number}")), labels,
                                  tuple({"speaker": t["speaker"], "text": t["text"]} for t in turns),
                                  str(data.get("note", ""))))
    return calls


@dataclass
class CallsEvaluation:
    calls: int = 0
    per_label: dict[str, dict[str, CategoryStats]] = field(default_factory=dict)
    correct: Counter = field(default_factory=Counter)             # label kind -> calls right
    confusions: dict[str, Counter] = field(default_factory=dict)  # kind -> (expected, read) -> n
    mistakes: list[tuple[LabelledCall, str, str, str]] = field(default_factory=list)

    def stats(self, kind: str, value: str) -> CategoryStats:
        return self.per_label.setdefault(kind, {}).setdefault(value, CategoryStats())


def evaluate_calls(matcher: Matcher, calls: list[LabelledCall]) -> CallsEvaluation:
    from prompts.call_reading import cards_from_matcher, read_call
    result = CallsEvaluation()
    for call in calls:
        reading = read_call(call.turns, cards_from_matcher(matcher, call.turns))
        got = {"complaint_type": reading.complaint_type.key, "customer_type": reading.customer_type.key,
               "interest": reading.interest.key}
        result.calls += 1
        for kind in CALL_LABELS:
            expected, read = call.labels[kind], got[kind]
            if expected == read:
                result.correct[kind] += 1
                result.stats(kind, expected).true_positives += 1
                continue
            result.stats(kind, expected).false_negatives += 1
            result.stats(kind, read).false_positives += 1
            result.confusions.setdefault(kind, Counter())[(expected, read)] += 1
            result.mistakes.append((call, kind, expected, read))
    return result


def calls_report(result: CallsEvaluation, title: str, details: bool = False) -> str:
    lines = [f"== {title}: {result.calls} calls"]
    for kind in CALL_LABELS:
        right = result.correct[kind]
        lines.append(f"-- {kind}: {right}/{result.calls} right "
                     f"({100 * right / result.calls if result.calls else 0:.0f}%)")
        lines.append(f"   {'type':14} {'recall':>11} {'precision':>10} {'F1':>6}")
        for value in CALL_LABEL_VALUES[kind]:
            s = result.per_label.get(kind, {}).get(value)
            if s is None:
                continue
            expected = s.true_positives + s.false_negatives
            read = s.true_positives + s.false_positives
            lines.append(f"   {value:14} {s.true_positives:4}/{expected:<4}{100 * s.recall:4.0f}% "
                         f"{100 * s.precision:6.0f}%/{read:<3}{s.f1:5.2f}")
        if result.confusions.get(kind):
            pairs = ", ".join(f"{a}->{b} {n}" for (a, b), n in result.confusions[kind].most_common(6))
            lines.append(f"   confusions (expected -> read): {pairs}")
    if details:
        for call, kind, expected_value, read_value in result.mistakes:
            lines.append(f"  {call.id:10} {kind:14} expected {expected_value:12} read {read_value}")
    return "\n".join(lines)


def run_calls(args: argparse.Namespace) -> int:
    from callassist.config import ConfigError, load_config
    from prompts.call_reading import CallTypesError
    from prompts.playbook import PlaybookError, load_playbook
    files = [Path(f) for f in args.files] or [
        f for f in (CALLS_DEV_FILE, CALLS_BLIND_FILE) if f == CALLS_DEV_FILE or f.exists()]
    try:
        config = load_config(args.config)
        matcher = Matcher.from_config(load_playbook(), config.matcher)
        sets = [(path, read_calls(path)) for path in files]
        results = [(path, evaluate_calls(matcher, calls)) for path, calls in sets]
    except (ConfigError, PlaybookError, CorpusError, CallTypesError, OSError) as exc:
        print(f"callassist eval-calls: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(calls_report(result, str(path), args.details) for path, result in results))
    if any(path.name.startswith("calls_dev") for path in files):
        print("\n(the calls_dev* files are the reading model's training data: their figures flatter it; "
              "`python -m prompts.call_reading_train --no-write` prints cross-validated ones)")
    return 0
