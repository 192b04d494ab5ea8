"""A call's risk level, from the prompt cards standing on it (withdrawn cards excluded).

- critical: any critical card; or two or more escalation threats (each threat card
  counts, so a customer repeating a threat after the cooldown escalates); or a
  repeated complaint together with any other warning card.
- warning: any warning card.
- normal: otherwise.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Risk = Literal["normal", "warning", "critical"]
RISKS: tuple[Risk, ...] = ("normal", "warning", "critical")

ESCALATION_THREATS = frozenset({"media_exposure", "regulator_complaint", "lawsuit_threat",
                                "violence_threat"})
REPEATED_COMPLAINT = "repeated_complaint"


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
