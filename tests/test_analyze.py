"""`callassist analyze FILE` as a user runs it: a real subprocess, real Whisper base, a short
TTS call written to disk as stereo WAV, mono 8 kHz WAV and 44.1 kHz FLAC; the three output
formats; swapped channels; bad input that must end in one clear line, never a traceback.

One customer complaint (工信部, regulator_complaint) then one neutral agent turn, about 6 s,
so each Whisper run costs a few seconds; error cases fail before any model loads.
"""
from __future__ import annotations

import io
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from callassist.analyze import ProgressBar
from callassist.audio import to_int16, resample
from callassist.testcalls import BuiltCall, CallScript, TtsUnavailableError, Turn, build_call

pytestmark = pytest.mark.slow

CUSTOMER_TEXT = "你们再不解决，我就去工信部投诉你们。"
AGENT_TEXT = "您先别着急，我马上为您核实。"
LABELS = {"customer": "客户", "agent": "坐席"}
TOLERANCE = 1.0


def callassist_command() -> list[str]:
    script = shutil.which("callassist")
    return [script] if script else [sys.executable, "-m", "callassist"]


def analyze(*args: str | Path, stderr=subprocess.PIPE, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*callassist_command(), "analyze", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def small_call() -> BuiltCall:
    script = CallScript("cli_regulator", (
        Turn("customer", CUSTOMER_TEXT, pause=0.3, agitated=True, expect=("regulator_complaint",)),
        Turn("agent", AGENT_TEXT, pause=0.6),
    ))
    try:
        return build_call(script)
    except TtsUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory, small_call) -> Path:
    """The call as the files a user would have: stereo 16 kHz WAV, customer-only 8 kHz WAV,
    stereo 44.1 kHz FLAC."""
    out = tmp_path_factory.mktemp("analyze_audio")
    small_call.write_wav(out / "call.wav")
    small_call.write_leg(out / "customer_8k.wav", "customer", rate=8000)
    stereo = small_call.audio.astype(np.float32) / 32768.0
    hi = np.column_stack([to_int16(resample(stereo[:, i], 16000, 44100)) for i in range(2)])
    sf.write(str(out / "call_44k.flac"), hi, 44100, subtype="PCM_16")
    return out


@pytest.fixture(scope="session")
def stereo_json(audio_dir) -> dict:
    proc = analyze(audio_dir / "call.wav", "--engine", "whisper", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "analysing" not in proc.stderr, "no progress bar when stderr is not a terminal"
    return json.loads(proc.stdout)


# --- output shape -------------------------------------------------------------------

def check_shape(doc: dict, duration: float) -> None:
    assert set(doc) == {"duration", "utterances", "triggers"}
    assert doc["duration"] == pytest.approx(duration, abs=0.01)
    for utt in doc["utterances"]:
        assert set(utt) == {"speaker", "start", "end", "text"}
        assert utt["speaker"] in LABELS and isinstance(utt["text"], str) and utt["text"]
        assert 0 <= utt["start"] <= utt["end"] <= duration + 0.05, utt
    for trig in doc["triggers"]:
        assert set(trig) == {"category", "speaker", "start", "end", "text", "phrase", "score",
                             "title", "severity", "script", "citations"}
        assert trig["speaker"] in LABELS
        assert 0 <= trig["start"] <= trig["end"] <= duration + 0.05, trig
        assert trig["severity"] in ("info", "warning", "critical")
        assert 0 < trig["score"] <= 100
        assert trig["script"] and all(isinstance(s, str) and s for s in trig["script"])
        for citation in trig["citations"]:
            assert set(citation) == {"law", "article", "quote"} and all(citation.values())


def check_regulator_trigger(doc: dict, call: BuiltCall) -> None:
    turn = call.turns[0]
    fired = [t for t in doc["triggers"] if t["category"] == "regulator_complaint"]
    assert len(fired) == 1, doc
    assert fired[0]["speaker"] == "customer"
    assert abs(fired[0]["start"] - turn.start) <= TOLERANCE and abs(fired[0]["end"] - turn.end) <= TOLERANCE, \
        (fired[0], turn)
    assert fired[0]["citations"], "regulator_complaint cites the law"


def test_stereo_json(stereo_json, small_call):
    check_shape(stereo_json, small_call.duration)
    assert {u["speaker"] for u in stereo_json["utterances"]} == {"customer", "agent"}
    check_regulator_trigger(stereo_json, small_call)
    assert [t["category"] for t in stereo_json["triggers"]] == ["regulator_complaint"], \
        "the neutral agent turn fires nothing"


def test_json_output_read_back_gives_the_same_triggers(stereo_json, tmp_path):
    """analyze audio -> JSON -> analyze that JSON (and its WebVTT): the same utterances and
    triggers, all fields (Whisper gives final results only, as a transcript does)."""
    saved = tmp_path / "call.json"
    saved.write_text(json.dumps(stereo_json, ensure_ascii=False), encoding="utf-8")
    proc = analyze(saved)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    again = json.loads(proc.stdout)
    assert again == stereo_json
    assert [t["category"] for t in again["triggers"]] == ["regulator_complaint"]

    proc = analyze(saved, "--format", "vtt", "-o", tmp_path / "call.vtt")
    assert proc.returncode == 0, proc.stderr
    proc = analyze(tmp_path / "call.vtt")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["triggers"] == stereo_json["triggers"]


def test_mono_8k_wav_is_the_customer(audio_dir, small_call):
    proc = analyze(audio_dir / "customer_8k.wav", "--engine", "whisper", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_shape(doc, small_call.duration)
    assert doc["utterances"] and {u["speaker"] for u in doc["utterances"]} == {"customer"}
    check_regulator_trigger(doc, small_call)


def test_flac_44k_is_resampled(audio_dir, small_call, stereo_json):
    proc = analyze(audio_dir / "call_44k.flac", "--engine", "whisper", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_shape(doc, small_call.duration)
    check_regulator_trigger(doc, small_call)
    # Properly resampled audio sounds the same to Whisper: same speakers, near-identical times.
    assert [u["speaker"] for u in doc["utterances"]] == [u["speaker"] for u in stereo_json["utterances"]]
    for a, b in zip(doc["utterances"], stereo_json["utterances"]):
        assert abs(a["start"] - b["start"]) <= 0.3 and abs(a["end"] - b["end"]) <= 0.3, (a, b)


def test_channels_swapped(audio_dir, stereo_json, tmp_path):
    out = tmp_path / "swapped.json"
    proc = analyze(audio_dir / "call.wav", "--engine", "whisper", "--channels", "agent-customer",
                   "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "--output writes the file, not standard output"
    doc = json.loads(out.read_text(encoding="utf-8"))
    swap = {"customer": "agent", "agent": "customer"}
    assert [(swap[u["speaker"]], u["text"]) for u in doc["utterances"]] == \
           [(u["speaker"], u["text"]) for u in stereo_json["utterances"]]
    # 工信部 is now the agent's: a customer-only category cannot fire on it.
    assert not [t for t in doc["triggers"] if t["category"] == "regulator_complaint"]


def test_vosk_engine_with_a_model_dir(audio_dir, small_call, vosk_ko_model_dir):
    """--engine vosk --model DIR end to end. The only Vosk model here is Korean (it cannot
    recognise Mandarin), so this checks the plumbing and the output shape, not the words."""
    proc = analyze(audio_dir / "call.wav", "--engine", "vosk", "--model", vosk_ko_model_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_shape(json.loads(proc.stdout), small_call.duration)


# --- WebVTT and text ------------------------------------------------------------------

_TIMING = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_vtt(text: str) -> tuple[list[tuple[float, float, str]], list[str]]:
    """(cues as (start, end, payload), NOTE blocks); asserts the WebVTT block structure."""
    lines = text.split("\n")
    assert lines[0] == "WEBVTT" and lines[1] == "", "header line, then a blank line"
    blocks = [b.split("\n") for b in "\n".join(lines[2:]).strip("\n").split("\n\n") if b]
    cues, notes = [], []
    for block in blocks:
        if block[0].startswith("NOTE"):
            assert block[0] == "NOTE" or block[0].startswith("NOTE "), block
            assert not any("-->" in line for line in block), "'-->' is not allowed in a NOTE"
            notes.append("\n".join(block))
            continue
        timing_at = 0 if "-->" in block[0] else 1           # optional cue identifier
        found = _TIMING.match(block[timing_at])
        assert found, f"bad cue timing line: {block!r}"
        start, end = _seconds(*found.groups()[:4]), _seconds(*found.groups()[4:])
        assert start < end, block
        payload = "\n".join(block[timing_at + 1:])
        assert payload and "-->" not in payload, block
        cues.append((start, end, payload))
    return cues, notes


def test_vtt(audio_dir, small_call, stereo_json):
    proc = analyze(audio_dir / "call.wav", "--engine", "whisper", "--format", "vtt")
    assert proc.returncode == 0, proc.stderr
    cues, notes = parse_vtt(proc.stdout)
    assert len(cues) == len(stereo_json["utterances"])
    for (start, end, payload), utt in zip(cues, stereo_json["utterances"]):
        assert payload.startswith(f"<v {LABELS[utt['speaker']]}>"), payload
        assert abs(start - utt["start"]) < 0.002 and end <= small_call.duration + 0.05
    assert any(c[2].startswith("<v 客户>") for c in cues) and any(c[2].startswith("<v 坐席>") for c in cues)
    assert len(notes) == len(stereo_json["triggers"]) == 1
    assert notes[0].startswith("NOTE 触发 [严重] 越级投诉") and "客户" in notes[0]
    assert "regulator_complaint" not in notes[0] and "critical" not in notes[0]


def test_text_format_and_progress_bar_on_a_terminal(audio_dir):
    """Text output; stderr is a pseudo-terminal here, so the progress bar must show on it."""
    master, slave = pty.openpty()
    try:
        proc = analyze(audio_dir / "call.wav", "--engine", "whisper", "--format", "text", stderr=slave)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:        # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, terminal
    assert "analysing [" in terminal and "\r" in terminal, terminal
    assert "##############################" in terminal, "the bar reaches 100% at the end"
    assert "Traceback" not in terminal
    assert re.search(r"^\[\d{2}:\d{2}:\d{2}\.\d{3}\] 客户：", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\[\d{2}:\d{2}:\d{2}\.\d{3}\] 坐席：", proc.stdout, re.M), proc.stdout
    assert "触发 1 次" in proc.stdout and re.search(r"^\[[\d:.]+\] \[严重\] 越级投诉.* 客户：", proc.stdout, re.M)
    assert "regulator_complaint" not in proc.stdout and "critical" not in proc.stdout


def test_progress_bar_draws_in_place():
    out = io.StringIO()
    bar = ProgressBar(20.0, stream=out)
    bar.update(5.0, force=True)
    bar.update(6.0)                     # throttled: less than 0.25 s after the last draw
    bar.close()
    text = out.getvalue()
    draws = text.split("\r")[1:]
    assert len(draws) == 2 and text.endswith("\n")
    assert draws[0].startswith("analysing [" + "#" * 7 + "." * 23 + "]") and "5.0/20.0 s" in draws[0]
    assert draws[1].startswith("analysing [" + "#" * 30 + "]") and "20.0/20.0 s" in draws[1]


# --- bad input --------------------------------------------------------------------------

def check_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("callassist analyze: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == ""


def test_missing_file(tmp_path):
    check_clean_failure(analyze(tmp_path / "missing.wav"), "missing.wav", "no such file")


def test_text_file_renamed_wav(tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("这不是录音，只是一段文字。\n", encoding="utf-8")
    check_clean_failure(analyze(fake), "notes.wav", "not a readable audio file")


def test_four_channels(tmp_path):
    path = tmp_path / "quad.wav"
    sf.write(str(path), np.zeros((16000, 4), np.int16), 16000, subtype="PCM_16")
    check_clean_failure(analyze(path), "4 channels")


def test_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0, 2), np.int16), 16000, subtype="PCM_16")
    check_clean_failure(analyze(path), "empty")


def test_missing_model_dir(audio_dir):
    check_clean_failure(analyze(audio_dir / "call.wav", "--engine", "whisper", "--model", "/nonexistent"),
                        "/nonexistent")


def test_unwritable_output(audio_dir, tmp_path):
    proc = analyze(audio_dir / "call.wav", "--engine", "whisper", "-o", tmp_path / "no" / "such" / "dir.json")
    check_clean_failure(proc, "dir.json")


# --- cut-off, too short, a directory (issue 9, finding 6) ------------------------------

def test_directory_is_named_as_such_with_a_hint(tmp_path):
    check_clean_failure(analyze(tmp_path), str(tmp_path), "is a directory", "for f in")


def test_too_short_recording_is_an_error(tmp_path):
    short = tmp_path / "blip.wav"
    sf.write(str(short), np.full(1600, 1000, np.int16), 16000, subtype="PCM_16")   # 0.1 s
    check_clean_failure(analyze(short), "blip.wav", "only 0.10 s of audio", "at least 0.5 s")
    # control: the check passes half a second (the CLI then goes on to load a model)
    from callassist.analyze import check_recording_length
    from callassist.audio import read_recording
    enough = tmp_path / "enough.wav"
    sf.write(str(enough), np.full(8000, 1000, np.int16), 16000, subtype="PCM_16")
    check_recording_length(enough, read_recording(enough), None)


def _cut(source: Path, target: Path, keep_bytes: int) -> None:
    target.write_bytes(source.read_bytes()[:keep_bytes])


def test_wav_cut_to_a_fraction_of_a_second_says_truncated_and_too_short(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(str(full), np.full(34500, 1000, np.int16), 16000, subtype="PCM_16")   # 69 kB of audio
    cut = tmp_path / "cut.wav"
    _cut(full, cut, 3000)
    check_clean_failure(analyze(cut), "cut.wav", "truncated", "2.16 s", "0.09 s", "at least 0.5 s")


def test_truncated_wav_is_analysed_as_far_as_it_goes_with_a_warning(audio_dir, small_call, tmp_path):
    from callassist.analyze import wav_truncation
    full = audio_dir / "call.wav"
    assert wav_truncation(full) is None            # control: a complete file is not flagged
    cut = tmp_path / "cut.wav"
    _cut(full, cut, 44 + int(full.stat().st_size * 0.6) // 4 * 4)
    proc = analyze(cut, "--engine", "whisper")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "truncated" in line]
    assert len(warning) == 1 and warning[0].startswith("callassist analyze: warning: "), proc.stderr
    assert f"{small_call.duration:.2f} s" in warning[0]
    doc = json.loads(proc.stdout)
    assert 0.5 * small_call.duration < doc["duration"] < 0.7 * small_call.duration
    assert doc["utterances"], "the audio that is there is transcribed"
