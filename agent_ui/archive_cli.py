"""`callassist archive import FILE...`: analyse recordings and file them as archived calls.

Each file goes through the post-call analysis (callassist.analyze: the same pipeline
as a live call), is copied to data_dir/recordings/<call_id>.<ext>, and is stored with
EventLog.record_many as the events of an ended call with source "import" (CallStarted,
AgentJoined, final transcripts, standing cards as confirmed CardFired, CallEnded), so
it looks like any other archived call. The call id comes from the file's content
(import-<sha256 prefix>): importing the same recording again changes nothing.

The call is dated by the file's modification time (the best guess at when the call
happened), so retention applies to it as to any call of that day.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callassist.events import (AgentJoined, CallEnded, CallEvent, CallStarted, Card, CardConfirmed,
                               CardFired, CardWithdrawn, TranscriptUpdate)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedCall:
    path: Path
    call_id: str
    duration: float
    utterances: int
    categories: tuple[str, ...]
    recording: Path
    already: bool = False          # the archive already had this recording
    warning: str = ""              # imported, but the file was damaged (a truncated WAV)

    def line(self) -> str:
        if self.already:
            return f"{self.path}: already in the archive as {self.call_id}"
        cards = f"{len(self.categories)} cards" + (f" ({', '.join(self.categories)})"
                                                   if self.categories else "")
        warning = f"; warning: {self.warning}" if self.warning else ""
        return (f"{self.path}: imported as {self.call_id} ({self.duration:.1f} s, "
                f"{self.utterances} utterances, {cards}){warning}")


def content_call_id(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"import-{digest.hexdigest()[:20]}"


def standing_cards(events: list[CallEvent]) -> list[Card]:
    """The cards a call ends with: withdrawn ones dropped, confirmations applied."""
    cards: dict[str, Card] = {}
    for event in events:
        if isinstance(event, CardFired):
            cards[event.card.card_id] = event.card
        elif isinstance(event, CardWithdrawn):
            cards.pop(event.card_id, None)
        elif isinstance(event, CardConfirmed) and event.card_id in cards:
            cards[event.card_id] = dataclasses.replace(cards[event.card_id], text=event.text,
                                                       end=event.end, confirmed=True)
    return sorted(cards.values(), key=lambda c: (c.start, c.category))


def archive_events(call_id: str, started_at: float, duration: float, pipeline_events: list[CallEvent],
                   agent: str = "", recording: Path | None = None) -> list[CallEvent]:
    """The events of an archived call built from an analysis: wall-clock `at` of each
    event = started_at + its time on the call's timeline."""
    events: list[CallEvent] = [CallStarted(call_id, caller="", source="import", at=started_at)]
    if agent:
        events.append(AgentJoined(call_id, agent, at=started_at))
    timeline: list[CallEvent] = [
        dataclasses.replace(e, call_id=call_id, at=started_at + e.end)
        for e in pipeline_events if isinstance(e, TranscriptUpdate) and e.final and e.text.strip()]
    timeline += [CardFired(call_id, dataclasses.replace(card, confirmed=True), at=started_at + card.end)
                 for card in standing_cards(pipeline_events)]
    events += sorted(timeline, key=lambda e: e.at)           # stable: a final before its card
    events.append(CallEnded(call_id, duration, recording=str(recording) if recording else None,
                            at=started_at + duration))
    return events


Analyze = Callable[..., Any]       # callassist.analyze.analyze_file's signature


def import_recording(store, path: str | os.PathLike, engine, matcher, *, agent: str = "",
                     channels: str = "customer-agent", analyze: Analyze | None = None) -> ImportedCall:
    """Analyse one recording and store it as an ended call. Raises AudioError / OSError /
    StoreError with a message naming the problem; on failure nothing is left behind."""
    if analyze is None:
        from callassist.analyze import analyze_file
        analyze = analyze_file
    path = Path(path)
    if path.is_dir():
        from callassist.analyze import check_input_path
        check_input_path(path)
    if not path.is_file():
        from callassist.audio import AudioError
        raise AudioError(f"{path}: no such file")
    call_id = content_call_id(path)
    known = store.calls.get_call(call_id)
    if known is not None:
        return ImportedCall(path, call_id, known["duration"] or 0.0, len(known["utterances"]),
                            tuple(known["categories"]), Path(known["recording_path"] or ""), True)
    result = analyze(path, engine, matcher, channels=channels, call_id=call_id)
    store.recordings_dir.mkdir(parents=True, exist_ok=True)
    dest = (store.recordings_dir / f"{call_id}{path.suffix.lower() or '.wav'}").resolve()
    partial = dest.with_name(dest.name + ".part")
    shutil.copyfile(path, partial)
    os.replace(partial, dest)                  # never a half-copied file under the final name
    events = archive_events(call_id, path.stat().st_mtime, result.duration, result.events, agent, dest)
    try:
        store.events.record_many(events)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    cards = [e.card.category for e in events if isinstance(e, CardFired)]
    return ImportedCall(path, call_id, result.duration,
                        sum(isinstance(e, TranscriptUpdate) for e in events), tuple(cards), dest,
                        warning=result.truncation.describe() if result.truncation else "")


def import_files(args) -> int:
    from agent_ui.store import StoreError, open_store
    from callassist.analyze import InputError
    from callassist.audio import AudioError
    from callassist.config import ConfigError, load_config
    from prompts.matcher import Matcher
    from prompts.playbook import PlaybookError, load_playbook

    try:
        config = load_config(args.config)
        playbook = load_playbook()
        store = open_store(config)
    except (ConfigError, PlaybookError, StoreError) as exc:
        print(f"callassist archive import: {exc}", file=sys.stderr)
        return 2
    try:
        engine = _create_engine(config, args.engine)
    except Exception as exc:                       # missing model, unknown engine
        print(f"callassist archive import: {exc}", file=sys.stderr)
        store.close()
        return 2
    matcher = Matcher.from_config(playbook, config.matcher)
    failed = 0
    retention = config.storage.retention_days
    try:
        for name in args.files:
            try:
                imported = import_recording(store, name, engine, matcher, agent=args.agent,
                                            channels=args.channels)
            except (AudioError, InputError, OSError, StoreError) as exc:
                failed += 1
                print(f"{name}: error: {exc}", file=sys.stderr)
                continue
            except Exception as exc:               # one bad file must not stop the batch
                failed += 1
                log.debug("import of %s failed", name, exc_info=True)
                print(f"{name}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            print(imported.line())
            if (not imported.already and retention
                    and Path(name).stat().st_mtime < time.time() - retention * 86400):
                print(f"{name}: note: dated {time.strftime('%Y-%m-%d', time.localtime(Path(name).stat().st_mtime))}, "
                      f"older than retention_days={retention}: the next purge deletes it")
    finally:
        engine.close()
        store.close()
    if failed:
        print(f"{failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _create_engine(config, name: str | None):
    """The post-call engine: --engine, else [asr] post_call_engine, else [asr] engine."""
    from asr import create_engine
    return create_engine(config, name=name or config.asr.post_call_engine or config.asr.engine)
