"""QA script adherence: after a customer-side card, did the agent say what its script
says (the category's key_phrases) within `window` seconds? And did the agent say
anything the playbook marks as not to be said (agent-side cards)?

Pure functions over a call's cards and final utterances (dicts as Store.get_call
returns them, or objects with the same attribute names).

A key phrase counts as said when, after normalisation (prompts.normalize), it is a
substring of an agent utterance, or its folded toneless pinyin is (ASR homophones),
or — for phrases of 3+ characters — rapidfuzz partial_ratio >= `threshold` (80).

Score (0-100, None when there is nothing to judge):
    100 * followed customer cards / judged customer cards   (100 when none judged)
  - per agent-side card: critical 20, warning 10, info 5 (halved when the agent then
    said one of that category's key phrases, i.e. corrected themselves), floor 0.
Judged: standing (not withdrawn) customer-side cards whose category has key phrases.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rapidfuzz import fuzz

from prompts.normalize import fold_pinyin, normalize, to_pinyin
from prompts.playbook import Playbook

DEFAULT_THRESHOLD = 80.0
VIOLATION_PENALTY = {"critical": 20.0, "warning": 10.0, "info": 5.0}


@dataclass(frozen=True)
class CardAdherence:
    card_id: str
    category: str
    title: str
    start: float
    expected: tuple[str, ...]        # the category's key phrases
    said: tuple[str, ...]            # those the agent said within the window
    first_said_at: float | None      # start of the first agent utterance that had one

    @property
    def followed(self) -> bool:
        return bool(self.said)


@dataclass(frozen=True)
class Violation:
    card_id: str
    category: str
    title: str
    severity: str
    start: float
    text: str                        # what the agent said
    corrected: bool                  # a key phrase of the category followed within the window


@dataclass(frozen=True)
class CallAdherence:
    cards: tuple[CardAdherence, ...]
    violations: tuple[Violation, ...]
    score: int | None

    @property
    def judged(self) -> int:
        return len(self.cards)

    @property
    def followed(self) -> int:
        return sum(c.followed for c in self.cards)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "judged": self.judged, "followed": self.followed,
                "cards": [asdict(c) | {"followed": c.followed} for c in self.cards],
                "violations": [asdict(v) for v in self.violations]}


def _field(item: Mapping[str, Any] | Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def phrase_said(phrase: str, text: str, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether `text` (an utterance) contains `phrase`, robust to ASR errors."""
    p, t = normalize(phrase), normalize(text)
    if not p or not t:
        return False
    if p in t or _contains(fold_pinyin(to_pinyin(t)), fold_pinyin(to_pinyin(p))):
        return True
    if len(p) < 3:
        return False            # short phrases: exact only (fuzzy 2-character hits are accidents)
    # partial_ratio aligns the SHORTER string inside the longer: a text shorter than the
    # phrase must be compared whole, or 非常好 would pass for 非常抱歉
    score = fuzz.partial_ratio(p, t) if len(t) >= len(p) else fuzz.ratio(p, t)
    return score >= threshold


def phrases_said(phrases: Iterable[str], utterances: Iterable[Any], start: float, window: float,
                 threshold: float = DEFAULT_THRESHOLD) -> tuple[tuple[str, ...], float | None]:
    """Key phrases said by the agent in utterances overlapping [start, start + window],
    and when the first such utterance began."""
    phrases = tuple(phrases)
    said: list[str] = []
    first: float | None = None
    in_window = sorted((u for u in utterances if _field(u, "speaker") == "agent"
                        and _field(u, "end", 0.0) >= start
                        and _field(u, "start", 0.0) <= start + window),
                       key=lambda u: _field(u, "start", 0.0))
    for utt in in_window:
        text = _field(utt, "text", "")
        hits = [p for p in phrases if p not in said and phrase_said(p, text, threshold)]
        if hits and first is None:
            first = _field(utt, "start", 0.0)
        said.extend(hits)
    return tuple(p for p in phrases if p in said), first


def assess(cards: Iterable[Any], utterances: Iterable[Any], playbook: Playbook, window: float,
           threshold: float = DEFAULT_THRESHOLD) -> CallAdherence:
    """Adherence of one call. `cards`: every card of the call (withdrawn ones are
    ignored); `utterances`: its final utterances, both speakers."""
    utterances = list(utterances)
    judged: list[CardAdherence] = []
    violations: list[Violation] = []
    for card in sorted(cards, key=lambda c: _field(c, "start", 0.0)):
        if _field(card, "status") == "withdrawn":
            continue
        category_id = _field(card, "category", "")
        try:
            category = playbook.category(category_id)
        except KeyError:
            category = None                    # playbook changed since: cannot judge
        key_phrases = category.key_phrases if category else ()
        start = float(_field(card, "start", 0.0))
        if _field(card, "speaker") == "agent":
            # a correction comes after the offending utterance, never inside it
            offending = _field(card, "utterance")
            later = [u for u in utterances if not (_field(u, "speaker") == "agent"
                                                   and _field(u, "utterance") == offending)
                     and _field(u, "start", 0.0) >= start]
            said, _ = phrases_said(key_phrases, later, start, window, threshold)
            violations.append(Violation(
                card_id=_field(card, "card_id", ""), category=category_id,
                title=_field(card, "title", "") or (category.title if category else ""),
                severity=_field(card, "severity", "warning"), start=start,
                text=_field(card, "text", ""), corrected=bool(said)))
        elif key_phrases:
            said, first = phrases_said(key_phrases, utterances, start, window, threshold)
            judged.append(CardAdherence(
                card_id=_field(card, "card_id", ""), category=category_id,
                title=_field(card, "title", "") or category.title, start=start,
                expected=key_phrases, said=said, first_said_at=first))
    return CallAdherence(tuple(judged), tuple(violations), _score(judged, violations))


def _score(judged: list[CardAdherence], violations: list[Violation]) -> int | None:
    if not judged and not violations:
        return None
    base = 100.0 * sum(c.followed for c in judged) / len(judged) if judged else 100.0
    penalty = sum(VIOLATION_PENALTY.get(v.severity, 10.0) * (0.5 if v.corrected else 1.0)
                  for v in violations)
    return int(round(max(0.0, base - penalty)))


def assess_call(call: Mapping[str, Any], playbook: Playbook, window: float,
                threshold: float = DEFAULT_THRESHOLD) -> CallAdherence:
    """`assess` for a Store.get_call dict."""
    return assess(call.get("cards", ()), call.get("utterances", ()), playbook, window, threshold)
