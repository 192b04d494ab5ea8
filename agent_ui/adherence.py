"""QA technique adherence: did the agent do what the seeds teach, judged by meaning?

For one call (a CallArchive.get_call dict, or cards and utterances with the same fields) and
each technique of prompts/techniques.toml:
    empathy_first         先处理情绪再处理事情: among the agent's first answers after the customer
                          spoke, greeting, asking, listening (您慢慢说) and saying what the
                          agent will look at (我帮您查一下) may come first (倾听、询问、安抚、确认);
                          the first answer that states facts must acknowledge the feeling, or
                          one before it did
    repeat_back           重复法: some agent turn says the customer's demand back
    no_rhetorical         不反问: no agent turn is a 反问 or blames the customer
    no_forbidden          no agent turn falls in a playbook agent-side category (禁语, 越权承诺),
                          recognised by the live Matcher (phrases + intent model), and no
                          standing agent-side card
    time_bound_next_step  some agent turn gives a next step with a time; not applicable when
                          the agent solved it in the call (已经为您退订了) and gave none
    proper_close          one of the agent's last turns closes properly
each passed (True), failed (False) or not applicable (None), with the turns as evidence.
The per-turn signs come from prompts.techniques (normalisation, synonyms, pinyin, fuzzy,
patterns), not from exact phrases.

Script following stays as one input: after a customer-side card, did the agent say one of
the category's key phrases within `window` seconds (the same meaning-based comparison, so
马上帮您核实 counts for 马上为您核实)? And agent-side cards are listed as violations,
corrected when a key phrase of their category followed within the window.

Score (0-100, None when there is nothing to judge):
    100 * sum(weight * result) / sum(weight) over the applicable techniques (result 1 or 0)
    and, when customer cards were judged, the script input (weight [script] in the toml,
    result = followed cards / judged cards);
    capped at no_forbidden's `cap` (59, the QA page's 不合格 band) while a critical forbidden
    offence stands uncorrected.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from prompts.intent import IntentModel, IntentModelError
from prompts.matcher import Matcher
from prompts.playbook import Playbook
from prompts.techniques import KEYS, TechniqueReader, Techniques, TurnReading, find_phrase, load_techniques

DEFAULT_THRESHOLD = 80.0


@dataclass(frozen=True)
class CardAdherence:
    card_id: str
    category: str
    title: str
    start: float
    expected: tuple[str, ...]        # the category's key phrases
    said: tuple[str, ...]            # those the agent said (by meaning) within the window
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
class Evidence:
    utterance: int | None
    start: float
    text: str


@dataclass(frozen=True)
class TechniqueResult:
    key: str
    name: str                        # Chinese, shown in QA
    passed: bool | None              # None: not applicable to this call
    evidence: tuple[Evidence, ...]
    note: str                        # Chinese: why


@dataclass(frozen=True)
class CallAdherence:
    cards: tuple[CardAdherence, ...]
    violations: tuple[Violation, ...]
    techniques: tuple[TechniqueResult, ...]
    score: int | None

    @property
    def judged(self) -> int:
        return len(self.cards)

    @property
    def followed(self) -> int:
        return sum(c.followed for c in self.cards)

    def technique(self, key: str) -> TechniqueResult:
        return next(t for t in self.techniques if t.key == key)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "judged": self.judged, "followed": self.followed,
                "cards": [asdict(c) | {"followed": c.followed} for c in self.cards],
                "violations": [asdict(v) for v in self.violations],
                "techniques": [asdict(t) | {"evidence": [asdict(e) for e in t.evidence]}
                               for t in self.techniques]}


def _field(item: Mapping[str, Any] | Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


# --- key phrases, by meaning ------------------------------------------------------

def phrase_said(phrase: str, text: str, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether `text` (an utterance) says `phrase`: after normalisation and the synonym
    table of prompts/techniques.toml, as characters, folded pinyin (ASR homophones) or,
    for 3+ characters, rapidfuzz >= threshold."""
    techniques = load_techniques()
    return find_phrase(techniques.canonical(phrase), techniques.canonical(text), threshold) is not None


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


# --- the recogniser, one per playbook ----------------------------------------------

_READERS: dict[int, tuple[Playbook, TechniqueReader]] = {}


def technique_reader(playbook: Playbook) -> TechniqueReader:
    """The reader whose forbidden phrases are `playbook`'s agent-side categories, with the
    bundled intent model when it fits the playbook (cached per playbook)."""
    cached = _READERS.get(id(playbook))
    if cached is not None and cached[0] is playbook:
        return cached[1]
    try:
        matcher = Matcher(playbook, intent=_intent_model())
    except (ValueError, IntentModelError):     # a playbook the model was not trained on
        matcher = Matcher(playbook)
    if len(_READERS) >= 4:
        _READERS.clear()
    reader = TechniqueReader(matcher)
    _READERS[id(playbook)] = (playbook, reader)
    return reader


_MODEL: list[IntentModel] = []


def _intent_model() -> IntentModel:
    if not _MODEL:
        _MODEL.append(IntentModel.load())
    return _MODEL[0]


# --- one call ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Turn:
    utterance: int | None
    speaker: str
    start: float
    text: str
    reading: TurnReading | None = None       # agent turns only

    @property
    def evidence(self) -> Evidence:
        return Evidence(self.utterance, self.start, self.text)


def _turns(utterances: Iterable[Any], reader: TechniqueReader) -> list[_Turn]:
    plain = sorted(((_field(u, "utterance"), _field(u, "speaker", ""), float(_field(u, "start", 0.0) or 0.0),
                     _field(u, "text", "") or "") for u in utterances),
                   key=lambda t: t[2])
    turns: list[_Turn] = []
    context: list[str] = []                     # the customer's words since the agent last spoke
    for utterance, speaker, start, text in plain:
        if not text.strip():
            continue
        if speaker == "agent":
            turns.append(_Turn(utterance, speaker, start, text, reader.read_turn(text, "".join(context))))
            context = []
        else:
            context.append(text)
            turns.append(_Turn(utterance, speaker, start, text))
    return turns


def _any_clause(patterns: tuple[re.Pattern[str], ...], techniques: Techniques, text: str) -> bool:
    clauses = [techniques.canonical(c) for c in re.split(r"[\s,，。.!！?？;；]+", text)]
    return any(p.search(c) for p in patterns for c in clauses if c)


def _every_clause(patterns: tuple[re.Pattern[str], ...], techniques: Techniques, text: str) -> bool:
    clauses = [c for c in (techniques.canonical(c) for c in re.split(r"[\s,，。.!！?？;；…]+", text)) if c]
    return bool(clauses) and all(any(p.search(c) for p in patterns) for c in clauses)


def _empathy_first(technique_name: str, turns: list[_Turn], techniques: Techniques) -> TechniqueResult:
    technique = techniques["empathy_first"]
    first_customer = next((t for t in turns if t.speaker == "customer"), None)
    answers = [t for t in turns if t.speaker == "agent" and first_customer is not None
               and t.start >= first_customer.start]
    greeting = technique.regexes("greeting_patterns")
    answers = [t for t in answers if not _any_clause(greeting, techniques, t.text)
               or (t.reading and t.reading.empathy)][:int(technique.options.get("responses", 3))]
    if not answers:
        return TechniqueResult("empathy_first", technique_name, None, (), "客户尚未表达诉求，不适用")
    asking = technique.regexes("asking_patterns")
    not_yet_facts = greeting + technique.regexes("listening_patterns") + asking
    for turn in answers:
        assert turn.reading is not None
        if turn.reading.shows("empathy_first"):
            return TechniqueResult("empathy_first", technique_name, True, (turn.evidence,),
                                   f"先安抚了情绪（“{turn.reading.empathy.what}”）" if turn.reading.empathy
                                   else "先安抚了情绪")
        if not (_any_clause(asking, techniques, turn.text)
                or _every_clause(not_yet_facts, techniques, turn.text)):
            return TechniqueResult("empathy_first", technique_name, False, (turn.evidence,),
                                   "未先安抚情绪就讲事实或处理")
    return TechniqueResult("empathy_first", technique_name, False, tuple(t.evidence for t in answers),
                           "开头几次回应都没有安抚情绪")


def assess(cards: Iterable[Any], utterances: Iterable[Any], playbook: Playbook, window: float,
           threshold: float = DEFAULT_THRESHOLD) -> CallAdherence:
    """Adherence of one call. `cards`: every card of the call (withdrawn ones are
    ignored); `utterances`: its final utterances, both speakers."""
    utterances = list(utterances)
    reader = technique_reader(playbook)
    techniques = reader.techniques
    judged, violations = _script(cards, utterances, playbook, window, threshold)
    turns = _turns(utterances, reader)
    agent = [t for t in turns if t.speaker == "agent"]
    has_customer = any(t.speaker == "customer" for t in turns)
    names = {key: techniques[key].name for key in KEYS}
    results: list[TechniqueResult] = [_empathy_first(names["empathy_first"], turns, techniques)]

    def absent(key: str, why: str) -> TechniqueResult:
        return TechniqueResult(key, names[key], None, (), why)

    # repeat_back
    repeats = [t for t in agent if t.reading and t.reading.shows("repeat_back")]
    results.append(absent("repeat_back", "客户尚未表达诉求，不适用") if not (agent and has_customer) else
                   TechniqueResult("repeat_back", names["repeat_back"], bool(repeats),
                                   tuple(t.evidence for t in repeats[:2]),
                                   "复述并确认了客户诉求" if repeats else "没有复述确认客户的诉求"))
    # no_rhetorical
    rhetorical = [t for t in agent if t.reading and t.reading.rhetorical]
    results.append(absent("no_rhetorical", "坐席未发言") if not agent else TechniqueResult(
        "no_rhetorical", names["no_rhetorical"], not rhetorical, tuple(t.evidence for t in rhetorical),
        "未发现反问或指责" if not rhetorical else
        "反问或指责客户：" + "、".join(f"“{t.reading.rhetorical.what}”" for t in rhetorical[:3]
                                  if t.reading and t.reading.rhetorical)))
    # no_forbidden: the recogniser's turns and the standing agent-side cards (one evidence per turn)
    offences = [t for t in agent if t.reading and t.reading.forbidden]
    offending = {t.utterance for t in offences}
    card_turns = [_Turn(_field(c, "utterance"), "agent", float(_field(c, "start", 0.0)), _field(c, "text", ""))
                  for c in cards if _field(c, "speaker") == "agent" and _field(c, "status") != "withdrawn"
                  and _field(c, "utterance") not in offending]
    forbidden_evidence = sorted([t.evidence for t in offences + card_turns], key=lambda e: e.start)
    results.append(absent("no_forbidden", "坐席未发言") if not (agent or card_turns) else TechniqueResult(
        "no_forbidden", names["no_forbidden"], not forbidden_evidence, tuple(forbidden_evidence),
        "未发现禁语或越权承诺" if not forbidden_evidence else
        "禁语或越权承诺：" + "、".join(f"“{t.reading.forbidden_phrase}”" for t in offences[:3]
                                  if t.reading) if offences else "坐席禁语（见违规用语）"))
    # time_bound_next_step
    steps = [t for t in agent if t.reading and t.reading.time_step]
    done = [t for t in agent if t.reading and t.reading.done]
    if not (agent and has_customer):
        results.append(absent("time_bound_next_step", "坐席未发言"))
    elif steps:
        results.append(TechniqueResult("time_bound_next_step", names["time_bound_next_step"], True,
                                       tuple(t.evidence for t in steps[:2]),
                                       f"给出了时限（“{steps[0].reading.time_step.what}”）"
                                       if steps[0].reading and steps[0].reading.time_step else "给出了时限"))
    elif done:
        results.append(TechniqueResult("time_bound_next_step", names["time_bound_next_step"], None,
                                       (done[0].evidence,), "通话中已办结，无需后续时限"))
    else:
        results.append(TechniqueResult("time_bound_next_step", names["time_bound_next_step"], False, (),
                                       "没有给出带时限的下一步（如“24小时内给您回电”）"))
    # proper_close
    last = agent[-int(techniques["proper_close"].options.get("last_turns", 2)):]
    closing = [t for t in last if t.reading and t.reading.shows("proper_close")]
    results.append(absent("proper_close", "坐席未发言") if not agent else TechniqueResult(
        "proper_close", names["proper_close"], bool(closing),
        tuple(t.evidence for t in (closing or last[-1:])),
        "规范结束了通话" if closing else "结束时没有致谢、确认或询问是否还有其他问题"))

    uncorrected_critical = any(v.severity == "critical" and not v.corrected for v in violations) or any(
        _critical_uncorrected(t, playbook, utterances, window, threshold) for t in offences)
    score = _score(results, judged, techniques, uncorrected_critical)
    return CallAdherence(tuple(judged), tuple(violations), tuple(results), score)


def _critical_uncorrected(turn: _Turn, playbook: Playbook, utterances: list[Any], window: float,
                          threshold: float) -> bool:
    assert turn.reading is not None and turn.reading.forbidden is not None
    try:
        category = playbook.category(turn.reading.forbidden.what)
    except KeyError:
        return False
    if category.severity != "critical":
        return False
    later = [u for u in utterances if _field(u, "start", 0.0) > turn.start]
    said, _ = phrases_said(category.key_phrases, later, turn.start, window, threshold)
    return not said


def _script(cards: Iterable[Any], utterances: list[Any], playbook: Playbook, window: float,
            threshold: float) -> tuple[list[CardAdherence], list[Violation]]:
    """Customer cards followed (key phrases by meaning) and agent-side cards as violations."""
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
        elif key_phrases and category is not None:
            said, first = phrases_said(key_phrases, utterances, start, window, threshold)
            judged.append(CardAdherence(
                card_id=_field(card, "card_id", ""), category=category_id,
                title=_field(card, "title", "") or category.title, start=start,
                expected=key_phrases, said=said, first_said_at=first))
    return judged, violations


def _score(results: list[TechniqueResult], judged: list[CardAdherence], techniques: Techniques,
           uncorrected_critical: bool) -> int | None:
    parts = [(techniques[r.key].weight, 1.0 if r.passed else 0.0) for r in results if r.passed is not None]
    if judged:
        parts.append((techniques.script_weight, sum(c.followed for c in judged) / len(judged)))
    total = sum(w for w, _ in parts)
    if not total:
        return None
    score = 100.0 * sum(w * v for w, v in parts) / total
    if uncorrected_critical:
        score = min(score, float(techniques["no_forbidden"].options.get("cap", 59)))
    return int(round(score))


def assess_call(call: Mapping[str, Any], playbook: Playbook, window: float,
                threshold: float = DEFAULT_THRESHOLD) -> CallAdherence:
    """`assess` for a CallArchive.get_call dict."""
    return assess(call.get("cards", ()), call.get("utterances", ()), playbook, window, threshold)
