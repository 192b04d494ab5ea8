"""The bus's wire format (callassist.wire): every event type round-trips; bad input is a
WireError that says what is wrong, never a half-decoded event."""
from __future__ import annotations

import json

import pytest

from callassist import wire
from callassist.events import (EVENT_TYPES, AgentJoined, CallEnded, CallEvent, CallFault, CallReadingUpdated,
                               CallStarted, Card, CardConfirmed, CardFired, CardWithdrawn, CitationView,
                               ConversationUpdated, TranscriptLine, TranscriptRevised, TranscriptUpdate)

CARD = Card(card_id="c1-3-complaint", category="complaint", title="投诉升级", severity="critical",
            speaker="customer", text="我要去工信部投诉你们", phrase="工信部投诉", score=0.93, start=1.25, end=3.5,
            utterance=3, script=("先致歉", "记录诉求"),
            citations=(CitationView("tcr", "电信条例", "第五十九条", "电信业务经营者应当..."),
                       CitationView("cpl", "消费者权益保护法", "第八条", "消费者享有知悉...")),
            alert_supervisor=True, confirmed=True, heard="工信部投诉", via="pinyin")

SAMPLES: dict[str, CallEvent] = {
    "CallStarted": CallStarted("c1", caller="13800138000", source="ari", at=1.5, recording="2024/c1.wav"),
    "AgentJoined": AgentJoined("c1", "PJSIP/1001", at=2.0),
    "TranscriptUpdate": TranscriptUpdate("c1", "agent", 4, "您好请讲", 0.0, 1.2, final=False, at=3.0),
    "CardFired": CardFired("c1", CARD, at=4.0),
    "CardConfirmed": CardConfirmed("c1", "c1-3-complaint", "我要去工信部投诉", 3.6, at=5.0),
    "CardWithdrawn": CardWithdrawn("c1", "c1-3-complaint", at=6.0),
    "CallEnded": CallEnded("c1", 61.25, recording=None, at=7.0),
    "CallFault": CallFault("c1", "识别节点 w1 失联：第 3–5 秒未收听", at=8.0),
    "TranscriptRevised": TranscriptRevised("c1", "whisper", (
        TranscriptLine("customer", 0.5, 2.0, "我要投诉"), TranscriptLine("agent", 2.1, 3.0, "好的")), at=9.0),
    "CallReadingUpdated": CallReadingUpdated("c1", {"complaint": {"label": "billing", "evidence": [1, 2]},
                                                    "escalation": 0.4, "final": True}, at=10.0),
    "ConversationUpdated": ConversationUpdated("c1", {"talk": {"agent": 3.5}, "silences": []}, at=11.0),
}


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)
    assert all(type(event).__name__ == name for name, event in SAMPLES.items())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_event_type_round_trips(name: str) -> None:
    event = SAMPLES[name]
    data = wire.encode(event)
    assert json.loads(data)["v"] == wire.WIRE_VERSION
    decoded = wire.decode(data)
    assert decoded == event and type(decoded) is type(event)
    assert wire.decode(data.decode()) == event          # text decodes the same


def test_chinese_is_sent_as_utf8_not_escaped() -> None:
    data = wire.encode(SAMPLES["CallFault"])
    assert "识别节点".encode() in data and b"\\u" not in data


def _with(name: str, **changes: object) -> bytes:
    body = json.loads(wire.encode(SAMPLES[name]))
    for key, value in changes.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body).encode()


_DELETE = object()


@pytest.mark.parametrize(("data", "message"), [
    (b"\xff\xfe", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'{"type": "CallFault", "call_id": "c1", "problem": "x"}', "no wire version"),
    (_with("CallFault", v=2), "unknown wire version 2"),
    (_with("CallFault", v="1"), "unknown wire version '1'"),
    (_with("CallFault", type="CallExploded"), "unknown event type 'CallExploded'"),
    (_with("CallFault", type=_DELETE), "no event type"),
    (_with("CallFault", problem=_DELETE), "CallFault: missing field(s) problem"),
    (_with("CallFault", severity="high"), "CallFault: unknown field(s) severity"),
    (_with("CallFault", call_id=17), "CallFault.call_id: expected str, got int"),
    (_with("CallEnded", duration=True), "CallEnded.duration: expected float, got bool"),
    (_with("CallEnded", recording=3), "CallEnded.recording: 3 is none of"),
    (_with("TranscriptUpdate", speaker="robot"), "TranscriptUpdate.speaker: 'robot' is not one of"),
    (_with("TranscriptRevised", lines=[{"speaker": "agent", "start": 0, "end": 1}]),
     "TranscriptRevised.lines[0]: missing field(s) text"),
    (_with("CardFired", card={**json.loads(wire.encode(SAMPLES["CardFired"]))["card"], "script": "先致歉"}),
     "CardFired.card.script: expected a list, got str"),
    (_with("CardFired", card={**json.loads(wire.encode(SAMPLES["CardFired"]))["card"],
                              "citations": [{"key": "k", "law": "l", "article": "a"}]}),
     "CardFired.card.citations[0]: missing field(s) quote"),
    (_with("CallReadingUpdated", reading=[1]), "CallReadingUpdated.reading: expected an object"),
])
def test_bad_input_is_a_wire_error_that_says_why(data: bytes, message: str) -> None:
    with pytest.raises(wire.WireError) as raised:
        wire.decode(data)
    assert message in str(raised.value)


def test_fields_with_defaults_may_be_left_out() -> None:
    body = {"v": 1, "type": "CallStarted", "call_id": "c9", "at": 1.0}
    assert wire.decode(json.dumps(body).encode()) == CallStarted("c9", at=1.0)


def test_messages_round_trip_in_the_same_envelope() -> None:
    message = {"id": "r1", "method": "open_leg", "args": {"call_id": "c1", "speaker": "customer"},
               "reply_to": "callassist:reply:ari-1"}
    data = wire.encode_message(message)
    assert json.loads(data)["v"] == wire.WIRE_VERSION
    assert wire.decode_message(data) == message


@pytest.mark.parametrize(("data", "message"), [
    (b"nope", "not JSON"), (b'"text"', "not a JSON object"), (b'{"id": 1}', "no wire version"),
    (b'{"v": 9, "id": 1}', "unknown wire version 9")])
def test_bad_messages_are_wire_errors(data: bytes, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.decode_message(data)


def test_a_message_that_cannot_be_sent_is_a_wire_error() -> None:
    with pytest.raises(wire.WireError, match="not serialisable"):
        wire.encode_message({"id": "r1", "result": object()})
    with pytest.raises(wire.WireError, match="'v'"):
        wire.encode_message({"v": 3})
