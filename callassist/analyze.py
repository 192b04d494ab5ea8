"""`callassist analyze FILE`: a recording or a transcript in, an annotated transcript out.

Mono files are the customer; stereo files are customer (left) and agent (right)
unless --channels says otherwise. The audio goes through the same CallPipeline as
a live call, interleaved in 100 ms steps so both legs advance together.

A transcript (.json, .tsv, .txt, .vtt: see callassist.transcripts) skips recognition:
its utterances go, as final results in time order, through the TranscriptFeed that the
CallPipeline uses (the call's CallMatcher), so it gets the cards the same words would get
from a recording. An untimed transcript (TSV without times, JSON with null times) is
matched on a synthetic timeline, utterance i (from 0) at [i*4 s, (i+1)*4 s), about a
spoken turn, so the playbook's cooldowns act as on a call; the JSON output keeps its
times null, the WebVTT output writes the synthetic times and says so in a NOTE, the text
output numbers the utterances (#1, #2, ...) instead of giving times. (Read back, that WebVTT
is untimed again.)
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callassist.audio import PIPELINE_RATE, AudioError, Recording, read_recording
from callassist.events import (CallEvent, CardConfirmed, CardFired, CardWithdrawn, Speaker,
                               TranscriptUpdate)
from callassist.pipeline import CallPipeline, TranscriptFeed
from callassist.transcripts import (SYNTHETIC_TIMES_NOTE, Transcript, TranscriptError, read_transcript,
                                    transcript_kind)
from prompts.playbook import SEVERITY_LABELS

CHUNK_SECONDS = 0.1
UNTIMED_SECONDS = 4.0      # synthetic length of one utterance of an untimed transcript
# Below this nothing can be recognised (Vosk and the Whisper VAD both need a few hundred ms of
# speech), so a shorter file is an error rather than an empty, successful analysis.
MIN_AUDIO_SECONDS = 0.5
SPEAKER_LABELS = {"customer": "客户", "agent": "坐席"}
# RIFF data sizes that mean "unknown" (streaming writers), not a length to check against.
UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)


class InputError(ValueError):
    """The input path is unusable as given (a directory, a too-short recording)."""


@dataclass(frozen=True)
class WavTruncation:
    """A WAV whose data chunk is shorter on disk than its header declares."""
    declared_seconds: float
    present_seconds: float

    def describe(self) -> str:
        return (f"truncated: the header announces {self.declared_seconds:.2f} s of audio, "
                f"the file holds {self.present_seconds:.2f} s")


def wav_truncation(path: Path) -> WavTruncation | None:
    """How much of a RIFF/WAVE file's declared audio is missing; None for a complete file,
    a non-WAV file or one whose header does not state a size. libsndfile reads a cut-off
    WAV without complaint, so this is the only place the loss becomes visible."""
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = 0
            while chunk := fh.read(8):
                if len(chunk) < 8:
                    return None
                chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if chunk_id == b"fmt ":
                    fmt = fh.read(size + (size & 1))
                    byte_rate = int.from_bytes(fmt[8:12], "little") if len(fmt) >= 12 else 0
                elif chunk_id == b"data":
                    present = path.stat().st_size - fh.tell()
                    if size in UNKNOWN_RIFF_SIZES or present >= size or not byte_rate:
                        return None
                    return WavTruncation(size / byte_rate, max(present, 0) / byte_rate)
                else:
                    fh.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None          # read_recording reports unreadable files
    return None


def check_input_path(path: Path) -> None:
    """Refuse a directory with a hint; analyze reads one file."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory; analyze reads one recording or transcript "
                         f"(for each file: for f in {path}/*.wav; do callassist analyze \"$f\"; done)")


def check_recording_length(path: Path, recording: Recording, truncation: WavTruncation | None) -> None:
    if recording.duration < MIN_AUDIO_SECONDS:
        what = f"{truncation.describe()}, " if truncation else ""
        raise InputError(f"{path}: {what}only {recording.duration:.2f} s of audio; "
                         f"at least {MIN_AUDIO_SECONDS} s is needed to recognise speech")


def read_checked_recording(path: Path) -> tuple[Recording, WavTruncation | None]:
    """A recording worth analysing, for `analyze` and `archive import` alike: not a
    directory, at least MIN_AUDIO_SECONDS of audio; a truncated WAV is returned with what
    it lacks, for the caller to warn about (the audio that exists is still worth having)."""
    check_input_path(path)
    recording = read_recording(path)
    truncation = wav_truncation(path)
    check_recording_length(path, recording, truncation)
    return recording, truncation


@dataclass
class AnalysisResult:
    duration: float
    utterances: list[dict[str, Any]]
    triggers: list[dict[str, Any]]
    events: list[CallEvent] = field(repr=False, default_factory=list)
    timed: bool = True         # False: an untimed transcript, on the synthetic timeline
    truncation: WavTruncation | None = None    # a WAV shorter than its header says

    def to_json(self) -> dict[str, Any]:
        if not self.timed:     # no invented times in the data: null, as the input had them
            return {"duration": None,
                    "utterances": [{**u, "start": None, "end": None} for u in self.utterances],
                    "triggers": [{**t, "start": None, "end": None} for t in self.triggers]}
        return {"duration": round(self.duration, 3), "utterances": self.utterances,
                "triggers": self.triggers}


def speakers_for(recording: Recording, channels: str) -> list[Speaker]:
    if len(recording.channels) == 1:
        return ["customer"]
    return ["customer", "agent"] if channels == "customer-agent" else ["agent", "customer"]


def summarise(events: list[CallEvent], duration: float) -> AnalysisResult:
    """Fold the pipeline's event stream into final utterances and standing triggers."""
    utterances = [e for e in events if isinstance(e, TranscriptUpdate) and e.final and e.text]
    cards = {e.card.card_id: e.card for e in events if isinstance(e, CardFired)}
    for e in events:
        if isinstance(e, CardWithdrawn):
            cards.pop(e.card_id, None)
        elif isinstance(e, CardConfirmed) and e.card_id in cards:
            cards[e.card_id] = _replace_card(cards[e.card_id], e)
    triggers = [{
        "category": c.category, "speaker": c.speaker, "start": c.start, "end": c.end,
        "text": c.text, "phrase": c.phrase, "score": round(c.score, 1), "title": c.title,
        "severity": c.severity, "script": list(c.script),
        "citations": [{"law": v.law, "article": v.article, "quote": v.quote} for v in c.citations],
    } for c in sorted(cards.values(), key=lambda c: (c.start, c.category))]
    return AnalysisResult(
        duration=duration,
        utterances=[{"speaker": u.speaker, "start": u.start, "end": u.end, "text": u.text}
                    for u in sorted(utterances, key=lambda u: (u.start, u.speaker))],
        triggers=triggers, events=events)


def _replace_card(card, confirmed: CardConfirmed):
    from dataclasses import replace
    return replace(card, text=confirmed.text, end=confirmed.end, confirmed=True)


class ProgressBar:
    def __init__(self, total: float, stream=sys.stderr) -> None:
        self.total, self.stream, self._last = total, stream, 0.0

    def update(self, done: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        filled = int(30 * done / self.total) if self.total else 30
        self.stream.write(f"\ranalysing [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{done:6.1f}/{self.total:.1f} s")
        self.stream.flush()

    def close(self) -> None:
        self.update(self.total, force=True)
        self.stream.write("\n")


async def analyze_recording(recording: Recording, engine, matcher, *, channels: str = "customer-agent",
                            call_id: str = "analysis", progress: ProgressBar | None = None) -> AnalysisResult:
    events: list[CallEvent] = []
    pipeline = CallPipeline(call_id, engine, matcher, events.append)
    speakers = speakers_for(recording, channels)
    step = int(CHUNK_SECONDS * PIPELINE_RATE)
    total = len(recording.channels[0])
    try:
        for pos in range(0, total, step):
            for speaker, samples in zip(speakers, recording.channels):
                await pipeline.feed(speaker, samples[pos:pos + step].tobytes())
            if progress:
                progress.update(min(pos + step, total) / PIPELINE_RATE)
        await pipeline.finish()
    finally:
        pipeline.close()
        if progress:
            progress.close()
    return summarise(events, recording.duration)


def analyze_transcript(transcript: Transcript, matcher, *, call_id: str = "analysis") -> AnalysisResult:
    """A transcript's utterances as final results, in time order, through the TranscriptFeed
    the CallPipeline uses; untimed ones on the synthetic timeline (see the module docstring)."""
    events: list[CallEvent] = []
    feed = TranscriptFeed(call_id, matcher, events.append)
    lines = transcript.lines
    timed = [(ln.start, ln.end) for ln in lines if ln.start is not None and ln.end is not None]
    if transcript.duration is not None and len(timed) == len(lines):    # transcript.timed
        timeline = timed
        duration = transcript.duration
    else:
        timeline = [(i * UNTIMED_SECONDS, (i + 1) * UNTIMED_SECONDS) for i in range(len(lines))]
        duration = len(lines) * UNTIMED_SECONDS
    counts = {"customer": 0, "agent": 0}          # utterance numbers are per speaker
    for i in sorted(range(len(lines)), key=lambda i: (timeline[i][0], i)):
        line = lines[i]
        start, end = timeline[i]
        feed.update(line.speaker, counts[line.speaker], line.text, round(start, 3), round(end, 3), True)
        counts[line.speaker] += 1
    result = summarise(events, duration)
    result.timed = transcript.timed
    return result


def analyze_file(path: str | Path, engine, matcher, *, channels: str = "customer-agent",
                 call_id: str = "analysis", progress: bool = False) -> AnalysisResult:
    """Blocking convenience wrapper (for the archive importer and scripts); refuses what
    read_checked_recording refuses (InputError, AudioError)."""
    recording, truncation = read_checked_recording(Path(path))
    bar = ProgressBar(recording.duration) if progress else None
    result = asyncio.run(analyze_recording(recording, engine, matcher, channels=channels,
                                           call_id=call_id, progress=bar))
    result.truncation = truncation
    return result


def _clock(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _untimed_number(seconds: float) -> int:
    """An utterance's place (1-based) in an untimed transcript, from its synthetic time."""
    return int(round(seconds / UNTIMED_SECONDS)) + 1


def to_vtt(result: AnalysisResult) -> str:
    lines = ["WEBVTT", ""]
    if not result.timed:
        lines += [f"{SYNTHETIC_TIMES_NOTE}：原转写没有时间，第 N 句记为 (N-1)×{UNTIMED_SECONDS:g} 秒起 "
                  f"(synthetic times: the transcript had none)", ""]
    notes = sorted(result.triggers, key=lambda t: t["start"])
    for i, utt in enumerate(result.utterances, 1):
        while notes and notes[0]["start"] <= utt["start"]:
            lines += [_vtt_note(notes.pop(0)), ""]
        lines += [str(i), f"{_clock(utt['start'])} --> {_clock(max(utt['end'], utt['start'] + 0.01))}",
                  f"<v {SPEAKER_LABELS[utt['speaker']]}>{_vtt_escape(utt['text'])}", ""]
    lines += [item for t in notes for item in (_vtt_note(t), "")]
    return "\n".join(lines)


def _vtt_escape(text: str) -> str:
    """Cue text is markup: a bare & or < would start an entity or a tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _severity(trigger: dict[str, Any]) -> str:
    """The severity as the screens name it (严重); the JSON keeps the id (critical)."""
    return SEVERITY_LABELS.get(trigger["severity"], trigger["severity"])


def _vtt_note(trigger: dict[str, Any]) -> str:
    # "-->" may not appear inside a NOTE block.
    text = (f"NOTE 触发 [{_severity(trigger)}] {trigger['title']} "
            f"@{_clock(trigger['start'])} {SPEAKER_LABELS[trigger['speaker']]}：{trigger['text']}")
    return text.replace("-->", "->")


def to_text(result: AnalysisResult) -> str:
    def when(seconds: float) -> str:
        return _clock(seconds) if result.timed else f"#{_untimed_number(seconds)}"

    out = []
    for utt in result.utterances:
        out.append(f"[{when(utt['start'])}] {SPEAKER_LABELS[utt['speaker']]}：{utt['text']}")
    out.append("")
    out.append(f"触发 {len(result.triggers)} 次")
    for t in result.triggers:
        out.append(f"[{when(t['start'])}] [{_severity(t)}] {t['title']} "
                   f"{SPEAKER_LABELS[t['speaker']]}：{t['text']}")
        out.extend(f"    {i}. {step}" for i, step in enumerate(t["script"], 1))
        out.extend(f"    《{c['law']}》{c['article']}：{c['quote']}" for c in t["citations"])
    return "\n".join(out) + "\n"


FORMATTERS = {"json": lambda r: json.dumps(r.to_json(), ensure_ascii=False, indent=2) + "\n",
              "vtt": to_vtt, "text": to_text}


class OutputError(ValueError):
    """The --output destination cannot be written."""


def _check_writable(path: Path) -> None:
    parent = path.resolve().parent
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{path}: not writable")


def run(args) -> int:
    from asr import create_engine
    from asr.engine import ModelNotFoundError
    from callassist.config import ConfigError, load_config
    from prompts.intent import IntentModelError
    from prompts.matcher import Matcher
    from prompts.playbook import PlaybookError, load_playbook

    transcript = recording = engine = truncation = None
    try:
        config = load_config(args.config)
        if args.output:
            _check_writable(Path(args.output))   # before minutes of decoding, not after
        check_input_path(Path(args.file))
        if transcript_kind(args.file):
            transcript = read_transcript(args.file)   # no recognition: --engine/--model/--channels unused
        else:
            recording, truncation = read_checked_recording(Path(args.file))
        playbook = load_playbook()
        if recording is not None:
            # A finished recording gets the accurate post-call engine unless told otherwise.
            name = args.engine or config.asr.post_call_engine or config.asr.engine
            engine = create_engine(config, name=name, model=args.model)
    except (ConfigError, AudioError, TranscriptError, PlaybookError, ModelNotFoundError, OutputError,
            InputError) as exc:
        print(f"callassist analyze: {exc}", file=sys.stderr)
        return 2
    if truncation and recording is not None:     # the audio that exists is still worth analysing: warn, do not refuse
        print(f"callassist analyze: warning: {args.file}: {truncation.describe()}; "
              f"analysing those {recording.duration:.2f} s", file=sys.stderr)
    settings = dataclasses.replace(config.matcher, pinyin=config.matcher.pinyin and not args.no_pinyin)
    try:
        matcher = Matcher.from_config(playbook, settings)
    except IntentModelError as exc:
        print(f"callassist analyze: {exc}", file=sys.stderr)
        return 2
    if transcript is not None:
        result = analyze_transcript(transcript, matcher)
    else:
        assert recording is not None and engine is not None     # not a transcript: both set above
        bar = None if args.quiet or not sys.stderr.isatty() else ProgressBar(recording.duration)
        try:
            result = asyncio.run(analyze_recording(recording, engine, matcher, channels=args.channels,
                                                   progress=bar))
        finally:
            engine.close()
    text = FORMATTERS[args.format](result)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"callassist analyze: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0

