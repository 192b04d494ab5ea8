"""The worker role: hosts the media of calls for ARI controllers on other machines.

A LocalMediaHost (RTP ports, recording, recognition and matching per call) whose events go
to the cluster's bus, served over RPC on callassist:rpc:{node_id} (callassist.media_rpc), and
a heartbeat in the worker registry (callassist.registry) with its load every heartbeat_s and
right after each call it takes or ends, so that the next choice of a worker sees it.

Stopping hands the calls back: the worker advertises no room, finishes the requests in
flight (an end_call among them publishes its CallEnded), lets the other calls' media go
without CallEnded (recording left to be continued, as a dead worker's would), then leaves
the registry: each controller sees it gone and moves the calls to another worker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ari_app.media import LocalMediaHost, ResumeInfo
from callassist.config import Config
from callassist.events import CallEvent, CallFault, is_speaker
from callassist.media_rpc import Handler, RpcServer, WorkerFull
from callassist.registry import WorkerInfo, WorkerRegistry
from callassist.session import SessionPipeline

log = logging.getLogger(__name__)

STOP_DRAIN_S = 10.0          # requests in flight at stop get this long
ORPHAN_AFTER = 60.0          # s without RTP on every leg of a call: nobody taps it any more


class Publisher(Protocol):
    def publish(self, event: CallEvent) -> None: ...


class WorkerService:
    def __init__(self, config: Config, bus: Publisher, engine: Any, matcher: Any,
                 recordings_dir: str | Path | None, redis_url: str, node_id: str) -> None:
        """`bus`: where the calls' events go (callassist.redis_bus.RedisEventBus, or a
        ForwardingBus onto it); `engine`, `matcher`: shared by every call's CallPipeline."""
        from callassist.pipeline import CallPipeline

        self.config = config
        self.node_id = node_id
        self.capacity = config.cluster.worker_capacity
        self.heartbeat_s = config.cluster.heartbeat_s
        self.orphan_after = ORPHAN_AFTER
        self.bus = bus
        self.started_at = time.time()

        def pipeline(call_id: str) -> SessionPipeline:
            return CallPipeline(call_id, engine, matcher, self.media.publisher_for(call_id),
                                analytics=config.analytics)
        self.media = LocalMediaHost(config, bus.publish, pipeline, recordings_dir)
        self._redis = Redis.from_url(redis_url)
        self.registry = WorkerRegistry(self._redis, config.cluster.worker_timeout_s)
        self.server = RpcServer(self._redis, node_id, self._handlers())
        self._heartbeat: asyncio.Task | None = None
        self._orphans: asyncio.Task | None = None
        self._draining = False
        self._killed = False
        self._beat_failing = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve RPC, then appear in the registry (a controller may choose us at once)."""
        await self.server.start()
        await self._beat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"worker-heartbeat-{self.node_id}")
        self._orphans = asyncio.create_task(self._end_orphans(), name=f"worker-orphans-{self.node_id}")
        log.info("worker %s: taking up to %d calls, RTP on %s", self.node_id, self.capacity,
                 self.config.rtp.advertise_host)

    async def stop(self) -> None:
        """Hand the calls back (see the module's doc). After kill(): only frees what the
        worker holds (ports, files, connections), it does not reappear in the registry."""
        self._draining = True
        if not self._killed:
            await self._beat()                   # no room: no new call comes
        await self.server.stop(STOP_DRAIN_S)
        left = list(self.media.calls)
        await self.media.close()                 # the rest of the calls: let go, no CallEnded
        if left:
            log.info("worker %s: stopping; %d call(s) left to move: %s", self.node_id, len(left), ", ".join(left))
        for task in (self._heartbeat, self._orphans):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._heartbeat = self._orphans = None
        if not self._killed:
            try:
                await self.registry.withdraw(self.node_id)   # the controllers move them now, not after the timeout
            except (RedisError, OSError) as exc:
                log.warning("worker %s: not withdrawn from the registry (%s); it expires", self.node_id, exc)
        await self._redis.aclose()

    def kill(self) -> None:
        """Stop heartbeating and answering at once, leaving everything else as it is: what a
        kill -9 does to the cluster's view of this worker (for tests)."""
        self._killed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self.server.kill()

    @property
    def calls(self) -> int:
        return len(self.media.calls)

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.node_id, self.config.rtp.advertise_host, 0 if self._draining else self.capacity,
                          self.calls, self.started_at, tuple(self.media.calls))

    async def _end_orphans(self) -> None:
        """End a call nobody hears any more: no RTP on any of its legs for orphan_after
        seconds. Its controller died (a restarted one sweeps the taps it does not know) or
        it hung up without telling us; the call would otherwise stay live on every screen."""
        while True:
            await asyncio.sleep(min(5.0, self.orphan_after / 4))
            loop = asyncio.get_running_loop()
            for call_id, call in list(self.media.calls.items()):
                quiet = min((leg.stream.quiet_for for leg in call.legs.values()),
                            default=call.elapsed(loop.time()))
                if quiet < self.orphan_after:
                    continue
                log.warning("call %s: no audio for %.0f s on this worker; ending it", call_id, quiet)
                self.bus.publish(CallFault(call_id, f"{quiet:.0f} 秒无音频（控制节点失联或已挂机），识别节点已结束此通话"))
                await self.media.end_call(call_id, duration=round(call.elapsed(loop.time()), 3))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._beat()

    async def _beat(self) -> None:
        try:
            await self.registry.heartbeat(self.info())
        except (RedisError, OSError) as exc:
            if not self._beat_failing:     # once per outage: controllers will move our calls
                log.error("worker %s: heartbeat failed (%s); the controllers will think us dead", self.node_id, exc)
            self._beat_failing = True
            return
        if self._beat_failing:
            log.info("worker %s: heartbeating again", self.node_id)
        self._beat_failing = False

    # -- RPC -----------------------------------------------------------------------------------
    def _handlers(self) -> dict[str, Handler]:
        return {"open_call": self._open_call, "open_leg": self._open_leg, "leg_source": self._leg_source,
                "leg_ready": self._leg_ready, "close_leg": self._close_leg, "agent_joined": self._agent_joined,
                "end_call": self._end_call, "release_call": self._release_call}

    async def _open_call(self, call_id: str, caller: str, started_at: float,
                         resume: dict[str, Any] | None = None) -> dict[str, Any]:
        if call_id not in self.media.calls and (self._draining or self.calls >= self.capacity):
            raise WorkerFull(f"识别节点 {self.node_id} 已满（{self.calls}/{self.capacity}）"
                             if not self._draining else f"识别节点 {self.node_id} 正在停止")
        opened = await self.media.open_call(call_id, caller, float(started_at),
                                            ResumeInfo.from_dict(resume) if resume is not None else None)
        await self._beat()       # the next choice sees this call
        return opened.to_dict()

    async def _open_leg(self, call_id: str, speaker: str, leg_id: str) -> list[Any]:
        if not is_speaker(speaker):
            raise ValueError(f"not a speaker: {speaker!r}")
        host, port = await self.media.open_leg(call_id, speaker, leg_id)
        return [host, port]

    async def _leg_source(self, call_id: str, leg_id: str, host: str, port: int | None) -> None:
        await self.media.leg_source(call_id, leg_id, host, port)

    async def _leg_ready(self, call_id: str, leg_id: str) -> None:
        await self.media.leg_ready(call_id, leg_id)

    async def _close_leg(self, call_id: str, leg_id: str) -> None:
        await self.media.close_leg(call_id, leg_id)

    async def _agent_joined(self, call_id: str, endpoint: str) -> None:
        await self.media.agent_joined(call_id, endpoint)

    async def _end_call(self, call_id: str, duration: float) -> None:
        await self.media.end_call(call_id, float(duration))
        await self._beat()

    async def _release_call(self, call_id: str) -> None:
        """The call moved to another worker while we were alive: let it go (no CallEnded)."""
        await self.media.release_call(call_id)
        await self._beat()
