"""The controller's side of remote media: RPC over Redis lists, the worker registry, and
RemoteMediaHost noticing a worker that stopped heartbeating. Real redis-server throughout."""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ari_app.media import ResumeInfo, UnknownCall
from ari_app.remote_media import RemoteMediaHost
from callassist.media_rpc import MediaUnavailable, RemoteError, RpcClient, RpcServer, rpc_key
from callassist.registry import NO_WORKER, NoWorkerAvailable, WorkerInfo, WorkerRegistry, choose_worker


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def eventually(condition, timeout: float = 10.0, expect: bool = True) -> None:
    """Until condition() (a plain or awaitable result) is `expect`."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if bool(result) == expect:
                return
            await asyncio.sleep(0.02)


# -- RPC -----------------------------------------------------------------------------------------
class Calls:
    """Handlers for the RPC tests: echo, fail, and a call that waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.order: list[str] = []

    async def echo(self, call_id: str, value: object) -> object:
        self.order.append(f"echo {call_id}")
        return {"call_id": call_id, "value": value}

    async def fail(self, call_id: str) -> None:
        raise ValueError(f"call {call_id}: 没有这个通话")

    async def slow(self, call_id: str) -> str:
        self.order.append(f"slow {call_id} begins")
        await self.release.wait()
        self.order.append(f"slow {call_id} ends")
        return "slow done"

    def handlers(self) -> dict:
        return {"echo": self.echo, "fail": self.fail, "slow": self.slow}


@pytest.fixture
async def rpc(redis: Redis) -> AsyncIterator[tuple[RpcServer, RpcClient, Calls]]:
    calls = Calls()
    server = RpcServer(redis, "w1", calls.handlers())
    client = RpcClient(redis, "ctl1")
    await server.start()
    yield server, client, calls
    calls.release.set()
    await client.close()
    await server.stop()


async def test_rpc_round_trip_and_error_message(rpc):
    _, client, _ = rpc
    assert await client.call("w1", "echo", {"call_id": "c1", "value": [1, "二"]}) == \
        {"call_id": "c1", "value": [1, "二"]}
    with pytest.raises(RemoteError, match="call c2: 没有这个通话") as caught:
        await client.call("w1", "fail", {"call_id": "c2"})
    assert caught.value.kind == "ValueError"
    with pytest.raises(RemoteError, match="unknown method 'nope'"):
        await client.call("w1", "nope", {"call_id": "c3"})
    with pytest.raises(RemoteError, match="unexpected keyword"):      # bad arguments, not a crash
        await client.call("w1", "echo", {"call_id": "c4", "value": 1, "extra": 2})
    assert await client.call("w1", "echo", {"call_id": "c5", "value": None}) == {"call_id": "c5", "value": None}


async def test_rpc_times_out_when_no_worker_answers(rpc, redis):
    _, client, _ = rpc
    # control: the same client reaches a live worker
    assert (await client.call("w1", "echo", {"call_id": "c", "value": 1}))["value"] == 1
    with pytest.raises(MediaUnavailable, match="识别节点 ghost 无应答"):
        await client.call("ghost", "echo", {"call_id": "c", "value": 1}, timeout=0.3)
    # the request left for the dead worker does not stay in Redis forever
    assert 0 < await redis.ttl(rpc_key("ghost")) <= 60


async def test_rpc_slow_call_does_not_hold_up_another_call_but_keeps_its_own_order(rpc):
    _, client, calls = rpc
    slow = asyncio.create_task(client.call("w1", "slow", {"call_id": "A"}, timeout=10))
    await eventually(lambda: "slow A begins" in calls.order)
    # another call's request is served while A's is still running
    assert await client.call("w1", "echo", {"call_id": "B", "value": 2}, timeout=5) == {"call_id": "B", "value": 2}
    # a later request of call A waits for A's earlier one
    later = asyncio.create_task(client.call("w1", "echo", {"call_id": "A", "value": 3}, timeout=10))
    await asyncio.sleep(0.2)
    assert not later.done() and "echo A" not in calls.order
    calls.release.set()
    assert await slow == "slow done"
    assert await later == {"call_id": "A", "value": 3}
    assert calls.order == ["slow A begins", "echo B", "slow A ends", "echo A"]


async def test_rpc_server_stop_finishes_running_requests(redis):
    calls = Calls()
    server = RpcServer(redis, "w2", calls.handlers())
    client = RpcClient(redis, "ctl2")
    await server.start()
    try:
        pending = asyncio.create_task(client.call("w2", "slow", {"call_id": "A"}, timeout=10))
        await eventually(lambda: server.in_flight == 1)
        stopping = asyncio.create_task(server.stop(drain_timeout=10))
        await asyncio.sleep(0.1)
        calls.release.set()
        await stopping
        assert await pending == "slow done"
        # stopped: nothing answers now
        with pytest.raises(MediaUnavailable):
            await client.call("w2", "echo", {"call_id": "B", "value": 1}, timeout=0.3)
    finally:
        await client.close()


# -- registry --------------------------------------------------------------------------------------
def info(node_id: str, capacity: int = 4, calls: int = 0, started_at: float = 1.0) -> WorkerInfo:
    return WorkerInfo(node_id, f"10.0.0.{len(node_id)}", capacity, calls, started_at)


def test_choice_most_free_then_fewest_calls_then_node_id():
    assert choose_worker([info("a", 4, 3), info("b", 4, 1), info("c", 8, 6)]).node_id == "b"
    assert choose_worker([info("a", 4, 2), info("b", 6, 4)]).node_id == "a"      # same room, fewer calls
    assert choose_worker([info("b", 4, 1), info("a", 4, 1)]).node_id == "a"      # then node id
    assert choose_worker([info("a", 4, 0), info("b", 4, 3)], exclude={"a"}).node_id == "b"
    # calls this controller is opening count before the worker's heartbeat says so
    assert choose_worker([info("a", 4, 0), info("b", 4, 0)], opening={"a": 1}).node_id == "b"
    assert choose_worker([info("a", 4, 0), info("b", 4, 0)], opening={}).node_id == "a"      # control
    with pytest.raises(NoWorkerAvailable, match=f"^{NO_WORKER}：识别节点均已满（a 4/4, b 0/0）"):
        choose_worker([info("a", 4, 4), info("b", 0, 0)])
    with pytest.raises(NoWorkerAvailable, match=f"^{NO_WORKER}：没有在线的识别节点"):
        choose_worker([])


async def test_registry_chooses_only_live_workers_with_room(redis):
    registry = WorkerRegistry(redis, ttl=0.5)
    lasting = WorkerRegistry(redis, ttl=30)
    await lasting.heartbeat(info("full", capacity=2, calls=2))
    await lasting.heartbeat(info("busy", capacity=8, calls=6))
    await registry.heartbeat(info("dying", capacity=8, calls=0))     # most room, but stops heartbeating
    # control: while its heartbeat lasts the dying worker is alive and the best choice
    assert await registry.is_alive("dying")
    assert (await registry.choose()).node_id == "dying"
    await eventually(lambda: registry.is_alive("dying"), expect=False)
    assert [w.node_id for w in await registry.live_workers()] == ["busy", "full"]
    assert await registry.get("busy") == info("busy", capacity=8, calls=6)
    assert (await registry.choose()).node_id == "busy"               # not the full one
    with pytest.raises(NoWorkerAvailable, match="识别节点均已满（full 2/2）"):
        await registry.choose(exclude={"busy"})
    await lasting.withdraw("busy")
    await lasting.withdraw("full")
    with pytest.raises(NoWorkerAvailable, match="没有在线的识别节点"):
        await registry.choose()


# -- RemoteMediaHost against bare RPC workers --------------------------------------------------------
class BareWorker:
    """A worker's RPC surface and heartbeat without media: records what it is asked."""

    def __init__(self, redis: Redis, node_id: str, started_at: float = 1.0) -> None:
        self.node_id = node_id
        self.registry = WorkerRegistry(redis, ttl=30)
        self.info = WorkerInfo(node_id, "10.0.0.9", 4, 0, started_at)
        self.requests: list[tuple[str, str]] = []
        handlers = {name: self._handler(name) for name in (
            "open_call", "open_leg", "leg_source", "leg_ready", "close_leg", "agent_joined", "end_call",
            "release_call")}
        self.server = RpcServer(redis, node_id, handlers)

    def _handler(self, name: str):
        async def handle(call_id: str, **args: object) -> object:
            self.requests.append((name, call_id))
            if name == "open_call":
                return {"recording": f"/rec/{call_id}.wav", "heard_until": None, "recording_note": ""}
            if name == "open_leg":
                return [self.info.rtp_host, 40000 + len(self.requests)]
            if name == "agent_joined" and args["endpoint"] == "PJSIP/bad":
                raise UnknownCall(f"no media for call {call_id} on this host")
            return None
        return handle

    async def start(self) -> BareWorker:
        await self.server.start()
        await self.registry.heartbeat(self.info)
        return self


@pytest.fixture
async def bare(redis: Redis):
    """start(node_id): a BareWorker serving until the test ends."""
    workers: list[BareWorker] = []

    async def start(node_id: str) -> BareWorker:
        workers.append(await BareWorker(redis, node_id).start())
        return workers[-1]
    yield start
    for worker in workers:
        await worker.server.stop()


@pytest.fixture
async def remote(redis: Redis, redis_url: str):
    lost: list[tuple[list[str], str]] = []
    host = RemoteMediaHost(redis_url, "ctl", WorkerRegistry(redis, 30), lambda ids, w: lost.append((ids, w)),
                           heartbeat_s=0.05, rpc_timeout=1.0)
    await host.start()
    yield host, lost
    await host.close()


async def test_remote_host_sends_each_request_to_the_calls_worker(bare, remote):
    host, _ = remote
    w1, w2 = await bare("w1"), await bare("w2")
    opened = await host.open_call("c1", "100", 1.0)
    assert opened.recording == "/rec/c1.wav" and host.host_of("c1") == "w1"
    await w1.registry.heartbeat(dataclasses.replace(w1.info, calls=1))
    await host.open_call("c2", "200", 2.0)
    assert host.host_of("c2") == "w2"
    assert await host.open_leg("c2", "agent", "em-9") == ("10.0.0.9", 40002)
    await host.leg_source("c2", "em-9", "10.1.1.1", 5000)
    await host.leg_ready("c2", "em-9")
    await host.close_leg("c2", "em-9")
    with pytest.raises(UnknownCall, match="no media for call c2"):     # the worker's UnknownCall, as such
        await host.agent_joined("c2", "PJSIP/bad")
    await host.end_call("c2", 5.0)
    assert w2.requests == [("open_call", "c2"), ("open_leg", "c2"), ("leg_source", "c2"), ("leg_ready", "c2"),
                           ("close_leg", "c2"), ("agent_joined", "c2"), ("end_call", "c2")]
    assert w1.requests == [("open_call", "c1")]
    assert host.host_of("c2") == ""
    await host.close_leg("c2", "em-9")                 # closing what ended: nothing to do
    with pytest.raises(UnknownCall):
        await host.open_leg("c2", "agent", "em-10")


async def test_remote_host_reports_a_restarted_worker_and_moves_once(bare, remote):
    host, lost = remote
    w1, w2 = await bare("w1"), await bare("w2")
    await host.open_call("c1", "", 1.0)
    await w1.registry.heartbeat(dataclasses.replace(w1.info, calls=1))
    await host.open_call("c2", "", 1.0)
    assert (host.host_of("c1"), host.host_of("c2")) == ("w1", "w2")
    assert await host.check_workers() == {} and not lost              # control: both as they were
    # w1 comes back under the same id (a restart within the timeout): its calls are gone
    await w1.registry.heartbeat(dataclasses.replace(w1.info, started_at=2.0))
    await eventually(lambda: lost)
    assert lost == [(["c1"], "w1")]
    assert await host.check_workers() == {} and len(lost) == 1     # reported once, while not yet moved
    await host.open_call("c1", "", 1.0, ResumeInfo(100_000, 1.0))
    assert host.host_of("c1") == "w2" and host.placements["c1"].moves == 1
    assert ("release_call", "c1") not in w1.requests                 # it was lost: nothing to release
    # a move away from a live worker makes that worker let the call go
    await host.open_call("c2", "", 1.0, ResumeInfo(100_000, 1.0))
    assert host.host_of("c2") == "w1"
    await eventually(lambda: ("release_call", "c2") in w2.requests)
    assert await host.check_workers() == {} and lost == [(["c1"], "w1")]   # nothing reported twice


async def test_remote_host_skips_a_worker_that_does_not_answer(redis, bare, remote):
    host, _ = remote
    silent = WorkerRegistry(redis, ttl=30)
    await silent.heartbeat(WorkerInfo("a-silent", "10.0.0.1", 8, 0, 1.0))   # heartbeats, serves nothing
    with pytest.raises(NoWorkerAvailable, match="除 a-silent 外没有在线的识别节点"):
        await host.open_call("c1", "", 1.0)
    worker = await bare("w1")
    await host.open_call("c1", "", 1.0)
    assert host.host_of("c1") == "w1" and worker.requests == [("open_call", "c1")]
