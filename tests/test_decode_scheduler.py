"""asr.scheduler.DecodeScheduler: what a segment engine decodes next, with real pool threads.

The jobs are plain blocking functions: a `threading.Event` holds the one decode slot busy so
the queue can be arranged, then released."""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from asr.engine import DecodeMeter
from asr.scheduler import DecodeJob, DecodeScheduler, Priority, Shed


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def blocker(scheduler: DecodeScheduler) -> tuple[threading.Event, asyncio.Future]:
    """Occupy one slot until the returned event is set."""
    release = threading.Event()
    future = scheduler.submit(DecodeJob(Priority.BATCH, lambda: (), lambda: release.wait(10)))
    return release, future


def job(priority: Priority, order: list[str], name: str, key: object = None, seconds: float = 1.0) -> DecodeJob:
    return DecodeJob(priority, lambda: (name,), order.append, audio_seconds=seconds, key=key)


async def wait_for(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_customers_finals_first_interims_after_finals_post_call_work_last(pool):
    meter = DecodeMeter()
    scheduler = DecodeScheduler(pool, 1, meter)
    release, busy = blocker(scheduler)
    order: list[str] = []
    futures = [scheduler.submit(job(priority, order, priority.name)) for priority in
               (Priority.BATCH, Priority.OVERFLOW, Priority.AGENT_INTERIM, Priority.AGENT_FINAL,
                Priority.CUSTOMER_INTERIM, Priority.CUSTOMER_FINAL)]
    assert meter.backlog_seconds == 6.0          # queued audio counts as backlog
    release.set()
    await asyncio.gather(busy, *futures)
    assert order == ["CUSTOMER_FINAL", "AGENT_FINAL", "CUSTOMER_INTERIM", "AGENT_INTERIM",
                     "OVERFLOW", "BATCH"]
    assert meter.backlog_seconds == 0.0


async def test_a_newer_interim_replaces_the_waiting_one_of_its_stream(pool):
    meter = DecodeMeter()
    scheduler = DecodeScheduler(pool, 1, meter)
    release, busy = blocker(scheduler)
    order: list[str] = []
    stream_a, stream_b = object(), object()
    old = scheduler.submit(job(Priority.CUSTOMER_INTERIM, order, "a1", key=stream_a))
    new = scheduler.submit(job(Priority.CUSTOMER_INTERIM, order, "a2", key=stream_a))
    other = scheduler.submit(job(Priority.CUSTOMER_INTERIM, order, "b1", key=stream_b))  # control
    release.set()
    await asyncio.gather(busy, new, other)
    with pytest.raises(Shed):
        old.result()
    assert order == ["a2", "b1"]
    assert meter.interims_shed == 1
    assert meter.backlog_seconds == 0.0


async def test_a_job_whose_moment_passed_is_shed_when_its_turn_comes(pool):
    meter = DecodeMeter()
    scheduler = DecodeScheduler(pool, 1, meter)
    order: list[str] = []
    stale = scheduler.submit(DecodeJob(Priority.CUSTOMER_INTERIM, lambda: None, order.append, 1.0))
    fresh = scheduler.submit(job(Priority.CUSTOMER_INTERIM, order, "fresh"))
    await fresh
    with pytest.raises(Shed):
        await stale
    assert order == ["fresh"] and meter.interims_shed == 1


async def test_a_failing_decode_reaches_its_owner_and_the_queue_goes_on(pool):
    meter = DecodeMeter()
    scheduler = DecodeScheduler(pool, 1, meter)

    def broken() -> None:
        raise ValueError("model exploded")

    failed = scheduler.submit(DecodeJob(Priority.CUSTOMER_FINAL, lambda: (), broken, 2.0))
    order: list[str] = []
    after = scheduler.submit(job(Priority.CUSTOMER_FINAL, order, "after"))
    with pytest.raises(ValueError, match="exploded"):
        await failed
    await after
    assert order == ["after"] and meter.backlog_seconds == 0.0


async def test_behind_when_a_customer_waits_new_calls_not_admitted_until_caught_up(pool, caplog):
    meter = DecodeMeter()
    scheduler = DecodeScheduler(pool, 1, meter, name="whisper", behind_after=0.05, caught_up_after=0.2)
    assert scheduler.admit() and not meter.behind          # control: idle is not behind
    release, busy = blocker(scheduler)
    order: list[str] = []
    # an agent's final waiting long is not "behind": customers' sentences fire the cards
    agent = scheduler.submit(job(Priority.AGENT_FINAL, order, "agent"))
    await asyncio.sleep(0.1)
    assert scheduler.admit()
    waiting = scheduler.submit(job(Priority.CUSTOMER_FINAL, order, "customer"))
    with caplog.at_level(logging.WARNING, logger="asr.scheduler"):
        await wait_for(lambda: scheduler.lag() > 0.05)
        assert not scheduler.admit() and meter.behind
    assert "speech decoding is behind" in caplog.text
    release.set()
    await asyncio.gather(busy, agent, waiting)
    assert meter.lag_seconds == 0.0
    # idle from now on: the meter (what /healthz reads) still clears by itself
    await wait_for(lambda: not meter.behind, timeout=5)
    assert scheduler.admit()


async def test_work_for_a_closed_engine_fails_instead_of_hanging():
    executor = ThreadPoolExecutor(1)
    scheduler = DecodeScheduler(executor, 1, DecodeMeter())
    order: list[str] = []
    await scheduler.submit(job(Priority.CUSTOMER_FINAL, order, "before"))      # the control
    executor.shutdown()
    with pytest.raises(RuntimeError):
        await scheduler.submit(job(Priority.CUSTOMER_FINAL, order, "after"))
    assert order == ["before"]


async def test_concurrency_is_bounded_by_the_slots(pool):
    scheduler = DecodeScheduler(pool, 2, DecodeMeter())
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def decode() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1

    futures = [scheduler.submit(DecodeJob(Priority.CUSTOMER_FINAL, lambda: (), decode)) for _ in range(5)]
    await wait_for(lambda: most == 2)
    release.set()
    await asyncio.gather(*futures)
    assert most == 2
