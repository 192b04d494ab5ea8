"""What one agent turn shows of the techniques the seeds teach (prompts/techniques.toml).

`TechniqueReader.read_turn(text, context)` reads one agent turn (and the customer's turn
before it, for 重复法) into a `TurnReading`: for each sign, what in the turn showed it, or
None. `TurnReading.shows(key)` is the turn-level verdict for a technique (1/0 as in
prompts/corpus/techniques_dev.tsv); agent_ui.adherence turns the readings of a whole call
into per-technique verdicts with the turns as evidence.

Judged by meaning, not exact strings (see the top of techniques.toml): normalisation
(prompts.normalize), a synonym table (帮您/为您, 核实/查一下, 你/您 ...), folded toneless
pinyin for ASR homophones and rapidfuzz for a character off; regular expressions for
structures (a number + 小时内, a 你……吗 question). Forbidden phrases are not listed here: the
playbook's agent-side categories, recognised by the live Matcher (phrases + intent model),
are the one source for them.

A learned layer over these rules (logistic regression on the rule signs + character and
pinyin n-grams) was tried and cross-validated on both dev sets: it did not beat the rules
(see prompts/techniques_train.py, which reruns the comparison), so the rules alone decide.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from prompts.matcher import Matcher
from prompts.normalize import fold_pinyin, normalize, to_pinyin

TECHNIQUES_FILE = Path(__file__).with_name("techniques.toml")
KEYS = ("empathy_first", "repeat_back", "no_rhetorical", "no_forbidden", "time_bound_next_step",
        "proper_close")
FUZZY_THRESHOLD = 90.0      # technique cues; see techniques.toml
_CLAUSE_SPLIT = re.compile(r"[\s,，。.!！?？;；:：、…~～]+")


@dataclass(frozen=True)
class Technique:
    key: str
    name: str
    seed: str
    quote: str
    weight: float
    cues: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    spoiler_patterns: tuple[re.Pattern[str], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)    # technique-specific keys of the toml

    def strings(self, name: str) -> tuple[str, ...]:
        return tuple(self.options.get(name, ()))

    def regexes(self, name: str) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.options.get(name, ()))


@dataclass(frozen=True)
class Techniques:
    techniques: dict[str, Technique]
    synonyms: tuple[tuple[str, str], ...]        # (variant, canonical), longest variant first
    script_weight: float

    def __getitem__(self, key: str) -> Technique:
        return self.techniques[key]

    def canonical(self, text: str) -> str:
        """`text` normalised, with every synonym read as its group's first entry."""
        return _canonical(normalize(text), self.synonyms)


@lru_cache(maxsize=8)
def load_techniques(path: Path = TECHNIQUES_FILE) -> Techniques:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    known = {"key", "name", "seed", "quote", "weight", "cues", "patterns", "spoiler_patterns"}
    techniques: dict[str, Technique] = {}
    for raw in data["technique"]:
        feel = "|".join(raw.get("feelings", ()))      # {feel} in a pattern: any feeling word
        techniques[raw["key"]] = Technique(
            key=raw["key"], name=raw["name"], seed=raw["seed"], quote=raw["quote"],
            weight=float(raw["weight"]), cues=tuple(raw.get("cues", ())),
            patterns=tuple(re.compile(p.replace("{feel}", feel)) for p in raw.get("patterns", ())),
            spoiler_patterns=tuple(re.compile(p) for p in raw.get("spoiler_patterns", ())),
            options={k: v for k, v in raw.items() if k not in known})
    missing = set(KEYS) - set(techniques)
    if missing:
        raise ValueError(f"{path}: techniques missing: {', '.join(sorted(missing))}")
    pairs = [(normalize(variant), normalize(group[0]))
             for group in data["synonyms"]["groups"] for variant in group[1:]]
    pairs.sort(key=lambda p: -len(p[0]))
    return Techniques(techniques, tuple(pairs), float(data["script"]["weight"]))


def _canonical(text: str, synonyms: tuple[tuple[str, str], ...]) -> str:
    if not synonyms or not text:
        return text
    return _synonym_regex(synonyms).sub(lambda m: _synonym_map(synonyms)[m.group()], text)


@lru_cache(maxsize=8)
def _synonym_regex(synonyms: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(v) for v, _ in synonyms))


@lru_cache(maxsize=8)
def _synonym_map(synonyms: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(synonyms)


def _folded(text: str) -> tuple[str, ...]:
    return fold_pinyin(to_pinyin(text))


def find_phrase(phrase: str, text: str, threshold: float = FUZZY_THRESHOLD) -> int | None:
    """Where `phrase` occurs in `text` (both already normalised), robust to ASR errors:
    as characters, as folded toneless pinyin (homophones), or, for 3+ characters,
    rapidfuzz partial_ratio >= threshold. The start index in `text`, or None."""
    if not phrase or not text:
        return None
    at = text.find(phrase)
    if at >= 0:
        return at
    folded_text, folded_phrase = _folded(text), _folded(phrase)
    n = len(folded_phrase)
    for i in range(len(folded_text) - n + 1):
        if folded_text[i:i + n] == folded_phrase:
            return i
    if len(phrase) < 3:
        return None              # short phrases: exact only (fuzzy 2-character hits are accidents)
    # partial_ratio aligns the SHORTER string inside the longer: a text shorter than the
    # phrase is compared whole, or 非常好 would pass for 非常抱歉
    if len(text) < len(phrase):
        return 0 if fuzz.ratio(phrase, text) >= threshold else None
    alignment = fuzz.partial_ratio_alignment(phrase, text, score_cutoff=threshold)
    # rapidfuzz also scores windows cut off at the text's edges: 马上为您 at the end of a text
    # scores 80 against 马上为您核实; at most one character of the phrase may be missing
    if alignment is None or alignment.dest_end - alignment.dest_start < len(phrase) - 1:
        return None
    return alignment.dest_start


@dataclass(frozen=True)
class Sign:
    """What in a turn showed a sign: the cue (or pattern match) and where it starts."""
    what: str
    at: int


@dataclass(frozen=True)
class TurnReading:
    text: str                         # the normalised turn
    empathy: Sign | None = None       # an acknowledgement of the feeling, before the facts
    repeat: Sign | None = None        # the customer's demand said back
    rhetorical: Sign | None = None    # a 反问 or blame
    forbidden: Sign | None = None     # a playbook agent-side category (what = category id)
    forbidden_phrase: str = ""
    time_step: Sign | None = None     # a next step with a time
    done: Sign | None = None          # solved in the call (no next step needed)
    close: Sign | None = None         # a proper close

    def shows(self, key: str) -> bool:
        """The turn-level verdict for technique `key` (as labelled in techniques_dev.tsv)."""
        clean = self.rhetorical is None and self.forbidden is None
        return {"empathy_first": self.empathy is not None and clean,
                "repeat_back": self.repeat is not None and self.rhetorical is None,
                "no_rhetorical": self.rhetorical is None,
                "no_forbidden": self.forbidden is None,
                "time_bound_next_step": self.time_step is not None,
                "proper_close": self.close is not None and clean}[key]


class TechniqueReader:
    """Reads agent turns for the technique signs. `matcher`: the playbook Matcher whose
    agent-side categories are the forbidden phrases (None: forbidden phrases not judged)."""

    def __init__(self, matcher: Matcher | None, techniques: Techniques | None = None) -> None:
        self.matcher = matcher
        self.techniques = techniques or load_techniques()

    def read_turn(self, text: str, context: str = "") -> TurnReading:
        plain = normalize(text)
        canon = self.techniques.canonical(text)
        clauses = [normalize(c) for c in _CLAUSE_SPLIT.split(text) if normalize(c)]
        forbidden, phrase = self._forbidden(text)
        return TurnReading(
            text=plain, empathy=self._empathy(canon), repeat=self._repeat(canon, clauses, context),
            rhetorical=self._rhetorical(plain, clauses), forbidden=forbidden, forbidden_phrase=phrase,
            time_step=self._time_step(canon), done=self._first_pattern(self.techniques[
                "time_bound_next_step"].regexes("done_patterns"), canon),
            close=self._close(canon))

    # --- helpers ----------------------------------------------------------------

    def _cue(self, cues: tuple[str, ...], text: str) -> Sign | None:
        best: Sign | None = None
        for cue in cues:
            at = find_phrase(self.techniques.canonical(cue), text)
            if at is not None and (best is None or at < best.at):
                best = Sign(cue, at)
        return best

    @staticmethod
    def _first_pattern(patterns: tuple[re.Pattern[str], ...], text: str) -> Sign | None:
        for pattern in patterns:
            m = pattern.search(text)
            if m:
                return Sign(m.group(), m.start())
        return None

    @staticmethod
    def _earliest_pattern(patterns: tuple[re.Pattern[str], ...], text: str) -> Sign | None:
        hits = [m for m in (p.search(text) for p in patterns) if m]
        first = min(hits, key=lambda m: m.start(), default=None)
        return Sign(first.group(), first.start()) if first else None

    @staticmethod
    def _spoiled(technique: Technique, text: str) -> bool:
        return any(p.search(text) for p in technique.spoiler_patterns)

    # --- the signs --------------------------------------------------------------

    def _empathy(self, canon: str) -> Sign | None:
        technique = self.techniques["empathy_first"]
        if self._spoiled(technique, canon):
            return None
        signs = [s for s in (self._cue(technique.cues, canon),
                             self._earliest_pattern(technique.patterns, canon)) if s is not None]
        if not signs:
            return None
        sign = min(signs, key=lambda s: s.at)
        lead = max(int(technique.options.get("lead_chars", 14)), len(canon) // 2)
        if sign.at <= lead:
            return sign
        before = canon[:sign.at]
        return None if any(p.search(before) for p in technique.regexes("fact_patterns")) else sign

    def _repeat(self, canon: str, clauses: list[str], context: str) -> Sign | None:
        technique = self.techniques["repeat_back"]
        if self._spoiled(technique, canon):
            return None
        strong = self._cue(technique.cues, canon)
        if strong is not None:
            return strong
        restate = self._cue(technique.strings("restate_cues"), canon)
        if restate is None:
            return None
        confirmed = any(self._first_pattern(technique.regexes("confirm_patterns"), c) for c in clauses)
        shared = _shared_bigrams(canon[restate.at:], self.techniques.canonical(context))
        needed = int(technique.options.get("min_shared_bigrams", 2))
        return restate if confirmed or (context and shared >= needed) else None

    def _rhetorical(self, plain: str, clauses: list[str]) -> Sign | None:
        technique = self.techniques["no_rhetorical"]
        sign = None
        for cue in technique.cues:                    # on the plain text: 你 is not 您 here
            at = find_phrase(normalize(cue), plain)
            if at is not None:
                sign = Sign(cue, at)
                break
        if sign is None:
            for clause in clauses:
                hit = self._first_pattern(technique.patterns, clause)
                if hit:
                    sign = Sign(hit.what, max(plain.find(clause), 0) + hit.at)
                    break
        if sign is None:                 # across clauses: ASR spaces split words, not clauses
            sign = self._first_pattern(technique.patterns, plain)
        return sign

    def _forbidden(self, text: str) -> tuple[Sign | None, str]:
        if self.matcher is None:
            return None, ""
        matches = self.matcher.match(text, "agent")
        if not matches:
            return None, ""
        first = min(matches, key=lambda m: m.span[0])
        return Sign(first.category.id, first.span[0]), first.phrase

    def _time_step(self, canon: str) -> Sign | None:
        technique = self.techniques["time_bound_next_step"]
        if self._spoiled(technique, canon):
            return None
        when = self._first_pattern(technique.patterns, canon)
        if when is None or self._cue(technique.strings("action_cues"), canon) is None:
            return None
        return when


    def _close(self, canon: str) -> Sign | None:
        technique = self.techniques["proper_close"]
        return None if self._spoiled(technique, canon) else self._cue(technique.cues, canon)


def _shared_bigrams(a: str, b: str) -> int:
    grams = {b[i:i + 2] for i in range(len(b) - 1)}
    return len({a[i:i + 2] for i in range(len(a) - 1)} & grams)

