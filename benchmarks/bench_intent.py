"""Design choices of the intent model, measured on the dev split (never the blind set).

    python benchmarks/bench_intent.py [--quick]

For each variant (features, regularisation, positive weight, length scaling) trains the
per-category logistic regressions on the train split (+ ASR-noised copies) exactly as
prompts.intent_train does, and prints on the dev split (clean, and one noised copy):
micro recall and precision of the model alone at one global threshold, and false
triggers per 200 ordinary lines. Then the chosen model inside the matcher (phrases +
intent) against the phrase matcher alone, for several veto levels.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prompts import intent_train  # noqa: E402
from prompts.corpus import AsrNoise, character_pool, noisy_copies, train_dev  # noqa: E402
from prompts.evaluate import evaluate  # noqa: E402
from prompts.intent import IntentModel  # noqa: E402
from prompts.matcher import Matcher  # noqa: E402
from prompts.playbook import load_playbook  # noqa: E402


def keep(feature: str, variant: dict) -> bool:
    kind = feature[0]
    if kind == "p" and not variant["pinyin"]:
        return False
    if kind in "cp":
        size = len(feature) - 1 if kind == "c" else feature.count("_") + 1
        return size <= variant["ngram"]
    return True


def kept(text: str, variant: dict) -> list[str]:
    return [f for f in intent_train.featurize(text) if keep(f, variant)]


def matrix(rows, vocab, scaled):
    from scipy.sparse import csr_matrix
    data, indices, indptr = [], [], [0]
    for feats in rows:
        ids = sorted({vocab[f] for f in feats if f in vocab})
        value = 1.0 / math.sqrt(max(1, len(feats))) if scaled else 1.0
        indices.extend(ids)
        data.extend([value] * len(ids))
        indptr.append(len(indices))
    return csr_matrix((np.array(data), indices, indptr), shape=(len(rows), len(vocab)))


def run_variant(variant, train, dev_sets, categories):
    from sklearn.linear_model import LogisticRegression
    rows = [kept(e.text, variant) for e in train]
    counts = Counter(f for feats in rows for f in set(feats))
    vocab = {f: i for i, f in enumerate(sorted(f for f, n in counts.items() if n >= 2))}
    x = matrix(rows, vocab, variant["scaled"])
    models = {}
    for category in categories:
        y = np.array([category in e.labels for e in train])
        model = LogisticRegression(C=variant["C"], solver="liblinear",
                                   class_weight={0: 1.0, 1: variant["pos"]}, max_iter=1000)
        models[category] = model.fit(x, y)
    results = []
    for dev in dev_sets:
        dev_rows = [kept(e.text, variant) for e in dev]
        xd = matrix(dev_rows, vocab, variant["scaled"])
        probabilities = np.column_stack([models[c].predict_proba(xd)[:, 1] for c in categories])
        truth = np.array([[c in e.labels for c in categories] for e in dev])
        ordinary = np.array([not e.labels for e in dev])
        best = None
        for threshold in np.arange(0.1, 0.86, 0.05):
            predicted = probabilities >= threshold
            tp = (predicted & truth).sum()
            recall, precision = tp / truth.sum(), tp / max(1, predicted.sum())
            f1 = 2 * recall * precision / (recall + precision)
            false_200 = 200 * predicted[ordinary].sum() / ordinary.sum()
            if best is None or f1 > best[0]:
                best = (f1, threshold, recall, precision, false_200)
        results.append(best)
    return results


VARIANTS = {
    "chosen: chars+pinyin 1-3, scaled, C=16, pos 2": dict(pinyin=True, ngram=3, scaled=True, C=16, pos=2),
    "chars only": dict(pinyin=False, ngram=3, scaled=True, C=16, pos=2),
    "n-grams up to 2": dict(pinyin=True, ngram=2, scaled=True, C=16, pos=2),
    "not length-scaled": dict(pinyin=True, ngram=3, scaled=False, C=1, pos=2),
    "C=4": dict(pinyin=True, ngram=3, scaled=True, C=4, pos=2),
    "C=64": dict(pinyin=True, ngram=3, scaled=True, C=64, pos=2),
    "positive weight 1": dict(pinyin=True, ngram=3, scaled=True, C=16, pos=1),
    "positive weight 4": dict(pinyin=True, ngram=3, scaled=True, C=16, pos=4),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the chosen variant only")
    parser.add_argument("--speaker", default="customer")
    args = parser.parse_args()
    playbook = load_playbook()
    train, dev = train_dev(playbook)
    pool = character_pool(train, playbook)
    augmented = train + noisy_copies(train, AsrNoise(pool, seed=7), intent_train.NOISY_COPIES)
    dev_noisy = noisy_copies(dev, AsrNoise(pool, seed=99), 1)
    categories = [c.id for c in playbook.categories if c.speaker == args.speaker]
    pick = lambda examples: [e for e in examples if e.speaker == args.speaker]  # noqa: E731
    train_s, dev_s, noisy_s = pick(augmented), pick(dev), pick(dev_noisy)
    print(f"{args.speaker}: {len(train_s)} training lines (with noised copies), "
          f"{len(dev_s)} dev lines, {sum(not e.labels for e in dev_s)} of them ordinary")
    print(f"{'variant':48} {'dev: F1  recall  prec  false/200':>34} {'noised dev: F1  recall  prec  false/200':>42}")
    variants = list(VARIANTS.items())[:1] if args.quick else VARIANTS.items()
    for name, variant in variants:
        t0 = time.perf_counter()
        results = run_variant(variant, train_s, [dev_s, noisy_s], categories)
        cells = "   ".join(f"{f1:.3f} {r:6.1%} {p:6.1%} {f:6.1f} @{t:.2f}" for f1, t, r, p, f in results)
        print(f"{name:48} {cells}  ({time.perf_counter() - t0:.0f} s)")

    print("\nin the matcher (phrases + shipped intent model) on dev, by veto level:")
    model = IntentModel.load()
    phrases = Matcher(playbook)
    for label, matcher in [("phrases only", phrases)] + [
            (f"phrases + intent, veto {veto}", Matcher(playbook, intent=model)) for veto in
            (0.0, 0.02, 0.05, 0.1, 0.2)]:
        if matcher.intent is not None:
            matcher.veto = float(label.rsplit(" ", 1)[1])
        cells = []
        for examples in (dev, dev_noisy):
            r = evaluate(matcher, examples)
            cells.append(f"recall {r.total.recall:6.1%} precision {r.total.precision:6.1%} "
                         f"false/200 {r.false_per_200_ordinary:5.1f}")
        print(f"  {label:30} dev: {cells[0]}   noised: {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
