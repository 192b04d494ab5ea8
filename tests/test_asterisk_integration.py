"""callassist against a REAL Asterisk (not the ARI test peer).

The `asterisk` fixture (tests/asterisk_fixture.py) starts the shared Asterisk 23.4.1 with
config/asterisk/ once per session; CALLASSIST_TEST_ARI_URL (+ _USER, _PASSWORD) points these
tests at an external Asterisk instead, whose dialplan has the callassist-test-* contexts of
config/asterisk/extensions.conf (docs/asterisk.md). Without either they are skipped, except in
CI (CI=true or CALLASSIST_REQUIRE_ASTERISK=1), where that is a failure.

A call is made of Local channels (the `callassist-test-*` contexts): the test originates
`Local/s@callassist-test-customer/n` into `callassist-test-inbound`, whose ;1 half enters
Stasis(callassist) and, once the app continues it, Dial()s `Local/agent@callassist-test-agent/n`.
The other halves play synthesised Mandarin (callassist.testcalls) as the customer's and the
agent's voices. The real AriApp taps both legs (snoop + externalMedia RTP) and feeds the real
Whisper engine through the real CallPipeline and matcher. SIP phones: tests/test_sip_calls.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asterisk_fixture import (CONFIG_SOURCE, AriAccess, Network, RealAsterisk, ari_user, best_match,
                              energy, network_for, no_leftovers, running_app, unavailable)

# A directory Asterisk can read the test's audio from (default: a fresh temporary directory;
# Asterisk must run on this host either way).
AUDIO_DIR = os.environ.get("CALLASSIST_TEST_ASTERISK_AUDIO_DIR", "")
TEST_CHANNELS = Network.TEST_CHANNELS

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

log = logging.getLogger(__name__)


@pytest.fixture
def ari(asterisk: RealAsterisk) -> AriAccess:
    return asterisk.ari


@pytest.fixture
async def network(ari: AriAccess) -> AsyncIterator[Network]:
    async with network_for(ari) as net:
        yield net


# ---------------------------------------------------------------- audio the dialplan plays

@dataclass
class CallAudio:
    customer: str          # Asterisk file names without extension (Playback adds .sln16)
    agent: str
    customer_speech: np.ndarray       # int16 16 kHz, just the speech (for correlation)
    agent_speech: np.ndarray


def write_for_asterisk(directory: Path, name: str, pcm: np.ndarray) -> str:
    """Raw 16 kHz signed linear (.sln16), world-readable: Asterisk may run as another user."""
    path = directory / f"{name}.sln16"
    pcm.astype("<i2").tofile(path)
    path.chmod(0o644)
    return str(directory / name)


@pytest.fixture(scope="module")
def audio_dir() -> Iterator[Path]:
    base = AUDIO_DIR or None
    with tempfile.TemporaryDirectory(prefix="callassist-asterisk-", dir=base) as d:
        Path(d).chmod(0o755)
        yield Path(d)


def make_call_audio(directory: Path, tag: str, customer_text: str, agent_text: str,
                    customer_lead: float = 0.3, customer_tail: float = 60.0) -> CallAudio:
    """The customer stays on the line `customer_tail` seconds after speaking, then hangs up
    (the dialplan adds 1 s); tests usually hang up earlier, once they have what they wait for."""
    from callassist.testcalls import CallScript, Turn, build_call, find_tts_model, TtsUnavailableError

    try:
        find_tts_model()
    except TtsUnavailableError as exc:
        unavailable(str(exc))
    customer = build_call(CallScript(f"{tag}-customer", (Turn("customer", customer_text, pause=customer_lead),)),
                          tail=customer_tail)
    agent = build_call(CallScript(f"{tag}-agent", (Turn("agent", agent_text, pause=0.2),)))
    c_pcm, a_pcm = customer.channel("customer"), agent.channel("agent")
    (c_turn,), (a_turn,) = customer.turns, agent.turns
    return CallAudio(write_for_asterisk(directory, f"{tag}-customer", c_pcm),
                     write_for_asterisk(directory, f"{tag}-agent", a_pcm),
                     c_pcm[int(c_turn.start * 16000):int(c_turn.end * 16000)],
                     a_pcm[int(a_turn.start * 16000):int(a_turn.end * 16000)])


# ---------------------------------------------------------------- the app under test

@pytest.fixture(scope="module")
def matcher():
    from callassist.config import load_config
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    return Matcher.from_config(load_playbook(), load_config(env={}).matcher)


# ---------------------------------------------------------------- tests

def test_sample_config_is_complete_and_agrees_with_callassist_toml():
    """config/asterisk/ is a whole config dir a new user can start Asterisk with (the fixture
    does): Asterisk exits without modules.conf, Queue() needs queues.conf; no #include (a
    relative one silently leaves Asterisk without a dialplan when it does not resolve); its
    ARI user (the ari.conf section name) is callassist.toml's default [ari] username."""
    from callassist.config import load_config

    files = {path.name: path.read_text() for path in CONFIG_SOURCE.glob("*.conf")}
    assert {"modules.conf", "logger.conf", "http.conf", "ari.conf", "rtp.conf", "pjsip.conf",
            "extensions.conf", "queues.conf"} <= set(files)
    includes = [f"{name}: {line}" for name, text in files.items() for line in text.splitlines()
                if line.lstrip().startswith(("#include", "#tryinclude", "#exec"))]
    assert not includes, includes
    user, _ = ari_user(CONFIG_SOURCE)
    assert user == load_config(env={}).ari.username == "callassist"
    assert "Queue(complaints" in files["extensions.conf"] and "[complaints]" in files["queues.conf"]
    assert "Stasis(callassist)" in files["extensions.conf"]



async def test_complaint_call_through_real_asterisk(network, ari, whisper_engine, matcher, audio_dir, tmp_path):
    from callassist.events import AgentJoined, CallEnded, CallFault, CallStarted, CardFired, TranscriptUpdate

    audio = make_call_audio(audio_dir, "regulator", "我要去工信部投诉你们。", "您好，请问有什么可以帮您？")
    async with running_app(whisper_engine, matcher, tmp_path, ari) as run:
        call_id = await network.originate(audio.customer, audio.agent)

        started = await run.wait_for(call_id, CallStarted, timeout=10)
        assert started.caller == "13800138000"
        joined = await run.wait_for(call_id, AgentJoined, timeout=15)

        card = await run.wait_for(call_id, CardFired, where=lambda e: e.card.category == "regulator_complaint")
        assert card.card.speaker == "customer"
        # the agent's greeting is recognised on the agent leg (its own audio, its own recogniser)
        await run.wait_for(call_id, TranscriptUpdate, where=lambda e: e.final and e.speaker == "agent")
        await network.hangup(call_id)                # the customer hangs up
        ended = await run.wait_for(call_id, CallEnded, timeout=15)

        finals = {s: [e.text for e in run.of(call_id, TranscriptUpdate) if e.final and e.speaker == s]
                  for s in ("customer", "agent")}
        log.info("transcripts: %s", finals)
        # no card from the agent's greeting, no other customer category
        assert {e.card.category for e in run.of(call_id, CardFired)} == {"regulator_complaint"}
        faults = run.of(call_id, CallFault)
        assert not faults, faults

    # the stereo recording: customer left, agent right, each with its own voice
    assert ended.recording and Path(ended.recording).is_file()
    data, rate = sf.read(ended.recording, dtype="int16", always_2d=True)
    assert rate == 16000 and data.shape[1] == 2
    assert energy(data[:, 0]) > 100 and energy(data[:, 1]) > 100
    # each channel holds its own party's voice, not the other's (snoop spy=in per leg)
    assert best_match(data[:, 0], audio.customer_speech) > 0.9
    assert best_match(data[:, 1], audio.agent_speech) > 0.9
    assert best_match(data[:, 0], audio.agent_speech) < 0.4
    assert best_match(data[:, 1], audio.customer_speech) < 0.4
    assert abs(len(data) / rate - ended.duration) < 1.5, \
        f"recording {len(data) / rate:.1f} s for a call of {ended.duration:.1f} s"

    # Asterisk keeps nothing of the call or of ours
    left = await no_leftovers(network, {call_id})
    assert not left, left
    # the Dial()ed agent leg was named by its endpoint: the channel name minus its unique
    # suffix (-0000002a), for a Local channel also minus the half (;1)
    assert joined.endpoint == "Local/agent@callassist-test-agent"


async def test_words_spoken_just_before_hangup_still_count(network, ari, whisper_engine, matcher, audio_dir,
                                                          tmp_path):
    """The customer complains and hangs up 1.5 s later, while the utterance is still being
    recognised: the call's transcript and cards must still get it (finish, not drop)."""
    from callassist.events import CallEnded, CardFired, TranscriptUpdate

    audio = make_call_audio(audio_dir, "lastwords", "我要去工信部投诉你们。", "您好。", customer_tail=0.5)
    async with running_app(whisper_engine, matcher, tmp_path, ari) as run:
        call_id = await network.originate(audio.customer, audio.agent)
        ended = await run.wait_for(call_id, CallEnded, timeout=30)
        finals = [e.text for e in run.of(call_id, TranscriptUpdate) if e.final and e.speaker == "customer"]
        assert finals, "the customer's last utterance was dropped at hangup"
        cards = [e.card.category for e in run.of(call_id, CardFired)]
        assert "regulator_complaint" in cards
        # published before the call's end, so the archive and the screen see it
        assert run.events.index(ended) > max(i for i, e in enumerate(run.events) if isinstance(e, CardFired))
    left = await no_leftovers(network, {call_id})
    assert not left, left


async def test_calls_go_on_when_callassist_is_not_connected(network, audio_dir):
    """Stasis() to an app with no websocket fails at once and the dialplan goes on to the agent."""
    audio = make_call_audio(audio_dir, "untapped", "你好，我想查一下话费。", "您好。")
    call_id = await network.originate(audio.customer, audio.agent)
    try:
        async def agent_dialled():
            while not any(c["name"].startswith(TEST_CHANNELS[1]) for c in await network.channels()):
                await asyncio.sleep(0.1)
        await asyncio.wait_for(agent_dialled(), 10)
    finally:
        await network.hangup(call_id)
    left = await no_leftovers(network, {call_id})
    assert not left, left


class DroppingProxy:
    """A TCP proxy in front of Asterisk's HTTP port whose connections the test can cut,
    as a network failure or an Asterisk restart would (RST on every open connection)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.drops = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.writers -= {writer, up_writer}

    def drop_all(self) -> None:
        self.drops += 1
        for writer in list(self.writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.drop_all()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_dropped_events_websocket_is_survived(network, ari, whisper_engine, matcher, audio_dir, tmp_path):
    """Cut every connection of the app to Asterisk right after the taps are up: the app
    reconnects, resynchronises, keeps the call, and the complaint spoken after the drop
    still gives its card; nothing is left behind."""
    from urllib.parse import urlsplit

    from callassist.events import AgentJoined, CallEnded, CardFired

    parts = urlsplit(ari.url)
    proxy = DroppingProxy(parts.hostname or "127.0.0.1", parts.port or 80)
    proxy_url = await proxy.start()
    # the complaint starts ~3.5 s after the answer: after the drop and the reconnect
    audio = make_call_audio(audio_dir, "dropped", "我要去工信部投诉你们。", "您好，请问有什么可以帮您？",
                            customer_lead=2.0)
    try:
        async with running_app(whisper_engine, matcher, tmp_path, ari, url=proxy_url) as run:
            call_id = await network.originate(audio.customer, audio.agent)
            await run.wait_for(call_id, AgentJoined, timeout=15)
            await asyncio.sleep(0.3)                 # let the agent tap settle
            before = run.app.disconnects
            proxy.drop_all()

            async def reconnected():
                while run.app.disconnects == before or not run.app.ready:
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(reconnected(), 15)
            assert call_id in run.app.calls            # the call was kept across the drop

            card = await run.wait_for(call_id, CardFired, where=lambda e: e.card.category == "regulator_complaint")
            assert card.card.speaker == "customer"
            await network.hangup(call_id)
            ended = await run.wait_for(call_id, CallEnded, timeout=15)
            assert ended.recording and Path(ended.recording).is_file()
    finally:
        await proxy.close()
    left = await no_leftovers(network, {call_id})
    assert not left, left
