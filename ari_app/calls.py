"""Per-call state on the telephony side, and tapping one leg of a call: snoop -> bridge ->
externalMedia -> RTP to the call's media host (ari_app.media).

A leg's tap (facts: ../shared/domain/asterisk.md):

    media.open_leg(call, speaker, leg_id) -> HOST:PORT   where the leg's RTP is to go
    POST /channels/{leg}/snoop/{snoop_id}?spy=in       the leg's own voice, enters our app
    POST /channels/externalMedia?channelId={em_id}&format=slin16&external_host=HOST:PORT
    POST /bridges/{bridge_id}?type=mixing
    ... wait for both new channels' StasisStart (addChannel before it answers 422) ...
    POST /bridges/{bridge_id}/addChannel?channel={snoop_id}    one channel per request
    POST /bridges/{bridge_id}/addChannel?channel={em_id}
    media.leg_ready(call, leg_id)                      its audio goes to the call

Every id is chosen before its request is sent and recorded on the leg, so a teardown
that runs at any point (the leg hung up mid-setup) deletes exactly what exists; the
teardown first lets the setup's in-flight request finish, so nothing is created after
it was deleted. Asterisk removes a hung-up channel's snoops itself, but leaves the
externalMedia channel and the bridge: those we always delete (404 is fine). The media
host closes the leg's RTP (media.close_leg) before they are deleted.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ari_app.client import AriClient, AriError, AriNotFound
from ari_app.media import MediaHost, OpenedCall, UtteranceShift
from ari_app.models import Bridge, Channel, OwnIds
from callassist.events import CallEvent, Speaker

log = logging.getLogger(__name__)

__all__ = ["Call", "InterruptedCall", "LegTap", "StasisWaiter", "TapAborted", "TapFailed", "Tapper",
           "UtteranceShift"]

STASIS_START_WAIT = 2.0          # normally 1-8 ms; past this, try addChannel anyway
ADD_CHANNEL_RETRIES = 20         # on 422 "Channel not in Stasis application", 50 ms apart


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
    rtp: tuple[str, int] | None = None   # where the media host takes its RTP
    on_host: bool = False            # asked the media host for a port: close_leg at teardown
    ready: bool = False              # bridged: audio can flow
    ready_at: float | None = None    # loop time it became ready
    closed: bool = False
    suspect: bool = False            # one of its channels ended: being checked
    setup: asyncio.Task | None = None
    teardown: asyncio.Future | None = None

    @property
    def object_ids(self) -> tuple[str, str, str]:
        return (self.snoop_id, self.em_id, self.bridge_id)

    @property
    def media_id(self) -> str:
        """The leg's name on the media host: its externalMedia channel's id (a re-tapped
        leg is a new leg, with a new one)."""
        return self.em_id


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


@dataclass
class Call:
    call_id: str
    customer_id: str
    caller: str
    started: float                   # loop time of the customer's StasisStart: t=0 of the call
    started_at: float = field(default_factory=time.time)
    utterance_base: int = 0          # > 0: resumed after a restart or a move (see UtteranceShift)
    # the call's media (recording, recognition, CallStarted/AgentJoined/CallEnded) being
    # opened on its media host; None: not asked yet
    media_open: asyncio.Task[OpenedCall | None] | None = None
    recording: str | None = None     # the file the media host records the call into
    media_requests: set[asyncio.Task] = field(default_factory=set)   # to finish before end_call
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

    async def opened(self) -> OpenedCall | None:
        """Wait until the call's media is open on its host; None if it could not be."""
        opening = self.media_open
        if opening is None:
            return None
        # asyncio.wait: a waiter cancelled meanwhile does not cancel the call's opening
        await asyncio.wait({opening})
        return None if opening.cancelled() or opening.exception() is not None else opening.result()

    async def media_opened(self) -> bool:
        return await self.opened() is not None

    @property
    def media_failed(self) -> bool:
        """The call's media could not be opened (no tap can carry its audio anywhere)."""
        opening = self.media_open
        return (opening is not None and opening.done() and
                (opening.cancelled() or opening.exception() is not None or opening.result() is None))


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

    def __init__(self, ari: AriClient, ids: OwnIds, media: MediaHost, waiter: StasisWaiter,
                 publish: Callable[[CallEvent], None]) -> None:
        self.ari = ari
        self.ids = ids
        self.media = media
        self.waiter = waiter
        self.publish = publish

    def new_leg(self, speaker: Speaker, channel_id: str) -> LegTap:
        return LegTap(speaker, channel_id, self.ids.new("snoop"), self.ids.new("em"), self.ids.new("br"))

    async def open(self, call: Call, leg: LegTap) -> None:
        """Create the leg's objects and bridge them, its RTP going to the call's media host;
        raises TapAborted or TapFailed. The leg must already be in call.legs (so its ids are
        reserved from the sweep)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        snoop_started = self.waiter.expect(leg.snoop_id)
        em_started = self.waiter.expect(leg.em_id)
        if not await call.media_opened():
            raise TapFailed("the call's media could not be opened")
        self._check(leg)
        leg.on_host = True
        try:
            leg.rtp = await self.media.open_leg(call.call_id, leg.speaker, leg.media_id)
        except (OSError, RuntimeError) as exc:       # MediaError is a RuntimeError
            raise TapFailed(f"no RTP port: {exc}") from None
        self._check(leg)
        external_host = "%s:%d" % leg.rtp
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
        await self._restrict_source(call, leg, em)
        self._check(leg)
        done, _ = await asyncio.wait({snoop_started, em_started}, timeout=STASIS_START_WAIT)
        self._check(leg)
        if len(done) < 2:
            log.warning("call %s %s: no StasisStart for our channels after %.1f s; bridging anyway",
                        call.call_id, leg.speaker, STASIS_START_WAIT)
        await self._add(leg, leg.snoop_id)
        await self._add(leg, leg.em_id)
        try:
            await self.media.leg_ready(call.call_id, leg.media_id)
        except (OSError, RuntimeError) as exc:
            raise TapFailed(f"media host did not take the leg: {exc}") from None
        leg.ready = True
        leg.ready_at = loop.time()
        log.info("call %s: %s leg tapped in %.0f ms (snoop %s, RTP to %s:%d on %s)", call.call_id,
                 leg.speaker, 1000 * (loop.time() - began), leg.snoop_id, *leg.rtp,
                 self.media.host_of(call.call_id))

    async def _restrict_source(self, call: Call, leg: LegTap, em: Channel) -> None:
        """Have the media host take RTP only from the address Asterisk says it sends from."""
        host = em.channelvars.get("UNICASTRTP_LOCAL_ADDRESS", "")
        port = em.channelvars.get("UNICASTRTP_LOCAL_PORT", "")
        if host and host not in ("0.0.0.0", "::"):
            try:
                await self.media.leg_source(call.call_id, leg.media_id, host,
                                            int(port) if port.isdigit() else None)
            except (OSError, RuntimeError) as exc:
                raise TapFailed(f"media host did not take the leg's source: {exc}") from None

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
            if leg.on_host:                  # its queued audio is taken, its port freed
                try:
                    await self.media.close_leg(call.call_id, leg.media_id)
                except (OSError, RuntimeError) as exc:
                    log.warning("call %s: media host did not close the %s leg: %s", call.call_id,
                                leg.speaker, exc)
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

