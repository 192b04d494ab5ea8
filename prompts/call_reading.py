"""Reading a whole call the way the seeds teach: what kind of difficult complaint it is
(泄愤型, 秋菊型, 讹诈型, 炒作型, 攻击型 or an ordinary one), material or non-material interest,
what kind of customer is calling (变色龙型, 手榴弹型, 万事通型, 投诉为生型, 暴力倾向型,
对外宣传型 or ordinary), the technique the seeds recommend for it, and the call's
escalation score (agent_ui.risk.escalation_score).

    reading = read_call(lines, cards, stats)      # stats: ConversationStats, its dict, or None
    reading.to_dict()

`lines`: the transcript so far, dicts or objects with speaker, text and optionally
utterance (per-speaker number, as on the bus), start and end. `cards`: the call's standing
prompt cards (callassist.events.Card, or dicts with category, severity, speaker, utterance);
`cards_from_matcher` makes them for a bare transcript. `stats`: the conversation analytics
(callassist.conversation; customer agitation and talk-over feed the grenade sign and the
escalation score; without them those signs stay silent).

How a type is chosen: read_call turns the call into features (call_features): broad
families of words over the customer's turns (money, insults, media, rules and articles,
earlier complaints, ... in prompts/call_types.toml [families]), whole-call counts and
progressions (amounts asked and whether they rise, demands that change, repeated turns,
quoted article numbers), the intent model's per-category probability (prompts.intent, best
customer turn), each type's sign score (the [[complaint_type]]
/ [[customer_type]] signs in call_types.toml: card categories, phrases, patterns, whole-call
signals) and the conversation stats when present. A logistic regression per label
(prompts/call_reading_model.npz, trained and cross-validated on the labelled calls by
prompts/call_reading_train.py) turns them into a probability per type; the most likely type
wins, 'ordinary' included, so weak evidence reads as ordinary. Agitation and talk-over, which
the labelled transcripts cannot teach, add hand-set log-odds ([model.priors]). The evidence is
the turns behind the features that pushed the winner up most; confidence is its probability.
`callassist eval-calls FILE...` prints per-type precision and recall on labelled calls
(training data reads optimistic there: the train script prints the cross-validated figures).

Pure and synchronous; cost grows with the transcript (about a millisecond for a typical
call, see benchmarks/bench_call_reading.py), so live callers run it off the event loop.
"""
from __future__ import annotations

import functools
import json
import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent_ui.risk import Escalation, escalation_score
from prompts.intent import IntentModel
from prompts.normalize import fold_pinyin, normalize, to_pinyin

TYPES_FILE = Path(__file__).with_name("call_types.toml")
MODEL_FILE = Path(__file__).with_name("call_reading_model.npz")
LABEL_KINDS = ("complaint_type", "customer_type", "interest")
ORDINARY = "ordinary"
ORDINARY_NAMES = {"complaint_type": "普通投诉", "customer_type": "普通客户"}
DEFAULT_TECHNIQUE = "listen_ask_soothe_confirm"
MAX_EVIDENCE = 5
REPEAT_SIMILARITY = 0.6          # char-bigram Jaccard from which a turn repeats an earlier one
REPEAT_MIN_CHARS = 6
AGITATED = 0.6                   # customer agitation (0..1) that counts as a sign
TALK_OVERS_FOR_SIGN = 2
STATS_FEATURES = ("agitation", "talk_over")   # the model's features from conversation stats
SIGNAL_CAP = 3                   # a whole-call signal counts at most this many turns
# money amounts: a number with a money unit, or right after a verb of paying/asking
_AMOUNT = re.compile(r"(?:(?<=赔)|(?<=赔我)|(?<=补偿)|(?<=给我)|(?<=要))(\d+(?:\.\d+)?)|"
                     r"(\d+(?:\.\d+)?)(?=多?(?:块|元|现金))")
_LAW_CITATION = re.compile(r"第\d+条|\d+号令|(?:法|条例|规定|规范|办法)第")


class CallTypesError(ValueError):
    pass


# --- the data (call_types.toml) ------------------------------------------------------

@dataclass(frozen=True)
class Sign:
    why: str
    weight: float
    turns: int
    cards: frozenset[str] = frozenset()
    phrases: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    signal: str | None = None


@dataclass(frozen=True)
class TypeSpec:
    key: str
    name: str
    seed: str
    definition: str
    technique: str
    signs: tuple[Sign, ...]


@dataclass(frozen=True)
class Technique:
    key: str
    name: str
    seed: str
    script: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """A family of words and patterns (call_types.toml [families]): one model feature."""
    key: str
    why: str
    phrases: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]

    def shown_by(self, norm: str) -> bool:
        return any(p in norm for p in self.phrases) or any(p.search(norm) for p in self.patterns)


@dataclass(frozen=True)
class CallTypes:
    complaint_types: tuple[TypeSpec, ...]
    customer_types: tuple[TypeSpec, ...]
    techniques: dict[str, Technique]
    material: tuple[Sign, ...]          # money demands (interest 物质利益型)
    not_material: tuple[Sign, ...]      # "not about the money"
    interest_names: dict[str, str]
    demand_kinds: dict[str, tuple[str, ...]]
    families: tuple[Family, ...]
    family_cap: int
    priors: dict[str, dict[str, float]]  # type key -> stats feature -> log-odds per unit
    min_customer_turns: int


def _sign(raw: dict[str, Any], default_turns: int, where: str) -> Sign:
    try:
        sign = Sign(why=str(raw.get("why", "")), weight=float(raw.get("weight", 1.0)),
                    turns=int(raw.get("turns", default_turns)),
                    cards=frozenset(raw.get("cards", ())),
                    phrases=tuple(normalize(p) for p in raw.get("phrases", ())),
                    patterns=tuple(re.compile(p) for p in raw.get("patterns", ())),
                    signal=raw.get("signal"))
    except (TypeError, ValueError, re.error) as exc:
        raise CallTypesError(f"{where}: {exc}") from None
    if sign.signal is not None and sign.signal not in SIGNALS:
        raise CallTypesError(f"{where}: unknown signal {sign.signal!r} (known: {', '.join(SIGNALS)})")
    if not (sign.cards or sign.phrases or sign.patterns or sign.signal):
        raise CallTypesError(f"{where}: a sign needs cards, phrases, patterns or a signal")
    return sign


def _types(raw: list[dict[str, Any]], table: str, turns: int,
           techniques: dict[str, Any]) -> tuple[TypeSpec, ...]:
    specs = []
    for i, entry in enumerate(raw):
        where = f"{TYPES_FILE.name}: {table}[{i}] ({entry.get('key', '?')})"
        if entry.get("technique") not in techniques:
            raise CallTypesError(f"{where}: unknown technique {entry.get('technique')!r}")
        specs.append(TypeSpec(entry["key"], entry["name"], entry["seed"], entry.get("definition", ""),
                              entry["technique"],
                              tuple(_sign(s, turns, f"{where} sign {j}")
                                    for j, s in enumerate(entry.get("signs", ())))))
    return tuple(specs)


@functools.cache
def load_call_types(path: Path = TYPES_FILE) -> CallTypes:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CallTypesError(f"{path}: {exc}") from None
    scoring = data["scoring"]
    turns = int(scoring.get("turns_per_sign", 2))
    raw_techniques = data["technique"]
    techniques = {key: Technique(key, t["name"], t["seed"], tuple(t["script"]))
                  for key, t in raw_techniques.items()}
    interest = data["interest"]
    model = data.get("model", {})
    try:
        families = tuple(Family(key, str(raw.get("why", "")),
                                tuple(normalize(p) for p in raw.get("phrases", ())),
                                tuple(re.compile(p) for p in raw.get("patterns", ())))
                         for key, raw in data["families"].items())
    except (TypeError, ValueError, re.error, AttributeError) as exc:
        raise CallTypesError(f"{path.name}: families: {exc}") from None
    priors = {key: {name: float(w) for name, w in weights.items()}
              for key, weights in model.get("priors", {}).items()}
    for key, weights in priors.items():
        if set(weights) - set(STATS_FEATURES):
            raise CallTypesError(f"{path.name}: model.priors.{key}: known stats features are "
                                 f"{', '.join(STATS_FEATURES)}")
    return CallTypes(
        complaint_types=_types(data["complaint_type"], "complaint_type", turns, raw_techniques),
        customer_types=_types(data["customer_type"], "customer_type", turns, raw_techniques),
        techniques=techniques,
        material=tuple(_sign(raw, turns, f"interest.material sign {j}")
                       for j, raw in enumerate(interest["material"].get("signs", ()))),
        not_material=tuple(_sign(raw, turns, f"interest.non_material sign {j}")
                           for j, raw in enumerate(interest["non_material"].get("signs", ()))),
        interest_names={key: value["name"] for key, value in interest.items()},
        demand_kinds={kind: tuple(normalize(p) for p in phrases)
                      for kind, phrases in data["demand_kinds"].items()},
        families=families, family_cap=int(model.get("family_cap", 3)), priors=priors,
        min_customer_turns=int(scoring["min_customer_turns"]))


# --- the call as read -----------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    index: int                   # position in the transcript
    speaker: str
    utterance: int               # per-speaker number (as on the bus)
    text: str
    norm: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class CardView:
    category: str
    severity: str
    speaker: str
    utterance: int | None


@dataclass(frozen=True)
class Evidence:
    turn: Turn
    why: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"utterance": self.turn.utterance, "speaker": self.turn.speaker,
                               "text": self.turn.text, "why": self.why}
        if self.turn.start is not None:
            out["start"] = self.turn.start
        return out


@dataclass(frozen=True)
class TypeReading:
    key: str
    name: str
    confidence: float
    score: float
    evidence: tuple[Evidence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "confidence": round(self.confidence, 2),
                "score": round(self.score, 2), "evidence": [e.to_dict() for e in self.evidence]}


@dataclass(frozen=True)
class CallReading:
    complaint_type: TypeReading
    customer_type: TypeReading
    interest: TypeReading
    technique: Technique
    escalation: Escalation
    customer_turns: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)   # every type's score

    def to_dict(self) -> dict[str, Any]:
        return {
            "complaint_type": self.complaint_type.to_dict(),
            "customer_type": self.customer_type.to_dict(),
            "interest": self.interest.to_dict(),
            "technique": {"key": self.technique.key, "name": self.technique.name,
                          "script": list(self.technique.script)},
            "escalation": self.escalation.to_dict(),
            "customer_turns": self.customer_turns,
            "scores": {kind: {k: round(v, 2) for k, v in s.items()} for kind, s in self.scores.items()},
        }


def _get(item: Any, key: str, default: Any = None) -> Any:
    return item.get(key, default) if isinstance(item, dict) else getattr(item, key, default)


def turns_of(lines: Iterable[Any]) -> list[Turn]:
    """The transcript as Turns; a line without an utterance number gets the next one of
    its speaker."""
    counters: dict[str, int] = {}
    turns: list[Turn] = []
    for line in lines:
        speaker = _get(line, "speaker", "customer")
        text = _get(line, "text", "") or ""
        utterance = _get(line, "utterance")
        if utterance is None:
            utterance = counters.get(speaker, -1) + 1
        counters[speaker] = max(counters.get(speaker, -1), utterance)
        turns.append(Turn(len(turns), speaker, int(utterance), text, normalize(text),
                          _get(line, "start"), _get(line, "end")))
    return turns


def _card_views(cards: Iterable[Any]) -> list[CardView]:
    views = []
    for card in cards:
        card = _get(card, "card", card)          # a CardFired event or its dict works too
        if _get(card, "status") == "withdrawn":
            continue
        views.append(CardView(_get(card, "category", ""), _get(card, "severity", "info"),
                              _get(card, "speaker", "customer"), _get(card, "utterance")))
    return views


def cards_from_matcher(matcher: Any, lines: Iterable[Any]) -> list[dict[str, Any]]:
    """Cards for a transcript that has none (a labelled call, an imported text): the
    matcher (prompts.matcher.Matcher) run on every line."""
    cards = []
    for turn in turns_of(lines):
        for match in matcher.match(turn.text, turn.speaker):
            cards.append({"category": match.category.id, "severity": match.category.severity,
                          "speaker": turn.speaker, "utterance": turn.utterance})
    return cards


def _stats_dict(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    return stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)


# --- whole-call signals: turn -> hit ----------------------------------------------------

@dataclass
class _Call:
    turns: list[Turn]
    customer: list[Turn]
    cards: list[CardView]
    stats: dict[str, Any] | None
    types: CallTypes
    _signals: dict[str, list[Turn]] = field(default_factory=dict)

    def signal(self, name: str) -> list[Turn]:
        if name not in self._signals:
            self._signals[name] = SIGNALS[name](self)
        return self._signals[name]

    def turn_at(self, seconds: float) -> Turn | None:
        timed = [(t.start, t) for t in self.customer if t.start is not None]
        if not timed:
            return self.customer[-1] if self.customer else None
        return min(timed, key=lambda start_turn: abs(start_turn[0] - seconds))[1]


def amounts(norm: str) -> list[float]:
    """Sums of money asked for in a normalised customer turn."""
    found = []
    for m in _AMOUNT.finditer(norm):
        value = float(m.group(1) or m.group(2))
        if value >= 1:
            found.append(value)
    return found


def _demand_kinds(types: CallTypes, norm: str) -> set[str]:
    return {kind for kind, phrases in types.demand_kinds.items() if any(p in norm for p in phrases)}


def _demand_shift(call: _Call) -> list[Turn]:
    seen: set[str] = set()
    top = 0.0
    hits = []
    for turn in call.customer:
        kinds = _demand_kinds(call.types, turn.norm)
        asked = max(amounts(turn.norm), default=0.0)
        new_kind = bool(seen) and bool(kinds - seen)
        if new_kind or (top and asked > top):
            hits.append(turn)
        seen |= kinds
        top = max(top, asked)
    return hits


def _amount_rise(call: _Call) -> list[Turn]:
    top = 0.0
    hits = []
    for turn in call.customer:
        asked = max(amounts(turn.norm), default=0.0)
        if top and asked > top:
            hits.append(turn)
        top = max(top, asked)
    return hits


def _law_citation(call: _Call) -> list[Turn]:
    return [t for t in call.customer if _LAW_CITATION.search(t.norm)]


def _bigrams(text: str) -> set[str]:
    return {text[i:i + 2] for i in range(len(text) - 1)}


def repeated_turns(customer: Sequence[Turn]) -> list[Turn]:
    """Customer turns that say nearly what an earlier customer turn said."""
    hits = []
    earlier: list[set[str]] = []
    for turn in customer:
        grams = _bigrams(turn.norm)
        if len(turn.norm) >= REPEAT_MIN_CHARS and any(
                len(grams & old) / len(grams | old) >= REPEAT_SIMILARITY for old in earlier if old):
            hits.append(turn)
        earlier.append(grams)
    return hits


def _repetition(call: _Call) -> list[Turn]:
    return repeated_turns(call.customer)


def customer_agitation(stats: dict[str, Any] | None) -> list[dict[str, float]]:
    if not stats:
        return []
    leg = (stats.get("legs") or {}).get("customer") or {}
    return [p for p in leg.get("agitation") or [] if isinstance(p, dict) and "value" in p]


def customer_talk_overs(stats: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not stats:
        return []
    return [t for t in stats.get("talk_over") or [] if t.get("by") == "customer"]


def _agitation(call: _Call) -> list[Turn]:
    peaks = [p for p in customer_agitation(call.stats) if p["value"] >= AGITATED]
    turns = [call.turn_at(float(p.get("t", 0.0))) for p in peaks]
    return list(dict.fromkeys(t for t in turns if t is not None))


def _talk_over(call: _Call) -> list[Turn]:
    overs = customer_talk_overs(call.stats)
    if len(overs) < TALK_OVERS_FOR_SIGN:
        return []
    turn = call.turn_at(float(overs[-1].get("start", 0.0)))
    return [turn] if turn else []


SIGNALS = {"demand_shift": _demand_shift, "amount_rise": _amount_rise,
           "law_citation": _law_citation, "repetition": _repetition,
           "agitation": _agitation, "talk_over": _talk_over}


# --- scoring ------------------------------------------------------------------------------

def _sign_hits(sign: Sign, call: _Call) -> list[Turn]:
    if sign.signal:
        return call.signal(sign.signal)
    hits: list[Turn] = []
    if sign.cards:
        by_utterance = {t.utterance: t for t in call.customer}
        for card in call.cards:
            if card.speaker == "customer" and card.category in sign.cards:
                turn = by_utterance.get(card.utterance) if card.utterance is not None else None
                if turn is not None and turn not in hits:
                    hits.append(turn)
    for turn in call.customer:
        if turn in hits:
            continue
        if any(p and p in turn.norm for p in sign.phrases) or any(
                p.search(turn.norm) for p in sign.patterns):
            hits.append(turn)
    return sorted(hits, key=lambda t: t.index)


def _score(spec_signs: Sequence[Sign], call: _Call) -> tuple[float, list[Evidence]]:
    score = 0.0
    evidence: dict[int, Evidence] = {}
    for sign in spec_signs:
        hits = _sign_hits(sign, call)[:sign.turns]
        score += sign.weight * len(hits)
        for turn in hits:
            evidence.setdefault(turn.index, Evidence(turn, sign.why))
    return score, [evidence[i] for i in sorted(evidence)]


# --- the call's features ------------------------------------------------------------------
#
# Every feature is a number, roughly 0..1 (a count is capped and divided by its cap), with the
# evidence behind it: the customer turns that show it and why. The model file stores the
# feature names it was trained on; a different list (a family added, a type renamed, the intent
# model's categories changed) is an error until the model is retrained.



@dataclass(frozen=True)
class Feature:
    value: float
    evidence: tuple[Evidence, ...] = ()


@functools.cache
def _intent_model() -> IntentModel:
    return IntentModel.load()


@functools.cache
def _category_titles() -> dict[str, str]:
    from prompts.playbook import load_playbook
    return {c.id: c.title for c in load_playbook().categories}


@functools.lru_cache(maxsize=8192)
def _intent_probabilities(norm: str) -> tuple[float, ...]:
    """The intent model's probability for each customer category (in its order) for one
    normalised customer turn."""
    model = _intent_model()
    reading = model.read(norm, fold_pinyin(to_pinyin(norm)), "customer") if norm else None
    categories = model.categories("customer")
    return tuple(reading.probability(c) for c in categories) if reading else (0.0,) * len(categories)


def _counted(turns: Sequence[Turn], why: str, cap: int = SIGNAL_CAP) -> Feature:
    return Feature(min(len(turns), cap) / cap, tuple(Evidence(t, why) for t in turns[:cap]))


def call_features(call: _Call) -> dict[str, Feature]:
    """The call as the model sees it: name -> Feature (see the section comment)."""
    types = call.types
    customer = call.customer
    features: dict[str, Feature] = {}
    for family in types.families:
        features[f"family:{family.key}"] = _counted(
            [t for t in customer if family.shown_by(t.norm)], family.why, types.family_cap)
    # the shape and progression of the call
    lengths = [len(t.norm) for t in customer]
    features["shape:customer_turns"] = Feature(min(1.0, math.log1p(len(customer)) / math.log(16)))
    features["shape:turn_length"] = Feature(min(2.0, sum(lengths) / max(1, len(lengths)) / 40))
    asked = [(max(amounts(t.norm), default=0.0), t) for t in customer]
    top, top_turn = max(asked, key=lambda a: a[0], default=(0.0, None))
    features["money:top_amount"] = Feature(
        min(1.5, math.log10(1 + top) / 4), (Evidence(top_turn, "开口要的最大金额"),) if top_turn else ())
    kinds = set().union(*(_demand_kinds(types, t.norm) for t in customer)) if customer else set()
    features["money:demand_kinds"] = Feature(min(len(kinds), 4) / 4)
    for name, why in (("demand_shift", "诉求在通话中变了（新要求或要价抬高）"), ("amount_rise", "要价抬高"),
                      ("law_citation", "引用条款号"), ("repetition", "同一句话反复说")):
        features[f"signal:{name}"] = _counted(call.signal(name), why)
    # the intent model: each category's best customer turn
    categories = _intent_model().categories("customer")
    titles = _category_titles()
    per_turn = [(_intent_probabilities(t.norm), t) for t in customer]
    for i, category in enumerate(categories):
        best, turn = max(((p[i], t) for p, t in per_turn), key=lambda b: b[0], default=(0.0, None))
        features[f"intent:{category}"] = Feature(
            best, (Evidence(turn, f"说法接近「{titles.get(category, category)}」"),) if turn is not None and best >= 0.5 else ())
    # every type's sign score from call_types.toml (the cards count there), and the money
    # signs of the interest. (A feature per card category was tried and cost cross-validated
    # accuracy: with the intent model's probabilities it only repeated the same evidence.)
    for spec in (*types.complaint_types, *types.customer_types):
        score, evidence = _score(spec.signs, call)
        features[f"signs:{spec.key}"] = Feature(min(score, 6.0) / 3, tuple(evidence))
    score, evidence = _score(types.material, call)
    features["signs:material"] = Feature(min(score, 6.0) / 3, tuple(evidence))
    score, evidence = _score(types.not_material, call)
    features["signs:not_material"] = Feature(min(score, 4.0) / 2, tuple(evidence))
    # the conversation stats (absent from the labelled calls: see [model.priors])
    agitation = customer_agitation(call.stats)
    peak = max(agitation, key=lambda p: p["value"], default=None)
    turn = call.turn_at(float(peak.get("t", 0.0))) if peak else None
    features["stats:agitation"] = Feature(
        min(1.0, float(peak["value"])) if peak else 0.0,
        (Evidence(turn, "客户说话越来越激动（声学激动度）"),) if turn and peak and peak["value"] >= AGITATED else ())
    overs = customer_talk_overs(call.stats)
    turn = call.turn_at(float(overs[-1].get("start", 0.0))) if overs else None
    features["stats:talk_over"] = Feature(
        float(min(len(overs), SIGNAL_CAP)),
        (Evidence(turn, "多次抢话、打断坐席"),) if turn and len(overs) >= TALK_OVERS_FOR_SIGN else ())
    return features


# --- the learned model ------------------------------------------------------------------------

class ReadingModelError(CallTypesError):
    pass


@dataclass(frozen=True)
class Head:
    """One label's logistic regression: log-odds = weights @ standardised features + bias."""
    labels: tuple[str, ...]
    weights: np.ndarray          # labels x features
    bias: np.ndarray             # labels


@dataclass(frozen=True)
class ReadingModel:
    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    heads: dict[str, Head]
    meta: dict[str, Any]

    def standardise(self, features: dict[str, Feature]) -> np.ndarray:
        if tuple(features) != self.names:
            missing = sorted(set(self.names) ^ set(features))[:5]
            raise ReadingModelError(
                f"{MODEL_FILE.name} was trained on other features ({', '.join(missing) or 'order'}); "
                "retrain it: python -m prompts.call_reading_train")
        raw = np.array([features[n].value for n in self.names], dtype=np.float64)
        return (raw - self.mean) / self.scale

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"meta": np.array(json.dumps({**self.meta, "names": list(self.names),
                                                               "labels": {k: list(h.labels) for k, h in
                                                                          self.heads.items()}},
                                                              ensure_ascii=False)),
                                  "mean": self.mean, "scale": self.scale}
        for kind, head in self.heads.items():
            arrays[f"{kind}_weights"] = head.weights
            arrays[f"{kind}_bias"] = head.bias
        with path.open("wb") as out:
            np.savez_compressed(out, **arrays)


@functools.cache
def load_reading_model(path: Path = MODEL_FILE) -> ReadingModel:
    try:
        data = np.load(path, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        heads = {kind: Head(tuple(labels), data[f"{kind}_weights"], data[f"{kind}_bias"])
                 for kind, labels in meta["labels"].items()}
        return ReadingModel(tuple(meta["names"]), data["mean"], data["scale"], heads, meta)
    except (OSError, KeyError, ValueError) as exc:
        raise ReadingModelError(f"{path}: {exc}; build it with python -m prompts.call_reading_train") from None


def _probabilities(model: ReadingModel, kind: str, z: np.ndarray, features: dict[str, Feature],
                   types: CallTypes) -> dict[str, float]:
    head = model.heads[kind]
    logits = head.weights @ z + head.bias
    for i, label in enumerate(head.labels):
        for name, weight in types.priors.get(label, {}).items():
            logits[i] += weight * features[f"stats:{name}"].value
    exp = np.exp(logits - logits.max())
    return {label: float(p) for label, p in zip(head.labels, exp / exp.sum())}


def _evidence(model: ReadingModel, kind: str, label: str, z: np.ndarray,
              features: dict[str, Feature], types: CallTypes) -> tuple[Evidence, ...]:
    """The turns behind the features that pushed `label` up most (hand-set priors included),
    in call order."""
    head = model.heads[kind]
    row = head.weights[head.labels.index(label)]
    pushes = {name: float(w * v) for name, w, v in zip(model.names, row, z)}
    for name, weight in types.priors.get(label, {}).items():
        pushes[f"stats:{name}"] = pushes.get(f"stats:{name}", 0.0) + weight * features[f"stats:{name}"].value
    ranked = sorted((p, name) for name, p in pushes.items() if p > 0 and features[name].evidence)
    chosen: dict[int, Evidence] = {}
    for push, name in reversed(ranked):
        if chosen and push < 0.25 * ranked[-1][0]:
            break
        for item in features[name].evidence:
            chosen.setdefault(item.turn.index, item)
        if len(chosen) >= MAX_EVIDENCE:
            break
    return tuple(chosen[i] for i in sorted(chosen))[:MAX_EVIDENCE]


def _choose(kind: str, specs: Sequence[TypeSpec], model: ReadingModel, z: np.ndarray,
            features: dict[str, Feature], types: CallTypes
            ) -> tuple[TypeReading, TypeSpec | None, dict[str, float]]:
    """The most likely type by the model ('ordinary' included)."""
    probabilities = _probabilities(model, kind, z, features, types)
    label = max(probabilities, key=lambda k: probabilities[k])
    p = probabilities[label]
    if label == ORDINARY:
        return TypeReading(ORDINARY, ORDINARY_NAMES[kind], p, p), None, probabilities
    spec = next(s for s in specs if s.key == label)
    return (TypeReading(spec.key, spec.name, p, p, _evidence(model, kind, label, z, features, types)),
            spec, probabilities)


def _interest(model: ReadingModel, z: np.ndarray, features: dict[str, Feature], types: CallTypes,
              complaint: TypeReading) -> TypeReading:
    probabilities = _probabilities(model, "interest", z, features, types)
    names = types.interest_names
    if complaint.key == "extortion":          # 讹诈型 is 物质利益型 by definition (000)
        probabilities["material"] = max(probabilities["material"], complaint.confidence)
    label = "material" if probabilities["material"] >= 0.5 else "non_material"
    p = probabilities[label] if label == "non_material" else probabilities["material"]
    evidence = _evidence(model, "interest", label, z, features, types) if label == "material" else ()
    return TypeReading(label, names[label], p, p, evidence)


def _technique(types: CallTypes, complaint: tuple[TypeReading, TypeSpec | None, Any],
               customer: tuple[TypeReading, TypeSpec | None, Any]) -> Technique:
    """The customer's type's technique when it reads at least as surely as the complaint's
    (the person comes first), else the complaint's; the seeds' default (倾听-询问-安抚-确认)
    for an ordinary call."""
    candidates = [(reading.confidence, spec) for reading, spec, _ in (customer, complaint) if spec is not None]
    if not candidates:
        return types.techniques[DEFAULT_TECHNIQUE]
    _, spec = max(candidates, key=lambda c: c[0])       # max keeps the first (customer) on ties
    return types.techniques[spec.technique]


def _seconds(turns: Sequence[Turn], stats: dict[str, Any] | None) -> float:
    ends = [t.end for t in turns if t.end is not None]
    duration = float(stats.get("duration") or 0.0) if stats else 0.0
    return max([duration, *ends]) if ends or duration else 0.0


def features_of(lines: Iterable[Any], cards: Iterable[Any] = (), stats: Any = None,
                types: CallTypes | None = None) -> dict[str, Feature]:
    """call_features for a transcript (what the train script learns from)."""
    types = types or load_call_types()
    turns = turns_of(lines)
    call = _Call(turns, [t for t in turns if t.speaker == "customer"], _card_views(cards),
                 _stats_dict(stats), types)
    return call_features(call)


def read_call(lines: Iterable[Any], cards: Iterable[Any] = (), stats: Any = None,
              types: CallTypes | None = None, model: ReadingModel | None = None) -> CallReading:
    types = types or load_call_types()
    model = model or load_reading_model()
    turns = turns_of(lines)
    stats_dict = _stats_dict(stats)
    call = _Call(turns, [t for t in turns if t.speaker == "customer"], _card_views(cards),
                 stats_dict, types)
    features = call_features(call)
    z = model.standardise(features)
    complaint = _choose("complaint_type", types.complaint_types, model, z, features, types)
    customer = _choose("customer_type", types.customer_types, model, z, features, types)
    interest = _interest(model, z, features, types, complaint[0])
    agitation = customer_agitation(stats_dict)
    escalation = escalation_score(
        [(c.category, c.severity) for c in call.cards if c.speaker == "customer"],
        repeats=len(call.signal("repetition")),
        agitation=float(agitation[-1]["value"]) if agitation else None,
        talk_overs=len(customer_talk_overs(stats_dict)),
        seconds=_seconds(turns, stats_dict))
    return CallReading(complaint[0], customer[0], interest, _technique(types, complaint, customer),
                       escalation, len(call.customer),
                       {"complaint_type": complaint[2], "customer_type": customer[2]})


def ready(lines: Iterable[Any], types: CallTypes | None = None) -> bool:
    """Enough of the call to read it: [scoring] min_customer_turns final customer turns."""
    types = types or load_call_types()
    return sum(_get(line, "speaker") == "customer" for line in lines) >= types.min_customer_turns


__all__ = ["CallReading", "CallTypes", "CallTypesError", "Feature", "ReadingModel", "ReadingModelError",
           "TypeReading", "cards_from_matcher", "features_of", "load_call_types", "load_reading_model",
           "read_call", "ready"]
