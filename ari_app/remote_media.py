"""The media of the ARI controller's calls on media/ASR workers (ari_app.media.MediaHost over RPC).

Each new call goes to the live worker with the most free capacity (callassist.registry) and
stays there: every request about it goes to that worker (callassist.media_rpc). A watcher
checks every heartbeat_s that the workers hosting our calls still heartbeat (and were not
restarted under the same id: a new started_at); for a worker that stopped, it hands its
calls to `on_worker_lost(call_ids, worker)` once: the controller (AriApp.move_call) opens
each again with `resume` (this host places it on another worker, not the lost one) and
taps its legs again towards the new worker.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ari_app.media import MediaError, OpenedCall, ResumeInfo, UnknownCall
from callassist.events import Speaker
from callassist.media_rpc import DEFAULT_TIMEOUT, MediaUnavailable, RemoteError, RpcClient, WorkerFull
from callassist.registry import NoWorkerAvailable, WorkerInfo, WorkerRegistry

log = logging.getLogger(__name__)

WorkerLost = Callable[[list[str], str], Awaitable[None] | None]
END_TIMEOUT = 30.0           # s: end_call flushes the recogniser and closes the recording


@dataclass
class Placement:
    """Where a call's media is: the worker (and that worker's start, to tell a restart)."""
    worker: str
    worker_started_at: float
    moves: int = 0               # times the call was moved to another worker
    lost: bool = False           # reported to on_worker_lost, not yet moved


class RemoteMediaHost:
    def __init__(self, redis_url: str, node_id: str, registry: WorkerRegistry, on_worker_lost: WorkerLost,
                 *, heartbeat_s: float = 1.0, rpc_timeout: float = DEFAULT_TIMEOUT) -> None:
        """`node_id`: this controller's (it names the RPC reply list); `heartbeat_s`: how often
        the hosting workers are checked ([cluster] heartbeat_s)."""
        self.node_id = node_id
        self.registry = registry
        self.on_worker_lost = on_worker_lost
        self.heartbeat_s = heartbeat_s
        self._redis = Redis.from_url(redis_url)
        self.rpc = RpcClient(self._redis, node_id, rpc_timeout)
        self.placements: dict[str, Placement] = {}
        self._opening: Counter[str] = Counter()     # calls being opened, by worker
        self._watcher: asyncio.Task | None = None
        self._tasks: set[asyncio.Future] = set()

    async def start(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="remote-media-watch")

    async def close(self) -> None:
        """Stop watching and calling (the calls stay on their workers: a controller's stop ends
        its calls with end_call first)."""
        tasks = [t for t in (self._watcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None
        await self.rpc.close()
        await self._redis.aclose()

    # -- MediaHost -------------------------------------------------------------------------------
    async def open_call(self, call_id: str, caller: str, started_at: float,
                        resume: ResumeInfo | None = None) -> OpenedCall:
        """On the live worker with the most room; a call opened again (moved: `resume`) goes
        to another worker than the one it was on, and that one, if still alive, lets it go.
        Raises NoWorkerAvailable when no live worker takes it, RemoteError when the worker
        failed to open it."""
        previous = self.placements.get(call_id)
        excluded: set[str] = {previous.worker} if previous is not None else set()
        args = {"call_id": call_id, "caller": caller, "started_at": started_at,
                "resume": resume.to_dict() if resume is not None else None}
        while True:
            worker = await self._choose(excluded)
            self._opening[worker.node_id] += 1
            try:
                opened = await self.rpc.call(worker.node_id, "open_call", args)
            except MediaUnavailable as exc:
                # its heartbeat has not expired yet, but it does not answer: the next one
                log.warning("call %s: worker %s did not take it: %s", call_id, worker.node_id, exc)
                excluded.add(worker.node_id)
                continue
            except RemoteError as exc:
                if exc.kind != WorkerFull.__name__:
                    raise
                excluded.add(worker.node_id)        # filled up since its last heartbeat
                continue
            finally:
                self._opening[worker.node_id] -= 1
            break
        self.placements[call_id] = Placement(worker.node_id, worker.started_at,
                                             moves=previous.moves + 1 if previous is not None else 0)
        if previous is not None:
            log.warning("call %s: moved from worker %s to %s", call_id, previous.worker, worker.node_id)
            if not previous.lost:       # moved away from a live worker: it must let the call go
                self._spawn(self._release(previous.worker, call_id))
        else:
            log.info("call %s: media on worker %s", call_id, worker.node_id)
        return OpenedCall.from_dict(opened)

    async def open_leg(self, call_id: str, speaker: Speaker, leg_id: str) -> tuple[str, int]:
        host, port = await self._call(call_id, "open_leg", speaker=speaker, leg_id=leg_id)
        return str(host), int(port)

    async def leg_source(self, call_id: str, leg_id: str, host: str, port: int | None) -> None:
        await self._call(call_id, "leg_source", leg_id=leg_id, host=host, port=port)

    async def leg_ready(self, call_id: str, leg_id: str) -> None:
        await self._call(call_id, "leg_ready", leg_id=leg_id)

    async def close_leg(self, call_id: str, leg_id: str) -> None:
        if call_id in self.placements:      # idempotent: a call already ended has no legs
            await self._call(call_id, "close_leg", leg_id=leg_id)

    async def agent_joined(self, call_id: str, endpoint: str) -> None:
        await self._call(call_id, "agent_joined", endpoint=endpoint)

    async def end_call(self, call_id: str, duration: float) -> None:
        """The worker flushes, closes the recording and publishes CallEnded. The call is
        forgotten here even if its worker does not answer (MediaUnavailable: nobody has
        announced its end then), so that it is not moved after its end."""
        if call_id not in self.placements:
            log.warning("call %s: end_call, but it is on no worker", call_id)
            return
        try:
            # the last words through the recogniser take longer than a leg's request
            await self._call(call_id, "end_call", duration=duration, timeout=max(self.rpc.timeout, END_TIMEOUT))
        finally:
            self.placements.pop(call_id, None)

    def host_of(self, call_id: str) -> str:
        placement = self.placements.get(call_id)
        return placement.worker if placement is not None else ""

    # -- internals ---------------------------------------------------------------------------------
    async def _choose(self, excluded: set[str]) -> WorkerInfo:
        try:
            return await self.registry.choose(excluded, self._opening)
        except (RedisError, OSError) as exc:
            raise MediaUnavailable(f"识别节点列表无法读取：Redis {exc}") from None

    async def _call(self, call_id: str, method: str, *, timeout: float | None = None, **args: Any) -> Any:
        placement = self.placements.get(call_id)
        if placement is None:
            raise UnknownCall(f"call {call_id} is on no worker (never opened, or ended)")
        try:
            return await self.rpc.call(placement.worker, method, {"call_id": call_id, **args}, timeout=timeout)
        except RemoteError as exc:
            if exc.kind == UnknownCall.__name__:
                raise UnknownCall(f"worker {placement.worker}: {exc}") from None
            raise

    async def _release(self, worker: str, call_id: str) -> None:
        try:
            await self.rpc.call(worker, "release_call", {"call_id": call_id})
        except MediaError as exc:
            log.warning("call %s: worker %s did not let it go: %s", call_id, worker, exc)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if any(not p.lost for p in self.placements.values()):
                await self.check_workers()

    async def check_workers(self) -> dict[str, list[str]]:
        """Report the calls of every worker that stopped heartbeating (or restarted) since
        the last check; returns {worker: call ids} reported."""
        try:
            live = {w.node_id: w for w in await self.registry.live_workers()}
        except (RedisError, OSError) as exc:
            # Without Redis nothing can be told about the workers (nor moved anywhere)
            log.warning("worker watch: Redis unreachable (%s); calls stay where they are", exc)
            return {}
        lost: dict[str, list[str]] = {}
        for call_id, placement in self.placements.items():
            info = live.get(placement.worker)
            if placement.lost or (info is not None and info.started_at == placement.worker_started_at):
                continue
            placement.lost = True
            lost.setdefault(placement.worker, []).append(call_id)
        for worker, call_ids in lost.items():
            why = "restarted" if worker in live else "stopped heartbeating"
            log.warning("worker %s %s: moving its %d call(s): %s", worker, why, len(call_ids), ", ".join(call_ids))
            self._report(call_ids, worker)
        return lost

    def _report(self, call_ids: list[str], worker: str) -> None:
        try:
            result = self.on_worker_lost(call_ids, worker)
        except Exception:
            log.exception("worker %s lost: moving its calls failed", worker)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _task_done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("remote media: a background request failed", exc_info=task.exception())


__all__ = ["NoWorkerAvailable", "Placement", "RemoteMediaHost", "WorkerLost"]
