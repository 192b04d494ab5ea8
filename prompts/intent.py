"""What an utterance means: a linear model over character and pinyin n-grams.

The phrase matcher (prompts.matcher) is precise on the words the playbook lists; people
say the same things in many other ways (得按两倍退 for 双倍返还, 找电视台的来拍 for 曝光,
吓得我好几天没缓过来 for 精神损失). The intent model scores each category of a speaker
from every character 1-3-gram and folded-pinyin 1-3-gram of the normalised utterance, so
paraphrases share evidence with the phrases they resemble, and a homophone ASR error
(公信部) keeps the pinyin evidence of the word it stands for (工信部).

Model: one logistic regression per category (one-vs-rest), trained by
prompts.intent_train on the labelled corpus in prompts/corpus/ (see its README) and
stored as prompts/intent_model.npz: a vocabulary, a weight matrix (features x
categories), a bias and a decision threshold per category (tuned on the dev split).
Scoring needs numpy only: feature ids by dict lookup, one row sum, a sigmoid.

Features are binary (present or not) and scaled by 1/sqrt(number of features), so a long
rambling utterance does not pile up small weights into a false alarm. Digit runs become
a size class (N: 1-2 digits, H: 3-4, L: 5+) besides the literal number, so 扣了800多 and
扣了1200 share evidence while 12315 still means the consumer hotline.

Why it fired: each n-gram's weight for the category is spread over the characters it
covers; the window of up to SPAN_MAX characters with the largest sum is what the card
highlights.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from callassist.events import Speaker

MODEL_FILE = Path(__file__).with_name("intent_model.npz")
FEATURE_VERSION = 3
NGRAM_MAX = 3
SPAN_MAX = 6              # the longest highlight on a card, in characters
_DIGITS = re.compile(r"[0-9]+")


class IntentModelError(RuntimeError):
    pass


def _size_class(digits: str) -> str:
    return "N" if len(digits) <= 2 else "H" if len(digits) <= 4 else "L"


def _shapes(chars: str, folded: tuple[str, ...]) -> tuple[list[str], list[str], list[tuple[str, int, int]]]:
    """Characters and syllables with digit runs replaced by their size class, and the
    literal digit-run features."""
    shape = list(chars)
    syllables = list(folded)
    numbers = []
    for m in _DIGITS.finditer(chars):
        size = _size_class(m.group())
        numbers.append(("#" + m.group(), m.start(), m.end()))
        for i in range(m.start(), m.end()):
            shape[i] = syllables[i] = size
    return shape, syllables, numbers


def _known_features(chars: str, folded: tuple[str, ...],
                    vocab: dict[str, int]) -> tuple[list[int], list[int], list[int], int]:
    """features() looked up in `vocab` in one pass, the scoring hot path (plain string
    building and dict lookups: measured faster than hashing n-grams with numpy, whose
    per-call overhead dominates at 10-50 characters): rows, starts and ends of the known
    features, and how many features there were in all."""
    shape, syllables, numbers = _shapes(chars, folded)
    get = vocab.get
    rows: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    for f, a, b in numbers:
        if f in vocab:
            rows.append(vocab[f])
            starts.append(a)
            ends.append(b)
    n = len(shape)
    count = len(numbers) + 2 * sum(n - k + 1 for k in range(1, min(NGRAM_MAX, n) + 1))
    for stream, tokens, joiner in (("c", shape, ""), ("p", syllables, "_")):
        for i in range(n):
            gram = stream + tokens[i]
            for end in range(i + 1, min(i + NGRAM_MAX, n) + 1):
                if end > i + 1:
                    gram += joiner + tokens[end - 1]
                found = get(gram)
                if found is not None:
                    rows.append(found)
                    starts.append(i)
                    ends.append(end)
    return rows, starts, ends, count


def features(chars: str, folded: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(feature, start, end) for one normalised utterance and its folded pinyin (one
    syllable per character): digit runs, then character n-grams and syllable n-grams, each
    by length then position. The one definition shared by training and scoring."""
    shape, syllables, out = _shapes(chars, folded)
    n = len(shape)
    for stream, tokens, joiner in (("c", shape, ""), ("p", syllables, "_")):
        for k in range(1, min(NGRAM_MAX, n) + 1):
            for i in range(n - k + 1):
                out.append((stream + joiner.join(tokens[i:i + k]), i, i + k))
    return out


class _SpeakerModel:
    def __init__(self, categories: list[str], vocab: list[str], weights: np.ndarray,
                 bias: np.ndarray, thresholds: np.ndarray) -> None:
        self.categories = categories
        self.column = {c: i for i, c in enumerate(categories)}
        self.vocab = {f: i for i, f in enumerate(vocab)}
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias_list = [float(b) for b in bias]
        self.zeros = [0.0] * len(categories)
        self.thresholds = thresholds.astype(np.float32)


class IntentModel:
    """Per-category probabilities for an utterance. Thread-safe (read-only after load)."""

    def __init__(self, speakers: dict[str, _SpeakerModel], meta: dict) -> None:
        self._speakers = speakers
        self.meta = meta

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> IntentModel:
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise IntentModelError(f"{path}: intent model not found; build it with "
                                   "'python -m prompts.intent_train'") from None
        return cls.from_arrays(data, str(path))

    @classmethod
    def from_arrays(cls, data, where: str = "intent model") -> IntentModel:
        """From the arrays prompts.intent_train writes (a loaded .npz or a dict)."""
        meta = json.loads(str(data["meta"]))
        path = where
        if meta.get("feature_version") != FEATURE_VERSION:
            raise IntentModelError(f"{path}: built for feature version {meta.get('feature_version')}, "
                                   f"this code has {FEATURE_VERSION}; rebuild it with "
                                   "'python -m prompts.intent_train'")
        speakers = {}
        for speaker in meta["speakers"]:
            speakers[speaker] = _SpeakerModel(
                [str(c) for c in data[f"{speaker}_categories"]], data[f"{speaker}_vocab"].tolist(),
                data[f"{speaker}_weights"], data[f"{speaker}_bias"],
                data[f"{speaker}_thresholds"])
        return cls(speakers, meta)

    def categories(self, speaker: Speaker) -> list[str]:
        model = self._speakers.get(speaker)
        return model.categories if model else []

    def threshold(self, speaker: Speaker, category: str) -> float:
        model = self._speakers[speaker]
        return float(model.thresholds[model.column[category]])

    def read(self, chars: str, folded: tuple[str, ...], speaker: Speaker) -> Reading | None:
        """The model's reading of one normalised utterance (None: no model for `speaker`)."""
        model = self._speakers.get(speaker)
        if model is None or not chars:
            return None
        return Reading(model, chars, folded)


class Reading:
    """One utterance as the model sees it: the vocabulary features found (with where they
    are), the probability per category, and on demand the span that weighed most."""

    def __init__(self, model: _SpeakerModel, chars: str, folded: tuple[str, ...]) -> None:
        self._model = model
        self.chars = chars
        self._rows, self._starts, self._ends, count = _known_features(chars, folded, model.vocab)
        self._scale = 1.0 / math.sqrt(count)
        rows = list(set(self._rows))                         # binary features: present or not
        sums = model.weights.take(rows, axis=0).sum(axis=0).tolist() if rows else model.zeros
        scale = self._scale     # 22 sigmoids in plain Python beat four more numpy calls
        self._probabilities = [1.0 / (1.0 + math.exp(-(total * scale + bias)))
                               for total, bias in zip(sums, model.bias_list)]

    def probability(self, category: str) -> float:
        return self._probabilities[self._model.column[category]]

    def threshold(self, category: str) -> float:
        return float(self._model.thresholds[self._model.column[category]])

    def likely(self, floor: float) -> list[str]:
        """Categories whose probability reaches `floor` or their threshold, whichever is lower."""
        thresholds = self._model.thresholds
        return [c for c, p, t in zip(self._model.categories, self._probabilities, thresholds)
                if p >= floor or p >= t]

    def _inside(self, spans: Sequence[tuple[int, int]]) -> list[bool]:
        return [any(s < b and a < e for a, b in spans) for s, e in zip(self._starts, self._ends)]

    def without(self, category: str, spans: list[tuple[int, int]]) -> float:
        """The category's probability when the features inside `spans` (an exclusion's
        words, 精神挺好) do not count; a feature also found outside them still counts."""
        col = self._model.column[category]
        inside = self._inside(spans)
        outside = {r for r, i in zip(self._rows, inside) if not i}
        dropped_rows = list({r for r, i in zip(self._rows, inside) if i} - outside)
        dropped = float(self._model.weights[dropped_rows, col].sum()) if dropped_rows else 0.0
        p = min(max(self._probabilities[col], 1e-12), 1 - 1e-12)
        logit = math.log(p / (1 - p)) - self._scale * dropped
        return 1.0 / (1.0 + math.exp(-logit))

    def span(self, category: str, masked: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
        """The window of at most SPAN_MAX characters with the largest positive evidence for
        `category` (each n-gram's weight spread over the characters it covers)."""
        col = self._model.column[category]
        weights = self._model.weights[self._rows, col].tolist() if self._rows else []
        inside = self._inside(masked) if masked else [False] * len(self._rows)
        per_char = [0.0] * len(self.chars)
        for weight, start, end, out in zip(weights, self._starts, self._ends, inside):
            if out:
                continue
            share = weight * self._scale / (end - start)
            for k in range(start, end):
                per_char[k] += share
        # the densest short window: a card highlights words, not the whole utterance
        best, best_span = 0.0, (0, 0)
        for start in range(len(per_char)):
            total = 0.0
            for end in range(start + 1, min(start + SPAN_MAX, len(per_char)) + 1):
                total += per_char[end - 1]
                if total > best + 1e-9:
                    best, best_span = total, (start, end)
        return best_span
