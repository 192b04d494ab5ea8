"""Per-call state, and tapping one leg of a call: snoop -> bridge -> externalMedia -> RTP.

A leg's tap (facts: ../shared/domain/asterisk.md):

    POST /channels/{leg}/snoop/{snoop_id}?spy=in       the leg's own voice, enters our app
    POST /channels/externalMedia?channelId={em_id}&format=slin16&external_host=HOST:PORT
    POST /bridges/{bridge_id}?type=mixing
    ... wait for both new channels' StasisStart (addChannel before it answers 422) ...
    POST /bridges/{bridge_id}/addChannel?channel={snoop_id}    one channel per request
    POST /bridges/{bridge_id}/addChannel?channel={em_id}

Every id is chosen before its request is sent and recorded on the leg, so a teardown
that runs at any point (the leg hung up mid-setup) deletes exactly what exists; the
teardown first lets the setup's in-flight request finish, so nothing is created after
it was deleted. Asterisk removes a hung-up channel's snoops itself, but leaves the
externalMedia channel and the bridge: those we always delete (404 is fine).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ari_app.client import AriClient, AriError, AriNotFound
from ari_app.models import Bridge, Channel, OwnIds
from ari_app.ports import PortPool
from ari_app.rtp import RtpStream
from callassist.events import CallEvent, CallFault, CardFired, Speaker, TranscriptUpdate
from callassist.session import CallSession

log = logging.getLogger(__name__)

RATE = 16000
STASIS_START_WAIT = 2.0          # normally 1-8 ms; past this, try addChannel anyway
ADD_CHANNEL_RETRIES = 20         # on 422 "Channel not in Stasis application", 50 ms apart
DRAIN_TIMEOUT = 1.0              # a closing leg's queued frames get this long to be consumed


class TapAborted(Exception):
    """The leg went away (or the call is closing) while its tap was being set up."""


class TapFailed(Exception):
    """Asterisk refused part of the tap for another reason (reported as a CallFault)."""


@dataclass
class LegTap:
    """One tapped leg: the snooped channel and the three objects we made for it."""
    speaker: Speaker
    channel_id: str                  # the snooped channel (customer or agent)
    snoop_id: str
    em_id: str
    bridge_id: str
    stream: RtpStream | None = None
    ready: bool = False              # bridged: audio can flow
    ready_at: float | None = None    # loop time it became ready
    closed: bool = False
    suspect: bool = False            # one of its channels ended: being checked
    offset: float | None = None      # call-timeline seconds of its first frame
    next_sample: int = 0             # call-timeline sample of the next frame
    frames: int = 0
    stalls_seen: int = 0
    setup: asyncio.Task | None = None
    teardown: asyncio.Future | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)   # media pump, stall watcher

    @property
    def object_ids(self) -> tuple[str, str, str]:
        return (self.snoop_id, self.em_id, self.bridge_id)


@dataclass(frozen=True)
class InterruptedCall:
    """A call the previous run was tapping when it stopped (crash, kill), as the store
    has it: if Asterisk still has its customer, the call is tapped again."""
    call_id: str                     # = the customer channel's id
    started_at: float                # wall clock: t=0 of the call
    caller: str = ""
    recording: Path | None = None    # the recording it was writing, if its path was stored
    last_event_at: float | None = None
    next_utterance: int = 0          # utterance numbers up to this one are taken


class UtteranceShift:
    """Publishes a resumed call's pipeline events with utterance numbers moved past the
    previous run's: the store keys transcript lines by (call, speaker, utterance), so a
    new pipeline counting from 0 again would overwrite the lines from before the crash."""

    def __init__(self, publish: Callable[[CallEvent], None], base: int) -> None:
        self.publish = publish
        self.base = base

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, TranscriptUpdate):
            event = dataclasses.replace(event, utterance=event.utterance + self.base)
        elif isinstance(event, CardFired):
            event = dataclasses.replace(event, card=dataclasses.replace(
                event.card, utterance=event.card.utterance + self.base))
        self.publish(event)


@dataclass
class Call:
    call_id: str
    customer_id: str
    caller: str
    started: float                   # loop time of the customer's StasisStart: t=0 of the call
    started_at: float = field(default_factory=time.time)
    utterance_base: int = 0          # > 0: resumed after a restart (see UtteranceShift)
    session: CallSession | None = None   # recording, recognition, CallStarted/AgentJoined/CallEnded
    legs: dict[Speaker, LegTap] = field(default_factory=dict)
    retiring: list[LegTap] = field(default_factory=list)   # being torn down
    agent_id: str | None = None
    agent_endpoint: str | None = None
    cue_ids: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task] = field(default_factory=set)
    closing: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def object_ids(self) -> set[str]:
        """Every Asterisk id this call owns or is creating (never swept)."""
        ids = set(self.cue_ids)
        for leg in (*self.legs.values(), *self.retiring):
            ids.update(leg.object_ids)
        return ids

    def leg_of(self, object_id: str) -> LegTap | None:
        for leg in (*self.legs.values(), *self.retiring):
            if object_id in leg.object_ids:
                return leg
        return None

    def elapsed(self, now: float) -> float:
        return now - self.started


class StasisWaiter:
    """StasisStart of the channels we create, resolved by the app's event dispatcher."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[None]] = {}

    def expect(self, channel_id: str) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._futures[channel_id] = future
        return future

    def started(self, channel_id: str) -> bool:
        future = self._futures.pop(channel_id, None)
        if future is not None and not future.done():
            future.set_result(None)
        return future is not None

    def abandon(self, channel_id: str) -> None:
        future = self._futures.pop(channel_id, None)
        if future is not None and not future.done():
            future.cancel()


class Tapper:
    """Sets up and tears down leg taps against one Asterisk."""

    def __init__(self, ari: AriClient, ids: OwnIds, ports: PortPool, waiter: StasisWaiter,
                 advertise_host: str, publish: Callable[[CallEvent], None]) -> None:
        self.ari = ari
        self.ids = ids
        self.ports = ports
        self.waiter = waiter
        self.advertise_host = advertise_host
        self.publish = publish

    def new_leg(self, speaker: Speaker, channel_id: str) -> LegTap:
        return LegTap(speaker, channel_id, self.ids.new("snoop"), self.ids.new("em"), self.ids.new("br"))

    async def open(self, call: Call, leg: LegTap) -> None:
        """Create the leg's objects and bridge them; raises TapAborted or TapFailed.
        The leg must already be in call.legs (so its ids are reserved from the sweep)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        snoop_started = self.waiter.expect(leg.snoop_id)
        em_started = self.waiter.expect(leg.em_id)
        try:
            leg.stream = await self.ports.open_stream(name=f"{call.call_id}/{leg.speaker}")
        except (OSError, RuntimeError) as exc:
            raise TapFailed(f"no RTP port: {exc}") from None
        self._check(leg)
        external_host = f"{self.advertise_host}:{leg.stream.port}"
        # Independent requests, sent together; all of them finish before we look.
        snoop, em, bridge = await asyncio.gather(
            self.ari.snoop(leg.channel_id, snoop_id=leg.snoop_id, spy="in",
                           app_args=f"tap,{call.call_id},{leg.speaker}"),
            self.ari.external_media(channel_id=leg.em_id, external_host=external_host,
                                    format="slin16", data=f"media,{call.call_id},{leg.speaker}"),
            self.ari.create_bridge(leg.bridge_id, name=f"callassist {call.call_id} {leg.speaker}"),
            return_exceptions=True)
        if isinstance(snoop, AriNotFound):
            raise TapAborted(f"{leg.speaker} channel {leg.channel_id} is gone")
        for result in (snoop, em, bridge):
            if isinstance(result, BaseException):
                raise TapFailed(str(result)) from result
        assert isinstance(em, Channel)
        self._restrict_source(leg, em)
        self._check(leg)
        done, _ = await asyncio.wait({snoop_started, em_started}, timeout=STASIS_START_WAIT)
        self._check(leg)
        if len(done) < 2:
            log.warning("call %s %s: no StasisStart for our channels after %.1f s; bridging anyway",
                        call.call_id, leg.speaker, STASIS_START_WAIT)
        await self._add(leg, leg.snoop_id)
        await self._add(leg, leg.em_id)
        leg.ready = True
        leg.ready_at = loop.time()
        log.info("call %s: %s leg tapped in %.0f ms (snoop %s, RTP port %d)", call.call_id,
                 leg.speaker, 1000 * (loop.time() - began), leg.snoop_id, leg.stream.port)

    def _restrict_source(self, leg: LegTap, em: Channel) -> None:
        """Take RTP only from the address Asterisk says it sends from."""
        host = em.channelvars.get("UNICASTRTP_LOCAL_ADDRESS", "")
        port = em.channelvars.get("UNICASTRTP_LOCAL_PORT", "")
        if leg.stream is not None and host and host not in ("0.0.0.0", "::"):
            leg.stream.restrict_source(host, int(port) if port.isdigit() else None)

    @staticmethod
    def _check(leg: LegTap) -> None:
        if leg.closed:
            raise TapAborted(f"{leg.speaker} leg closed during its setup")

    async def _add(self, leg: LegTap, channel_id: str) -> None:
        for attempt in range(ADD_CHANNEL_RETRIES + 1):
            try:
                await self.ari.add_channel(leg.bridge_id, channel_id)
                return
            except AriError as exc:
                if exc.status == 422 and attempt < ADD_CHANNEL_RETRIES:
                    await asyncio.sleep(0.05)       # not in Stasis yet
                    self._check(leg)
                    continue
                if exc.status == 400 and channel_id == leg.snoop_id:
                    # "Channel not found": the snoop ended, i.e. its channel hung up
                    raise TapAborted(f"{leg.speaker} snoop ended before it was bridged") from None
                raise TapFailed(str(exc)) from None

    async def close(self, call: Call, leg: LegTap) -> None:
        """Tear a leg down, whatever state its setup reached. Idempotent; the teardown
        goes on even if the caller is cancelled."""
        in_setup = leg.setup is not None and leg.setup is asyncio.current_task()
        if leg.teardown is None:
            self.retire(call, leg)
            # the setup itself may be the caller: then the teardown must not wait for it
            leg.teardown = asyncio.ensure_future(self._teardown(call, leg, None if in_setup else leg.setup))
        if in_setup:
            return                  # the teardown waits for the setup to end: do not wait for it
        await asyncio.shield(leg.teardown)

    def retire(self, call: Call, leg: LegTap) -> None:
        """Take a leg out of service at once (its ids stay reserved until torn down)."""
        leg.closed = True
        if call.legs.get(leg.speaker) is leg:
            del call.legs[leg.speaker]
        if leg not in call.retiring:
            call.retiring.append(leg)
        self.waiter.abandon(leg.snoop_id)
        self.waiter.abandon(leg.em_id)

    async def _teardown(self, call: Call, leg: LegTap, setup: asyncio.Task | None) -> None:
        try:
            if setup is not None and not setup.done():
                # Let an in-flight request finish: what it creates must be deleted below.
                await asyncio.wait({setup})
            if leg.stream is not None:
                leg.stream.close()           # the pump drains what is queued, then ends
            if leg.tasks:
                _, late = await asyncio.wait(set(leg.tasks), timeout=DRAIN_TIMEOUT)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late)
            if leg.stream is not None:
                await leg.stream.aclose()    # the port is free again
            targets = (leg.em_id, leg.bridge_id, leg.snoop_id)
            results = await asyncio.gather(self.ari.hangup(leg.em_id), self.ari.destroy_bridge(leg.bridge_id),
                                           self.ari.hangup(leg.snoop_id), return_exceptions=True)
            for object_id, result in zip(targets, results):
                if isinstance(result, AriError) and not isinstance(result, AriNotFound):
                    log.warning("call %s: could not delete %s (%s); the next sweep will", call.call_id,
                                object_id, result)
                elif isinstance(result, BaseException) and not isinstance(result, AriError):
                    log.error("call %s: deleting %s failed", call.call_id, object_id, exc_info=result)
        finally:
            if leg in call.retiring:
                call.retiring.remove(leg)

    @staticmethod
    def intact(leg: LegTap, channels: dict[str, Channel], bridges: dict[str, Bridge]) -> bool:
        """Are the leg's snoop and externalMedia channel alive and together in its bridge?"""
        bridge = bridges.get(leg.bridge_id)
        return (leg.snoop_id in channels and leg.em_id in channels and bridge is not None
                and {leg.snoop_id, leg.em_id} <= set(bridge.channels))


class LegMedia:
    """Moves one leg's frames to the call's session at their place on the call's clock
    (which only the telephony side knows: stalls, re-taps), and reports RTP stalling."""

    def __init__(self, call: Call, leg: LegTap, publish: Callable[[CallEvent], None]) -> None:
        self.call = call
        self.leg = leg
        self.publish = publish

    async def pump(self) -> None:
        call, leg = self.call, self.leg
        assert leg.stream is not None
        loop = asyncio.get_running_loop()
        async for pcm in leg.stream.frames():
            now_sample = round(call.elapsed(loop.time()) * RATE) - len(pcm) // 2
            if leg.offset is None:
                leg.offset = max(now_sample, 0) / RATE
                leg.next_sample = max(now_sample, 0)
            elif leg.stream.stats.stalls > leg.stalls_seen and now_sample > leg.next_sample:
                # after a stall the sender's clock ran on without us: skip the gap
                leg.next_sample = now_sample
            leg.stalls_seen = leg.stream.stats.stalls
            at = leg.next_sample
            leg.next_sample += len(pcm) // 2
            leg.frames += 1
            if call.session is not None:
                call.session.place(leg.speaker, pcm, at)

    async def watch_stalls(self) -> None:
        stream = self.leg.stream
        assert stream is not None
        while True:
            if not await stream.wait_stalled():
                return
            problem = (f"{self.leg.speaker} audio stalled: no RTP for {stream.stall_timeout:g} s "
                       f"on port {stream.port}")
            log.warning("call %s: %s", self.call.call_id, problem)
            self.publish(CallFault(self.call.call_id, problem))
            if not await stream.wait_flowing():
                return
            log.info("call %s: %s audio flowing again", self.call.call_id, self.leg.speaker)
