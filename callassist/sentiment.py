"""Customer sentiment of one transcript line, -1 (angry) .. 1 (satisfied), from a small
Chinese lexicon (sentiment.toml next to this file): sentiment words with a strength,
intensifiers that scale the next one, negations that flip it, and exclamation marks.

    score = sum over sentiment words of  strength x intensifiers x (negated: -1 for a
            praise, -0.5 for a complaint)  x (1 + 0.15 per "!", at most 3)
    value = tanh(score / 2)

The text is tokenised by longest match over all entries (不满意 is one negative word,
not 不 + 满意); a modifier reaches only the sentiment word that follows it within
MODIFIER_REACH characters. Deliberately simple and explainable: QA sees the words.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prompts.normalize import normalize

LEXICON_FILE = Path(__file__).resolve().parent / "sentiment.toml"
MODIFIER_REACH = 3              # characters between a modifier and its word
NEGATED_COMPLAINT = -0.5        # 不生气: mildly for, not as much as 满意
NEGATED_PRAISE = -1.0           # 不满意-like: fully against
EXCLAMATION_BOOST = 0.15
SCALE = 2.0


@dataclass(frozen=True)
class Lexicon:
    words: dict[str, float]              # signed strength: negative < 0 < positive
    neutral: frozenset[str]
    intensifiers: dict[str, float]
    negations: frozenset[str]

    @property
    def longest(self) -> int:
        return max(map(len, [*self.words, *self.neutral, *self.intensifiers, *self.negations]))


@lru_cache(maxsize=1)
def load_lexicon(path: Path = LEXICON_FILE) -> Lexicon:
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    words = {normalize(w): -float(v) for w, v in raw["negative"].items()}
    words.update({normalize(w): float(v) for w, v in raw["positive"].items()})
    return Lexicon(words=words, neutral=frozenset(map(normalize, raw["neutral"]["words"])),
                   intensifiers={normalize(w): float(v) for w, v in raw["intensifiers"].items()},
                   negations=frozenset(map(normalize, raw["negations"]["words"])))


def spoken_chars(text: str) -> int:
    """Characters actually spoken: letters, digits and CJK, no spaces or punctuation."""
    return sum(1 for ch in text if ch.isalnum())


def _tokens(text: str, lexicon: Lexicon) -> list[str]:
    """Longest match over all entries; other characters one by one."""
    out, i, longest = [], 0, lexicon.longest
    entries = lexicon.words.keys() | lexicon.neutral | lexicon.intensifiers.keys() | lexicon.negations
    while i < len(text):
        for size in range(min(longest, len(text) - i), 0, -1):
            if text[i:i + size] in entries:
                break
        out.append(text[i:i + size])
        i += size
    return out


def sentiment(text: str, lexicon: Lexicon | None = None) -> float:
    """-1..1 (0: nothing either way); see the module docstring."""
    lexicon = lexicon or load_lexicon()
    score, factor, negated, since = 0.0, 1.0, False, 0
    for token in _tokens(normalize(text), lexicon):
        if token in lexicon.negations:
            negated, since = not negated, 0
        elif token in lexicon.intensifiers:
            factor, since = factor * lexicon.intensifiers[token], 0
        elif token in lexicon.words:
            value = lexicon.words[token] * factor
            if negated:
                value *= NEGATED_PRAISE if value > 0 else NEGATED_COMPLAINT
            score += value
            factor, negated, since = 1.0, False, 0
        elif token in lexicon.neutral:
            factor, negated, since = 1.0, False, 0
        else:
            since += len(token)
            if since > MODIFIER_REACH:
                factor, negated = 1.0, False
    exclamations = min(3, text.count("!") + text.count("！"))
    score *= 1.0 + EXCLAMATION_BOOST * exclamations
    return round(math.tanh(score / SCALE), 3)
