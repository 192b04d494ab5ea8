"""Match transcript text against the playbook, robust to ASR homophones.

`Matcher.match` scores every trigger phrase of the speaker's categories against one
utterance, on characters and on folded pinyin, and returns the best match per
category. `CallMatcher` runs it incrementally over a call's partial and final
transcripts and turns matches into card events (fired early, then confirmed or
withdrawn by the final result).

Scoring of a phrase of L characters (both sides normalised, see prompts.normalize):
- chars: rapidfuzz partial_ratio_alignment of the phrase inside the utterance, over
  windows as long as the phrase (the utterance is padded, so a phrase cut off at the
  edge scores what it shares with the whole phrase): score = 100 * LCS / L. Windows
  one character longer are scored too (fuzz.ratio = 2L / (2L + 1) when the phrase is
  intact), so one filler inserted inside a phrase of 4+ characters still matches:
  朋友就是记者 ~ 朋友是记者, 给我个说法 ~ 给个说法.
- pinyin: syllable by syllable on folded toneless pinyin (zh/z, ch/c, sh/s, n/l,
  -ang/-an, -eng/-en, -ing/-in): score = 100 * mean over the L syllables of their
  similarity: 1 when equal after folding, else 0 for a different initial, else
  fuzz.ratio of the finals. A near syllable costs little (shang/shuang -> an/uan 0.8,
  cheng/chang -> en/an 0.5), an unrelated one its whole share, so one near-homophone
  in a 4-syllable phrase passes 86 (精神培成 87.5, 商贝返还 95), while 荐我办的 vs
  骗我办的 does not. Scored only on windows where at least L - max(1, L // 4)
  syllables agree exactly after folding. Only for phrases of 4+ characters.
  A heteronym in the utterance scores 1 when any of its readings equals the phrase's
  syllable after folding: context picks a reading even for a character ASR got wrong
  (精神培长 reads pei zhang, yet stands for 精神赔偿 pei chang). The phrase keeps its
  context reading (phrases are written correctly). Kept narrow, as measured on the
  seed texts and playbook: the gate counts context readings only (counted there, the
  rare reading ti of 是 made 就是投诉 a 集体投诉), and other readings count only when
  equal, never as near syllables (巨 qu ~ 全 quan made the agent's 巨额赔偿 a 全额赔偿).
  (Letter-level fuzzing of the joined pinyin string was tried first: it let an
  unrelated syllable through in 3-4 syllable phrases: 在网上交话费 -> 发网上.)
- Short phrases, where one syllable is a third or half of the phrase, need exact hits
  (false triggers are costly; measured on the seed texts: 家主管 -> 叫主管,
  面有非 -> 漫游费, 投诉理 -> 投诉你 with n/l folding):
  3 characters: exact characters or exact unfolded pinyin (公信部 -> 工信部);
  1-2 characters: exact characters, or exact unfolded pinyin that keeps one of the
  two characters (驴师 -> 律师 but not 用户又 -> 忽悠, 安抚技巧 -> 复机).
  Exact pinyin here means the context reading only, never a heteronym's other
  readings: one of those is a third or half of the phrase (还人 hai/huan ren -> 换人).
- Exclusions: occurrences of a category's exclude phrases (exact, or exact pinyin)
  are masked out of the utterance before scoring that category, and a match whose
  span overlaps one is discarded (我今天精神挺好 is not 精神赔偿), while another,
  separate occurrence of a trigger phrase in the same utterance still fires.
Prefilters (counts from character / syllable inverted indexes) skip phrases that
cannot reach their threshold, so rapidfuzz runs on a handful of candidates only.
"""
from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from rapidfuzz import fuzz

from callassist.config import MatcherConfig
from callassist.events import Card, CardConfirmed, CardFired, CardWithdrawn, Speaker
from prompts.intent import IntentModel, Reading
from prompts.normalize import fold_pinyin, folded_alternatives, normalize, to_pinyin
from prompts.playbook import Category, Playbook

SHORT_PHRASE = 2          # phrases this short need an exact hit (see module docstring)
EXACT_PINYIN_MAX = 3      # phrases this short match on exact pinyin only, never fuzzy pinyin
INSERTION_MIN_LENGTH = 4  # phrases this long tolerate one inserted character
# The intent model alone fires only on utterances this long: its n-grams of a two- or three-
# character partial (你们, 营业员 while the customer is still speaking, or a hotword Whisper echoed
# into a short interim) say nothing about the sentence yet. Phrases match at any length.
MIN_MODEL_CHARS = 4
_MASK_CHAR = "\x00"       # stands for an excluded character; never equals a phrase char
_MASK_SYLLABLE = "#"
_PAD = "\x01"             # pads the utterance for rapidfuzz; matches nothing


@dataclass(frozen=True)
class Match:
    category: Category
    phrase: str                  # the playbook phrase as written
    score: float                 # 0-100
    span: tuple[int, int]        # [start, end) in the normalised utterance text
    via: str                     # "chars" or "pinyin" (a phrase), or "intent" (the model)


@dataclass(frozen=True)
class _Phrase:
    index: int                   # position in its _SpeakerIndex.phrases
    category: int                # position in the playbook's categories
    raw: str
    text: str                    # normalised
    syllables: tuple[str, ...]   # toneless pinyin, one per char
    folded: tuple[str, ...]      # syllables after fold_pinyin
    threshold: float
    chars_needed: int            # prefilter: phrase chars that must occur in the utterance
    syllables_needed: int        # gate: folded syllables that must agree exactly

    @property
    def short(self) -> bool:
        return len(self.text) <= SHORT_PHRASE


@dataclass(frozen=True)
class _Text:
    """An utterance prepared for scoring: normalised chars, syllables, folded syllables."""
    chars: str
    syllables: tuple[str, ...]
    folded: tuple[str, ...]
    alternatives: dict[int, tuple[str, ...]]  # position -> other folded readings (heteronyms)
    positions: dict[str, list[int]]          # folded syllable -> where it occurs
    syllable_positions: dict[str, list[int]]  # unfolded context reading -> where it occurs

    @classmethod
    def build(cls, chars: str, syllables: tuple[str, ...], folded: tuple[str, ...],
              alternatives: dict[int, tuple[str, ...]]) -> _Text:
        return cls(chars, syllables, folded, alternatives, _positions(folded),
                   _positions(syllables))

    def similarity(self, syllable: str, p: int) -> float:
        """How alike a folded phrase syllable is to position `p`: its context reading's
        similarity, or 1 when another reading of a heteronym equals it."""
        similarity = _syllable_similarity(syllable, self.folded[p])
        if similarity < 1 and syllable in self.alternatives.get(p, ()):
            return 1.0
        return similarity

    def find_chars(self, needle: str) -> list[tuple[int, int]]:
        spans, at = [], self.chars.find(needle)
        while at >= 0:
            spans.append((at, at + len(needle)))
            at = self.chars.find(needle, at + 1)
        return spans

    def find_syllables(self, needle: tuple[str, ...]) -> list[tuple[int, int]]:
        n = len(needle)
        return [(p, p + n) for p in self.syllable_positions.get(needle[0], ())
                if self.syllables[p:p + n] == needle]


def _positions(tokens: tuple[str, ...]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = defaultdict(list)
    for i, token in enumerate(tokens):
        positions[token].append(i)
    return positions


class _CountIndex:
    """Which phrases have at least `needed` of their tokens (with multiplicity) among an
    utterance's distinct tokens: one numpy row per token, summed over the utterance."""

    def __init__(self, phrases: list[tuple[str, ...]], needed: list[int]) -> None:
        self.columns: dict[str, int] = {}
        for tokens in phrases:
            for token in tokens:
                self.columns.setdefault(token, len(self.columns))
        self.counts = np.zeros((max(1, len(self.columns)), max(1, len(phrases))), dtype=np.int16)
        for p, tokens in enumerate(phrases):
            for token in tokens:
                self.counts[self.columns[token], p] += 1
        self.needed = np.array(needed or [1], dtype=np.int16)

    def candidates(self, tokens) -> list[int]:
        rows = [self.columns[t] for t in tokens if t in self.columns]
        if not rows:
            return []
        hits = self.counts[rows].sum(axis=0)
        return np.flatnonzero(hits >= self.needed).tolist()


_INITIALS = ("zh", "ch", "sh", *"bpmfdtnlgkhjqxrzcsyw")


def _split_syllable(syllable: str) -> tuple[str, str]:
    for initial in _INITIALS:
        if syllable.startswith(initial) and len(syllable) > len(initial):
            return initial, syllable[len(initial):]
    return "", syllable


@lru_cache(maxsize=65536)
def _syllable_similarity(a: str, b: str) -> float:
    """1 for equal (folded) syllables; for the same initial, how alike the finals are
    (an/uan 0.8, en/an 0.5); 0 for different initials: ASR near-homophones keep the
    initial, while pian/jian or gui/gao are different words."""
    if a == b:
        return 1.0
    (initial_a, final_a), (initial_b, final_b) = _split_syllable(a), _split_syllable(b)
    if initial_a != initial_b or not final_a or not final_b:
        return 0.0
    return fuzz.ratio(final_a, final_b) / 100


def _chars_needed(length: int, threshold: float) -> int:
    """Least LCS with which a length-L phrase can reach `threshold`: over a window of
    its own length score = 100 * LCS / L, over longer windows it is lower."""
    return max(1, math.ceil(threshold / 100 * length - 1e-9))


def _overlaps(span: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in others)


def _fuzzy_chars(phrase: str, text: str, cutoff: float) -> tuple[float, tuple[int, int]] | None:
    """Best (score, span) of `phrase` inside `text` over windows of length L and L + 1."""
    n = len(phrase)
    pad = _PAD * n
    best: tuple[float, tuple[int, int]] | None = None
    found = fuzz.partial_ratio_alignment(phrase, pad + text + pad, score_cutoff=cutoff)
    if found is not None and found.score:
        start, end = max(0, found.dest_start - n), min(len(text), found.dest_end - n)
        if end > start:
            best = (found.score, (start, end))
    if n >= INSERTION_MIN_LENGTH and (best is None or best[0] < 100):
        first, last = phrase[0], phrase[-1]
        for i in range(len(text) - n):
            # an intact phrase with one insertion starts and ends on the phrase's own ends
            if text[i] != first or text[i + n] != last:
                continue
            score = fuzz.ratio(phrase, text[i:i + n + 1],
                               score_cutoff=max(cutoff, best[0] if best else 0))
            if score and (best is None or score > best[0]):
                best = (score, (i, i + n + 1))
    return best


class _SpeakerIndex:
    """The phrases and exclusions of one speaker's categories, with inverted indexes."""

    def __init__(self, categories: list[tuple[int, Category]], default_threshold: float,
                 h_f: bool) -> None:
        self.phrases: list[_Phrase] = []
        self.exclusions: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
        for cat_index, category in categories:
            threshold = float(category.threshold if category.threshold is not None
                              else default_threshold)
            seen: set[str] = set()
            for raw in category.phrases:
                text = normalize(raw)
                if not text or text in seen:
                    continue
                seen.add(text)
                syllables = to_pinyin(text)
                folded = fold_pinyin(syllables, h_f)
                phrase = _Phrase(
                    index=len(self.phrases), category=cat_index, raw=raw, text=text,
                    syllables=syllables, folded=folded, threshold=threshold,
                    chars_needed=(len(text) if len(text) <= SHORT_PHRASE
                                  else _chars_needed(len(text), threshold)),
                    syllables_needed=(len(text) if len(text) <= EXACT_PINYIN_MAX
                                      else len(text) - max(1, len(text) // 4)))
                self.phrases.append(phrase)
            excludes = [(t, to_pinyin(t)) for t in {normalize(e) for e in category.exclude} if t]
            if excludes:
                self.exclusions[cat_index] = excludes
        self.by_chars = _CountIndex([tuple(p.text) for p in self.phrases],
                                    [p.chars_needed for p in self.phrases])
        self.by_syllables = _CountIndex([p.folded for p in self.phrases],
                                        [p.syllables_needed for p in self.phrases])

    def candidates(self, text: _Text, use_pinyin: bool) -> tuple[list[_Phrase], list[_Phrase]]:
        """Phrases worth scoring on characters, and on pinyin."""
        by_chars = [self.phrases[i] for i in self.by_chars.candidates(set(text.chars))]
        by_pinyin = ([self.phrases[i] for i in self.by_syllables.candidates(text.positions)]
                     if use_pinyin else [])
        return by_chars, by_pinyin

    def excluded_spans(self, cat_index: int, text: _Text) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for chars, syllables in self.exclusions.get(cat_index, ()):
            spans.extend(text.find_chars(chars))
            spans.extend(text.find_syllables(syllables))
        return spans


class Matcher:
    """Scores utterances against a playbook. Thread-safe (no mutable state after init).

    Two judges, one decision per category (see prompts.intent for the model):
    - a phrase match (above) fires unless the intent model finds the category very
      unlikely (probability below the model's `veto`): 我在律所上班 matches 律所 but is
      no lawsuit threat;
    - the intent model fires on its own at or above the category's threshold, for what
      people say beyond the listed phrases (得按两倍退, 找电视台的来拍).
    Without a model (`intent=None`) the phrase match alone decides.

    `h_f` also folds h/f (hu ~ fu), for southern accents; off by default.
    """

    def __init__(self, playbook: Playbook, threshold: float = 86, use_pinyin: bool = True,
                 h_f: bool = False, intent: IntentModel | None = None) -> None:
        self.playbook = playbook
        self.threshold = threshold
        self.use_pinyin = use_pinyin
        self.h_f = h_f
        self.intent = intent
        self.veto = float(intent.meta.get("veto", 0.0)) if intent else 0.0
        self._category_index = {c.id: i for i, c in enumerate(playbook.categories)}
        if intent is not None:
            unknown = {c for s in ("customer", "agent") for c in intent.categories(s)} - set(
                self._category_index)
            if unknown:
                raise ValueError(f"intent model knows categories the playbook has not: "
                                 f"{', '.join(sorted(unknown))}; rebuild it with "
                                 "'python -m prompts.intent_train'")
        indexed = list(enumerate(playbook.categories))
        self._speakers: dict[str, _SpeakerIndex] = {
            speaker: _SpeakerIndex([(i, c) for i, c in indexed if c.speaker == speaker],
                                   threshold, h_f)
            for speaker in ("customer", "agent")}

    @classmethod
    def from_config(cls, playbook: Playbook, config: MatcherConfig, intent: bool = True) -> Matcher:
        """The matcher as configured ([matcher] in callassist.toml): the bundled intent
        model unless `[matcher] intent = false` or `intent` is False."""
        model = IntentModel.load() if intent and config.intent else None
        return cls(playbook, threshold=config.threshold, use_pinyin=config.pinyin, intent=model)

    def _prepare(self, text: str) -> _Text:
        chars = normalize(text)
        syllables = to_pinyin(chars)
        alternatives = dict(folded_alternatives(chars, self.h_f)) if self.use_pinyin else {}
        return _Text.build(chars, syllables, fold_pinyin(syllables, self.h_f), alternatives)

    def match(self, text: str, speaker: Speaker) -> list[Match]:
        """The best match per category of `speaker`'s categories, best score first."""
        index = self._speakers.get(speaker)
        if index is None:
            raise ValueError(f"speaker must be customer or agent, got {speaker!r}")
        prepared = self._prepare(text)
        if not prepared.chars:
            return []
        reading = (self.intent.read(prepared.chars, prepared.folded, speaker)
                   if self.intent is not None else None)
        if reading is None:
            matches = list(self._phrase_matches(index, prepared).values())
        else:
            matches = self._judged(index, prepared, reading)
        matches.sort(key=lambda m: -m.score)
        return matches

    def _phrase_matches(self, index: _SpeakerIndex, text: _Text,
                        only: set[int] | None = None) -> dict[str, Match]:
        """The best phrase match per category (of those in `only`, when given)."""
        if only is not None and not only:
            return {}
        by_chars, by_pinyin = index.candidates(text, self.use_pinyin)
        per_category: dict[int, tuple[list[_Phrase], list[_Phrase]]] = defaultdict(lambda: ([], []))
        for phrase in by_chars:
            per_category[phrase.category][0].append(phrase)
        for phrase in by_pinyin:
            per_category[phrase.category][1].append(phrase)
        found: dict[str, Match] = {}
        for cat_index, (char_phrases, pinyin_phrases) in per_category.items():
            if only is not None and cat_index not in only:
                continue
            best = self._best_in_category(index, cat_index, text, char_phrases, pinyin_phrases)
            if best is not None:
                found[best.category.id] = best
        return found

    def _judged(self, index: _SpeakerIndex, text: _Text, reading: Reading) -> list[Match]:
        """Phrase matches the intent model does not veto, and the model's own fires. Only
        categories the model finds at least as likely as the veto (or its threshold) can
        fire at all, so the phrase matcher runs for those alone: on ordinary talk, most of
        a call, it does not run."""
        likely = reading.likely(self.veto)
        phrase_matches = self._phrase_matches(
            index, text, {self._category_index[c] for c in likely})
        matches = []
        for category_id in likely:
            cat_index = self._category_index[category_id]
            excluded = index.excluded_spans(cat_index, text)
            p = (reading.without(category_id, excluded) if excluded
                 else reading.probability(category_id))
            phrase_match = phrase_matches.get(category_id)
            if phrase_match is not None and p >= self.veto:
                matches.append(phrase_match)
            elif len(text.chars) >= MIN_MODEL_CHARS and p >= reading.threshold(category_id):
                span = reading.span(category_id, excluded)
                if span[1] > span[0]:
                    matches.append(Match(self.playbook.categories[cat_index],
                                         text.chars[slice(*span)], round(100 * p, 1), span,
                                         "intent"))
        return matches

    def still_supports(self, category_id: str, heard: str, text: str, speaker: Speaker) -> bool:
        """Does the final `text` still hold what a partial result fired `category_id` on?
        True when `heard` (the partial's trigger) is in it, outside the category's exclusions,
        and the model does not find the category very unlikely (the veto, as for a phrase
        match) on the clauses that hold it. The whole final can move the model's mass to
        what the customer said next (我要求生被返还 fired double_refund; the final
        我要求生被返还 不然我去消息投诉 reads as a regulator complaint), but the words said
        before are still there: the card stays, and the next clause gets its own."""
        prepared = self._prepare(text)
        heard = normalize(heard)
        at = prepared.chars.find(heard) if heard else -1
        if at < 0 or self.intent is None:
            return False
        index = self._speakers[speaker]
        cat_index = self._category_index[category_id]
        if any(start < at + len(heard) and at < end
               for start, end in index.excluded_spans(cat_index, prepared)):
            return False
        holding = _clauses_holding(text, heard)
        part = self._prepare(holding)
        reading = self.intent.read(part.chars, part.folded, speaker)
        return reading is not None and reading.probability(category_id) >= self.veto

    def exclusion_may_follow(self, match: Match, text: str) -> bool:
        """True when `text` (a partial result) ends inside what may still become one of the
        category's exclusions: the partial 投诉你 may yet be 投诉你们. Firing then would
        flash a card the final result withdraws, so the caller waits for more words."""
        prepared = self._prepare(text)
        index = self._speakers[match.category.speaker]
        cat_index = next(i for i, c in enumerate(self.playbook.categories) if c.id == match.category.id)
        n = len(prepared.chars)
        for chars, syllables in index.exclusions.get(cat_index, ()):
            for k in range(min(len(chars) - 1, n), 0, -1):
                tail_matches = (prepared.chars.endswith(chars[:k])
                                or prepared.syllables[n - k:] == syllables[:k])
                if tail_matches and _overlaps(match.span, [(n - k, n)]):
                    return True
        return False

    def _best_in_category(self, index: _SpeakerIndex, cat_index: int, text: _Text,
                          char_phrases: list[_Phrase], pinyin_phrases: list[_Phrase]) -> Match | None:
        excluded = index.excluded_spans(cat_index, text)
        if excluded:
            text = self._masked(text, excluded)
        category = self.playbook.categories[cat_index]
        best: Match | None = None
        for via, phrases, scorer in (("chars", char_phrases, self._score_chars),
                                     ("pinyin", pinyin_phrases, self._score_pinyin)):
            for phrase in phrases:
                found = scorer(phrase, text)
                if found is None:
                    continue
                score, span = found
                if excluded and _overlaps(span, excluded):
                    continue
                if best is None or score > best.score:
                    best = Match(category, phrase.raw, score, span, via)
                    if score >= 100:
                        return best     # cannot be beaten; characters are tried first
        return best

    @staticmethod
    def _masked(text: _Text, spans: list[tuple[int, int]]) -> _Text:
        chars, syllables, folded = list(text.chars), list(text.syllables), list(text.folded)
        for start, end in spans:
            for i in range(start, end):
                chars[i], syllables[i], folded[i] = _MASK_CHAR, _MASK_SYLLABLE, _MASK_SYLLABLE
        alternatives = {p: others for p, others in text.alternatives.items()
                        if not _overlaps((p, p + 1), spans)}
        return _Text.build("".join(chars), tuple(syllables), tuple(folded), alternatives)

    @staticmethod
    def _score_chars(phrase: _Phrase, text: _Text) -> tuple[float, tuple[int, int]] | None:
        if phrase.short:
            at = text.chars.find(phrase.text)
            return None if at < 0 else (100.0, (at, at + len(phrase.text)))
        return _fuzzy_chars(phrase.text, text.chars, phrase.threshold)

    @staticmethod
    def _score_pinyin(phrase: _Phrase, text: _Text) -> tuple[float, tuple[int, int]] | None:
        if len(phrase.text) <= EXACT_PINYIN_MAX:
            for start, end in text.find_syllables(phrase.syllables):
                if not phrase.short or any(text.chars[start + i] == ch
                                           for i, ch in enumerate(phrase.text)):
                    return 100.0, (start, end)
            return None
        # Windows anchored on exact folded-syllable agreements; positions may run off the
        # utterance's edges (a partial result), where syllables count as wrong.
        agreements: dict[int, int] = defaultdict(int)
        for i, syl in enumerate(phrase.folded):
            for p in text.positions.get(syl, ()):
                agreements[p - i] += 1
        n, size = len(phrase.folded), len(text.folded)
        best: tuple[float, tuple[int, int]] | None = None
        for start, agreed in agreements.items():
            if agreed < phrase.syllables_needed:
                continue
            total = sum(text.similarity(syl, start + i)
                        for i, syl in enumerate(phrase.folded) if 0 <= start + i < size)
            score = 100 * total / n
            if score >= phrase.threshold and (best is None or score > best[0]):
                best = (score, (max(0, start), min(size, start + n)))
        return best


CardEvent = CardFired | CardConfirmed | CardWithdrawn


@dataclass
class _Utterance:
    """Cards of one (speaker, utterance): open ones await the final result."""
    open_cards: dict[str, Card] = field(default_factory=dict)       # category id -> card
    decided: set[str] = field(default_factory=set)                  # category ids carded


_CLAUSE_BREAK = re.compile(r"[，,。.！!？?；;：:\s]+")


def _clauses_holding(text: str, heard: str) -> str:
    """The fewest consecutive clauses of `text` (split at punctuation and spaces) whose
    normalised text contains `heard`; `text` itself when none do."""
    clauses = [c for c in _CLAUSE_BREAK.split(text) if c]
    best = text
    for first in range(len(clauses)):
        for last in range(first, len(clauses)):
            joined = "".join(clauses[first:last + 1])
            if heard in normalize(joined):
                if len(joined) < len(best):
                    best = joined
                break
    return best


class CallMatcher:
    """Incremental matching for one call: partial results fire cards early, the final
    result of the utterance confirms or withdraws them.

    - At most one card per (speaker, utterance, category), however many partials arrive.
    - Cooldown: once a category fired on this call, it fires again only for an
      utterance starting `category.cooldown` seconds (call time) after the one that
      fired it. A withdrawn card releases the cooldown it took.
    - Utterance indices are per speaker; updates for an utterance whose final result
      was already handled are ignored.
    """

    def __init__(self, matcher: Matcher, call_id: str, day: dt.date | None = None) -> None:
        self.matcher = matcher
        self.call_id = call_id
        self.day = day
        self._utterances: dict[tuple[str, int], _Utterance] = {}
        self._closed: set[tuple[str, int]] = set()
        self._fired_at: dict[str, list[float]] = defaultdict(list)   # category -> fire starts

    def on_transcript(self, speaker: Speaker, utterance: int, text: str, start: float,
                      end: float, final: bool) -> list[CardEvent]:
        key = (speaker, utterance)
        if key in self._closed:
            return []
        state = self._utterances.setdefault(key, _Utterance())
        matches = {m.category.id: m for m in self.matcher.match(text, speaker)}
        shown = normalize(text)
        events: list[CardEvent] = []
        if final:
            for cat_id, card in state.open_cards.items():
                if cat_id in matches or self.matcher.still_supports(cat_id, card.heard, text, speaker):
                    events.append(CardConfirmed(self.call_id, card.card_id, shown, end))
                else:
                    events.append(CardWithdrawn(self.call_id, card.card_id))
                    self._fired_at[cat_id].remove(card.start)
        for cat_id, match in matches.items():
            if cat_id in state.decided or self._cooling(match.category, start):
                continue
            if not final and self.matcher.exclusion_may_follow(match, text):
                continue
            card = self._card(match, speaker, utterance, shown, start, end, confirmed=final)
            state.decided.add(cat_id)
            self._fired_at[cat_id].append(start)
            if not final:
                state.open_cards[cat_id] = card
            events.append(CardFired(self.call_id, card))
        if final:
            del self._utterances[key]
            self._closed.add(key)
        return events

    def _cooling(self, category: Category, start: float) -> bool:
        return any(abs(start - fired) < category.cooldown for fired in self._fired_at[category.id])

    def _card(self, match: Match, speaker: Speaker, utterance: int, text: str, start: float,
              end: float, confirmed: bool) -> Card:
        category = match.category
        return Card(
            card_id=uuid.uuid4().hex, category=category.id, title=category.title,
            severity=category.severity, speaker=speaker, text=text, phrase=match.phrase,
            score=round(match.score, 1), start=start, end=end, utterance=utterance,
            script=category.script,
            citations=self.matcher.playbook.citation_views(category, self.day),
            alert_supervisor=category.alert_supervisor, confirmed=confirmed,
            heard=text[slice(*match.span)], via=match.via)
