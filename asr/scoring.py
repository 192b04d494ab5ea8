"""Character error rate for Mandarin transcripts (tests and benchmarks).

References and hypotheses are compared after converting to simplified characters and
dropping punctuation and spaces, so only the recognised characters count.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

from rapidfuzz.distance import Levenshtein


@lru_cache(maxsize=1)
def _t2s():
    import opencc
    return opencc.OpenCC("t2s").convert


def normalise_for_cer(text: str) -> str:
    simplified = _t2s()(text)
    return "".join(ch for ch in simplified
                    if not unicodedata.category(ch).startswith(("P", "Z", "S", "C")))


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance, reference length) after normalisation: sum these over a corpus."""
    ref, hyp = normalise_for_cer(reference), normalise_for_cer(hypothesis)
    return Levenshtein.distance(ref, hyp), len(ref)


def cer(reference: str, hypothesis: str) -> float:
    errors, length = char_errors(reference, hypothesis)
    return errors / max(1, length)
