"""callassist against a REAL Asterisk (not the ARI test peer).

Set CALLASSIST_TEST_ARI_URL (+ CALLASSIST_TEST_ARI_USER, CALLASSIST_TEST_ARI_PASSWORD) to an
Asterisk on this host whose dialplan has the callassist-test-* contexts of
config/asterisk/extensions.conf (see docs/asterisk.md); otherwise every test here is skipped.

A call is made of Local channels (the `callassist-test-*` contexts): the test originates
`Local/s@callassist-test-customer/n` into `callassist-test-inbound`, whose ;1 half enters
Stasis(callassist) and, once the app continues it, Dial()s `Local/agent@callassist-test-agent/n`.
The other halves play synthesised Mandarin (callassist.testcalls) as the customer's and the
agent's voices. The real AriApp taps both legs (snoop + externalMedia RTP) and feeds the real
Whisper engine through the real CallPipeline and matcher.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf

ARI_URL = os.environ.get("CALLASSIST_TEST_ARI_URL", "").rstrip("/")
ARI_USER = os.environ.get("CALLASSIST_TEST_ARI_USER", "callassist")
ARI_PASSWORD = os.environ.get("CALLASSIST_TEST_ARI_PASSWORD", "")
# A directory Asterisk can read the test's audio from (default: a fresh temporary directory;
# Asterisk must run on this host either way).
AUDIO_DIR = os.environ.get("CALLASSIST_TEST_ASTERISK_AUDIO_DIR", "")
APP = "callassist"                  # the dialplan's Stasis(callassist)
TEST_CHANNELS = ("Local/s@callassist-test-customer", "Local/agent@callassist-test-agent")
SKIP_REASON = ("real-Asterisk integration tests skipped: set CALLASSIST_TEST_ARI_URL "
               "(e.g. http://127.0.0.1:8088), CALLASSIST_TEST_ARI_USER and CALLASSIST_TEST_ARI_PASSWORD "
               "to an Asterisk on this host with the callassist-test-* contexts of "
               "config/asterisk/extensions.conf loaded (docs/asterisk.md)")

if not ARI_URL:
    warnings.warn(SKIP_REASON, stacklevel=1)
pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.skipif(not ARI_URL, reason=SKIP_REASON)]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 90.0                 # seconds for a whole test call, Whisper on 2 shared cores included


# ---------------------------------------------------------------- the "phone network" side

class Network:
    """The test's own ARI connection: places calls and inspects Asterisk, like the PBX's
    users and its admin would. Separate from the app's client on purpose."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def _call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                    json: Any = None, ok: tuple[int, ...] = (200, 204)) -> Any:
        async with self.session.request(method, f"{ARI_URL}/ari{path}", params=params, json=json) as resp:
            body = await resp.text()
            if resp.status not in ok:
                raise AssertionError(f"ARI {method} {path}: {resp.status} {body}")
            return await resp.json() if body and resp.content_type == "application/json" else None

    async def info(self) -> dict:
        return await self._call("GET", "/asterisk/info")

    async def originate(self, customer_audio: str, agent_audio: str) -> str:
        """A customer call into the test dialplan; returns the customer channel's id (;1)."""
        channel_id = f"catest-{uuid.uuid4().hex}"
        await self._call("POST", "/channels", params={
            "endpoint": "Local/s@callassist-test-customer/n", "context": "callassist-test-inbound",
            "extension": "s", "priority": "1", "channelId": channel_id,
            "otherChannelId": channel_id + "-2", "callerId": "13800138000", "timeout": "10",
        }, json={"variables": {"__CUSTOMER_AUDIO": customer_audio, "__AGENT_AUDIO": agent_audio}})
        return channel_id

    async def channels(self) -> list[dict]:
        return await self._call("GET", "/channels")

    async def bridges(self) -> list[dict]:
        return await self._call("GET", "/bridges")

    async def hangup(self, channel_id: str) -> None:
        await self._call("DELETE", f"/channels/{channel_id}", ok=(204, 404))

    async def leftovers(self, call_channel_ids: set[str]) -> list[str]:
        """Channels/bridges of this call or of the app (ids `callassist-<kind>-<hex>`)."""
        from ari_app.models import OwnIds

        ours = OwnIds(APP)
        ids = call_channel_ids | {i + "-2" for i in call_channel_ids}
        names = [f"channel {c['name']} ({c['id']})" for c in await self.channels()
                 if ours.is_ours(c["id"]) or c["id"] in ids or c["name"].startswith(TEST_CHANNELS)]
        names += [f"bridge {b['id']} {b.get('channels')}" for b in await self.bridges() if ours.is_ours(b["id"])]
        return names


@pytest.fixture
async def network() -> AsyncIterator[Network]:
    token = base64.b64encode(f"{ARI_USER}:{ARI_PASSWORD}".encode()).decode()
    auth = {"Authorization": f"Basic {token}"}
    async with aiohttp.ClientSession(headers=auth, timeout=aiohttp.ClientTimeout(total=10)) as session:
        net = Network(session)
        try:
            info = await net.info()
        except (aiohttp.ClientError, AssertionError, asyncio.TimeoutError) as exc:
            pytest.fail(f"CALLASSIST_TEST_ARI_URL={ARI_URL} is set but Asterisk's ARI does not answer: {exc}")
        log.info("Asterisk %s at %s", info["system"]["version"], ARI_URL)
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
        pytest.skip(str(exc))
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

@dataclass
class Running:
    app: Any
    bus: Any
    events: list = field(default_factory=list)
    collector: asyncio.Task | None = None

    def of(self, call_id: str, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.call_id == call_id]

    async def wait_for(self, call_id: str, kind: type, timeout: float = CALL_TIMEOUT,
                       where=lambda e: True) -> Any:
        async def poll():
            while True:
                found = [e for e in self.of(call_id, kind) if where(e)]
                if found:
                    return found[0]
                await asyncio.sleep(0.05)
        try:
            return await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            kinds = [type(e).__name__ + (f"({e.problem})" if hasattr(e, "problem") else "")
                     for e in self.events if getattr(e, "call_id", None) == call_id]
            raise AssertionError(f"no {kind.__name__} for call {call_id} within {timeout:.0f} s; "
                                 f"saw {kinds}") from None


def app_config(url: str = ARI_URL):
    from callassist.config import load_config

    return load_config(env={"CALLASSIST_ARI_URL": url, "CALLASSIST_ARI_USERNAME": ARI_USER,
                            "CALLASSIST_ARI_PASSWORD": ARI_PASSWORD, "CALLASSIST_ARI_APP": APP,
                            "CALLASSIST_RECORDING_ENABLED": "true", "CALLASSIST_RECORDING_FORMAT": "wav",
                            "CALLASSIST_ARI_RECONNECT_INITIAL_DELAY": "0.2"})


@pytest.fixture(scope="module")
def matcher():
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    config = app_config()
    return Matcher.from_config(load_playbook(), config.matcher)


@contextlib.asynccontextmanager
async def running_app(engine, matcher, recordings: Path, url: str = ARI_URL) -> AsyncIterator[Running]:
    from ari_app.app import AriApp
    from callassist.bus import EventBus
    from callassist.pipeline import CallPipeline

    bus = EventBus()
    app = AriApp(app_config(url), bus,
                 pipeline_factory=lambda call_id: CallPipeline(call_id, engine, matcher, bus.publish),
                 recordings_dir=recordings)
    run = Running(app, bus)
    subscription = bus.subscribe()

    async def collect():
        async for event in subscription:
            run.events.append(event)
    run.collector = asyncio.create_task(collect())
    await app.start()
    try:
        await app.wait_ready(15)
        yield run
    finally:
        await app.stop()
        subscription.close()
        run.collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.collector


async def no_leftovers(network: Network, call_ids: set[str], timeout: float = 3.0) -> list[str]:
    """What of this call / of the app is still in Asterisk (waits a moment for hangups to finish)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = await network.leftovers(call_ids)
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.2)


def energy(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def _peak_correlation(x: np.ndarray, ref: np.ndarray) -> float:
    """Peak normalised cross-correlation of `ref` anywhere in `x` (1.0: identical)."""
    from scipy import signal

    if len(x) < len(ref) or not ref.any():
        return 0.0
    cc = signal.correlate(x, ref, mode="valid", method="fft")
    local = np.sqrt(signal.correlate(x * x, np.ones(len(ref)), mode="valid", method="fft").clip(1e-9))
    return float(np.max(cc / (local * np.linalg.norm(ref))))


def best_match(recorded: np.ndarray, reference: np.ndarray, block: float = 0.25) -> float:
    """How well `reference` is found in `recorded`, block by block: Asterisk now and then
    inserts 20 ms of silence inside a stream (see shared/domain/asterisk.md), which breaks a
    whole-utterance correlation but not 250 ms blocks. The median over the reference's
    voiced blocks of each block's best match."""
    x, ref = recorded.astype(np.float64), reference.astype(np.float64)
    size = int(block * 16000)
    blocks = [ref[i:i + size] for i in range(0, len(ref) - size + 1, size)]
    voiced = [b for b in blocks if np.sqrt(np.mean(b * b)) > 300] or blocks
    return float(np.median([_peak_correlation(x, b) for b in voiced])) if voiced else 0.0


# ---------------------------------------------------------------- tests

async def test_complaint_call_through_real_asterisk(network, whisper_engine, matcher, audio_dir, tmp_path):
    from callassist.events import AgentJoined, CallEnded, CallFault, CallStarted, CardFired, TranscriptUpdate

    audio = make_call_audio(audio_dir, "regulator", "我要去工信部投诉你们。", "您好，请问有什么可以帮您？")
    async with running_app(whisper_engine, matcher, tmp_path) as run:
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


async def test_words_spoken_just_before_hangup_still_count(network, whisper_engine, matcher, audio_dir, tmp_path):
    """The customer complains and hangs up 1.5 s later, while the utterance is still being
    recognised: the call's transcript and cards must still get it (finish, not drop)."""
    from callassist.events import CallEnded, CardFired, TranscriptUpdate

    audio = make_call_audio(audio_dir, "lastwords", "我要去工信部投诉你们。", "您好。", customer_tail=0.5)
    async with running_app(whisper_engine, matcher, tmp_path) as run:
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


async def test_dropped_events_websocket_is_survived(network, whisper_engine, matcher, audio_dir, tmp_path):
    """Cut every connection of the app to Asterisk right after the taps are up: the app
    reconnects, resynchronises, keeps the call, and the complaint spoken after the drop
    still gives its card; nothing is left behind."""
    from urllib.parse import urlsplit

    from callassist.events import AgentJoined, CallEnded, CardFired

    parts = urlsplit(ARI_URL)
    proxy = DroppingProxy(parts.hostname or "127.0.0.1", parts.port or 80)
    proxy_url = await proxy.start()
    # the complaint starts ~3.5 s after the answer: after the drop and the reconnect
    audio = make_call_audio(audio_dir, "dropped", "我要去工信部投诉你们。", "您好，请问有什么可以帮您？",
                            customer_lead=2.0)
    try:
        async with running_app(whisper_engine, matcher, tmp_path, url=proxy_url) as run:
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
