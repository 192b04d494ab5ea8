"""The events that travel on the in-process bus (callassist.bus).

One vocabulary for everything a call produces: the ARI app and the demo/analyze
pipeline publish them; the agent screen, the supervisor board and the store
subscribe. Times named `start`/`end` are seconds from the start of the call's
recording; `at` is wall-clock epoch seconds.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

Speaker = Literal["customer", "agent"]
SPEAKERS: tuple[Speaker, ...] = ("customer", "agent")
Severity = Literal["info", "warning", "critical"]


def is_speaker(value: object) -> TypeGuard[Speaker]:
    """True when `value` is one of SPEAKERS (narrows a str read from a file or request)."""
    return value in SPEAKERS


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class CitationView:
    key: str
    law: str
    article: str
    quote: str


@dataclass(frozen=True, slots=True)
class Card:
    """A prompt card: what the matcher recognised plus what the playbook says to do."""
    card_id: str
    category: str
    title: str
    severity: Severity
    speaker: Speaker
    text: str                 # the words that triggered it (normalised utterance text)
    phrase: str               # the playbook phrase it matched, or the words the model weighed most
    score: float
    start: float
    end: float
    utterance: int
    script: tuple[str, ...]
    citations: tuple[CitationView, ...]
    alert_supervisor: bool
    confirmed: bool = False   # True once a final transcript still matches
    heard: str = ""           # the part of `text` that made it fire (how it was heard)
    via: str = ""             # chars | pinyin (a playbook phrase) | intent (the model)


@dataclass(frozen=True, slots=True)
class CallStarted:
    call_id: str
    caller: str = ""                 # caller id number, when known
    source: str = "ari"              # ari | demo | import
    at: float = field(default_factory=_now)
    # where the recording is being written, so a crash cannot lose the call's link to it
    recording: str | None = None


@dataclass(frozen=True, slots=True)
class AgentJoined:
    call_id: str
    endpoint: str                    # e.g. PJSIP/1001
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class TranscriptUpdate:
    call_id: str
    speaker: Speaker
    utterance: int
    text: str
    start: float
    end: float
    final: bool
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CardFired:
    call_id: str
    card: Card
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CardConfirmed:
    """The final transcript confirmed a card fired on a partial (text/end may be refined)."""
    call_id: str
    card_id: str
    text: str
    end: float
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CardWithdrawn:
    """The final transcript no longer supports a card fired on a partial."""
    call_id: str
    card_id: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str
    duration: float
    recording: str | None = None     # path of the stereo recording, when one was written
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CallFault:
    """Something went wrong on a call that an operator should know of (RTP stopped, tap failed)."""
    call_id: str
    problem: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    speaker: Speaker
    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptRevised:
    """The post-call engine re-transcribed the finished recording: these lines replace the
    live transcript for QA (the cards stay as the agent saw them)."""
    call_id: str
    engine: str
    lines: tuple[TranscriptLine, ...]
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CallReadingUpdated:
    """The call read as a whole so far (prompts.call_reading.CallReading.to_dict(): complaint
    and customer type with evidence, recommended technique, escalation score), published by
    agent_ui.live_reading at most every few seconds while the call is live, and once more,
    `final` in the dict, when it ends."""
    call_id: str
    reading: dict[str, Any]
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class ConversationUpdated:
    """The live call's conversation measures so far (callassist.conversation.ConversationStats
    .to_dict(): talk, silences, talk-over, agitation, sentiment), every few seconds from the
    call's pipeline (callassist.live_analytics) for the live reading's escalation score.
    Transient: not recorded (the post-call pass stores the call's final stats)."""
    call_id: str
    stats: dict[str, Any]
    at: float = field(default_factory=_now)


CallEvent = (CallStarted | AgentJoined | TranscriptUpdate | CardFired | CardConfirmed
             | CardWithdrawn | CallEnded | CallFault | TranscriptRevised | CallReadingUpdated
             | ConversationUpdated)

EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    CallStarted, AgentJoined, TranscriptUpdate, CardFired, CardConfirmed, CardWithdrawn,
    CallEnded, CallFault, TranscriptRevised, CallReadingUpdated, ConversationUpdated)}
# Events that travel between the services but are not recorded: superseded every few seconds.
TRANSIENT_EVENTS: tuple[type, ...] = (ConversationUpdated,)


def event_to_dict(event: CallEvent) -> dict[str, Any]:
    """Wire form: the dataclass fields plus "type"."""
    data = dataclasses.asdict(event)
    data["type"] = type(event).__name__
    return data


def event_from_dict(data: dict[str, Any]) -> CallEvent:
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    if cls is CardFired:
        card = dict(data["card"])
        card["script"] = tuple(card["script"])
        card["citations"] = tuple(CitationView(**c) for c in card["citations"])
        data["card"] = Card(**card)
    elif cls is TranscriptRevised:
        data["lines"] = tuple(TranscriptLine(**line) for line in data["lines"])
    return cls(**data)
