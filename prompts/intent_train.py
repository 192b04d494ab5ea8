"""Train the intent model (prompts/intent_model.npz) from the labelled corpus.

    python -m prompts.intent_train [--out FILE] [--report]

Needs scikit-learn (the `test` extra); scoring at run time needs numpy only.
Deterministic: the same corpus and package versions give the same file.

Steps: the train split (prompts.corpus.train_dev) plus two ASR-noised copies of each line
-> features (prompts.intent.features) seen at least twice -> per speaker, one L2 logistic
regression per category (liblinear, one-vs-rest, positives weighted up to balance the
many negatives) -> small weights pruned -> per category decision threshold chosen on the
dev split (clean and noised) for the best F-beta (BETA 0.5: precision first) within
[MIN_THRESHOLD, MAX_THRESHOLD] -> the veto level chosen the same way for the whole matcher.
The blind test set is never read here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from prompts.corpus import AsrNoise, Example, character_pool, corpus_digest, noisy_copies, train_dev
from prompts.intent import FEATURE_VERSION, MODEL_FILE, IntentModel, features
from prompts.normalize import fold_pinyin, normalize, to_pinyin
from prompts.playbook import Playbook, load_playbook

C = 32.0                      # inverse regularisation strength (chosen on dev, benchmarks/bench_intent.py)
POSITIVE_WEIGHT = 3.0         # positives are few against the one-vs-rest negatives
MIN_COUNT = 2                 # a feature must occur in this many training lines
PRUNE = 0.02                  # weights smaller than this are dropped (size, speed)
NOISY_COPIES = 2
MIN_THRESHOLD, MAX_THRESHOLD = 0.1, 0.85
DEFAULT_THRESHOLD = 0.5
BETA = 0.5                    # thresholds and veto maximise F-beta on dev (see f_beta)
VETOES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # candidates for the model's veto of a phrase match


def featurize(text: str) -> list[str]:
    chars = normalize(text)
    return [f for f, _, _ in features(chars, fold_pinyin(to_pinyin(chars)))]


def _matrix(rows: list[list[str]], vocab: dict[str, int]):
    from scipy.sparse import csr_matrix
    data, indices, indptr = [], [], [0]
    for feats in rows:
        ids = sorted({vocab[f] for f in feats if f in vocab})
        scale = 1.0 / math.sqrt(max(1, len(feats)))
        indices.extend(ids)
        data.extend([scale] * len(ids))
        indptr.append(len(indices))
    return csr_matrix((np.array(data, dtype=np.float64), indices, indptr),
                      shape=(len(rows), len(vocab)))


def f_beta(tp: float, fp: float, fn: float) -> float:
    """F-beta with beta = BETA < 1: precision weighs more than recall, as a false card
    interrupts an agent on every call while a missed one is caught by the next utterance."""
    b2 = BETA * BETA
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp) if tp else 0.0


def _best_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    if truth.sum() == 0:
        return DEFAULT_THRESHOLD
    best, best_score = DEFAULT_THRESHOLD, -1.0
    for threshold in np.arange(MIN_THRESHOLD, MAX_THRESHOLD + 1e-9, 0.05):
        predicted = probabilities >= threshold
        score = f_beta(float((predicted & truth).sum()), float((predicted & ~truth).sum()),
                       float((~predicted & truth).sum()))
        if score > best_score + 1e-9:
            best, best_score = float(threshold), score
    return round(best, 2)


def train_speaker(speaker: str, categories: list[str], train: list[Example], dev: list[Example],
                  report: bool) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    train = [e for e in train if e.speaker == speaker]
    dev = [e for e in dev if e.speaker == speaker]
    train_rows = [featurize(e.text) for e in train]
    counts = Counter(f for feats in train_rows for f in set(feats))
    vocab_list = sorted(f for f, n in counts.items() if n >= MIN_COUNT)
    vocab = {f: i for i, f in enumerate(vocab_list)}
    x = _matrix(train_rows, vocab)
    x_dev = _matrix([featurize(e.text) for e in dev], vocab)
    weights = np.zeros((len(vocab_list), len(categories)))
    bias = np.zeros(len(categories))
    thresholds = np.full(len(categories), DEFAULT_THRESHOLD)
    for col, category in enumerate(categories):
        y = np.array([category in e.labels for e in train])
        if y.sum() == 0:
            bias[col] = -10.0          # nothing to learn from: never fires
            continue
        model = LogisticRegression(C=C, solver="liblinear", class_weight={0: 1.0, 1: POSITIVE_WEIGHT},
                                   max_iter=1000)
        model.fit(x, y)
        weights[:, col] = model.coef_[0]
        bias[col] = model.intercept_[0]
    weights[np.abs(weights) < PRUNE] = 0.0
    keep = np.flatnonzero(np.abs(weights).max(axis=1) > 0)
    weights = weights[keep]
    vocab_list = [vocab_list[i] for i in keep]
    x_dev = x_dev[:, keep]
    logits = x_dev @ weights + bias
    probabilities = 1 / (1 + np.exp(-logits))
    for col, category in enumerate(categories):
        truth = np.array([category in e.labels for e in dev], dtype=bool)
        thresholds[col] = _best_threshold(probabilities[:, col], truth)
    if report:
        print(f"{speaker}: {len(train)} training lines, {len(dev)} dev lines, "
              f"{len(vocab_list)} features kept")
        for col, category in enumerate(categories):
            truth = np.array([category in e.labels for e in dev], dtype=bool)
            predicted = probabilities[:, col] >= thresholds[col]
            tp = int((predicted & truth).sum())
            print(f"  {category:30} threshold {thresholds[col]:.2f}  dev recall {tp}/{int(truth.sum())}"
                  f"  false {int((predicted & ~truth).sum())}")
    return {"categories": np.array(categories), "vocab": np.array(vocab_list),
            "weights": weights.astype(np.float16), "bias": bias.astype(np.float32),
            "thresholds": thresholds.astype(np.float32)}


def train(playbook: Playbook, report: bool = False) -> dict[str, np.ndarray]:
    train_set, dev = train_dev(playbook)
    noise = AsrNoise(character_pool(train_set, playbook), seed=7)
    augmented = train_set + noisy_copies(train_set, noise, NOISY_COPIES)
    dev_noise = AsrNoise(character_pool(train_set, playbook), seed=11)
    dev_all = dev + noisy_copies(dev, dev_noise, 1)
    arrays: dict[str, np.ndarray] = {}
    speakers = []
    for speaker in ("customer", "agent"):
        categories = [c.id for c in playbook.categories if c.speaker == speaker]
        if not categories:
            continue
        speakers.append(speaker)
        for key, value in train_speaker(speaker, categories, augmented, dev_all, report).items():
            arrays[f"{speaker}_{key}"] = value
    meta = {"feature_version": FEATURE_VERSION, "speakers": speakers,
            "corpus": corpus_digest(train_set + dev), "train_lines": len(train_set),
            "dev_lines": len(dev), "C": C, "positive_weight": POSITIVE_WEIGHT,
            "min_count": MIN_COUNT, "noisy_copies": NOISY_COPIES, "veto": 0.0}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    meta["veto"] = choose_veto(playbook, IntentModel.from_arrays(arrays), dev_all, report)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def choose_veto(playbook: Playbook, model: IntentModel, dev: list[Example], report: bool) -> float:
    """The probability below which the model overrules a phrase match: the best micro
    F-beta of the whole matcher (phrases + model) on dev, false triggers on ordinary lines
    included."""
    from prompts.evaluate import evaluate
    from prompts.matcher import Matcher
    best, best_f1 = VETOES[0], -1.0
    for veto in VETOES:
        matcher = Matcher(playbook, intent=model)
        matcher.veto = veto
        result = evaluate(matcher, dev)
        if report:
            print(f"veto {veto:.2f}: dev recall {result.total.recall:.3f} precision "
                  f"{result.total.precision:.3f} false/200 ordinary {result.false_per_200_ordinary:.1f}")
        t = result.total
        score = f_beta(t.true_positives, t.false_positives, t.false_negatives)
        if score > best_f1 + 1e-9:
            best, best_f1 = veto, score
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--report", action="store_true", help="print dev results per category")
    args = parser.parse_args(argv)
    arrays = train(load_playbook(), report=args.report)
    np.savez_compressed(args.out, allow_pickle=False, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
