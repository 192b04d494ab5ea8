"""The ARI application: the telephony side of live calls. It taps each customer call and
its agent leg, points their RTP at the call's media host (ari_app.media: in this process,
or a worker), where the call's CallSession records, recognises and announces the call
(as the demo does), and keeps Asterisk free of anything it left behind.

    customer StasisStart -> media.open_call: CallSession -> CallStarted
                         -> subscribe channel:{id}
                         -> tap customer (media.open_leg, snoop spy=in ...)
                         -> continue (the dialplan goes on: Queue/Dial as before)
    Dial ANSWER (peer)   -> media.agent_joined: AgentJoined -> tap the agent channel the same way
    hangup               -> media.close_leg, delete externalMedia channels and bridges,
                            media.end_call: finish the pipeline, close the recording, CallEnded

A supervisor keeps the events websocket up: on a drop it reconnects with exponential
backoff and jitter, then resynchronises from GET /channels and /bridges (calls whose
customer is gone are closed out, broken taps are re-made, an agent answered while we
were away is found in its Dial bridge, customers left waiting in Stasis are taken on,
and our own channels and bridges that belong to no call are deleted: that is also the
start-up sweep after a crash). The same resync runs every `resync_interval` seconds
as a safety net.

After a crash, the calls the previous run was tapping (`resumable`, from the store)
whose customer Asterisk still has are tapped again at the first resync: same call id
and timeline, the recording continued in the same file with silence for the gap, a
CallFault saying which seconds of the call were not heard; the dead run's snoops and
bridges are swept. A call whose file cannot be continued records the rest in a new
file (`<name>.part2.<fmt>`) that the fault names. A call whose media host is lost (a
worker died) is moved the same way: move_call() opens it again on another host and taps
its legs again.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ari_app.calls import (STASIS_START_WAIT, Call, InterruptedCall, LegTap, StasisWaiter, TapAborted,
                           TapFailed, Tapper)
from ari_app.client import AriClient, AriDisconnected, AriError, AriNotFound, EventSocket
from ari_app.media import LocalMediaHost, MediaHost, OpenedCall, PipelineFactory, ResumeInfo
from ari_app.models import AriEvent, Bridge, Channel, OwnIds
from ari_app.ports import PortPool
from callassist.bus import EventBus
from callassist.config import Config
from callassist.events import CallEvent, CallFault, CardFired, Speaker
from callassist.session import SessionPipeline

log = logging.getLogger(__name__)

CONTINUE_DEADLINE = 3.0     # the caller waits at most this long for the customer tap
MOVE_BASE = 100_000         # utterance numbers after the n-th move start at n * MOVE_BASE
__all__ = ["AriApp", "AriConnection", "PipelineFactory", "ResyncReport"]
ConnectionState = Literal["connecting", "connected", "unauthorized", "unreachable", "error"]


@dataclass
class AriConnection:
    """Where the events websocket stands, for /healthz, /metrics and the supervisor board."""
    state: ConnectionState = "connecting"
    detail: str = ""                     # the last failure, as logged
    since: float = field(default_factory=time.time)
    reconnects: int = 0                  # connections made again after the first

    def set(self, state: ConnectionState, detail: str = "") -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.detail = state, detail


@dataclass
class ResyncReport:
    reason: str
    channels: int = 0
    bridges: int = 0
    closed: int = 0            # calls whose customer was gone
    retapped: int = 0          # legs re-tapped
    agents_found: int = 0      # agents answered while we were away
    adopted: int = 0           # customers found waiting in our Stasis app
    resumed: int = 0           # calls of the previous run tapped again
    swept_channels: int = 0
    swept_bridges: int = 0


class AriApp:
    def __init__(self, config: Config, bus: EventBus, pipeline_factory: PipelineFactory | None = None,
                 recordings_dir: str | Path | None = None, *, client: AriClient | None = None,
                 ports: PortPool | None = None, resync_interval: float = 60.0,
                 resumable: Iterable[InterruptedCall] = (), media: MediaHost | None = None) -> None:
        """`media`: where the calls' media lives; None: in this process (a LocalMediaHost
        with `pipeline_factory`, `recordings_dir` and `ports`, closed by stop())."""
        if client is None and not config.ari.url:
            raise ValueError("[ari] url is empty: set it to Asterisk's HTTP address, "
                             "e.g. http://127.0.0.1:8088")
        if media is not None and (ports is not None or pipeline_factory is not None):
            raise ValueError("ports and pipeline_factory belong to the media host given")
        self.config = config
        self.bus = bus
        self.ari = client or AriClient.from_config(config.ari)
        self.app_name = config.ari.app
        self.ids = OwnIds(self.app_name)
        self._own_media: LocalMediaHost | None = None
        if media is None:
            media = self._own_media = LocalMediaHost(config, self._publish, pipeline_factory,
                                                     recordings_dir, ports)
        self.media: MediaHost = media
        self.waiter = StasisWaiter()
        self.tapper = Tapper(self.ari, self.ids, self.media, self.waiter, self._publish)
        self.resync_interval = resync_interval
        self.calls: dict[str, Call] = {}          # by call id (the customer channel's id)
        self._resumable = {c.call_id: c for c in resumable}   # decided at the first resync
        self.resumed: set[str] = set()            # ids of the calls tapped again
        self.disconnects = 0
        self.connection = AriConnection()
        self.last_resync: ResyncReport | None = None
        self._tasks: set[asyncio.Task] = set()
        self._supervisor: asyncio.Task | None = None
        self._cue_task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    @classmethod
    def from_config(cls, config: Config, bus: EventBus, engine: Any, matcher: Any,
                    recordings_dir: str | Path | None, **kwargs: Any) -> "AriApp":
        """The production wiring: one CallPipeline per call on the shared engine and matcher."""
        from callassist.pipeline import CallPipeline

        def pipeline(call_id: str) -> SessionPipeline:
            return CallPipeline(call_id, engine, matcher, app.publisher_for(call_id), analytics=config.analytics)
        if kwargs.get("media") is not None:      # the pipelines live on the media host
            return cls(config, bus, None, None, **kwargs)
        app = cls(config, bus, pipeline, recordings_dir, **kwargs)
        return app

    def publisher_for(self, call_id: str) -> Callable[[CallEvent], None]:
        """Where a call's pipeline publishes: the bus, through UtteranceShift for a call
        resumed after a restart or a move (media in this process)."""
        if isinstance(self.media, LocalMediaHost):
            return self.media.publisher_for(call_id)
        return self.bus.publish

    def open_recordings(self) -> set[Path]:
        """The files the calls' recorders are writing in this process (crash recovery must
        not touch them)."""
        return self.media.open_recordings() if isinstance(self.media, LocalMediaHost) else set()

    def release_resumable(self) -> set[str]:
        """Give up tapping the previous run's calls again (Asterisk did not answer in
        time: the caller closes them out); returns the ids that were tapped again."""
        self._resumable.clear()
        return set(self.resumed)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the supervisor (connect, sweep, then follow events); returns at once."""
        if self._supervisor is not None:
            raise RuntimeError("AriApp already started")
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name="ari-supervisor")
        if self.config.cue.enabled:
            self._cue_task = asyncio.create_task(self._cue_loop(self.bus.subscribe()), name="ari-cue")

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until the events websocket is up and the first resync/sweep is done."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def stop(self) -> None:
        """Close every call (their taps are removed from Asterisk; the calls themselves go on),
        publish CallEnded for each, stop the supervisor and close every socket."""
        self._stopping = True
        for task in (self._supervisor, self._cue_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._supervisor, self._cue_task) if t), return_exceptions=True)
        self._supervisor = self._cue_task = None
        self._ready.clear()
        await asyncio.gather(*(self._end_call(call, "callassist stopping") for call in list(self.calls.values())),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._own_media is not None:
            await self._own_media.close()
        await self.ari.close()

    @property
    def open_tasks(self) -> int:
        return len(self._tasks)

    # -- supervisor ----------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        # Jitter (x0.8-1.2) spreads many instances' retries, but never above the ceiling:
        # [ari] reconnect_max_delay bounds how long a returning Asterisk goes unheard, and
        # every second of it is a second of calls nobody taps (the default is 5 s).
        cfg = self.config.ari
        base = min(cfg.reconnect_max_delay, cfg.reconnect_initial_delay * 2 ** max(attempt - 1, 0))
        return min(cfg.reconnect_max_delay, base * random.uniform(0.8, 1.2))

    async def _supervise(self) -> None:
        attempt = 0
        first = True
        while True:
            try:
                socket = await self.ari.connect_events()
            except AriError as exc:
                attempt += 1
                delay = self._backoff(attempt)
                if exc.status == 401:
                    self.connection.set("unauthorized", f"Asterisk refused user "
                                        f"{self.config.ari.username!r} (401 wrong username/password)")
                    log.error("ARI refused user %r (401): check [ari] username/password; "
                              "retrying in %.2f s", self.config.ari.username, delay)
                else:
                    self.connection.set("unreachable" if exc.status == 0 else "error",
                                        f"cannot connect to {self.ari.events_url}: {exc}")
                    log.warning("ARI events: cannot connect to %s (%s%s); retrying in %.2f s",
                                self.ari.events_url, exc,
                                ": is Asterisk running, is [ari] url right?" if exc.status == 0 else "",
                                delay)
                await asyncio.sleep(delay)
                continue
            log.info("ARI events: connected to %s as app %r%s", self.ari.events_url, self.app_name,
                     f" after {attempt} failed attempt(s)" if attempt else "")
            periodic: asyncio.Task | None = None
            try:
                await self.resync("start-up" if first else "reconnect")
                if not first:
                    self.connection.reconnects += 1
                first = False
                attempt = 0
                self.connection.set("connected")
                self._ready.set()
                periodic = asyncio.create_task(self._periodic_resync(), name="ari-resync")
                await self._consume(socket)
            except AriDisconnected as exc:
                log.warning("ARI events: %s", exc)
            except AriError as exc:
                log.warning("ARI resync failed: %s", exc)
            finally:
                self._ready.clear()
                if periodic is not None:
                    periodic.cancel()
                await socket.close()
            self.disconnects += 1
            self.connection.set("connecting", "events websocket lost; reconnecting")
            attempt += 1
            delay = self._backoff(attempt)
            log.warning("ARI events: reconnecting in %.2f s (%d call(s) tracked)", delay, len(self.calls))
            await asyncio.sleep(delay)

    async def _consume(self, socket: EventSocket) -> None:
        async for event in socket:
            try:
                self._dispatch(event)
            except Exception:
                log.exception("ARI event %s not handled", event.type)
        raise AriDisconnected("events websocket ended")

    async def _periodic_resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            try:
                await self.resync("periodic")
            except AriError as exc:
                log.warning("periodic resync failed: %s", exc)

    # -- event dispatch (synchronous: slow work goes to tasks) -----------------------------------
    def _dispatch(self, event: AriEvent) -> None:
        kind, channel = event.type, event.channel
        if kind == "StasisStart" and channel is not None:
            if self.ids.is_ours(channel.id):
                self.waiter.started(channel.id)
            else:
                self._on_customer(channel)
        elif kind in ("StasisEnd", "ChannelDestroyed", "ChannelHangupRequest") and channel is not None:
            if kind == "ChannelHangupRequest" and event.raw.get("soft"):
                return                               # a soft hangup request moves, not ends
            if self.ids.is_ours(channel.id):
                if kind != "ChannelHangupRequest":
                    self._on_own_channel_end(channel.id)
            elif kind != "StasisEnd":                # the customer's StasisEnd is our continue
                self._on_party_hangup(channel.id, kind)
        elif kind == "Dial":
            self._on_dial(event)
        elif kind == "ApplicationReplaced":
            # Asterisk sends this app's events to the newer websocket from now on (two
            # callassist instances on one app name?): this one hears nothing until it reconnects.
            log.error("ARI: another client registered app %r and now gets its events; this "
                      "instance is deaf until its websocket reconnects", self.app_name)

    def _on_customer(self, channel: Channel) -> None:
        if channel.id in self.calls:
            return
        if self._stopping:
            self._spawn(self._continue(channel.id))
            return
        loop = asyncio.get_running_loop()
        call = Call(call_id=channel.id, customer_id=channel.id, caller=channel.caller.number,
                    started=loop.time())
        # the media is being opened as soon as the call is tracked (an early Dial waits for it)
        call.media_open = self._spawn(self._open_media(call))
        self.calls[call.call_id] = call
        leg = self.tapper.new_leg("customer", channel.id)
        call.legs["customer"] = leg         # reserved at once: a resync must not tap it twice
        log.info("call %s: customer %s (%s) entered Stasis", call.call_id, channel.name,
                 channel.caller.number or "no caller id")
        self._spawn_for(call, self._open_call(call, leg))

    def _on_party_hangup(self, channel_id: str, kind: str) -> None:
        call = self.calls.get(channel_id)
        if call is not None:
            if not call.closing:
                self._spawn(self._end_call(call, f"customer hung up ({kind})"))
            return
        call = self._call_of_agent(channel_id)
        if call is not None:
            self._agent_gone(call, channel_id)

    def _on_own_channel_end(self, channel_id: str) -> None:
        self.waiter.abandon(channel_id)
        for call in self.calls.values():
            leg = call.leg_of(channel_id)
            if leg is not None and not leg.closed and not leg.suspect and not call.closing:
                # Asterisk ends a snoop when its channel hangs up: find out which it was
                leg.suspect = True
                self._spawn_for(call, self._check_leg(call, leg))
                return

    def _on_dial(self, event: AriEvent) -> None:
        caller = event.caller or event.channel
        call = self.calls.get(caller.id) if caller is not None else None
        if call is None or call.closing or event.peer is None:
            return
        log.debug("call %s: Dial %s -> %s [%s]", call.call_id, caller.name if caller else "?",
                  event.peer.name, event.dialstatus)
        if event.dialstatus == "ANSWER":
            self._agent_answered(call, event.peer)

    def _call_of_agent(self, channel_id: str) -> Call | None:
        return next((c for c in self.calls.values() if c.agent_id == channel_id), None)

    # -- a call's life -------------------------------------------------------------------------------
    async def _open_media(self, call: Call, resume: ResumeInfo | None = None) -> OpenedCall | None:
        """The call's session on its media host (CallStarted unless resumed); None if no
        host could take it (the call goes on untapped, with a fault saying so)."""
        try:
            opened = await self.media.open_call(call.call_id, call.caller, call.started_at, resume)
        except (OSError, RuntimeError) as exc:           # MediaError is a RuntimeError
            log.error("call %s: media not opened: %s", call.call_id, exc)
            self._publish(CallFault(call.call_id, f"call not tapped: its media could not be opened ({exc})"))
            return None
        call.recording = opened.recording
        return opened

    async def _open_call(self, call: Call, leg: LegTap) -> None:
        try:
            await self.ari.subscribe(f"channel:{call.customer_id}")
        except AriError as exc:   # without it we learn of the hangup from the snoop's end
            log.warning("call %s: subscription failed: %s", call.call_id, exc)
        tap = self._start_leg(call, leg)
        done, _ = await asyncio.wait({tap}, timeout=CONTINUE_DEADLINE)
        if not done:
            log.warning("call %s: customer tap still not ready after %.0f s; letting the call go on",
                        call.call_id, CONTINUE_DEADLINE)
        if not call.closing:
            await self._continue(call.customer_id)

    async def _continue(self, channel_id: str) -> None:
        try:
            await self.ari.continue_in_dialplan(channel_id)
        except AriNotFound:
            call = self.calls.get(channel_id)
            if call is not None:
                self._spawn(self._end_call(call, "customer gone before continue"))
        except AriError as exc:
            log.warning("call %s: continue failed: %s", channel_id, exc)

    def _start_leg(self, call: Call, leg: LegTap) -> asyncio.Task:
        """Set the leg's tap up in a task (its audio flows to the media host once bridged)."""
        async def setup() -> bool:
            try:
                await self.tapper.open(call, leg)
            except TapAborted as exc:
                log.info("call %s: %s tap abandoned: %s", call.call_id, leg.speaker, exc)
                await self.tapper.close(call, leg)
                if not call.closing:
                    self._spawn_for(call, self._check_party(call, leg.speaker, leg.channel_id))
                return False
            except (TapFailed, AriError) as exc:
                log.error("call %s: %s tap failed: %s", call.call_id, leg.speaker, exc)
                if not call.closing:
                    self._publish(CallFault(call.call_id, f"{leg.speaker} tap failed: {exc}"))
                await self.tapper.close(call, leg)
                return False
            return True
        leg.setup = self._spawn_for(call, setup())
        return leg.setup

    async def _check_party(self, call: Call, speaker: Speaker, channel_id: str) -> bool:
        """Is the leg's channel still there? If not, end the call / the agent leg."""
        try:
            await self.ari.get_channel(channel_id)
            return True
        except AriNotFound:
            if speaker == "customer":
                self._spawn(self._end_call(call, "customer gone"))
            else:
                self._agent_gone(call, channel_id)
            return False
        except AriError as exc:
            log.warning("call %s: cannot check %s channel: %s", call.call_id, speaker, exc)
            return True

    async def _check_leg(self, call: Call, leg: LegTap) -> None:
        """One of the leg's channels ended without us: its party hung up, or someone removed
        our snoop/externalMedia channel (then tap again)."""
        await asyncio.sleep(0.05)        # the party's own hangup event usually follows
        if leg.closed or call.closing:
            return
        if await self._check_party(call, leg.speaker, leg.channel_id) and not leg.closed:
            log.warning("call %s: %s tap broken by someone else; tapping again", call.call_id, leg.speaker)
            self._retap(call, leg.speaker, leg.channel_id)
        leg.suspect = False

    def _retap(self, call: Call, speaker: Speaker, channel_id: str) -> None:
        old = call.legs.get(speaker)
        if old is not None:
            self.tapper.retire(call, old)
            self._spawn_for(call, self.tapper.close(call, old))
        leg = self.tapper.new_leg(speaker, channel_id)
        call.legs[speaker] = leg
        self._start_leg(call, leg)

    def _agent_answered(self, call: Call, agent: Channel) -> None:
        if call.agent_id == agent.id:
            return
        call.agent_id, call.agent_endpoint = agent.id, agent.endpoint
        log.info("call %s: agent %s answered (%s)", call.call_id, agent.endpoint, agent.id)
        self._media_request(call, self._announce_agent(call, agent.endpoint))
        self._spawn_for(call, self._subscribe_quietly(call, agent.id))
        self._retap(call, "agent", agent.id)

    def _agent_gone(self, call: Call, agent_id: str) -> None:
        if call.agent_id == agent_id:
            call.agent_id = None
        leg = call.legs.get("agent")
        if leg is not None and leg.channel_id == agent_id:
            log.info("call %s: agent %s left", call.call_id, call.agent_endpoint)
            self.tapper.retire(call, leg)
            self._spawn_for(call, self.tapper.close(call, leg))

    async def _announce_agent(self, call: Call, endpoint: str) -> None:
        if await call.media_opened():
            try:
                await self.media.agent_joined(call.call_id, endpoint)
            except (OSError, RuntimeError) as exc:
                log.warning("call %s: agent %s not announced: %s", call.call_id, endpoint, exc)

    async def _subscribe_quietly(self, call: Call, channel_id: str) -> None:
        try:
            await self.ari.subscribe(f"channel:{channel_id}")
        except AriError as exc:
            log.warning("call %s: cannot subscribe to %s: %s", call.call_id, channel_id, exc)

    async def _end_call(self, call: Call, reason: str) -> None:
        if call.closing:
            await call.ended.wait()
            return
        call.closing = True
        loop = asyncio.get_running_loop()
        duration = call.elapsed(loop.time())
        log.info("call %s: ending (%s) after %.1f s", call.call_id, reason, duration)
        try:
            legs = [*call.legs.values(), *call.retiring]
            await asyncio.gather(*(self.tapper.close(call, leg) for leg in legs), return_exceptions=True)
            current = asyncio.current_task()
            others = [t for t in call.tasks if t is not current]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others)
            if call.media_requests:          # an agent announced before the end
                await asyncio.wait(set(call.media_requests))
            if await call.media_opened():    # flushes, closes the recording, CallEnded
                try:
                    await self.media.end_call(call.call_id, duration)
                except (OSError, RuntimeError) as exc:
                    log.error("call %s: media host did not end the call: %s", call.call_id, exc)
                    await self._end_elsewhere(call, duration)
        finally:
            self.calls.pop(call.call_id, None)
            call.ended.set()

    async def _end_elsewhere(self, call: Call, duration: float) -> None:
        """The call's media host could not end it (a worker that died as the customer hung
        up): open the call on a live host only to end it there, so its recording is closed
        and its end announced, where every call's end is announced (not left live on screens)."""
        call.utterance_base = MOVE_BASE * (call.utterance_base // MOVE_BASE + 1)
        resume = ResumeInfo(call.utterance_base, call.started_at, Path(call.recording) if call.recording else None)
        try:
            await self.media.open_call(call.call_id, call.caller, call.started_at, resume)
            await self.media.end_call(call.call_id, duration)
        except (OSError, RuntimeError) as exc:
            log.error("call %s: no media host could end the call (%s); the worker that takes no "
                      "audio for it ends it, if any has it", call.call_id, exc)

    # -- calls of the previous run, calls whose media host was lost ------------------------------
    def _resume_call(self, interrupted: InterruptedCall, customer: Channel,
                     channels: dict[str, Channel], bridges: dict[str, Bridge]) -> None:
        """Tap a call the previous run was tapping again, on its original timeline."""
        loop = asyncio.get_running_loop()
        elapsed = max(0.0, time.time() - interrupted.started_at)
        call = Call(call_id=interrupted.call_id, customer_id=customer.id,
                    caller=interrupted.caller or customer.caller.number, started=loop.time() - elapsed,
                    started_at=interrupted.started_at, utterance_base=interrupted.next_utterance)
        self.calls[call.call_id] = call
        self.resumed.add(call.call_id)
        leg = self.tapper.new_leg("customer", customer.id)
        call.legs["customer"] = leg          # reserved at once: the sweep must not take it
        log.warning("call %s: still up after callassist restarted (%.1f s into the call); "
                    "tapping it again", call.call_id, elapsed)
        # the media first (no leg's frame can come before it); no CallStarted: the previous
        # run announced the call
        heard_until = (max(0.0, interrupted.last_event_at - interrupted.started_at)
                       if interrupted.last_event_at is not None else None)
        call.media_open = self._spawn(self._open_media(call, ResumeInfo(
            call.utterance_base, call.started_at, interrupted.recording, heard_until)))
        self._spawn_for(call, self._reopen_call(call, leg, customer.in_stasis_app(self.app_name)))
        if (agent := self._find_agent(call, channels, bridges)) is not None:
            self._agent_answered(call, agent)

    async def _reopen_call(self, call: Call, leg: LegTap, in_stasis: bool) -> None:
        loop = asyncio.get_running_loop()
        tap = self._start_leg(call, leg)
        resumed_at = call.elapsed(loop.time())
        opened = await call.opened()
        heard_until = opened.heard_until if opened is not None else None
        since = f"from {heard_until:.1f} s " if heard_until is not None else ""
        self._publish(CallFault(call.call_id, f"callassist restarted during the call: not heard "
                                f"{since}to {resumed_at:.1f} s of the call; tapped again"
                                f"{opened.recording_note if opened is not None else ''}"))
        try:
            await self.ari.subscribe(f"channel:{call.customer_id}")
        except AriError as exc:
            log.warning("call %s: subscription failed: %s", call.call_id, exc)
        if in_stasis:                        # the crash came before we let the call go on
            await asyncio.wait({tap}, timeout=CONTINUE_DEADLINE)
            if not call.closing:
                await self._continue(call.customer_id)

    async def move_call(self, call_id: str, reason: str) -> None:
        """The call's media host is lost (`reason`, e.g. "识别节点 X 失联", the fault's first
        clause): open the call again on the media host (which picks a live one), the
        recording continued and utterances numbered past the earlier ones, tap every leg
        again, and put the seconds not heard into the call's record."""
        call = self.calls.get(call_id)
        if call is None or call.closing:
            return
        if call.media_open is not None:
            await asyncio.wait({call.media_open})      # an opening in flight ends first
            if call.closing:
                return
        loop = asyncio.get_running_loop()
        call.utterance_base = MOVE_BASE * (call.utterance_base // MOVE_BASE + 1)
        resume = ResumeInfo(call.utterance_base, call.started_at,
                            Path(call.recording) if call.recording else None)
        log.warning("call %s: %s; moving its media", call_id, reason)
        call.media_open = self._spawn(self._open_media(call, resume))
        for speaker, leg in list(call.legs.items()):   # the new legs wait for the new opening
            self._retap(call, speaker, leg.channel_id)
        setups = {leg.setup for leg in call.legs.values() if leg.setup is not None}
        opened = await call.opened()
        if setups:                                     # heard again from when they are bridged
            await asyncio.wait(setups, timeout=CONTINUE_DEADLINE)
        moved_at = call.elapsed(max((leg.ready_at for leg in call.legs.values() if leg.ready_at is not None),
                                    default=loop.time()))
        if opened is None:
            self._publish(CallFault(call_id, f"{reason}：自第 {moved_at:.1f} 秒起未收听；未能转至其他节点"))
            return
        host = self.media.host_of(call_id)
        gap = (f"第 {opened.heard_until:.1f}–{moved_at:.1f} 秒未收听" if opened.heard_until is not None
               else f"第 {moved_at:.1f} 秒前有一段未收听")
        self._publish(CallFault(call_id, f"{reason}：{gap}；已转至节点 {host}{opened.recording_note}"))

    # -- resynchronisation and sweep -------------------------------------------------------------
    async def resync(self, reason: str = "manual") -> ResyncReport:
        """Bring what we track in line with what Asterisk has; delete our orphans."""
        channels = {c.id: c for c in await self.ari.list_channels()}
        bridges = {b.id: b for b in await self.ari.list_bridges()}
        report = ResyncReport(reason, len(channels), len(bridges))
        for call in list(self.calls.values()):
            if call.closing:
                continue
            if call.customer_id not in channels:
                report.closed += 1
                self._spawn(self._end_call(call, f"customer channel gone ({reason} resync)"))
                continue
            if reason != "periodic":    # a new websocket may be a new app registration
                self._spawn_for(call, self._subscribe_quietly(call, call.customer_id))
            if call.agent_id is not None and call.agent_id not in channels:
                self._agent_gone(call, call.agent_id)
            if call.agent_id is None and (agent := self._find_agent(call, channels, bridges)) is not None:
                report.agents_found += 1
                self._agent_answered(call, agent)
            leg_channels: tuple[tuple[Speaker, str | None], ...] = (
                ("customer", call.customer_id), ("agent", call.agent_id))
            for speaker, channel_id in leg_channels:
                leg = call.legs.get(speaker)
                if channel_id is None or call.media_failed or (
                        leg is not None and (not leg.ready or Tapper.intact(leg, channels, bridges))):
                    continue
                state = "missing" if leg is None else "broken"
                log.warning("call %s: %s tap %s; tapping again", call.call_id, speaker, state)
                self._publish(CallFault(call.call_id, f"{speaker} tap {state} ({reason} resync) at "
                                        f"{call.elapsed(asyncio.get_running_loop().time()):.1f} s "
                                        f"of the call: tapped again"))
                report.retapped += 1
                self._retap(call, speaker, channel_id)
        for interrupted in list(self._resumable.values()):
            channel = channels.get(interrupted.call_id)
            if channel is not None and interrupted.call_id not in self.calls and not self._stopping:
                report.resumed += 1
                self._resume_call(interrupted, channel, channels, bridges)
        self._resumable.clear()    # the rest ended while we were down: the store closes them
        for channel in channels.values():
            if (not self.ids.is_ours(channel.id) and channel.in_stasis_app(self.app_name)
                    and channel.id not in self.calls and not self._stopping):
                report.adopted += 1
                self._on_customer(channel)
        reserved: set[str] = set()
        for call in self.calls.values():
            reserved |= call.object_ids()
        stale_channels = [c for c in channels if self.ids.is_ours(c) and c not in reserved]
        stale_bridges = [b for b in bridges if self.ids.is_ours(b) and b not in reserved]
        results = await asyncio.gather(*(self.ari.hangup(c) for c in stale_channels),
                                       *(self.ari.destroy_bridge(b) for b in stale_bridges),
                                       return_exceptions=True)
        for object_id, result in zip([*stale_channels, *stale_bridges], results):
            if isinstance(result, BaseException) and not isinstance(result, AriNotFound):
                log.warning("sweep: could not delete %s: %s", object_id, result)
        report.swept_channels, report.swept_bridges = len(stale_channels), len(stale_bridges)
        self.last_resync = report
        busy = report.closed or report.retapped or report.agents_found or report.adopted or \
            report.resumed or report.swept_channels or report.swept_bridges
        (log.info if busy or reason != "periodic" else log.debug)(
            "resync (%s): %d channel(s), %d bridge(s) in Asterisk; %d call(s) tracked; closed %d, "
            "re-tapped %d leg(s), found %d agent(s), took on %d waiting call(s), resumed %d call(s) "
            "of the previous run; swept %d channel(s) and %d bridge(s) of ours", reason,
            report.channels, report.bridges, len(self.calls), report.closed, report.retapped,
            report.agents_found, report.adopted, report.resumed, report.swept_channels,
            report.swept_bridges)
        return report

    def _find_agent(self, call: Call, channels: dict[str, Channel],
                    bridges: dict[str, Bridge]) -> Channel | None:
        """The party bridged with the customer by Dial()/Queue() (a two-party bridge not ours)."""
        for bridge in bridges.values():
            if (self.ids.is_ours(bridge.id) or call.customer_id not in bridge.channels
                    or len(bridge.channels) != 2):
                continue
            for member in bridge.channels:
                if member != call.customer_id and not self.ids.is_ours(member) and member in channels:
                    return channels[member]
        return None

    # -- whisper cue ----------------------------------------------------------------------------------
    async def _cue_loop(self, subscription: Any) -> None:
        try:
            async for event in subscription:
                if not (isinstance(event, CardFired) and event.card.severity == "critical"):
                    continue
                call = self.calls.get(event.call_id)
                if call is not None and not call.closing and call.agent_id and not call.cue_ids:
                    self._spawn_for(call, self._play_cue(call, call.agent_id))
        finally:
            subscription.close()

    async def _play_cue(self, call: Call, agent_id: str) -> None:
        """A snoop on the agent's channel with whisper=out: only the agent hears it."""
        cue = self.config.cue
        cue_id = self.ids.new("cue")
        call.cue_ids.add(cue_id)
        started = self.waiter.expect(cue_id)
        try:
            await self.ari.snoop(agent_id, snoop_id=cue_id, spy="none", whisper="out",
                                 app_args=f"cue,{call.call_id}")
            await asyncio.wait({started}, timeout=STASIS_START_WAIT)
            await self.ari.play(cue_id, cue.media)
            log.info("call %s: cue %s played to agent %s", call.call_id, cue.media, call.agent_endpoint)
            await asyncio.sleep(cue.duration_ms / 1000)
        except AriError as exc:
            log.warning("call %s: cue not played: %s", call.call_id, exc)
        finally:
            self.waiter.abandon(cue_id)
            try:
                await self.ari.hangup(cue_id)
            except AriError:
                pass                         # already gone with the agent's channel
            call.cue_ids.discard(cue_id)

    # -- helpers -----------------------------------------------------------------------------------------
    def _publish(self, event: CallEvent) -> None:
        self.bus.publish(event)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _spawn_for(self, call: Call, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = self._spawn(coro)
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)
        return task

    def _media_request(self, call: Call, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """A request to the call's media host that the call's end waits for (not cancels)."""
        task = self._spawn(coro)
        call.media_requests.add(task)
        task.add_done_callback(call.media_requests.discard)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ARI app task failed", exc_info=task.exception())
