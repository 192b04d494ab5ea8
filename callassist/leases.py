"""A lease in Redis: at most one node at a time does some work (the store writer, a standby
ARI controller).

`callassist:lease:{name}` holds the holder's node id, SET NX PX ttl; the holder renews it
every ttl/3 with a compare-and-renew script, and deletes it (compare-and-delete) on a clean
stop, so a standby takes over at once. A holder that cannot renew (Redis unreachable, the
lease taken) stops its work BEFORE the ttl could run out in Redis: its deadline counts from
the moment it SENT its last successful renewal (Redis started the ttl later than that), less
a safety margin for clock-rate differences, so two nodes never work at the same time.

    lease = Lease(bus.redis, "store-writer", node_id, ttl=5.0)
    await lease.run(work)     # work() runs only while held; cancelled when the lease is lost;
                              # contends again after a loss; cancel run() to stop (releases)
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_PREFIX = "callassist:lease:"
SAFETY = 0.2                  # the holder gives up this fraction of the ttl before it runs out

# KEYS: lease. ARGV: node id, ttl ms. Take a free lease, or extend our own.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: lease. ARGV: node id, ttl ms. Extend only if still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: node id. Delete only if still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Work = Callable[[], Awaitable[None]]


def lease_key(name: str) -> str:
    return f"{LEASE_PREFIX}{name}"


class Lease:
    def __init__(self, redis: Redis, name: str, node_id: str, ttl: float = 5.0, *,
                 retry_every: float | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"lease {name}: ttl must be positive, not {ttl}")
        self.redis = redis
        self.name = name
        self.key = lease_key(name)
        self.node_id = node_id
        self.ttl = ttl
        self.renew_every = ttl / 3
        self.retry_every = retry_every if retry_every is not None else ttl / 3   # a standby's attempts
        self._ttl_ms = max(1, int(ttl * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._valid_until: float | None = None    # monotonic deadline while held
        self.acquired = 0                         # times this node took the lease
        self.lost = 0                             # times it lost it without releasing
        self.renewals = 0

    @property
    def held(self) -> bool:
        return self._valid_until is not None and time.monotonic() < self._valid_until

    async def holder(self) -> str | None:
        """The node id holding the lease now (None: free)."""
        value = await self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def _deadline(self, sent_at: float) -> float:
        return sent_at + self.ttl * (1 - SAFETY)

    async def try_acquire(self) -> bool:
        """One attempt; True if this node holds the lease now."""
        sent_at = time.monotonic()
        if not await asyncio.wait_for(self._acquire(keys=[self.key], args=[self.node_id, self._ttl_ms]),
                                      self.ttl * (1 - SAFETY)):
            return False
        self._valid_until = self._deadline(sent_at)
        return True

    async def renew(self) -> bool:
        """One renewal, given up at the local deadline; True if still held."""
        if self._valid_until is None:
            return False
        sent_at = time.monotonic()
        remaining = self._valid_until - sent_at
        if remaining <= 0:
            return False
        if not await asyncio.wait_for(self._renew(keys=[self.key], args=[self.node_id, self._ttl_ms]), remaining):
            return False
        self._valid_until = self._deadline(sent_at)
        self.renewals += 1
        return True

    async def release(self) -> None:
        """Delete the lease if it is still ours (a standby takes it at once)."""
        self._valid_until = None
        try:
            await asyncio.wait_for(self._release(keys=[self.key], args=[self.node_id]), self.renew_every)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("lease %s: not released (%s: %s); it expires within %.1f s", self.name,
                        type(exc).__name__, exc, self.ttl)

    async def run(self, work: Work) -> None:
        """Contend for the lease forever; while held, run `work()` (cancelled when the lease
        is lost; if it returns or fails, the lease is released and run() returns or contends
        again after logging). Cancelling run() stops the work and releases the lease."""
        unreachable_logged = False
        try:
            while True:
                try:
                    got = await self.try_acquire()
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    if not unreachable_logged:
                        log.warning("lease %s: Redis unreachable (%s: %s); retrying", self.name,
                                    type(exc).__name__, exc)
                        unreachable_logged = True
                    got = False
                if not got:
                    await asyncio.sleep(self.retry_every)
                    continue
                unreachable_logged = False
                self.acquired += 1
                log.info("lease %s: held by %s", self.name, self.node_id)
                if await self._hold(work):
                    return
                await asyncio.sleep(self.retry_every)     # lost or failed: not straight back
        finally:
            if self._valid_until is not None:
                await asyncio.shield(self.release())

    async def _hold(self, work: Work) -> bool:
        """Run `work` while renewing; True when the work finished by itself (released)."""
        task = asyncio.ensure_future(work())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.renew_every)
                if done:
                    break
                if not await self._renew_until_deadline():
                    self.lost += 1
                    self._valid_until = None
                    log.error("lease %s: lost by %s (not renewed in time); its work stops", self.name,
                              self.node_id)
                    await _cancel(task)
                    return False
        except BaseException:
            await _cancel(task)
            raise
        await self.release()
        if task.cancelled():
            log.warning("lease %s: work cancelled; released", self.name)
            return True
        exc = task.exception()
        if exc is not None:
            log.error("lease %s: work failed, released: %s", self.name, exc, exc_info=exc)
            return False
        return True

    async def _renew_until_deadline(self) -> bool:
        """Retry the renewal while the local deadline allows; False: the lease is lost."""
        while self.held:
            try:
                return await self.renew()
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.warning("lease %s: renewal failed (%s: %s)", self.name, type(exc).__name__, exc)
                assert self._valid_until is not None
                await asyncio.sleep(min(0.05 * self.ttl, max(0.0, self._valid_until - time.monotonic())))
        return False


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():     # we are being stopped too
            raise
    except Exception:
        log.exception("lease: work failed while being stopped")
