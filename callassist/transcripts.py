"""Transcript files that `callassist analyze` reads instead of a recording.

Three kinds, chosen by extension (.txt by its content):

- JSON (.json): analyze's own output shape, ``{"duration": ..., "utterances": [{"speaker",
  "start", "end", "text"}, ...], "triggers": [...]}``; a bare list of utterances also does.
  Triggers in the file are ignored (they are recomputed). ``start``/``end`` may be null or
  absent (an untimed transcript).
- TSV (.tsv): ``speaker<TAB>text`` or ``speaker<TAB>start<TAB>end<TAB>text`` per line
  (seconds), blank lines skipped, an optional header line (first column ``speaker``).
- WebVTT (.vtt): cues whose text carries a voice tag, ``<v 客户>...`` as our VTT export
  writes it; NOTE, STYLE and REGION blocks are skipped (so are the trigger NOTEs we write).
  The cue times are taken as given, except in a file our export wrote for an untimed
  transcript (it says so in a NOTE): that one is read as untimed again.
- .txt: WebVTT if it starts with ``WEBVTT``, JSON if it starts with ``{`` or ``[``, else TSV.

Speakers: ``customer``/``agent``, ``客户``/``坐席`` or ``c``/``a`` (any case). Lines with
empty text are skipped, as the recogniser's empty results are. Either every utterance has
times or none has. Anything else is a TranscriptError naming the file and line.
"""
from __future__ import annotations

import bisect
import html
import json
import json.decoder
import json.scanner
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callassist.events import Speaker

TRANSCRIPT_SUFFIXES = {".json": "json", ".tsv": "tsv", ".vtt": "vtt", ".txt": "txt"}
SPEAKER_NAMES: dict[str, Speaker] = {"customer": "customer", "客户": "customer", "c": "customer",
                                     "agent": "agent", "坐席": "agent", "a": "agent"}
EXPECTED_SPEAKERS = "customer or agent (also 客户/坐席, c/a)"
TSV_HEADER_WORDS = {"speaker", "role", "说话人", "角色"}
TSV_SHAPE = "speaker<TAB>text or speaker<TAB>start<TAB>end<TAB>text"
# What our WebVTT export writes first for an untimed transcript; reading it back drops the
# synthetic times again, so such a file round-trips as untimed.
SYNTHETIC_TIMES_NOTE = "NOTE 时间为合成"


class TranscriptError(ValueError):
    """A transcript file that cannot be used; the message names the file, the line and why."""


@dataclass(frozen=True)
class TranscriptLine:
    speaker: Speaker
    text: str
    start: float | None        # seconds; None in an untimed transcript
    end: float | None
    line: int                  # where it is in the file (1-based)


@dataclass(frozen=True)
class Transcript:
    path: Path
    kind: str                  # json | tsv | vtt
    lines: tuple[TranscriptLine, ...]
    duration: float | None     # None when untimed

    @property
    def timed(self) -> bool:
        return self.lines[0].start is not None


def transcript_kind(path: str | Path) -> str | None:
    """'json', 'tsv', 'vtt' or 'txt' (decided by content) for a transcript file name; None for audio."""
    return TRANSCRIPT_SUFFIXES.get(Path(path).suffix.lower())


def read_transcript(path: str | Path) -> Transcript:
    path = Path(path)
    kind = transcript_kind(path)
    if kind is None:
        raise TranscriptError(f"{path}: not a transcript file (.json, .tsv, .txt or .vtt)")
    text = _read_text(path)
    if not text.strip():
        raise TranscriptError(f"{path}: the file is empty")
    if kind == "txt":
        head = text.lstrip()
        kind = "vtt" if head.startswith("WEBVTT") else "json" if head[:1] in "{[" else "tsv"
    lines, duration = {"json": _parse_json, "tsv": _parse_tsv, "vtt": _parse_vtt}[kind](path, text)
    if not lines:
        raise TranscriptError(f"{path}: no utterances" + (" (a WebVTT file needs cues)" if kind == "vtt" else ""))
    timed = [ln for ln in lines if ln.start is not None]
    if timed and len(timed) != len(lines):
        first_timed = timed[0]
        untimed = next(ln for ln in lines if ln.start is None)
        raise TranscriptError(f"{path}: line {untimed.line}: no start/end times, but line {first_timed.line} "
                              f"has them; give times on every utterance or on none")
    if timed:
        last = max(ln.end for ln in timed if ln.end is not None)
        duration = last if duration is None else max(duration, last)
    else:
        duration = None
    return Transcript(path, kind, tuple(lines), duration)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TranscriptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TranscriptError(f"{path}: is a directory") from None
    except OSError as exc:
        raise TranscriptError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TranscriptError(f"{path}: line {line}: not UTF-8 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _speaker(path: Path, line: int, raw: Any) -> Speaker:
    speaker = SPEAKER_NAMES.get(raw.strip().lower()) if isinstance(raw, str) else None
    if speaker is None:
        shown = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
        raise TranscriptError(f"{path}: line {line}: unknown speaker {shown!r}; expected {EXPECTED_SPEAKERS}")
    return speaker


def _times(path: Path, line: int, start: Any, end: Any) -> tuple[float | None, float | None]:
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        raise TranscriptError(f"{path}: line {line}: a start time needs an end time and the other way round")
    values = []
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise TranscriptError(f"{path}: line {line}: {name} time {value!r} is not a number of seconds") \
                    from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            raise TranscriptError(f"{path}: line {line}: {name} time {value!r} is not a number of seconds >= 0")
        values.append(float(value))
    if values[1] < values[0]:
        raise TranscriptError(f"{path}: line {line}: ends ({values[1]}) before it starts ({values[0]})")
    return values[0], values[1]


# --- JSON -----------------------------------------------------------------------------------

class _Located(dict):
    """A JSON object that knows the line it starts on."""
    line = 1


class _LocatingDecoder(json.JSONDecoder):
    # The hooks JSONDecoder.__init__ sets and the pure-Python scanner calls (typeshed
    # leaves these implementation attributes out).
    parse_object: Callable[..., tuple[_Located, int]]
    scan_once: Callable[[str, int], tuple[Any, int]]


def _located_loads(text: str) -> Any:
    """json.loads, with every object a _Located (the line of its opening brace)."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    decoder = _LocatingDecoder()

    def parse_object(s_and_end, *args, **kwargs):
        obj, end = json.decoder.JSONObject(s_and_end, *args, **kwargs)
        located = _Located(obj)
        located.line = bisect.bisect_right(starts, s_and_end[1] - 1)
        return located, end

    decoder.parse_object = parse_object
    # py_make_scanner (the pure-Python scanner, the only one that calls parse_object) exists
    # in every CPython but typeshed declares only make_scanner, which may be the C one.
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


def _parse_json(path: Path, text: str) -> tuple[list[TranscriptLine], float | None]:
    try:
        doc = _located_loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise TranscriptError(f"{path}: line 1: not valid JSON (nested too deeply)") from None
    duration = None
    if isinstance(doc, _Located):
        items = doc.get("utterances")
        if not isinstance(items, list):
            raise TranscriptError(f'{path}: line {doc.line}: expected an object with an "utterances" list '
                                  f"(the shape callassist analyze writes)")
        raw_duration = doc.get("duration")
        if raw_duration is not None:
            if isinstance(raw_duration, bool) or not isinstance(raw_duration, (int, float)) \
                    or not math.isfinite(raw_duration) or raw_duration < 0:
                raise TranscriptError(f"{path}: line {doc.line}: duration {raw_duration!r} is not a number "
                                      f"of seconds >= 0")
            duration = float(raw_duration)
        parent_line = doc.line
    elif isinstance(doc, list):
        items, parent_line = doc, 1
    else:
        raise TranscriptError(f'{path}: line 1: expected an object with an "utterances" list '
                              f"(the shape callassist analyze writes)")
    lines = []
    for i, item in enumerate(items):
        if not isinstance(item, _Located):
            raise TranscriptError(f"{path}: line {parent_line}: utterance {i + 1} is not an object "
                                  f'with "speaker" and "text"')
        line = item.line
        for key in ("speaker", "text"):
            if key not in item:
                raise TranscriptError(f'{path}: line {line}: utterance {i + 1} has no "{key}"')
        speaker = _speaker(path, line, item["speaker"])
        if not isinstance(item["text"], str):
            raise TranscriptError(f'{path}: line {line}: utterance {i + 1}: "text" is not a string')
        start, end = _times(path, line, item.get("start"), item.get("end"))
        if item["text"].strip():
            lines.append(TranscriptLine(speaker, item["text"].strip(), start, end, line))
    return lines, duration


# --- TSV ------------------------------------------------------------------------------------

def _parse_tsv(path: Path, text: str) -> tuple[list[TranscriptLine], float | None]:
    lines: list[TranscriptLine] = []
    seen_content = False
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        fields = raw.split("\t")
        if not seen_content:
            seen_content = True
            if fields[0].strip().lower() in TSV_HEADER_WORDS:
                continue                                     # header line
        if len(fields) == 1:
            raise TranscriptError(f"{path}: line {number}: no tab; expected {TSV_SHAPE}")
        if len(fields) not in (2, 4):
            raise TranscriptError(f"{path}: line {number}: {len(fields)} columns; expected {TSV_SHAPE}")
        speaker = _speaker(path, number, fields[0])
        if len(fields) == 4:
            start, end = _times(path, number, fields[1].strip(), fields[2].strip())
        else:
            start = end = None
        if fields[-1].strip():
            lines.append(TranscriptLine(speaker, fields[-1].strip(), start, end, number))
    return lines, None


# --- WebVTT ---------------------------------------------------------------------------------

_TIMESTAMP = r"(?:(\d+):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_CUE_TIMING = re.compile(rf"^{_TIMESTAMP}[ \t]+-->[ \t]+{_TIMESTAMP}(?:[ \t].*)?$")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?(?:[ \t]+([^>]*))?>")
_TAG = re.compile(r"</?[^>]*>")
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")


def _seconds(hours: str | None, minutes: str, seconds: str, millis: str) -> float:
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def _cue_text(raw: str) -> str:
    """Cue payload to plain text: tags dropped, entities decoded, lines joined (no space
    between Chinese characters)."""
    parts = [html.unescape(_TAG.sub("", line)).strip() for line in raw.split("\n")]
    text = ""
    for part in filter(None, parts):
        gap = "" if not text or _CJK.match(text[-1]) or _CJK.match(part[0]) else " "
        text += gap + part
    return text


def _parse_vtt(path: Path, text: str) -> tuple[list[TranscriptLine], float | None]:
    rows = text.split("\n")
    if not re.match(r"^WEBVTT(?:[ \t].*)?$", rows[0]):
        raise TranscriptError(f"{path}: line 1: not WebVTT (the first line must be WEBVTT)")
    blocks: list[tuple[int, list[str]]] = []          # (line number of the block's first row, rows)
    current: list[str] = []
    for number, row in enumerate(rows, 1):
        if row.strip():
            if not current:
                blocks.append((number, current))
            current.append(row)
        else:
            current = []
    lines: list[TranscriptLine] = []
    synthetic = False
    for first, block in blocks[1:]:                   # blocks[0] is the header
        synthetic = synthetic or block[0].startswith(SYNTHETIC_TIMES_NOTE)
        if re.match(r"^(NOTE|STYLE|REGION)(?:[ \t]|$)", block[0]):
            continue
        at = 0 if "-->" in block[0] else 1 if len(block) > 1 and "-->" in block[1] else None
        if at is None:
            raise TranscriptError(f"{path}: line {first}: not a cue: expected a timing line like "
                                  f"00:00:01.000 --> 00:00:02.500")
        found = _CUE_TIMING.match(block[at].strip())
        if not found:
            raise TranscriptError(f"{path}: line {first + at}: bad cue timing {block[at].strip()!r}; expected "
                                  f"00:00:01.000 --> 00:00:02.500")
        start, end = _seconds(*found.groups()[:4]), _seconds(*found.groups()[4:])
        if end < start:
            raise TranscriptError(f"{path}: line {first + at}: the cue ends before it starts")
        payload_line = first + at + 1
        payload = "\n".join(block[at + 1:])
        pieces = _VOICE.split(payload)                # [before, name, text, name, text, ...]
        if _cue_text(pieces[0]):
            raise TranscriptError(f"{path}: line {payload_line}: cue text without a voice tag; "
                                  f"expected <v customer>... or <v agent>... (or <v 客户>, <v 坐席>)")
        for name, said in zip(pieces[1::2], pieces[2::2]):
            speaker = _speaker(path, payload_line, name or "")
            if said_text := _cue_text(said):
                lines.append(TranscriptLine(speaker, said_text, start, end, payload_line))
    if not lines:
        raise TranscriptError(f"{path}: no cues with text (a WebVTT transcript needs cues like "
                              f"'00:00:01.000 --> 00:00:02.500' then '<v 客户>...')")
    if synthetic:
        lines = [TranscriptLine(ln.speaker, ln.text, None, None, ln.line) for ln in lines]
    return lines, None
