"""Request/reply over Redis lists: the ARI controller asks a worker to host a call's media.

    controller: LPUSH callassist:rpc:{worker}  {"id", "method", "args", "reply_to", "deadline"}
    worker:     BRPOP callassist:rpc:{worker}  -> runs it -> LPUSH reply_to {"id", "ok", "result"}
                                                           or {"id", "ok": false, "error", "kind"}
    controller: BRPOP callassist:reply:{controller}  -> the waiting call with that id

Lists rather than pub/sub: a request pushed while the worker is reconnecting to Redis waits
for it instead of being lost. The worker runs each request as a task of its own (a slow
open_call of one call never holds up another call's close_leg), but the requests of one
call in the order they came (its legs and its end must not overtake its opening). Payloads
are callassist.wire messages (JSON).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ari_app.media import MediaError
from callassist.redis_bus import stop_task
from callassist.wire import WireError, decode_message, encode_message

log = logging.getLogger(__name__)

RPC_PREFIX = "callassist:rpc:"
REPLY_PREFIX = "callassist:reply:"
DEFAULT_TIMEOUT = 2.0
REPLY_TTL = 60                # s: replies nobody reads (the controller died) go away
REQUEST_TTL = 60              # s: so do the requests queued for a worker that died
POLL_S = 1.0                  # a blocked BRPOP returns this often (a dead connection shows)
CLOCK_SLACK = 5.0             # s: machines' clocks may differ this much (NTP keeps them closer)
RETRY_MAX_S = 5.0

Handler = Callable[..., Awaitable[Any]]


def rpc_key(node_id: str) -> str:
    return f"{RPC_PREFIX}{node_id}"


def reply_key(node_id: str) -> str:
    return f"{REPLY_PREFIX}{node_id}"


class MediaUnavailable(MediaError):
    """The worker did not answer in time (dead, overloaded, or Redis unreachable)."""


class WorkerFull(MediaError):
    """A worker refused a new call: it is at its capacity (or stopping)."""


class RemoteError(MediaError):
    """The worker ran the request and it failed: the message is the worker's exception's,
    `kind` its class name."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


async def _pop_forever(redis: Redis, key: str, what: str, handle: Callable[[bytes | str], None],
                       running: Callable[[], bool]) -> None:
    """BRPOP `key` while running(), handing each item to `handle`; a Redis outage is waited
    out with backoff (the items wait in the list meanwhile), logged when it starts and ends."""
    delay = 0.0
    while running():
        try:
            item = await redis.brpop([key], timeout=POLL_S)
        except (RedisError, OSError) as exc:
            if not delay:
                log.error("%s: Redis unreachable (%s); retrying", what, exc)
            delay = min(max(delay * 2, 0.1), RETRY_MAX_S)
            await asyncio.sleep(delay)
            continue
        if delay:
            log.info("%s: Redis reachable again", what)
            delay = 0.0
        if item is not None and running():
            handle(item[1])


class RpcServer:
    """Serves `handlers` (method name -> async function taking the request's args by name)
    on callassist:rpc:{node_id}."""

    def __init__(self, redis: Redis, node_id: str, handlers: Mapping[str, Handler]) -> None:
        self.redis = redis
        self.node_id = node_id
        self.key = rpc_key(node_id)
        self.handlers = dict(handlers)
        self._reader: asyncio.Task | None = None
        self._serving = False
        self._running: set[asyncio.Task] = set()
        self._last_of_call: dict[str, asyncio.Task] = {}     # per-call order

    async def start(self) -> None:
        if self._reader is None:
            self._serving = True
            self._reader = asyncio.create_task(
                _pop_forever(self.redis, self.key, f"RPC server {self.node_id}", self._dispatch,
                             lambda: self._serving),
                name=f"rpc-server-{self.node_id}")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Take no more requests; let those running finish (up to drain_timeout), then cancel them."""
        self._serving = False
        reader, self._reader = self._reader, None
        if reader is not None:
            await stop_task(reader)
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    def kill(self) -> None:
        """Stop dead, answering nothing more (what a killed worker does; for tests)."""
        self._serving = False
        for task in (self._reader, *self._running):
            if task is not None:
                task.cancel()
        self._reader = None

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            message = decode_message(data)
            request_id, method = str(message["id"]), str(message["method"])
            reply_to = str(message["reply_to"])
            args = message.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("args is not an object")
        except (WireError, KeyError, TypeError, ValueError) as exc:
            log.error("RPC server %s: request dropped, unreadable: %s", self.node_id, exc)
            return
        deadline = message.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline + CLOCK_SLACK:
            # its caller gave up long ago (it waited here while we were down): running it
            # now would only hold a port or a session nobody will close
            log.warning("RPC server %s: %s request %s dropped, stale by %.1f s", self.node_id, method,
                        request_id, time.time() - deadline)
            return
        call_id = args.get("call_id")
        previous = self._last_of_call.get(call_id) if isinstance(call_id, str) else None
        task = asyncio.create_task(self._run(request_id, method, args, reply_to, previous),
                                   name=f"rpc-{method}-{request_id[:8]}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if isinstance(call_id, str):
            self._last_of_call[call_id] = task
            task.add_done_callback(functools.partial(self._forget, call_id))

    def _forget(self, call_id: str, task: asyncio.Task) -> None:
        if self._last_of_call.get(call_id) is task:
            del self._last_of_call[call_id]

    async def _run(self, request_id: str, method: str, args: dict[str, Any], reply_to: str,
                   previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})
        handler = self.handlers.get(method)
        reply: dict[str, Any]
        try:
            if handler is None:
                raise LookupError(f"unknown method {method!r}")
            result = await handler(**args)
            reply = {"id": request_id, "ok": True, "result": result}
        except Exception as exc:
            if not isinstance(exc, (LookupError, ValueError, RuntimeError, OSError)):
                log.exception("RPC server %s: %s failed", self.node_id, method)
            reply = {"id": request_id, "ok": False, "error": str(exc) or type(exc).__name__,
                     "kind": type(exc).__name__}
        try:
            payload = encode_message(reply)
        except (WireError, TypeError, ValueError) as exc:
            payload = encode_message({"id": request_id, "ok": False, "kind": "WireError",
                                      "error": f"{method}: result not serialisable: {exc}"})
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(reply_to, payload)
                pipe.expire(reply_to, REPLY_TTL)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.error("RPC server %s: reply to %s %s lost: %s", self.node_id, method, request_id, exc)


class RpcClient:
    """Calls workers' RpcServers; one reply reader (callassist:reply:{node_id}) resolves the
    waiting calls by id. `node_id` must be unique among the clients (it names the reply list)."""

    def __init__(self, redis: Redis, node_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.redis = redis
        self.node_id = node_id
        self.reply_key = reply_key(node_id)
        self.timeout = timeout
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task | None = None
        self._closed = False

    def _ensure_reader(self) -> None:
        if self._closed:
            raise MediaUnavailable("RPC client closed")
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(
                _pop_forever(self.redis, self.reply_key, f"RPC client {self.node_id}", self._resolve,
                             lambda: not self._closed),
                name=f"rpc-replies-{self.node_id}")

    async def close(self) -> None:
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            await stop_task(reader)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MediaUnavailable("RPC client closed"))
        self._pending.clear()

    def _resolve(self, data: bytes | str) -> None:
        try:
            reply = decode_message(data)
            request_id = str(reply["id"])
        except (WireError, KeyError, TypeError, ValueError) as exc:
            log.error("RPC client %s: unreadable reply dropped: %s", self.node_id, exc)
            return
        future = self._pending.get(request_id)
        if future is None:
            log.info("RPC client %s: late reply to %s (the call timed out) dropped", self.node_id, request_id)
        elif not future.done():
            future.set_result(reply)

    async def call(self, worker: str, method: str, args: Mapping[str, Any] | None = None, *,
                   timeout: float | None = None) -> Any:
        """Run `method(**args)` on `worker`; its result, or RemoteError (it failed there) or
        MediaUnavailable (no reply within `timeout`, default self.timeout)."""
        self._ensure_reader()
        wait = self.timeout if timeout is None else timeout
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        payload = encode_message({"id": request_id, "method": method, "args": dict(args or {}),
                                  "reply_to": self.reply_key, "deadline": time.time() + wait})
        try:
            async with asyncio.timeout(wait):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.lpush(rpc_key(worker), payload)
                    pipe.expire(rpc_key(worker), REQUEST_TTL)
                    await pipe.execute()
                reply = await future
        except TimeoutError:
            raise MediaUnavailable(f"识别节点 {worker} 无应答（{method}，{wait:g} 秒）") from None
        except (RedisError, OSError) as exc:
            raise MediaUnavailable(f"识别节点 {worker} 无法联系（{method}）：Redis {exc}") from None
        finally:
            self._pending.pop(request_id, None)
        if reply.get("ok"):
            return reply.get("result")
        raise RemoteError(str(reply.get("error", "")), str(reply.get("kind", "")))

