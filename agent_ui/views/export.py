"""A reviewed call as a file: JSON (everything the QA page shows), WebVTT (the
transcript as subtitles with speaker voices and a NOTE per trigger) and CSV (one row
per utterance and per trigger, for spreadsheets)."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

SPEAKER_NAMES = {"customer": "客户", "agent": "坐席"}
SEVERITY_NAMES = {"critical": "严重", "warning": "警告", "info": "提示"}
CSV_COLUMNS = ("kind", "start", "end", "speaker", "text", "category", "title", "severity", "status",
               "phrase", "heard", "via")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_CJK_GAP = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef])\s+(?=[\u3000-\u9fff\uff00-\uffef])")


def spoken(text: str) -> str:
    """Recognisers print Chinese words separated by spaces; the text reads without them."""
    return _CJK_GAP.sub("", " ".join(text.split()))


def vtt_time(seconds: float) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _vtt_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _note_text(text: str) -> str:
    # a NOTE block ends at a blank line and may not contain "-->"
    return " ".join(text.split()).replace("-->", "→")


def agent_text(detail: dict[str, Any]) -> str:
    """The agent as the QA page names them: display name (endpoint), or whichever is known."""
    name = detail.get("agent_name") or detail.get("agent_username") or ""
    endpoint = detail.get("agent_endpoint") or ""
    if name and endpoint and endpoint not in name:
        return f"{name}（{endpoint}）"
    return name or endpoint


def labelled(label: str, value: str) -> str:
    """label value ("坐席 张伟"), but a value that already starts with the label (the
    display name "坐席 1001") is not labelled twice."""
    return value if value.startswith(label) else f"{label} {value}".rstrip()


def trigger_words(card: dict[str, Any]) -> str:
    """What made the card fire: the words heard, with the playbook phrase when it was
    heard differently (a pinyin or fuzzy match), or that the model judged it."""
    heard, phrase = card.get("heard") or "", card.get("phrase") or ""
    if not heard:                       # cards stored before `heard` existed
        return f"触发词「{phrase}」" if phrase else ""
    if card.get("via") == "intent":
        return f"触发词「{heard}」（模型判断）"
    if phrase and phrase != heard:
        return f"触发词「{heard}」≈{phrase}"
    return f"触发词「{heard}」"


def to_json(detail: dict[str, Any]) -> str:
    return json.dumps(detail, ensure_ascii=False, indent=2)


def to_vtt(detail: dict[str, Any]) -> str:
    blocks: list[tuple[float, int, str]] = []
    for card in detail.get("cards", []):
        if card.get("status") == "withdrawn":
            continue
        severity = SEVERITY_NAMES.get(card["severity"], card["severity"])
        who = SPEAKER_NAMES.get(card["speaker"], card["speaker"])
        blocks.append((card["start"], 0, "NOTE " + _note_text(
            f"触发 {vtt_time(card['start'])} [{severity}] {card['title']}（{card['category']}）"
            f" {who}：{card['text']} {trigger_words(card)}")))
    for index, utt in enumerate(detail.get("utterances", []), 1):
        end = max(utt["end"], utt["start"] + 0.001)
        voice = SPEAKER_NAMES.get(utt["speaker"], utt["speaker"])
        blocks.append((utt["start"], 1, f"{index}\n{vtt_time(utt['start'])} --> {vtt_time(end)}\n"
                                        f"<v {voice}>{_vtt_text(spoken(utt['text']))}"))
    header = "WEBVTT\n\nNOTE " + _note_text(
        f"通话 {detail['call_id']} {labelled('坐席', agent_text(detail))}"
        f" 主叫 {detail.get('caller') or ''}")
    body = "\n\n".join(text for _, _, text in sorted(blocks, key=lambda b: (b[0], b[1])))
    return f"{header}\n\n{body}\n" if body else header + "\n"


def _cell(value: Any) -> Any:
    """Spreadsheets run cells that start like a formula: make them plain text."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(detail: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    rows: list[tuple[float, int, list[Any]]] = []
    for utt in detail.get("utterances", []):
        rows.append((utt["start"], 1, ["utterance", f"{utt['start']:.2f}", f"{utt['end']:.2f}",
                                       utt["speaker"], spoken(utt["text"]), "", "", "", "",
                                       "", "", ""]))
    for card in detail.get("cards", []):
        rows.append((card["start"], 0, ["trigger", f"{card['start']:.2f}", f"{card['end']:.2f}",
                                        card["speaker"], card["text"], card["category"],
                                        card["title"], card["severity"], card.get("status", ""),
                                        card.get("phrase") or "", card.get("heard") or "",
                                        card.get("via") or ""]))
    for _, _, row in sorted(rows, key=lambda r: (r[0], r[1])):
        writer.writerow([_cell(v) for v in row])
    return "\ufeff" + out.getvalue()          # BOM: spreadsheet programs then read UTF-8


FORMATS = {  # extension -> (formatter, content type)
    "json": (to_json, "application/json"),
    "vtt": (to_vtt, "text/vtt"),
    "csv": (to_csv, "text/csv"),
}
