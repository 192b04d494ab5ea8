"""`callassist analyze` on transcripts (.json, .tsv, .txt, .vtt) instead of recordings.

No speech model: the transcripts are written here, and the one recording (for the audio ->
JSON -> JSON round trip) is decoded by the scripted speech engine through the real
CallPipeline, matcher and playbook. Each format round-trips (analyze, write the output,
analyze that: the same triggers); bad input ends in one line on stderr and exit code 2,
naming the file and line. Every "does not fire" sits next to a "does fire" in the same call.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.analyze import UNTIMED_SECONDS, analyze_file, analyze_transcript, to_text, to_vtt
from callassist import cli
from callassist.audio import write_wav
from callassist.transcripts import read_transcript
from prompts.matcher import Matcher
from prompts.playbook import load_playbook
from test_analyze import check_clean_failure as check_one_line_failure

RATE = 16000
COMPLAINT = "你们再不解决，我就去工信部投诉你们。"      # regulator_complaint (customer only)
NEUTRAL = "您先别着急，我马上为您核实。"
FORBIDDEN = "你去告吧，爱找谁找谁。"                    # agent_forbidden_phrase (agent only)
MEDIA = "我要找记者曝光你们"                            # media_exposure (customer only)


def callassist_command() -> list[str]:
    script = shutil.which("callassist")
    return [script] if script else [sys.executable, "-m", "callassist"]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """As a user runs it: a real subprocess."""
    return subprocess.run([*callassist_command(), "analyze", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def analyze(*args: str | Path) -> subprocess.CompletedProcess:
    """The same command in this process (no model loads for a transcript, so the only cost
    of a subprocess would be its imports)."""
    argv = ["analyze", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def analyze_json(path: Path, *args: str) -> dict:
    proc = analyze(path, "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


def categories(doc: dict) -> list[tuple[str, str]]:
    return [(t["category"], t["speaker"]) for t in doc["triggers"]]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(load_playbook())


TIMED_TSV = ("speaker\tstart\tend\ttext\n"
             f"客户\t0.5\t3.2\t{COMPLAINT}\n"
             f"坐席\t3.6\t6.0\t{NEUTRAL}\n"
             f"c\t6.4\t9.0\t{MEDIA}\n"
             f"A\t9.5\t11.25\t{FORBIDDEN}\n")
TIMED_EXPECTED = [("regulator_complaint", "customer"), ("media_exposure", "customer"),
                  ("agent_forbidden_phrase", "agent")]


# --- round trips ------------------------------------------------------------------------

def test_recording_to_json_and_back_gives_the_same_triggers(tmp_path, matcher):
    """analyze of audio (real CallPipeline, scripted recogniser with partial results), its
    JSON written out, analyze of that JSON: the very same triggers."""
    t = np.arange(int(3.0 * RATE)) / RATE
    voiced = (np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) * 6000).astype(np.int16)
    quiet = np.zeros(int(3.5 * RATE), np.int16)
    wav = tmp_path / "call.wav"
    write_wav(wav, [np.concatenate([voiced, quiet]), np.concatenate([quiet, voiced])])
    engine = ScriptedEngine({"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.2, 2.8)],
                             "agent": [ScriptedUtterance("你 去 告 吧 爱 找 谁 找 谁", 0.2, 2.8)]})
    from_audio = analyze_file(wav, engine, matcher)
    assert categories(from_audio.to_json()) == [("regulator_complaint", "customer"),
                                                ("agent_forbidden_phrase", "agent")]

    saved = write(tmp_path / "call.json", json.dumps(from_audio.to_json(), ensure_ascii=False))
    again = analyze_json(saved)
    assert again["utterances"] == from_audio.utterances and again["duration"] == from_audio.to_json()["duration"]
    assert same_cards(again["triggers"], from_audio.triggers)

    vtt = write(tmp_path / "call.vtt", to_vtt(from_audio))
    assert same_cards(analyze_json(vtt)["triggers"], from_audio.triggers)


def same_cards(got: list[dict], want: list[dict]) -> bool:
    """Equal but for phrase and score: a card that fired early on a partial result keeps the
    phrase the partial matched (你去告 from "你 去 告"), a transcript has only the final text
    (你去告吧). Whisper gives finals only: there the triggers are equal outright (test_analyze.py)."""
    def strip(triggers):
        return [{k: v for k, v in t.items() if k not in ("phrase", "score")} for t in triggers]
    assert strip(got) == strip(want)
    return True


def test_timed_tsv_round_trips_through_json_vtt_and_text(tmp_path):
    tsv = write(tmp_path / "call.tsv", TIMED_TSV)
    proc = run_cli(tsv)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    doc = json.loads(proc.stdout)
    assert analyze_json(tsv) == doc, "in-process runs are the same command"
    assert categories(doc) == TIMED_EXPECTED
    assert doc["duration"] == 11.25
    assert [(u["speaker"], u["start"], u["end"]) for u in doc["utterances"]] == [
        ("customer", 0.5, 3.2), ("agent", 3.6, 6.0), ("customer", 6.4, 9.0), ("agent", 9.5, 11.25)]
    assert [u["text"] for u in doc["utterances"]] == [COMPLAINT, NEUTRAL, MEDIA, FORBIDDEN]
    assert doc["triggers"][0]["start"] == 0.5 and doc["triggers"][0]["citations"]

    as_json = write(tmp_path / "out.json", json.dumps(doc, ensure_ascii=False, indent=2))
    assert analyze_json(as_json) == doc

    proc = analyze(tsv, "--format", "vtt")
    assert proc.returncode == 0, proc.stderr
    playbook = load_playbook()
    regulator = playbook.category("regulator_complaint").title        # 越级投诉（…）
    assert "<v 客户>" in proc.stdout and f"NOTE 触发 [严重] {regulator} @00:00:00.500 客户：" in proc.stdout
    notes = "\n".join(b for b in proc.stdout.split("\n\n") if b.startswith("NOTE 触发"))
    english = [c.id for c in playbook.categories] + ["info", "warning", "critical"]
    assert notes.count("NOTE 触发") == 3 and not [w for w in english if w in notes], notes
    again = analyze_json(write(tmp_path / "out.vtt", proc.stdout))
    assert again["triggers"] == doc["triggers"] and again["utterances"] == doc["utterances"]

    proc = analyze(tsv, "--format", "text")
    assert proc.returncode == 0, proc.stderr
    assert "[00:00:00.500] 客户：" + COMPLAINT in proc.stdout
    assert "触发 3 次" in proc.stdout
    assert f"[00:00:00.500] [严重] {regulator} 客户：{doc['triggers'][0]['text']}" in proc.stdout
    assert not [w for w in english if w in proc.stdout], proc.stdout


def test_untimed_tsv_keeps_times_null_and_says_so(tmp_path):
    tsv = write(tmp_path / "call.tsv", f"customer\t{COMPLAINT}\nagent\t{NEUTRAL}\ncustomer\t{MEDIA}\n")
    doc = analyze_json(tsv)
    assert categories(doc) == [("regulator_complaint", "customer"), ("media_exposure", "customer")]
    assert doc["duration"] is None
    assert all(u["start"] is None and u["end"] is None for u in doc["utterances"] + doc["triggers"])
    assert [u["text"] for u in doc["utterances"]] == [COMPLAINT, NEUTRAL, MEDIA], "file order kept"

    # Its JSON, read back, is untimed too and gives the same.
    assert analyze_json(write(tmp_path / "out.json", json.dumps(doc, ensure_ascii=False))) == doc

    # WebVTT needs times: the synthetic ones, announced in a NOTE; read back, untimed again.
    vtt = analyze(tsv, "--format", "vtt").stdout
    assert vtt.split("\n")[2].startswith("NOTE 时间为合成")
    step = f"00:00:{int(UNTIMED_SECONDS):02d}.000"
    assert f"00:00:00.000 --> {step}\n<v 客户>{COMPLAINT}" in vtt
    assert analyze_json(write(tmp_path / "out.vtt", vtt)) == doc

    text = analyze(tsv, "--format", "text").stdout
    assert f"[#1] 客户：{COMPLAINT}" in text and f"[#3] 客户：{MEDIA}" in text
    assert "[#3] [严重] 媒体曝光威胁 客户：" in text


def test_untimed_utterances_are_spaced_like_spoken_turns(matcher, tmp_path):
    """The playbook's cooldown works on the synthetic timeline: the same threat twice in a
    row is one card; the same lines with times far apart are two."""
    untimed = read_transcript(write(tmp_path / "twice.tsv", f"customer\t{COMPLAINT}\ncustomer\t{COMPLAINT}\n"))
    assert categories(analyze_transcript(untimed, matcher).to_json()) == [("regulator_complaint", "customer")]
    apart = read_transcript(write(tmp_path / "apart.tsv",
                                  f"customer\t0\t3\t{COMPLAINT}\ncustomer\t600\t603\t{COMPLAINT}\n"))
    assert categories(analyze_transcript(apart, matcher).to_json()) == [("regulator_complaint", "customer")] * 2


def test_json_input_triggers_are_recomputed(tmp_path):
    doc = {"duration": 20.0,
           "utterances": [{"speaker": "agent", "start": 1.0, "end": 2.0, "text": NEUTRAL},
                          {"speaker": "customer", "start": 3.0, "end": 5.5, "text": COMPLAINT}],
           "triggers": [{"category": "bogus_category", "speaker": "agent", "start": 1.0, "end": 2.0}]}
    out = analyze_json(write(tmp_path / "call.json", json.dumps(doc, ensure_ascii=False)))
    assert categories(out) == [("regulator_complaint", "customer")]
    assert out["triggers"][0]["start"] == 3.0
    assert out["duration"] == 20.0, "the file's duration is kept when it covers the utterances"


def test_unsorted_json_is_matched_in_time_order(tmp_path):
    doc = {"utterances": [{"speaker": "customer", "start": 9.0, "end": 10.0, "text": MEDIA},
                          {"speaker": "customer", "start": 1.0, "end": 2.0, "text": COMPLAINT}]}
    out = analyze_json(write(tmp_path / "call.json", json.dumps(doc, ensure_ascii=False)))
    assert [(u["start"], u["text"]) for u in out["utterances"]] == [(1.0, COMPLAINT), (9.0, MEDIA)]
    assert categories(out) == [("regulator_complaint", "customer"), ("media_exposure", "customer")]
    assert out["duration"] == 10.0


# --- speakers -----------------------------------------------------------------------------

@pytest.mark.parametrize("customer,agent", [("customer", "agent"), ("客户", "坐席"), ("c", "a"),
                                            ("Customer", "AGENT"), (" C ", " a ")])
def test_speaker_names(tmp_path, customer, agent):
    tsv = write(tmp_path / "call.tsv", f"{customer}\t{COMPLAINT}\n{agent}\t{FORBIDDEN}\n")
    assert categories(analyze_json(tsv)) == [("regulator_complaint", "customer"),
                                             ("agent_forbidden_phrase", "agent")]


def test_categories_keep_to_their_speaker(tmp_path):
    """工信部 said by the agent is no regulator complaint, 你去告吧 said by the customer no
    forbidden phrase; the same lines from the other side fire (the positive control)."""
    swapped = write(tmp_path / "swapped.tsv", f"agent\t{COMPLAINT}\ncustomer\t{FORBIDDEN}\n")
    fired = categories(analyze_json(swapped))
    assert ("regulator_complaint", "agent") not in fired
    assert ("agent_forbidden_phrase", "customer") not in fired
    assert all(speaker == ("agent" if category.startswith("agent_") else "customer")
               for category, speaker in fired)
    right = write(tmp_path / "right.tsv", f"customer\t{COMPLAINT}\nagent\t{FORBIDDEN}\n")
    assert categories(analyze_json(right)) == [("regulator_complaint", "customer"),
                                               ("agent_forbidden_phrase", "agent")]


# --- format details -----------------------------------------------------------------------

def test_tsv_header_blank_lines_crlf_bom_and_empty_text(tmp_path):
    path = tmp_path / "call.tsv"
    path.write_bytes(("\ufeffspeaker\ttext\r\n\r\n客户\t\r\n客户\t" + COMPLAINT + "\r\n\r\n坐席\t" + NEUTRAL + "\r\n")
                     .encode("utf-8"))
    doc = analyze_json(path)
    assert [(u["speaker"], u["text"]) for u in doc["utterances"]] == [("customer", COMPLAINT), ("agent", NEUTRAL)]
    assert categories(doc) == [("regulator_complaint", "customer")]


@pytest.mark.parametrize("content,kind", [
    (f"customer\t{COMPLAINT}\n", "tsv"),
    (f"WEBVTT\n\n00:01.000 --> 00:03.000\n<v customer>{COMPLAINT}\n", "vtt"),
    (json.dumps({"utterances": [{"speaker": "customer", "start": 1, "end": 3, "text": COMPLAINT}]},
                ensure_ascii=False), "json"),
    (json.dumps([{"speaker": "customer", "text": COMPLAINT}], ensure_ascii=False), "json"),
])
def test_txt_is_told_by_its_content(tmp_path, content, kind):
    path = write(tmp_path / "call.txt", content)
    assert read_transcript(path).kind == kind
    assert categories(analyze_json(path)) == [("regulator_complaint", "customer")]


def test_vtt_from_elsewhere(tmp_path):
    """WebVTT not written by us: hours left out, a voice class, closing tags, styling tags,
    entities, a cue split over lines, two voices in one cue, NOTE/STYLE blocks, a header text."""
    vtt = write(tmp_path / "other.vtt", (
        "WEBVTT - from another recogniser\n\n"
        "STYLE\n::cue { color: white }\n\n"
        "NOTE exported 2024-05-01\n\n"
        "intro\n00:01.000 --> 00:03.500 align:start\n"
        "<v.loud Customer><b>你们再不解决</b>，\n我就去工信部投诉你们。</v>\n\n"
        "01:00:04.000 --> 01:00:06.000\n<v agent>A&amp;B &lt;套餐&gt;</v>\n<v customer>还有</v>\n\n"))
    doc = analyze_json(vtt)
    assert [(u["speaker"], u["start"], u["end"], u["text"]) for u in doc["utterances"]] == [
        ("customer", 1.0, 3.5, COMPLAINT), ("agent", 3604.0, 3606.0, "A&B <套餐>"),
        ("customer", 3604.0, 3606.0, "还有")]
    assert categories(doc) == [("regulator_complaint", "customer")]


def test_vtt_text_that_looks_like_markup_round_trips(tmp_path, matcher):
    tsv = write(tmp_path / "call.tsv", "customer\t0\t2\t价格 <10元> & 工信部\nagent\t2\t4\ta --> b\n")
    result = analyze_transcript(read_transcript(tsv), matcher)
    back = analyze_transcript(read_transcript(write(tmp_path / "call.vtt", to_vtt(result))), matcher)
    assert back.utterances == result.utterances and back.triggers == result.triggers
    assert [t["category"] for t in back.triggers] == ["regulator_complaint"]


def test_engine_flags_do_not_load_a_model_for_a_transcript(tmp_path):
    tsv = write(tmp_path / "call.tsv", f"customer\t{COMPLAINT}\n")
    doc = analyze_json(tsv, "--engine", "whisper", "--model", str(tmp_path / "no-such-model"))
    assert categories(doc) == [("regulator_complaint", "customer")]


def test_output_file_and_text_helper(tmp_path, matcher):
    tsv = write(tmp_path / "call.tsv", TIMED_TSV)
    out = tmp_path / "annotated.vtt"
    proc = analyze(tsv, "--format", "vtt", "-o", out)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert out.read_text(encoding="utf-8") == to_vtt(analyze_transcript(read_transcript(tsv), matcher))
    assert "触发 3 次" in to_text(analyze_transcript(read_transcript(tsv), matcher))


# --- bad input ----------------------------------------------------------------------------

def check_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """The audio tests' check (one clean stderr line, nothing on stdout), and exit code 2."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    check_one_line_failure(proc, *needles)


BAD = [
    ("bad.json", '{"utterances": [\n  {"speaker": "customer", "text": "好"},\n  {"speaker": \n}\n', "line 4", "JSON"),
    ("trailing.json", '{"utterances": [{"speaker": "customer", "text": "好"},]}', "line 1", "not valid JSON"),
    ("speaker.json", '{"utterances": [\n  {"speaker": "customer", "text": "好"},\n'
                     '  {"speaker": "boss", "text": "好"}\n]}', "line 3", "unknown speaker 'boss'"),
    ("nospeaker.json", '{"utterances": [\n\n  {"text": "好"}\n]}', "line 3", '"speaker"'),
    ("shape.json", '{"segments": []}', "line 1", '"utterances" list'),
    ("none.json", '{"utterances": []}', "no utterances"),
    ("halftimed.json", '{"utterances": [{"speaker": "c", "start": 1.0, "text": "好"}]}', "line 1", "end time"),
    ("notab.tsv", f"customer\t{COMPLAINT}\n\ncustomer {COMPLAINT}\n", "line 3", "no tab"),
    ("speaker.tsv", "customer\t好\nboss\t好\n", "line 2", "unknown speaker 'boss'", "客户/坐席"),
    ("columns.tsv", "customer\t1.0\t好\n", "line 1", "3 columns"),
    ("times.tsv", "customer\tsoon\tlater\t好\n", "line 1", "not a number"),
    ("backwards.tsv", "customer\t5\t2\t好\n", "line 1", "before it starts"),
    ("mixed.tsv", "customer\t1\t2\t好\nagent\t好\n", "line 2", "line 1"),
    ("header-only.tsv", "speaker\ttext\n", "no utterances"),
    ("empty.tsv", "", "empty"),
    ("blank.json", "  \n\n", "empty"),
    ("empty.vtt", "", "empty"),
    ("nocues.vtt", "WEBVTT\n\nNOTE only a note\n", "no cues"),
    ("header.vtt", "00:01.000 --> 00:02.000\n<v customer>好\n", "line 1", "WEBVTT"),
    ("notiming.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\n<v customer>好\n\n<v agent>没有时间\n", "line 6", "timing"),
    ("badtiming.vtt", "WEBVTT\n\n1\n00:01 --> 00:02\n<v customer>好\n", "line 4", "bad cue timing"),
    ("novoice.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\n我要投诉\n", "line 4", "voice tag"),
    ("voice.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Bob>好\n", "line 4", "unknown speaker 'Bob'"),
]


@pytest.mark.parametrize("name,content,needles", [(b[0], b[1], b[2:]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_transcript(tmp_path, name, content, needles):
    path = write(tmp_path / name, content)
    check_clean_failure(analyze(path), name, *needles)


def test_bad_transcript_is_named_by_the_path_given(tmp_path):
    """A real subprocess: one line, exit code 2, starting with the file and line; the control:
    the same file with a valid line passes."""
    path = write(tmp_path / "call.tsv", "customer\t好\nboss\t好\n")
    check_clean_failure(run_cli(path), f"{path}: line 2: unknown speaker")
    write(path, "customer\t好\nagent\t好\n")
    assert run_cli(path).returncode == 0


def test_not_utf8(tmp_path):
    path = tmp_path / "call.tsv"
    path.write_bytes("customer\t好\n".encode() + "agent\t投诉\n".encode("gbk"))
    check_clean_failure(analyze(path), "call.tsv", "line 2", "not UTF-8")


def test_missing_transcript(tmp_path):
    check_clean_failure(analyze(tmp_path / "missing.vtt"), "missing.vtt", "no such file")


def test_audio_renamed_json(tmp_path):
    """A recording named .json is read as a transcript and refused as one, in one line."""
    path = tmp_path / "call.json"
    write_wav(tmp_path / "call.wav", [np.zeros(RATE, np.int16)])
    (tmp_path / "call.wav").rename(path)
    check_clean_failure(analyze(path), "call.json", "line 1")
