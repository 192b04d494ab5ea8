"""Which media/ASR workers are alive, and which one takes the next call.

Each worker SETs `callassist:worker:{node_id}` (JSON: node_id, rtp_host, capacity, calls,
started_at) with PX = worker_timeout_s every heartbeat_s: the key existing IS the worker
being alive, so a killed worker drops out by itself after worker_timeout_s, without anyone
having to notice its death. A worker that is stopping advertises capacity 0 (it finishes
its calls but takes no new one).
"""
from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, replace

from redis.asyncio import Redis

WORKER_PREFIX = "callassist:worker:"
NO_WORKER = "没有可用的识别节点"


def worker_key(node_id: str) -> str:
    return f"{WORKER_PREFIX}{node_id}"


class NoWorkerAvailable(RuntimeError):
    """No live worker has room for a call (the controller reports it as the call's CallFault).
    The message starts with NO_WORKER and says why (none alive, all full)."""


@dataclass(frozen=True)
class WorkerInfo:
    node_id: str
    rtp_host: str            # where Asterisk sends this worker's RTP ([rtp] advertise_host)
    capacity: int            # calls it takes; 0 while stopping
    calls: int               # calls it hosts now
    started_at: float        # wall clock of its start: a worker restarted under the same id differs
    call_ids: tuple[str, ...] = ()   # the calls it hosts (calls no worker hosts are closed out)

    @property
    def free(self) -> int:
        return self.capacity - self.calls

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> WorkerInfo:
        raw = json.loads(data)
        return cls(node_id=str(raw["node_id"]), rtp_host=str(raw["rtp_host"]), capacity=int(raw["capacity"]),
                   calls=int(raw["calls"]), started_at=float(raw["started_at"]),
                   call_ids=tuple(str(call_id) for call_id in raw.get("call_ids", ())))


def choose_worker(workers: Iterable[WorkerInfo], exclude: Collection[str] = (),
                  opening: Mapping[str, int] | None = None) -> WorkerInfo:
    """The live worker with the most free capacity (ties: fewest calls, then node id, so
    that every controller breaks a tie the same way); raises NoWorkerAvailable. `opening`:
    calls being opened on each worker by this controller, not yet in its heartbeat (calls
    that arrive together must not all go to the same worker)."""
    opening = opening or {}
    alive = [replace(w, calls=w.calls + opening.get(w.node_id, 0)) for w in workers if w.node_id not in exclude]
    if not alive:
        raise NoWorkerAvailable(f"{NO_WORKER}：没有在线的识别节点" if not exclude else
                                f"{NO_WORKER}：除 {', '.join(sorted(exclude))} 外没有在线的识别节点")
    room = [w for w in alive if w.free > 0]
    if not room:
        loads = ", ".join(f"{w.node_id} {w.calls}/{w.capacity}" for w in sorted(alive, key=lambda w: w.node_id))
        raise NoWorkerAvailable(f"{NO_WORKER}：识别节点均已满（{loads}）")
    return min(room, key=lambda w: (-w.free, w.calls, w.node_id))


class WorkerRegistry:
    """The worker keys in Redis. `ttl`: worker_timeout_s, how long a heartbeat keeps a worker alive."""

    def __init__(self, redis: Redis, ttl: float) -> None:
        self.redis = redis
        self.ttl = ttl

    async def heartbeat(self, info: WorkerInfo) -> None:
        await self.redis.set(worker_key(info.node_id), info.to_json(), px=max(1, round(self.ttl * 1000)))

    async def withdraw(self, node_id: str) -> None:
        """A clean stop: the worker is gone at once instead of after ttl."""
        await self.redis.delete(worker_key(node_id))

    async def live_workers(self) -> list[WorkerInfo]:
        keys = [key async for key in self.redis.scan_iter(match=f"{WORKER_PREFIX}*", count=500)]
        if not keys:
            return []
        values = await self.redis.mget(keys)
        # a key that expired between SCAN and MGET is simply not alive
        return sorted((WorkerInfo.from_json(value) for value in values if value is not None),
                      key=lambda w: w.node_id)

    async def get(self, node_id: str) -> WorkerInfo | None:
        value = await self.redis.get(worker_key(node_id))
        return WorkerInfo.from_json(value) if value is not None else None

    async def is_alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(worker_key(node_id)))

    async def choose(self, exclude: Collection[str] = (), opening: Mapping[str, int] | None = None) -> WorkerInfo:
        """The worker for a new (or moved) call; raises NoWorkerAvailable."""
        return choose_worker(await self.live_workers(), exclude, opening)
