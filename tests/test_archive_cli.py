"""`callassist archive import`: real WAV files through the real post-call analysis
(callassist.analyze + the real matcher and playbook) with the scripted speech engine,
stored in a real SQLite archive."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest

from agent_ui import archive_cli
from agent_ui.adherence import assess_call
from agent_ui.archive_cli import import_recording
from agent_ui.store import Store
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.audio import AudioError, write_wav
from prompts.matcher import Matcher
from prompts.playbook import load_playbook

RATE = 16000
CUSTOMER = [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.2, 2.8)]
AGENT = [ScriptedUtterance("非常 理解 您的 心情 马上 为您 核实", 0.2, 2.8)]


def voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like signal the pipeline's VAD lets through."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (tone * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) * 6000).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "incoming" / "Call-0001.WAV"
    path.parent.mkdir()
    write_wav(path, [np.concatenate([voiced(3.0), silence(3.5)]),
                     np.concatenate([silence(3.5), voiced(3.0, seed=1)])])
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return path


@pytest.fixture(scope="module")
def playbook():
    return load_playbook()


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine({"customer": CUSTOMER, "agent": AGENT})


@pytest.fixture
def store(tmp_path: Path):
    (tmp_path / "data").mkdir()
    s = Store(tmp_path / "data" / "callassist.db")
    yield s
    s.close()


def test_an_imported_recording_is_an_archived_call(store: Store, recording: Path, engine, playbook) -> None:
    imported = import_recording(store, recording, engine, Matcher(playbook), agent="PJSIP/1001")
    assert imported.call_id.startswith("import-") and not imported.already
    assert imported.recording == (store.recordings_dir / f"{imported.call_id}.wav").resolve()
    assert imported.recording.read_bytes() == recording.read_bytes()
    assert not list(store.recordings_dir.glob("*.part"))

    call = store.calls.get_call(imported.call_id)
    assert call["source"] == "import" and call["status"] == "ended"
    assert call["started_at"] == 1_700_000_000 and call["duration"] == pytest.approx(6.5)
    assert call["agent_endpoint"] == "PJSIP/1001" and call["recording_path"] == str(imported.recording)
    assert [(u["speaker"], u["text"]) for u in call["utterances"]] == [
        ("customer", "我 要 去 工信部 投诉 你们"), ("agent", "非常 理解 您的 心情 马上 为您 核实")]
    assert [(c["category"], c["status"]) for c in call["cards"]] == [("regulator_complaint", "confirmed")]
    assert call["risk"] == "critical"
    assert imported.line().endswith("(6.5 s, 2 utterances, 1 cards (regulator_complaint))")

    types = [e["type"] for _, e in store.events.events_since(0)]
    assert types == ["CallStarted", "AgentJoined", "TranscriptUpdate", "CardFired",
                     "TranscriptUpdate", "CallEnded"]
    assert store.calls.list_calls(text="工信部投诉")[0]["call_id"] == imported.call_id

    adherence = assess_call(call, playbook, window=30.0)
    assert adherence.cards[0].followed and "理解您的心情" in adherence.cards[0].said


def test_importing_the_same_recording_twice_changes_nothing(store: Store, recording: Path, engine,
                                                           playbook) -> None:
    first = import_recording(store, recording, engine, Matcher(playbook))
    seq = store.events.last_seq()
    again = import_recording(store, recording, engine, Matcher(playbook))
    assert again.already and again.call_id == first.call_id and store.events.last_seq() == seq
    assert "already in the archive" in again.line()


def test_a_file_that_is_not_audio_leaves_nothing_behind(store: Store, tmp_path: Path, engine,
                                                        playbook) -> None:
    junk = tmp_path / "notes.wav"
    junk.write_text("not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        import_recording(store, junk, engine, Matcher(playbook))
    with pytest.raises(AudioError, match="no such file"):
        import_recording(store, tmp_path / "missing.wav", engine, Matcher(playbook))
    assert store.calls.list_calls() == []
    assert not store.recordings_dir.exists() or not any(store.recordings_dir.iterdir())


def test_a_directory_or_a_too_short_file_is_refused_as_analyze_refuses_it(
        store: Store, tmp_path: Path, recording: Path, engine, playbook) -> None:
    """The same checks as `callassist analyze` (issue 9, finding 6): before, a directory
    was "no such file" and a 0.1 s file was archived as an empty call."""
    from callassist.analyze import InputError
    with pytest.raises(InputError, match="is a directory"):
        import_recording(store, recording.parent, engine, Matcher(playbook))
    blip = tmp_path / "blip.wav"
    write_wav(blip, [voiced(0.1)])
    with pytest.raises(InputError, match=r"only 0\.10 s of audio"):
        import_recording(store, blip, engine, Matcher(playbook))
    assert store.calls.list_calls() == []
    assert import_recording(store, recording, engine, Matcher(playbook)).call_id   # control


def test_a_truncated_wav_is_imported_with_a_warning(store: Store, tmp_path: Path, recording: Path,
                                                   engine, playbook) -> None:
    """A WAV cut off after its header was written (a crashed recorder, a partial copy): the
    audio that is there is archived, and the line says what is missing."""
    cut = tmp_path / "cut.wav"
    data = recording.read_bytes()
    cut.write_bytes(data[:len(data) * 2 // 3])
    imported = import_recording(store, cut, engine, Matcher(playbook))
    assert "truncated: the header announces 6.50 s of audio" in imported.line()
    assert 4.0 < imported.duration < 4.5 and store.calls.get_call(imported.call_id) is not None
    whole = import_recording(store, recording, engine, Matcher(playbook))        # control
    assert "warning" not in whole.line()


def test_the_command_reports_each_file_and_fails_at_the_end(tmp_path: Path, recording: Path,
                                                            monkeypatch, capsys) -> None:
    config = tmp_path / "callassist.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nretention_days = 180\n')
    monkeypatch.setattr(archive_cli, "_create_engine",
                        lambda config, name: ScriptedEngine({"customer": CUSTOMER, "agent": AGENT}))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"\x00" * 10)
    args = argparse.Namespace(config=str(config), files=[str(junk), str(recording),
                                                         str(tmp_path / "gone.wav")],
                              agent="PJSIP/1001", engine=None, channels="customer-agent")
    assert archive_cli.import_files(args) == 1
    out = capsys.readouterr()
    assert out.out.count("imported as import-") == 1
    assert "dated 2023-11-1" in out.out and "the next purge deletes it" in out.out   # old mtime
    assert f"{junk}: error:" in out.err and "gone.wav: error:" in out.err
    assert "2 of 3 files failed" in out.err

    args.files = [str(recording)]
    assert archive_cli.import_files(args) == 0
    assert "already in the archive" in capsys.readouterr().out
    with Store(tmp_path / "data" / "callassist.db") as s:
        assert len(s.calls.list_calls()) == 1


def test_the_command_without_an_engine_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    config = tmp_path / "callassist.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')

    def no_engine(config, name):
        raise RuntimeError("no Vosk model found in ./models")

    monkeypatch.setattr(archive_cli, "_create_engine", no_engine)
    args = argparse.Namespace(config=str(config), files=["x.wav"], agent="", engine=None,
                              channels="customer-agent")
    assert archive_cli.import_files(args) == 2
    assert "no Vosk model" in capsys.readouterr().err
