"""A call's risk level, from the prompt cards standing on it (withdrawn cards excluded).

- critical: any critical card; or two or more escalation threats (each threat card
  counts, so a customer repeating a threat after the cooldown escalates); or a
  repeated complaint together with any other warning card.
- warning: any warning card.
- normal: otherwise.

A call's escalation score (0..100, `escalation_score`): how close a live call is to blowing
up, from named factors a supervisor can read off the board. Each factor is capped, and the
caps add up to 100:

    triggers    40  the standing cards by severity (critical 20, warning 8, info 2 each)
    threats     20  distinct escalation threats (媒体, 越级, 起诉, 暴力, 要挟): 10 each
    agitation   15  the customer's latest acoustic agitation (0..1, conversation stats)
    repetition  10  the customer saying the same thing again, or a repeated-complaint card: 4 each
    talk_over   10  the customer talking over the agent: 2.5 each
    time         5  minutes on the call past the second: 1 each

The supervisor board sorts by risk level first (critical stays first), then by this score.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Risk = Literal["normal", "warning", "critical"]
RISKS: tuple[Risk, ...] = ("normal", "warning", "critical")

ESCALATION_THREATS = frozenset({"media_exposure", "regulator_complaint", "lawsuit_threat",
                                "violence_threat"})
REPEATED_COMPLAINT = "repeated_complaint"
# escalation threats for the score: the risk level's threats plus extortion
SCORE_THREATS = ESCALATION_THREATS | {"extortion"}
SEVERITY_POINTS = {"critical": 20.0, "warning": 8.0, "info": 2.0}
FACTOR_CAPS = {"triggers": 40.0, "threats": 20.0, "agitation": 15.0, "repetition": 10.0,
               "talk_over": 10.0, "time": 5.0}
FACTOR_LABELS = {"triggers": "触发提示", "threats": "升级威胁", "agitation": "情绪激动",
                 "repetition": "重复诉求", "talk_over": "抢话", "time": "通话时长"}
THREAT_POINTS = 10.0
REPEAT_POINTS = 4.0
TALK_OVER_POINTS = 2.5
TIME_GRACE_SECONDS = 120.0
TIME_POINTS_PER_MINUTE = 1.0


def call_risk(cards: Iterable[tuple[str, str]]) -> Risk:
    """`cards`: (category, severity) of every card that is not withdrawn."""
    cards = list(cards)
    severities = [severity for _, severity in cards]
    if "critical" in severities:
        return "critical"
    if sum(category in ESCALATION_THREATS for category, _ in cards) >= 2:
        return "critical"
    repeated = [i for i, (category, _) in enumerate(cards) if category == REPEATED_COMPLAINT]
    if repeated and any(severity == "warning" for i, (_, severity) in enumerate(cards)
                        if i != repeated[0]):
        return "critical"
    return "warning" if "warning" in severities else "normal"


def risk_rank(risk: str) -> int:
    """For sorting: normal 0, warning 1, critical 2."""
    return RISKS.index(risk) if risk in RISKS else 0


@dataclass(frozen=True, slots=True)
class EscalationFactor:
    name: str            # triggers | threats | agitation | repetition | talk_over | time
    value: float         # points this factor adds to the score

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": FACTOR_LABELS[self.name], "value": round(self.value, 1)}


@dataclass(frozen=True, slots=True)
class Escalation:
    score: int                                  # 0..100
    factors: tuple[EscalationFactor, ...]       # every factor, in FACTOR_CAPS order

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "factors": [f.to_dict() for f in self.factors]}


def escalation_score(cards: Iterable[tuple[str, str]], *, repeats: int = 0,
                     agitation: float | None = None, talk_overs: int = 0,
                     seconds: float = 0.0) -> Escalation:
    """`cards`: (category, severity) of the customer's standing cards; `repeats`: customer
    turns that repeat an earlier one; `agitation`: the customer's latest agitation 0..1
    (None: not measured); `talk_overs`: times the customer talked over the agent;
    `seconds`: time on the call so far."""
    cards = list(cards)
    raw = {
        "triggers": sum(SEVERITY_POINTS.get(severity, 0.0) for _, severity in cards),
        "threats": THREAT_POINTS * len({c for c, _ in cards if c in SCORE_THREATS}),
        "agitation": FACTOR_CAPS["agitation"] * min(1.0, max(0.0, agitation or 0.0)),
        "repetition": REPEAT_POINTS * (max(0, repeats)
                                       + sum(c == REPEATED_COMPLAINT for c, _ in cards)),
        "talk_over": TALK_OVER_POINTS * max(0, talk_overs),
        "time": TIME_POINTS_PER_MINUTE * max(0.0, seconds - TIME_GRACE_SECONDS) / 60.0,
    }
    factors = tuple(EscalationFactor(name, min(FACTOR_CAPS[name], raw[name])) for name in FACTOR_CAPS)
    return Escalation(min(100, round(sum(f.value for f in factors))), factors)
