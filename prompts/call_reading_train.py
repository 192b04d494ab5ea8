"""Train the call-level reading's model (prompts/call_reading_model.npz) and print its
cross-validated figures.

    python -m prompts.call_reading_train            # cross-validate, report, write the model
    python -m prompts.call_reading_train --no-write # report only

The calls: prompts/corpus/calls_dev.jsonl and calls_dev2.jsonl (two independent authors);
never the blind set. Each call becomes prompts.call_reading.call_features (cards from the
matcher, as `callassist eval-calls` makes them); one multinomial logistic regression per label
(complaint_type, customer_type, interest) over the standardised features, L2-regularised,
fitted by gradient descent (numpy only). The L2 strength of each label is chosen by repeated
stratified k-fold cross-validation; the report gives, for the chosen strength, the
cross-validated accuracy (mean and spread over the repeats), per-type precision and recall
pooled over the repeats, and the cross-author figures (train on one author's calls, test on
the other's). Those are the numbers to quote, not the training accuracy `eval-calls` shows on
the same files. Deterministic: fixed seeds.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prompts.call_reading import (LABEL_KINDS, MODEL_FILE, ORDINARY, Head, ReadingModel,
                                  features_of, load_call_types)
from prompts.evaluate import CALL_LABEL_VALUES, CALLS_DEV_FILE, LabelledCall, read_calls

CALLS_DEV2_FILE = CALLS_DEV_FILE.with_name("calls_dev2.jsonl")
TRAIN_FILES = (CALLS_DEV_FILE, CALLS_DEV2_FILE)
STRENGTHS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)   # L2 on the mean log-loss
FOLDS = 5
REPEATS = 5
ITERATIONS = 1500
STEP = 0.5


# --- the model --------------------------------------------------------------------------

def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0           # a constant feature (stats: no audio here) stays 0
    return mean, scale


def fit(z: np.ndarray, y: np.ndarray, classes: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression on standardised features: weights (classes x features), bias.
    Nesterov-accelerated gradient descent on mean log-loss + strength/2 * |W|^2."""
    n, d = z.shape
    onehot = np.eye(classes)[y]
    w = np.zeros((classes, d))
    b = np.log((onehot.sum(axis=0) + 1) / (n + classes))
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    step = min(STEP, 1.0 / strength)       # a strong L2 needs a shorter step to stay stable
    for _ in range(ITERATIONS):
        lw, lb = w + 0.9 * vw, b + 0.9 * vb
        logits = z @ lw.T + lb
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        error = (p - onehot) / n
        gw = error.T @ z + strength * lw
        gb = error.sum(axis=0)
        vw = 0.9 * vw - step * gw
        vb = 0.9 * vb - step * gb
        w, b = w + vw, b + vb
    return w, b


def predict(w: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.argmax(z @ w.T + b, axis=1)


# --- the data ---------------------------------------------------------------------------

@dataclass
class Dataset:
    calls: list[LabelledCall]
    source: list[str]                 # which file each call came from
    names: tuple[str, ...]
    x: np.ndarray                     # calls x features (raw values)

    def y(self, kind: str) -> np.ndarray:
        labels = CALL_LABEL_VALUES[kind]
        return np.array([labels.index(c.labels[kind]) for c in self.calls])


def load_dataset(files: tuple[Path, ...] = TRAIN_FILES) -> Dataset:
    from callassist.config import load_config
    from prompts.call_reading import cards_from_matcher
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook
    matcher = Matcher.from_config(load_playbook(), load_config(None).matcher)
    types = load_call_types()
    calls, source, rows = [], [], []
    names: tuple[str, ...] = ()
    for path in files:
        for call in read_calls(path):
            features = features_of(call.turns, cards_from_matcher(matcher, call.turns), None, types)
            names = tuple(features)
            rows.append([f.value for f in features.values()])
            calls.append(call)
            source.append(path.name)
    return Dataset(calls, source, names, np.array(rows, dtype=np.float64))


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold: every label spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        for i, index in enumerate(members):
            out[(i + offset) % folds].append(int(index))
        offset += len(members)
    return [np.array(sorted(f)) for f in out]


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, classes: int,
                strength: float) -> np.ndarray:
    mean, scale = standardisation(x_train)
    w, b = fit((x_train - mean) / scale, y_train, classes, strength)
    return predict(w, b, (x_test - mean) / scale)


def cross_validate(data: Dataset, kind: str, strength: float, repeats: int = REPEATS
                   ) -> list[np.ndarray]:
    """Out-of-fold predictions, one array per repeat."""
    y = data.y(kind)
    classes = len(CALL_LABEL_VALUES[kind])
    runs = []
    for repeat in range(repeats):
        predicted = np.empty_like(y)
        for test in stratified_folds(y, FOLDS, seed=1000 + repeat):
            train = np.setdiff1d(np.arange(len(y)), test)
            predicted[test] = fit_predict(data.x[train], y[train], data.x[test], classes, strength)
        runs.append(predicted)
    return runs


# --- reporting ----------------------------------------------------------------------------

def per_label(kind: str, expected: np.ndarray, runs: list[np.ndarray]) -> list[str]:
    labels = CALL_LABEL_VALUES[kind]
    tp: Counter[int] = Counter()            # by label index
    fp: Counter[int] = Counter()
    fn: Counter[int] = Counter()
    for predicted in runs:
        for e, p in zip(expected, predicted):
            if e == p:
                tp[e] += 1
            else:
                fn[e] += 1
                fp[p] += 1
    lines = [f"   {'type':14} {'recall':>7} {'precision':>9}"]
    for i, label in enumerate(labels):
        recall = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else 0.0
        precision = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
        lines.append(f"   {label:14} {100 * recall:6.0f}% {100 * precision:8.0f}%")
    return lines


def train(data: Dataset, out: Path | None, strengths: tuple[float, ...] = STRENGTHS,
          repeats: int = REPEATS) -> ReadingModel:
    """Choose each label's strength by cross-validation, report, fit on every call, write."""
    chosen: dict[str, float] = {}
    for kind in LABEL_KINDS:
        y = data.y(kind)
        scores = {s: float(np.mean([np.mean(run == y) for run in cross_validate(data, kind, s, repeats)]))
                  for s in strengths}
        best = max(scores.values())
        chosen[kind] = max(s for s, acc in scores.items() if acc >= best - 1e-9)   # ties: simpler
        print(f"{kind}: cross-validated accuracy by L2 strength: "
              + ", ".join(f"{s:g}={100 * a:.1f}%" for s, a in scores.items()))
    print(f"\n== cross-validated ({FOLDS}-fold x {repeats}, {len(data.calls)} calls), chosen strengths")
    for kind in LABEL_KINDS:
        y = data.y(kind)
        runs = cross_validate(data, kind, chosen[kind], repeats)
        if kind == "interest":             # as read_call does: 讹诈型 is 物质利益型
            extortion = CALL_LABEL_VALUES["complaint_type"].index("extortion")
            material = CALL_LABEL_VALUES["interest"].index("material")
            complaint_runs = cross_validate(data, "complaint_type", chosen["complaint_type"], repeats)
            runs = [np.where(c == extortion, material, r) for r, c in zip(runs, complaint_runs)]
        accuracies = [float(np.mean(run == y)) for run in runs]
        ordinary = CALL_LABEL_VALUES[kind].index(ORDINARY) if ORDINARY in CALL_LABEL_VALUES[kind] else -1
        print(f"-- {kind} (L2 {chosen[kind]:g}): {100 * np.mean(accuracies):.1f}% "
              f"(repeats {100 * min(accuracies):.1f}-{100 * max(accuracies):.1f}%; majority "
              f"{100 * np.bincount(y).max() / len(y):.0f}%"
              + (f", always-ordinary {100 * np.mean(y == ordinary):.0f}%" if ordinary >= 0 else "") + ")")
        for source in dict.fromkeys(data.source):
            subset = np.array(data.source) == source
            print(f"   out-of-fold on {source} only: "
                  f"{100 * np.mean([np.mean(run[subset] == y[subset]) for run in runs]):.1f}%")
        print("\n".join(per_label(kind, y, runs)))
    sources = np.array(data.source)
    if len(set(data.source)) > 1:
        print("\n== cross-author: train on one file, test on the others")
    for train_on in dict.fromkeys(data.source) if len(set(data.source)) > 1 else ():
        test = sources != train_on
        cells = []
        for kind in LABEL_KINDS:
            y = data.y(kind)
            predicted = fit_predict(data.x[~test], y[~test], data.x[test], len(CALL_LABEL_VALUES[kind]),
                                    chosen[kind])
            cells.append(f"{kind} {100 * np.mean(predicted == y[test]):.0f}%")
        print(f"   train {train_on} -> test the other {int(test.sum())} calls: " + ", ".join(cells))
    mean, scale = standardisation(data.x)
    z = (data.x - mean) / scale
    heads = {}
    for kind in LABEL_KINDS:
        w, b = fit(z, data.y(kind), len(CALL_LABEL_VALUES[kind]), chosen[kind])
        heads[kind] = Head(CALL_LABEL_VALUES[kind], w, b)
    model = ReadingModel(data.names, mean, scale, heads,
                         {"strengths": chosen, "calls": len(data.calls),
                          "files": sorted(set(data.source))})
    if out is not None:
        model.save(out)
        print(f"\nwrote {out}")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--no-write", action="store_true", help="report only")
    args = parser.parse_args(argv)
    train(load_dataset(), None if args.no_write else args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
