"""The worker role end to end on a real redis-server: WorkerService hosts calls asked for by a
RemoteMediaHost over RPC, takes real RTP (tests/rtp_sender.py) into the real CallPipeline
(scripted engine), publishes the calls' events on the Redis bus, and hands its calls back
when it stops or dies (another worker takes them)."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from redis.asyncio import Redis

from ari_app.media import ResumeInfo
from ari_app.remote_media import RemoteMediaHost
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.config import Config, load_config
from callassist.events import CallEnded, CallEvent, CallFault, CallStarted, CardFired, TranscriptUpdate
from callassist.media_rpc import MediaUnavailable, RemoteError, RpcClient
from callassist.redis_bus import RedisEventBus
from callassist.registry import NoWorkerAvailable, WorkerRegistry
from callassist.worker import WorkerService
from prompts.matcher import Matcher
from prompts.playbook import load_playbook
from rtp_sender import RtpSender

RATE = 16000
SCRIPTS = {"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.3, 1.5)]}
HEARTBEAT_S = 0.2
TIMEOUT_S = 0.6


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(load_playbook())


def voiced(seconds: float) -> bytes:
    """A speech-like signal (harmonics, syllable-rate envelope) the silence gate lets through."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 0.7 * t)) / RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (tone * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) * 6000).astype("<i2").tobytes()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_config(redis_url: str, port_min: int, **env: str) -> Config:
    return load_config(env={"CALLASSIST_CLUSTER_ROLE": "worker", "CALLASSIST_CLUSTER_BUS_URL": redis_url,
                            "CALLASSIST_CLUSTER_HEARTBEAT_S": str(HEARTBEAT_S),
                            "CALLASSIST_CLUSTER_WORKER_TIMEOUT_S": str(TIMEOUT_S),
                            "CALLASSIST_RTP_PORT_MIN": str(port_min), "CALLASSIST_RTP_PORT_MAX": str(port_min + 49),
                            **env})


class BusEvents:
    """Every event on the Redis bus, as another node (the web, the store) sees it."""

    def __init__(self, redis_url: str) -> None:
        self.bus = RedisEventBus(redis_url, "observer")
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> BusEvents:
        subscription = self.bus.subscribe()
        await self.bus.start()
        await self.bus.ready()

        async def collect() -> None:
            async for event in subscription:
                self.events.append(event)
                self._changed.set()
        self._task = asyncio.create_task(collect())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.bus.close()

    def of(self, kind: type, call_id: str) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.call_id == call_id]

    async def wait_for(self, kind: type, call_id: str, where: Callable[[CallEvent], bool] = lambda e: True,
                       timeout: float = 15.0) -> CallEvent:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.of(kind, call_id) if where(e)]
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()


class Node:
    """A worker process's parts: its own bus onto Redis and its WorkerService."""

    def __init__(self, redis_url: str, node_id: str, port_min: int, matcher: Matcher, recordings: Path,
                 **env: str) -> None:
        config = worker_config(redis_url, port_min, **env)
        self.bus = RedisEventBus(redis_url, node_id)
        self.service = WorkerService(config, self.bus, ScriptedEngine(SCRIPTS, endpoint_delay=0.2), matcher,
                                     recordings, redis_url, node_id)

    async def start(self) -> Node:
        await self.bus.start()
        await self.service.start()
        return self

    async def stop(self) -> None:
        await self.service.stop()
        await self.bus.close()


@pytest.fixture
async def cluster(redis_url: str, matcher: Matcher, tmp_path: Path):
    """make_worker(node_id, port_min, **env), make_host(on_worker_lost) and the bus observer."""
    workers: list[Node] = []
    hosts: list[RemoteMediaHost] = []
    clients: list[Redis] = []
    observer = await BusEvents(redis_url).start()

    async def make_worker(node_id: str, port_min: int, **env: str) -> Node:
        node = await Node(redis_url, node_id, port_min, matcher, tmp_path / "recordings", **env).start()
        workers.append(node)
        return node

    async def make_host(on_lost: Callable[[list[str], str], Awaitable[None] | None] = lambda ids, w: None
                        ) -> RemoteMediaHost:
        redis = Redis.from_url(redis_url)
        clients.append(redis)
        host = RemoteMediaHost(redis_url, "controller", WorkerRegistry(redis, TIMEOUT_S), on_lost,
                               heartbeat_s=HEARTBEAT_S)
        await host.start()
        hosts.append(host)
        return host

    yield make_worker, make_host, observer
    for host in hosts:
        await host.close()
    for node in workers:
        await node.stop()
    for redis in clients:
        await redis.aclose()
    await observer.close()


async def send_leg(host: RemoteMediaHost, call_id: str, leg_id: str, seconds: float) -> None:
    """The customer leg as Asterisk's externalMedia sends it: a port from the host, RTP only
    from the sender's address (leg_source), bridged (leg_ready), real-time RTP."""
    rtp_host, port = await host.open_leg(call_id, "customer", leg_id)
    source = ("127.0.0.1", free_udp_port())
    await host.leg_source(call_id, leg_id, *source)
    await host.leg_ready(call_id, leg_id)
    await RtpSender(voiced(seconds), (rtp_host, port), local_addr=source).run()


async def test_worker_hosts_a_call_and_publishes_it_on_the_bus(cluster, tmp_path):
    make_worker, make_host, observer = cluster
    worker = await make_worker("w1", 47100)
    host = await make_host()
    registry = host.registry

    opened = await host.open_call("call-1", "13800000001", time.time())
    assert host.host_of("call-1") == "w1"
    assert opened.recording is not None and Path(opened.recording).parent == tmp_path / "recordings"
    started = await observer.wait_for(CallStarted, "call-1")
    assert started.caller == "13800000001" and started.recording == opened.recording
    assert (await registry.get("w1")).calls == 1          # told at once, not at the next heartbeat

    await send_leg(host, "call-1", "em-1", 3.0)
    final = await observer.wait_for(TranscriptUpdate, "call-1", lambda e: e.final)
    assert final.text.replace(" ", "") == "我要去工信部投诉你们" and final.speaker == "customer"
    card = await observer.wait_for(CardFired, "call-1")
    assert card.card.category == "regulator_complaint"
    assert not observer.of(CallEnded, "call-1")           # control for the end below

    await host.end_call("call-1", 3.2)
    ended = await observer.wait_for(CallEnded, "call-1")
    assert ended.duration == pytest.approx(3.2) and ended.recording == opened.recording
    audio, rate = sf.read(ended.recording, dtype="int16")
    assert rate == RATE and len(audio) >= 2.5 * RATE and np.abs(audio[:, 0]).max() > 1000
    assert host.host_of("call-1") == "" and worker.service.calls == 0
    assert (await registry.get("w1")).calls == 0


async def test_worker_refuses_calls_past_its_capacity(cluster, redis_url):
    make_worker, make_host, _ = cluster
    slow_beat = {"CALLASSIST_CLUSTER_HEARTBEAT_S": "30", "CALLASSIST_CLUSTER_WORKER_TIMEOUT_S": "90"}
    full = await make_worker("w-full", 47200, CALLASSIST_CLUSTER_WORKER_CAPACITY="1", **slow_beat)
    host = await make_host()
    await host.open_call("a", "", time.time())
    # the registry says it is full: no other worker, no room
    with pytest.raises(NoWorkerAvailable, match="识别节点均已满（w-full 1/1）"):
        await host.open_call("b", "", time.time())
    # a controller going by an older heartbeat still reaches it: the worker itself refuses
    redis = Redis.from_url(redis_url)
    client = RpcClient(redis, "other-controller")
    try:
        with pytest.raises(RemoteError, match="识别节点 w-full 已满（1/1）") as refused:
            await client.call("w-full", "open_call", {"call_id": "b", "caller": "", "started_at": time.time()})
        assert refused.value.kind == "WorkerFull"
        # ... and the controller then takes the next worker with room
        await WorkerRegistry(redis, 90).heartbeat(dataclasses.replace(full.service.info(), calls=0, capacity=5))
        await make_worker("w-spare", 47250, CALLASSIST_CLUSTER_WORKER_CAPACITY="2", **slow_beat)
        assert (await host.registry.choose()).node_id == "w-full"     # the stale view prefers it
        await host.open_call("b", "", time.time())
        assert host.host_of("b") == "w-spare" and full.service.calls == 1
    finally:
        await client.close()
        await redis.aclose()


async def test_stopping_worker_hands_its_calls_back(cluster):
    make_worker, make_host, observer = cluster
    lost: list[tuple[list[str], str]] = []
    worker = await make_worker("w1", 47300)
    host = await make_host(lambda ids, w: lost.append((sorted(ids), w)))
    await host.open_call("ends", "", time.time())
    await host.open_call("stays", "", time.time())
    await host.end_call("ends", 1.0)
    await observer.wait_for(CallEnded, "ends")                # control: an end asked for is announced
    assert await host.check_workers() == {} and not lost       # control: alive, nothing to move

    await worker.service.stop()
    assert not await host.registry.is_alive("w1")             # withdrawn at once
    async with asyncio.timeout(10):
        while not lost:
            await asyncio.sleep(0.02)
    assert lost == [(["stays"], "w1")]
    # everything the worker published is seen once a marker published after it is
    worker.bus.publish(CallFault("marker", "after the stop"))
    await observer.wait_for(CallFault, "marker")
    assert not observer.of(CallEnded, "stays"), "a call left to move must not be ended"


async def test_dead_worker_calls_move_to_a_live_one(cluster):
    make_worker, make_host, observer = cluster
    w1 = await make_worker("w1", 47400)
    w2 = await make_worker("w2", 47450)
    moved, probed = asyncio.Event(), asyncio.Event()
    reports: list[tuple[list[str], str, float]] = []
    killed_at = 0.0

    async def on_lost(call_ids: list[str], worker: str) -> None:
        """The controller's move (AriApp.move_call): open again elsewhere, resumed."""
        reports.append((sorted(call_ids), worker, time.monotonic() - killed_at))
        await probed.wait()
        await w1.service.stop()             # what the dead process leaves: its files as they were
        for call_id in call_ids:
            await host.open_call(call_id, "", started[call_id], ResumeInfo(100_000, started[call_id]))
        moved.set()

    host = await make_host(on_lost)
    started = {"a": time.time(), "b": time.time()}
    await host.open_call("a", "", started["a"])
    await host.open_call("b", "", started["b"])
    assert (host.host_of("a"), host.host_of("b")) == ("w1", "w2")   # tie: node id; then most room
    await send_leg(host, "a", "em-a1", 2.0)
    await observer.wait_for(TranscriptUpdate, "a", lambda e: e.final)
    assert await host.check_workers() == {} and not reports         # control: both alive

    killed_at = time.monotonic()
    w1.service.kill()
    with pytest.raises(MediaUnavailable):                 # the killed worker answers nothing more
        await host.rpc.call("w1", "open_call", {"call_id": "c", "caller": "", "started_at": 1.0}, timeout=0.5)
    probed.set()
    await asyncio.wait_for(moved.wait(), 15)
    print(f"\nworker lost reported {reports[0][2]:.2f} s after the kill "
          f"(worker_timeout_s {TIMEOUT_S} + heartbeat_s {HEARTBEAT_S})")
    assert [(ids, worker) for ids, worker, _ in reports] == [(["a"], "w1")]   # b, on w2, stays
    assert host.host_of("a") == "w2" and host.placements["a"].moves == 1 and host.host_of("b") == "w2"
    assert w2.service.calls == 2

    # the moved call goes on on w2: utterances numbered past the earlier ones, one recording
    await send_leg(host, "a", "em-a2", 2.0)
    after = await observer.wait_for(TranscriptUpdate, "a", lambda e: e.final and e.utterance >= 100_000)
    assert after.text.replace(" ", "") == "我要去工信部投诉你们"
    await host.end_call("a", time.time() - started["a"])
    ended = await observer.wait_for(CallEnded, "a")
    first = await observer.wait_for(CallStarted, "a")
    assert ended.recording == first.recording and len(observer.of(CallStarted, "a")) == 1
    assert await host.check_workers() == {} and len(reports) == 1   # nothing reported twice


async def test_a_call_nobody_taps_any_more_is_ended_by_its_worker(cluster):
    """Its controller died and the taps were swept: no RTP on any leg for orphan_after."""
    make_worker, make_host, observer = cluster
    worker = await make_worker("w1", 47500)
    worker.service.orphan_after = 1.0
    host = await make_host()
    await host.open_call("orphan", "", time.time())
    await host.open_call("heard", "", time.time())
    sender = asyncio.create_task(send_leg(host, "heard", "em-heard", 4.0))    # control: audio flows
    await send_leg(host, "orphan", "em-orphan", 0.3)
    ended = await observer.wait_for(CallEnded, "orphan")
    fault = await observer.wait_for(CallFault, "orphan")
    assert "无音频" in fault.problem and ended.duration > 1.0
    assert "heard" in worker.service.media.calls and not observer.of(CallEnded, "heard")
    await sender
    await host.end_call("heard", 4.0)
    await observer.wait_for(CallEnded, "heard")


async def test_live_calls_no_worker_hosts_are_closed_out_after_two_checks(cluster, redis_url, tmp_path):
    """The whole cluster stopped with calls up: the database says live, no worker has them."""
    from agent_ui.store import Store
    from callassist.recovery import UnhostedCalls
    make_worker, make_host, observer = cluster
    worker = await make_worker("w1", 47600)
    host = await make_host()
    now = time.time()
    store = Store(tmp_path / "callassist.db")
    for call_id, age in (("gone", 300), ("young", 5)):
        store.events.record_many([CallStarted(call_id, at=now - age)])
    await host.open_call("hosted", "", now - 300)              # on a live worker
    store.events.record_many([CallStarted("hosted", at=now - 300)])
    await worker.service._beat()
    redis = Redis.from_url(redis_url)
    try:
        housekeeping = UnhostedCalls(store, WorkerRegistry(redis, TIMEOUT_S), grace=60)
        assert await housekeeping.check() == 0                  # seen once: not yet
        assert await housekeeping.check() == 1                  # seen twice: closed out
        assert {c["call_id"] for c in store.calls.live_calls()} == {"hosted", "young"}   # controls
        gone = [e for _, e in store.events.events_since(0, call_ids=["gone"])]
        assert [e["type"] for e in gone] == ["CallStarted", "CallFault", "CallEnded"]
        assert gone[1]["problem"] == UnhostedCalls.PROBLEM
    finally:
        store.close()
        await redis.aclose()
        await host.end_call("hosted", 1.0)
