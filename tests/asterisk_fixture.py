"""A real Asterisk for the tests, started by the tests themselves.

The `asterisk` fixture (session scope) unpacks ../shared/asterisk's relocatable Asterisk 23.4.1
(PJSIP included) into a temporary directory once per test session, renders config/asterisk/
(the sample configuration a new user gets, unchanged but for free ports) into a temporary
config dir, starts Asterisk in the foreground, waits until it is fully booted and ARI answers,
and stops it with `core stop now` at the end of the session.

CALLASSIST_TEST_ARI_URL (+ _USER, _PASSWORD) points the ARI tests at an external Asterisk
instead (docs/asterisk.md); the SIP tests need the bundled one (they place calls on its SIP
ports).

Missing pieces (the tarball, its runtime libraries, SIPp, the TTS voice) skip the tests with
the reason on a developer's machine; in CI (CI=true, or CALLASSIST_REQUIRE_ASTERISK=1) they
are failures, so CI can never pass without having placed real calls.

The rest of this module is what the real-Asterisk tests share: their own ARI connection
(`Network`: places Local calls, lists channels and bridges), the app under test on an event
bus (`running_app`), and audio comparison (`best_match`).
"""
from __future__ import annotations

import asyncio
import base64
import configparser
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import numpy as np
import pytest

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_SOURCE = PROJECT_ROOT / "config" / "asterisk"
SHARED_ASTERISK = Path(os.environ.get("CALLASSIST_SHARED_ASTERISK")
                       or PROJECT_ROOT.parent / "shared" / "asterisk")
TREE_NAME = "asterisk-23.4.1-debian12-x86_64"
TARBALL = SHARED_ASTERISK / f"{TREE_NAME}.tar.xz"
APP = "callassist"                  # the sample dialplan's Stasis(callassist)
BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# The control socket STATE_DIR/run/asterisk.ctl must fit a Unix socket address (107 bytes).
MAX_STATE_DIR = 80
# Modules whose shared libraries must resolve; res_srtp needs Debian's libsrtp2-1, which
# is usually the one missing.
CHECKED_MODULES = ("res_srtp.so", "chan_pjsip.so", "res_pjsip.so", "res_ari.so", "app_queue.so",
                   "res_http_websocket.so", "chan_rtp.so")
RUNTIME_PACKAGES = ("libssl3 libsqlite3-0 libjansson4 libedit2 libxml2 libxslt1.1 libuuid1 "
                    "libsrtp2-1 libcurl4")
AGENTS = ("1001", "1002")


def asterisk_required() -> bool:
    """CI (and whoever asks) must run the real-Asterisk tests, not skip them."""
    return (os.environ.get("CI", "").lower() == "true"
            or os.environ.get("CALLASSIST_REQUIRE_ASTERISK", "") == "1")


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail where the real-Asterisk tests are required."""
    if asterisk_required():
        pytest.fail(f"{reason} [a failure here: CI=true or CALLASSIST_REQUIRE_ASTERISK=1 "
                    "require the real-Asterisk tests to run]", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class AriAccess:
    url: str
    user: str
    password: str

    @property
    def basic_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class SipAccess:
    """Where the bundled Asterisk's SIP lives: its transport, and the address each agent
    phone (pjsip.conf's static AOR contact) must listen on."""
    host: str
    port: int
    agent_ports: dict[str, int]


@dataclass
class RealAsterisk:
    ari: AriAccess
    sip: SipAccess | None = None          # None: an external Asterisk (no SIP tests)


# ---------------------------------------------------------------- free ports

def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_block(size: int, low: int = 30000, high: int = 39000) -> int:
    """The first port of `size` consecutive free UDP ports (SIPp's media: RTP at the base,
    video at base+2), starting at a random place so parallel sessions rarely meet."""
    import random

    for _ in range(200):
        base = random.randrange(low, high, 4)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {size} consecutive free UDP ports in {low}-{high}")


# ---------------------------------------------------------------- the bundled build

def unpack_asterisk(into: Path) -> Path:
    """The unpacked tree (run-asterisk.sh at its top), or skip/fail saying what is missing."""
    if not TARBALL.is_file():
        unavailable(f"the real-Asterisk tests need {TARBALL} (the shared prebuilt Asterisk; "
                    "../shared beside the checkout), or CALLASSIST_TEST_ARI_URL for an external one")
    if shutil.which("tar") is None or shutil.which("xz") is None:
        unavailable("unpacking the shared Asterisk needs tar and xz (apt-get install xz-utils)")
    subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(into)], check=True)
    root = into / TREE_NAME
    missing = missing_libraries(root)
    if missing:
        unavailable(f"the shared Asterisk lacks runtime libraries {', '.join(missing)}: "
                    f"apt-get install -y --no-install-recommends {RUNTIME_PACKAGES}")
    return root


def missing_libraries(root: Path) -> list[str]:
    if shutil.which("ldd") is None:
        return []
    env = dict(os.environ, LD_LIBRARY_PATH=str(root / "lib"))
    missing: set[str] = set()
    binaries = [root / "sbin" / "asterisk"] + [root / "lib" / "asterisk" / "modules" / m
                                              for m in CHECKED_MODULES]
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], check=False, env=env, capture_output=True, text=True).stdout
        missing |= {line.split()[0] for line in out.splitlines() if "not found" in line}
    return sorted(missing)


def _replace_once(text: str, old: str, new: str, name: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"config/asterisk/{name}: expected `{old}` exactly once "
                           "(the tests move it to a free port); update tests/asterisk_fixture.py")
    return text.replace(old, new)


def render_config(into: Path, http_port: int, sip_port: int, agent_ports: dict[str, int]) -> None:
    """config/asterisk/ as it is, on free ports instead of 8088 / 5060 / 5080 / 5082."""
    into.mkdir(parents=True, exist_ok=True)
    for source in sorted(CONFIG_SOURCE.glob("*.conf")):
        text = source.read_text()
        if source.name == "http.conf":
            text = _replace_once(text, "bindport = 8088", f"bindport = {http_port}", source.name)
        elif source.name == "pjsip.conf":
            text = _replace_once(text, "bind = 127.0.0.1:5060", f"bind = 127.0.0.1:{sip_port}",
                                 source.name)
            for agent, default in zip(AGENTS, (5080, 5082)):
                text = _replace_once(text, f"sip:{agent}@127.0.0.1:{default}",
                                     f"sip:{agent}@127.0.0.1:{agent_ports[agent]}", source.name)
        (into / source.name).write_text(text)


def ari_user(config_dir: Path) -> tuple[str, str]:
    """The user (a section with type = user) and password of ari.conf."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";",),
                                       strict=False, interpolation=None)
    parser.read(config_dir / "ari.conf")
    for section in parser.sections():
        if parser.get(section, "type", fallback="") == "user":
            return section, parser.get(section, "password", fallback="")
    raise RuntimeError(f"{config_dir / 'ari.conf'} defines no ARI user (a section with type = user)")


class BundledAsterisk:
    """One Asterisk process on the shared build, in the foreground (we own the process)."""

    def __init__(self, root: Path, config_dir: Path, state_dir: Path, systemname: str = "") -> None:
        self.root = root
        self.script = root / "run-asterisk.sh"
        self.config_dir = config_dir
        self.state_dir = state_dir
        # Asterisk prefixes its uniqueids with it: two Asterisks behind one callassist
        # cluster must not hand out the same channel ids
        self.systemname = systemname
        self.process: subprocess.Popen | None = None

    def _command(self, *args: str) -> list[str]:
        if self.systemname:
            # run-asterisk.sh writes an asterisk.conf without systemname on every start:
            # write ours (the same directories plus systemname) and start the binary itself
            conf = self._write_asterisk_conf()
            return [str(self.root / "sbin" / "asterisk"), "-C", str(conf), *args]
        return [str(self.script), str(self.config_dir), str(self.state_dir), "--", *args]

    def _write_asterisk_conf(self) -> Path:
        state, root = self.state_dir, self.root
        for sub in ("run", "log", "spool", "db", "cache"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        conf = state / "asterisk.conf"
        conf.write_text(
            "[directories]\n"
            f"astetcdir => {self.config_dir}\nastmoddir => {root}/lib/asterisk/modules\n"
            f"astvarlibdir => {root}/var/lib/asterisk\nastdbdir => {state}/db\n"
            f"astkeydir => {root}/var/lib/asterisk\nastdatadir => {root}/var/lib/asterisk\n"
            f"astagidir => {root}/var/lib/asterisk/agi-bin\nastspooldir => {state}/spool\n"
            f"astrundir => {state}/run\nastlogdir => {state}/log\nastsbindir => {root}/sbin\n"
            f"astcachedir => {state}/cache\n\n"
            f"[options]\ndocumentation_language = en_US\nsystemname = {self.systemname}\n")
        return conf

    def start(self) -> None:
        output = open(self.state_dir.parent / "asterisk.out", "wb")   # noqa: SIM115 (kept open)
        self.process = subprocess.Popen(self._command("-f"), stdin=subprocess.DEVNULL,
                                        stdout=output, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, LD_LIBRARY_PATH=str(self.root / "lib"))
                                        if self.systemname else None)
        output.close()

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """One CLI command over the control socket. Not through run-asterisk.sh: that rewrites
        STATE_DIR/asterisk.conf on every call, racing the start-up's own rewrite."""
        conf = self.state_dir / "asterisk.conf"
        if not conf.is_file():
            return "not started yet"
        done = subprocess.run([str(self.root / "sbin" / "asterisk"), "-C", str(conf), "-rx", command],
                              check=False, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, LD_LIBRARY_PATH=str(self.root / "lib")))
        return done.stdout + done.stderr

    def wait_ready(self, ari: AriAccess, timeout: float = BOOT_TIMEOUT) -> None:
        """Fully booted (all modules loaded: ARI answers earlier than that) and ARI answering."""
        deadline = time.monotonic() + timeout
        booted = False
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Asterisk exited with {self.process.returncode} at start-up:\n"
                                   + self.log_tail())
            if not booted:
                # blocks until every module is loaded; fails at once while the control
                # socket is not up yet
                booted = "fully booted" in self.cli("core waitfullybooted", timeout=BOOT_TIMEOUT).lower()
            elif self._ari_answers(ari):
                return
            time.sleep(0.1)
        raise RuntimeError(f"Asterisk did not answer ARI at {ari.url} within {timeout:.0f} s:\n"
                           + self.log_tail())

    @staticmethod
    def _ari_answers(ari: AriAccess) -> bool:
        request = urllib.request.Request(f"{ari.url}/ari/asterisk/info",
                                         headers={"Authorization": ari.basic_auth})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.cli("core stop now", timeout=STOP_TIMEOUT)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("Asterisk did not stop on `core stop now`; killing pid %d", self.process.pid)
            self.process.kill()
            self.process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in (self.state_dir.parent / "asterisk.out", self.state_dir / "log" / "messages.log"):
            if path.is_file():
                texts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace")
                                                         .splitlines()[-lines:]))
        return "\n".join(texts)


def _short_dir(base: Path, prefix: str) -> Path:
    """A fresh directory for STATE_DIR under `base`, or under /tmp if `base` is too long."""
    candidate = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if len(str(candidate / "state")) <= MAX_STATE_DIR:
        return candidate
    candidate.rmdir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def asterisk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAsterisk]:
    external = os.environ.get("CALLASSIST_TEST_ARI_URL", "").rstrip("/")
    if external:
        yield RealAsterisk(AriAccess(external, os.environ.get("CALLASSIST_TEST_ARI_USER", APP),
                                     os.environ.get("CALLASSIST_TEST_ARI_PASSWORD", "")))
        return
    server, real = start_asterisk(tmp_path_factory.mktemp("asterisk-build"), tmp_path_factory.getbasetemp())
    try:
        yield real
    finally:
        server.stop()


def start_asterisk(build_dir: Path, run_base: Path) -> tuple[BundledAsterisk, RealAsterisk]:
    """Unpack the shared build into `build_dir` and start it with config/asterisk/ on free
    ports (state under `run_base`); returns it ready for ARI. The caller stops it."""
    return launch_asterisk(unpack_asterisk(build_dir), run_base)


def launch_asterisk(root: Path, run_base: Path, *, systemname: str = "",
                    extra_dialplan: str = "") -> tuple[BundledAsterisk, RealAsterisk]:
    """One more Asterisk from an unpacked tree (`unpack_asterisk`), independent of any other:
    its own config dir (config/asterisk/ on its own free ports, plus `extra_dialplan` appended
    to extensions.conf), its own state, its own `systemname` (channel ids distinct from other
    instances'). Returns it ready for ARI; the caller stops it."""
    run_dir = _short_dir(run_base, "ast-")
    config_dir, state_dir = run_dir / "etc", run_dir / "state"
    http_port = free_port()
    sip_port = free_port(socket.SOCK_DGRAM)
    agent_ports = {agent: free_port(socket.SOCK_DGRAM) for agent in AGENTS}
    render_config(config_dir, http_port, sip_port, agent_ports)
    if extra_dialplan:
        with (config_dir / "extensions.conf").open("a") as dialplan:
            dialplan.write("\n" + extra_dialplan)
    user, password = ari_user(config_dir)
    ari = AriAccess(f"http://127.0.0.1:{http_port}", user, password)
    server = BundledAsterisk(root, config_dir, state_dir, systemname)
    state_dir.mkdir(parents=True)
    started = time.monotonic()
    server.start()
    try:
        server.wait_ready(ari)
    except BaseException:
        server.stop()
        raise
    log.info("Asterisk up in %.1f s: ARI %s, SIP 127.0.0.1:%d", time.monotonic() - started, ari.url, sip_port)
    return server, RealAsterisk(ari, SipAccess("127.0.0.1", sip_port, agent_ports))


# ---------------------------------------------------------------- the tests' own ARI connection

class Network:
    """The test's own ARI connection: places calls and inspects Asterisk, like the PBX's
    users and its admin would. Separate from the app's client on purpose."""

    TEST_CHANNELS = ("Local/s@callassist-test-customer", "Local/agent@callassist-test-agent")

    def __init__(self, session: aiohttp.ClientSession, ari: AriAccess) -> None:
        self.session = session
        self.ari = ari

    async def _call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                    json: Any = None, ok: tuple[int, ...] = (200, 204)) -> Any:
        async with self.session.request(method, f"{self.ari.url}/ari{path}", params=params,
                                        json=json) as resp:
            body = await resp.text()
            if resp.status not in ok:
                raise AssertionError(f"ARI {method} {path}: {resp.status} {body}")
            return await resp.json() if body and resp.content_type == "application/json" else None

    async def info(self) -> dict:
        return await self._call("GET", "/asterisk/info")

    async def originate(self, customer_audio: str, agent_audio: str) -> str:
        """A Local-channel customer call into the test dialplan; returns the customer
        channel's id (;1)."""
        import uuid

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

    async def variable(self, channel_id: str, name: str) -> str:
        reply = await self._call("GET", f"/channels/{channel_id}/variable", params={"variable": name})
        return reply["value"]

    async def hangup(self, channel_id: str) -> None:
        await self._call("DELETE", f"/channels/{channel_id}", ok=(204, 404))

    async def leftovers(self, call_channel_ids: set[str] = frozenset(),
                        name_prefixes: tuple[str, ...] = ()) -> list[str]:
        """Channels/bridges of these calls or of the app (ids `callassist-<kind>-<hex>`), and
        channels whose names start with one of `name_prefixes`."""
        from ari_app.models import OwnIds

        ours = OwnIds(APP)
        ids = set(call_channel_ids) | {i + "-2" for i in call_channel_ids}
        prefixes = self.TEST_CHANNELS + name_prefixes
        names = [f"channel {c['name']} ({c['id']})" for c in await self.channels()
                 if ours.is_ours(c["id"]) or c["id"] in ids or c["name"].startswith(prefixes)]
        names += [f"bridge {b['id']} {b.get('channels')}" for b in await self.bridges()
                  if ours.is_ours(b["id"])]
        return names


@contextlib.asynccontextmanager
async def network_for(ari: AriAccess) -> AsyncIterator[Network]:
    async with aiohttp.ClientSession(headers={"Authorization": ari.basic_auth},
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:
        net = Network(session, ari)
        try:
            info = await net.info()
        except (aiohttp.ClientError, AssertionError, TimeoutError) as exc:
            pytest.fail(f"Asterisk's ARI at {ari.url} does not answer: {exc}")
        log.info("Asterisk %s at %s", info["system"]["version"], ari.url)
        yield net


async def no_leftovers(network: Network, call_ids: set[str] = frozenset(),
                       name_prefixes: tuple[str, ...] = (), timeout: float = 3.0) -> list[str]:
    """What of these calls / of the app is still in Asterisk (waits a moment for hangups)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = await network.leftovers(call_ids, name_prefixes)
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------- the app under test

CALL_TIMEOUT = 90.0                 # seconds for a whole test call, Whisper on 2 shared cores included


@dataclass
class Running:
    app: Any
    bus: Any
    events: list = field(default_factory=list)
    collector: asyncio.Task | None = None

    def of(self, call_id: str, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.call_id == call_id]

    async def wait_for(self, call_id: str, kind: type, timeout: float = CALL_TIMEOUT,
                       where: Callable[[Any], bool] = lambda e: True) -> Any:
        async def poll() -> Any:
            while True:
                found = [e for e in self.of(call_id, kind) if where(e)]
                if found:
                    return found[0]
                await asyncio.sleep(0.05)
        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            kinds = [type(e).__name__ + (f"({e.problem})" if hasattr(e, "problem") else "")
                     for e in self.events if getattr(e, "call_id", None) == call_id]
            raise AssertionError(f"no {kind.__name__} for call {call_id} within {timeout:.0f} s; "
                                 f"saw {kinds}") from None

    async def first_call(self, timeout: float = 15.0) -> str:
        """The id of the first call the app saw start (SIP calls: we do not pick the id)."""
        from callassist.events import CallStarted

        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            started = [e for e in self.events if isinstance(e, CallStarted)]
            if started:
                return started[0].call_id
            await asyncio.sleep(0.05)
        raise AssertionError(f"no call reached the app within {timeout:.0f} s")


def app_config(ari: AriAccess, url: str | None = None) -> Any:
    from callassist.config import load_config

    return load_config(env={"CALLASSIST_ARI_URL": url or ari.url, "CALLASSIST_ARI_USERNAME": ari.user,
                            "CALLASSIST_ARI_PASSWORD": ari.password, "CALLASSIST_ARI_APP": APP,
                            "CALLASSIST_RECORDING_ENABLED": "true", "CALLASSIST_RECORDING_FORMAT": "wav",
                            "CALLASSIST_ARI_RECONNECT_INITIAL_DELAY": "0.2"})


@contextlib.asynccontextmanager
async def running_app(engine: Any, matcher: Any, recordings: Path, ari: AriAccess,
                      url: str | None = None, bus: Any = None) -> AsyncIterator[Running]:
    """The real AriApp feeding the real CallPipeline (with `engine`) on `bus` (a new one
    unless given, e.g. the web app's)."""
    from ari_app.app import AriApp
    from callassist.bus import EventBus
    from callassist.pipeline import CallPipeline

    bus = bus or EventBus()
    app = AriApp(app_config(ari, url), bus,
                 pipeline_factory=lambda call_id: CallPipeline(call_id, engine, matcher, bus.publish),
                 recordings_dir=recordings)
    run = Running(app, bus)
    subscription = bus.subscribe()

    async def collect() -> None:
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


# ---------------------------------------------------------------- comparing audio

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


def best_match(recorded: np.ndarray, reference: np.ndarray, block: float = 0.25,
               rate: int = 16000) -> float:
    """How well `reference` is found in `recorded`, block by block: Asterisk now and then
    inserts 20 ms of silence inside a stream (see shared/domain/asterisk.md), which breaks a
    whole-utterance correlation but not 250 ms blocks. The median over the reference's
    voiced blocks of each block's best match."""
    x, ref = recorded.astype(np.float64), reference.astype(np.float64)
    size = int(block * rate)
    blocks = [ref[i:i + size] for i in range(0, len(ref) - size + 1, size)]
    # voiced: relative to the loudest block, so a quiet voice is judged on its speech, not
    # on near-silent blocks that match anything a little
    levels = [float(np.sqrt(np.mean(b * b))) for b in blocks]
    voiced = [b for b, level in zip(blocks, levels) if level > 0.25 * max(levels, default=0.0)] or blocks
    return float(np.median([_peak_correlation(x, b) for b in voiced])) if voiced else 0.0
