"""`callassist eval-techniques`: precision and recall of the technique recogniser
(prompts.techniques) per technique, on single agent turns and, when the blind set of whole
calls is present, on whole calls.

Turn files (TSV, UTF-8, `#` comments): technique<TAB>label<TAB>context<TAB>text, label 1/0
(for no_rhetorical / no_forbidden 1 means the turn is free of them). Defaults: the dev set
prompts/corpus/techniques_dev.tsv and, when present, the blind set techniques_blind.tsv.
Call file (JSON lines, prompts/corpus/calls_blind.jsonl when present): {"turns": [{"speaker",
"text"}], "agent_techniques": {key: true|false}}; a technique the assessment finds not
applicable counts as passed for no_rhetorical / no_forbidden and as not passed otherwise.

Precision and recall are of label 1 (the turn shows the technique); for the two "no_"
techniques the table also gives them for the failure side (the offence found), which is
what QA acts on. The blind sets are written by someone who never saw this code, for the
final evaluation only: never tune on them.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from prompts.techniques import KEYS, TechniqueReader

CORPUS = Path(__file__).with_name("corpus")
DEV_FILE = CORPUS / "techniques_dev.tsv"
BLIND_FILE = CORPUS / "techniques_blind.tsv"
BLIND_CALLS = CORPUS / "calls_blind.jsonl"
ABSENCE = ("no_rhetorical", "no_forbidden")


class CorpusError(ValueError):
    pass


@dataclass(frozen=True)
class LabelledTurn:
    technique: str
    label: bool
    context: str
    text: str
    where: str


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, predicted: bool, label: bool) -> None:
        if predicted and label:
            self.tp += 1
        elif predicted:
            self.fp += 1
        elif label:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def precision(self, negative: bool = False) -> float | None:
        hit, wrong = (self.tn, self.fn) if negative else (self.tp, self.fp)
        return hit / (hit + wrong) if hit + wrong else None

    def recall(self, negative: bool = False) -> float | None:
        hit, missed = (self.tn, self.fp) if negative else (self.tp, self.fn)
        return hit / (hit + missed) if hit + missed else None

    @property
    def accuracy(self) -> float | None:
        return (self.tp + self.tn) / self.n if self.n else None


def read_turns(path: Path) -> list[LabelledTurn]:
    turns: list[LabelledTurn] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        where = f"{path}:{number}"
        if number == 1 and cells[0] == "technique":
            continue                                       # a header line
        if len(cells) != 4:
            raise CorpusError(f"{where}: expected technique<TAB>label<TAB>context<TAB>text, "
                              f"got {len(cells)} columns")
        technique, label, context, text = cells
        if technique not in KEYS:
            raise CorpusError(f"{where}: unknown technique {technique!r} (one of {', '.join(KEYS)})")
        if label.strip() not in ("0", "1"):
            raise CorpusError(f"{where}: label must be 1 or 0, got {label!r}")
        turns.append(LabelledTurn(technique, label.strip() == "1", context, text, where))
    return turns


def score_turns(reader: TechniqueReader, turns: list[LabelledTurn],
                misses: list[str] | None = None) -> dict[str, Counts]:
    counts = {key: Counts() for key in KEYS}
    for turn in turns:
        predicted = reader.read_turn(turn.text, turn.context).shows(turn.technique)
        counts[turn.technique].add(predicted, turn.label)
        if misses is not None and predicted != turn.label:
            misses.append(f"{turn.where}\t{turn.technique}\tlabel {int(turn.label)}\t"
                          f"{turn.context} → {turn.text}")
    return counts


def score_calls(path: Path) -> dict[str, Counts]:
    from agent_ui.adherence import assess_call       # the call-level judgement, as QA shows it
    from prompts.playbook import load_playbook
    playbook = load_playbook()
    counts = {key: Counts() for key in KEYS}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            call = json.loads(line)
            turns, labels = call["turns"], call["agent_techniques"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"{path}:{number}: not a labelled call ({exc})") from None
        utterances = [{"speaker": t["speaker"], "text": t["text"], "utterance": i,
                       "start": 4.0 * i, "end": 4.0 * i + 3.5} for i, t in enumerate(turns)]
        verdicts = {t["key"]: t["passed"]
                    for t in assess_call({"utterances": utterances, "cards": []}, playbook,
                                         window=30.0).to_dict()["techniques"]}
        for key in KEYS:
            if key in labels and labels[key] is not None:
                passed = verdicts[key]
                counts[key].add(passed if passed is not None else key in ABSENCE, bool(labels[key]))
    return counts


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:4.0f}"


def format_table(title: str, counts: dict[str, Counts]) -> str:
    lines = [title, f"{'technique':22} {'n':>4} {'P':>5} {'R':>5} {'acc':>5}   "
                    f"{'P(fail)':>7} {'R(fail)':>7}"]
    total = Counts()
    for key, c in counts.items():
        total.tp, total.fp, total.fn, total.tn = (total.tp + c.tp, total.fp + c.fp,
                                                  total.fn + c.fn, total.tn + c.tn)
        fail = (f"   {_pct(c.precision(True)):>7} {_pct(c.recall(True)):>7}"
                if key in ABSENCE else "")
        lines.append(f"{key:22} {c.n:4d} {_pct(c.precision()):>5} {_pct(c.recall()):>5} "
                     f"{_pct(c.accuracy):>5}{fail}")
    lines.append(f"{'all':22} {total.n:4d} {_pct(total.precision()):>5} {_pct(total.recall()):>5} "
                 f"{_pct(total.accuracy):>5}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from prompts.matcher import Matcher
    from prompts.intent import IntentModel
    from prompts.playbook import load_playbook
    reader = TechniqueReader(Matcher(load_playbook(), intent=IntentModel.load()))
    files = [Path(f) for f in args.files] or [f for f in (DEV_FILE, BLIND_FILE) if f.exists()]
    try:
        for path in files:
            misses: list[str] = []
            counts = score_turns(reader, read_turns(path), misses)
            print(format_table(f"{path.name}: single agent turns (precision/recall of label 1, %)",
                               counts))
            if args.details:
                print("\n".join(misses))
            print()
        calls = [Path(f) for f in args.calls] if args.calls else (
            [BLIND_CALLS] if not args.files and BLIND_CALLS.exists() else [])
        for path in calls:
            print(format_table(f"{path.name}: whole calls (precision/recall of passed, %)",
                               score_calls(path)))
            print()
    except (OSError, CorpusError) as exc:
        print(f"callassist eval-techniques: {exc}", file=sys.stderr)
        return 2
    return 0
