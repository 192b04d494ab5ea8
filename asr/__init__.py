"""Speech recognition: one SpeechEngine interface, two real engines.

    engine = create_engine(config)              # [asr] engine / vosk_model / whisper_model
    stream = engine.open_stream(8000)
    events = await stream.feed(pcm)             # InterimTranscript / FinalTranscript / EndOfSpeech

The engine modules (vosk, faster-whisper) are imported only when an engine is created,
so `import asr` is cheap.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from asr.engine import ModelNotFoundError, RecognizerStream, SpeechEngine
from asr.events import EndOfSpeech, FinalTranscript, InterimTranscript, SpeechEvent, Word
from asr.models import ENV_VARS, ModelKind, find_model, find_test_vosk_model, vosk_model_problems

if TYPE_CHECKING:
    from asr.vosk_engine import VoskEngine, VoskStream
    from asr.whisper_engine import WhisperEngine, WhisperStream

__all__ = [
    "EndOfSpeech", "FinalTranscript", "InterimTranscript", "ModelNotFoundError", "RecognizerStream",
    "SpeechEngine", "SpeechEvent", "VoskEngine", "VoskStream", "WhisperEngine", "WhisperStream", "Word",
    "choose_engine", "create_engine", "find_model", "find_test_vosk_model",
]

log = logging.getLogger("asr")

ENGINE_FALLBACK_NOTE = ("no Vosk Chinese model found; live calls use Whisper ([asr] engine = \"auto\"; "
                        "`callassist models install` adds the Vosk model, engine = \"vosk\" requires it)")

_LAZY = {"VoskEngine": "asr.vosk_engine", "VoskStream": "asr.vosk_engine",
         "WhisperEngine": "asr.whisper_engine", "WhisperStream": "asr.whisper_engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")


def create_engine(config: Any, name: str | None = None, model: str | Path | None = None) -> SpeechEngine:
    """The engine named `name` (default: [asr] engine; "auto" is decided by choose_engine), loading `model` (a directory;
    default: found by asr.models.find_model from the configuration).

    `config` is a callassist Config or its AsrConfig section. Raises ModelNotFoundError
    (message says how to install) when no model is found. With [asr] biasing, the Whisper
    engine gets the playbook's key terms as hotwords (asr.biasing).
    """
    asr_config = getattr(config, "asr", config)
    name = name or asr_config.engine
    if name == "auto":
        name, why = choose_engine(asr_config, model)
        if why:
            log.warning(why)
    threads = asr_config.decode_threads
    given_by = "--model" if model else ""   # name the user's own choice in errors
    if name == "vosk":
        from asr.vosk_engine import VoskEngine
        return VoskEngine(find_model("vosk", str(model or asr_config.vosk_model), configured_by=given_by),
                          decode_threads=threads)
    if name == "whisper":
        from asr.whisper_engine import WhisperEngine
        terms: list[str] = []
        if asr_config.biasing:
            from asr.biasing import playbook_terms
            from prompts.playbook import load_playbook
            terms = playbook_terms(load_playbook())
        return WhisperEngine(find_model("whisper", str(model or asr_config.whisper_model), configured_by=given_by),
                             compute_type=asr_config.whisper_compute_type, decode_threads=threads,
                             biasing_terms=terms)
    raise ValueError(f"unknown speech engine {name!r} (expected 'vosk' or 'whisper')")


def choose_engine(config: Any, model: str | Path | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[ModelKind, str]:
    """What [asr] engine = "auto" means here: ("vosk", "") when a Vosk Chinese model is
    configured or found, else ("whisper", the reason to log). The one place the live
    engine falls back, for `serve`, `demo` and `config check` alike. A configured Vosk
    path is never fallen back from: create_engine then reports what is wrong with it."""
    asr_config = getattr(config, "asr", config)
    env = os.environ if env is None else env
    if model:
        return ("vosk", "") if not vosk_model_problems(Path(model)) else ("whisper", "")
    if asr_config.vosk_model or env.get(ENV_VARS["vosk"]):
        return "vosk", ""
    try:
        find_model("vosk", env=env)
    except ModelNotFoundError:
        return "whisper", ENGINE_FALLBACK_NOTE
    return "vosk", ""
