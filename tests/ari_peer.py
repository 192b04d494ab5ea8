"""An ARI test peer: a small stand-in for Asterisk 23 that CI can run.

It speaks the REST subset callassist uses and the events websocket with Asterisk's
JSON shapes (rest-api/api-docs/*.json) and event order as observed on a real
Asterisk 23.4.1 (../shared/domain/asterisk.md):

- snoop and externalMedia channels get their own StasisStart 1-8 ms after the
  request; addChannel before it answers 422 "Channel not in Stasis application";
- `continue` gives StasisEnd for the customer; an explicit subscription
  (applications/{app}/subscription) survives it; the dialplan then Dial()s the
  agent: Dial events with dialstatus "" then RINGING then ANSWER, with `peer`;
- hanging up a channel removes its snoops (4-20 ms later) and the Dial bridge,
  but leaves externalMedia channels and the app's bridges; deleting a gone object
  answers 404; a bad api_key / password answers 401;
- while an app has no events websocket its events are lost and Stasis() to it
  fails (the call goes on in the dialplan untapped); subscriptions survive.

Media is real: while a bridge holds a snoop and an externalMedia channel, the peer
sends RTP over UDP (slin16, payload type 118, big-endian, 640-byte payload every
20 ms at real-time pacing) to the externalMedia channel's external_host, taken from
the snooped channel's audio (a WAV the test assigned; zeros in silence or after it
ends, like Asterisk's snoop). `stop_rtp(channel)` stops it to simulate a stall.

Scenario API: start_call, hangup, drop_websocket, restart, stop_rtp, after (run an
action after a request of a kind), fail (answer a kind with an error), delay
(answer late); introspection: channels, bridges, our_objects().
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from callassist.audio import read_recording

log = logging.getLogger("ari_peer")

RATE = 16000
FRAME_SAMPLES = 320                  # 20 ms at 16 kHz
PAYLOAD_TYPES = {"slin16": 118, "slin": 10, "ulaw": 0}
ASTERISK_ID = "02:42:ac:11:00:02"

Audio = str | Path | np.ndarray | None


def _timestamp() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


def load_audio(audio: Audio) -> np.ndarray | None:
    """A WAV/FLAC path (any rate, first channel) or an int16 array -> int16 at 16 kHz."""
    if audio is None:
        return None
    if isinstance(audio, np.ndarray):
        return audio.astype(np.int16, copy=False)
    return read_recording(audio).channels[0]


@dataclass
class PeerChannel:
    id: str
    name: str
    kind: str                                  # customer | agent | snoop | external_media
    state: str = "Up"
    caller: tuple[str, str] = ("", "")
    connected: tuple[str, str] = ("", "")
    context: str = "default"
    exten: str = "s"
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    creationtime: str = field(default_factory=_timestamp)
    channelvars: dict[str, str] = field(default_factory=dict)
    stasis_app: str | None = None              # app whose Stasis the channel is in
    stasis_args: list[str] = field(default_factory=list)
    subscribers: set[str] = field(default_factory=set)   # explicit app subscriptions
    snoop_of: str | None = None
    spy: str = "none"
    whisper: str = "none"
    external_host: tuple[str, int] | None = None
    format: str = ""
    rtp_socket: socket.socket | None = None
    bridge: str | None = None
    audio: np.ndarray | None = None            # what this party says (int16, 16 kHz)
    audio_t0: float | None = None              # loop time when audio sample 0 is spoken
    rtp_stopped: bool = False
    alive: bool = True

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id, "name": self.name, "state": self.state, "protocol_id": "",
            "caller": {"name": self.caller[0], "number": self.caller[1]},
            "connected": {"name": self.connected[0], "number": self.connected[1]},
            "accountcode": "",
            "dialplan": {"context": self.context, "exten": self.exten, "priority": self.priority,
                         "app_name": self.app_name, "app_data": self.app_data},
            "creationtime": self.creationtime, "language": "en"}
        if self.channelvars:
            data["channelvars"] = dict(self.channelvars)
        return data


@dataclass
class PeerBridge:
    id: str
    name: str = ""
    bridge_class: str = "stasis"
    creator: str = "Stasis"
    stasis: bool = True                        # made through ARI (False: the Dial bridge)
    apps: set[str] = field(default_factory=set)  # apps whose channels entered it (get its events)
    channels: list[str] = field(default_factory=list)
    creationtime: str = field(default_factory=_timestamp)
    media_tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "technology": "simple_bridge" if len(self.channels) <= 2 else "softmix",
                "bridge_type": "mixing", "bridge_class": self.bridge_class, "creator": self.creator,
                "name": self.name, "channels": list(self.channels), "creationtime": self.creationtime,
                "video_mode": "none"}


@dataclass
class PeerCall:
    customer: PeerChannel
    agent_endpoint: str
    agent_audio: np.ndarray | None
    answer_after: float
    agent: PeerChannel | None = None
    dial_bridge: PeerBridge | None = None
    dial_task: asyncio.Task | None = None
    tapped_in_stasis: bool = False             # it reached the app (Stasis did not fail)


class _Action:
    def __init__(self, op: str, action: Callable[..., Any], times: int) -> None:
        self.op, self.action, self.times = op, action, times


class AriPeer:
    def __init__(self, username: str = "callassist", password: str = "secret",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.username, self.password = username, password
        self.host, self.port = host, port
        self.channels: dict[str, PeerChannel] = {}
        self.bridges: dict[str, PeerBridge] = {}
        self.calls: list[PeerCall] = []
        self.requests: list[tuple[str, str, str]] = []     # (op, method, path?query) served
        self.playbacks: list[dict[str, Any]] = []
        self.events_sent: list[dict[str, Any]] = []
        self.events_dropped: list[dict[str, Any]] = []
        self.rtp_packets_sent = 0
        self.websocket_connects = 0
        self.stasis_delay = (0.001, 0.008)     # our channels' StasisStart comes this late (s)
        self.refuse_websocket = False           # answer the events websocket 503 (a half-up PBX)
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._outboxes: dict[web.WebSocketResponse, asyncio.Queue] = {}
        self._after: list[_Action] = []
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._delays: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self._boot = int(time.time())
        self._seq = 0
        self._chan_index = 0x20

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "AriPeer":
        app = web.Application(middlewares=[self._auth_middleware])
        r = app.router
        r.add_get("/ari/events", self._events_ws)
        r.add_get("/ari/asterisk/info", self._info)
        r.add_post("/ari/channels/externalMedia", self._external_media)
        r.add_get("/ari/channels", self._list_channels)
        r.add_get("/ari/channels/{id}", self._get_channel)
        r.add_delete("/ari/channels/{id}", self._hangup_channel)
        r.add_post("/ari/channels/{id}/snoop", self._snoop)
        r.add_post("/ari/channels/{id}/snoop/{snoop_id}", self._snoop)
        r.add_post("/ari/channels/{id}/continue", self._continue)
        r.add_post("/ari/channels/{id}/play", self._play)
        r.add_get("/ari/channels/{id}/variable", self._get_variable)
        r.add_get("/ari/bridges", self._list_bridges)
        r.add_post("/ari/bridges", self._create_bridge)
        r.add_post("/ari/bridges/{id}", self._create_bridge)
        r.add_get("/ari/bridges/{id}", self._get_bridge)
        r.add_delete("/ari/bridges/{id}", self._destroy_bridge)
        r.add_post("/ari/bridges/{id}/addChannel", self._add_channel)
        r.add_post("/ari/bridges/{id}/removeChannel", self._remove_channel)
        r.add_post("/ari/applications/{app}/subscription", self._subscribe)
        r.add_delete("/ari/applications/{app}/subscription", self._unsubscribe)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._wipe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, downtime: float = 0.3) -> None:
        """Asterisk restarts: every channel and bridge is gone, websockets drop, ARI is
        unreachable for `downtime`, then a new boot (new uniqueid epoch) answers."""
        self._wipe()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.sleep(downtime)
        self._boot += 1000
        await self.start()

    def _wipe(self) -> None:
        for ws in list(self._sockets.values()):
            self._spawn(ws.close())
        self._sockets.clear()
        for call in self.calls:
            if call.dial_task:
                call.dial_task.cancel()
        for bridge in self.bridges.values():
            for task in bridge.media_tasks.values():
                task.cancel()
        for chan in self.channels.values():
            chan.alive = False
            if chan.rtp_socket:
                chan.rtp_socket.close()
        self.channels.clear()
        self.bridges.clear()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- scenario API ----------------------------------------------------------------------
    def start_call(self, customer_audio: Audio, agent_audio: Audio = None,
                   agent_endpoint: str | None = "PJSIP/1001", answer_after: float = 1.0,
                   caller: str = "13800138000", app: str = "callassist",
                   customer_lead: float = 0.0) -> PeerCall:
        """A customer call reaches Stasis(app). Its audio starts `customer_lead` seconds
        from now. After the app's `continue` the dialplan Dial()s `agent_endpoint`
        (None: no Dial), which answers `answer_after` seconds later and speaks agent_audio."""
        customer = self._new_channel("customer", f"PJSIP/carrier-{self._next_index():08x}",
                                     caller=("", caller), context="from-pstn", exten="4008", priority=2)
        customer.audio = load_audio(customer_audio)
        customer.audio_t0 = asyncio.get_running_loop().time() + customer_lead
        call = PeerCall(customer, agent_endpoint or "", load_audio(agent_audio), answer_after)
        self.calls.append(call)
        if app in self._sockets:
            call.tapped_in_stasis = True
            customer.app_name, customer.app_data = "Stasis", app
            self._enter_stasis(customer, app, [])
        else:    # Stasis() to an unregistered app fails: the dialplan just goes on
            log.info("peer: app %s not connected; %s goes on untapped", app, customer.id)
            self._dialplan_next(call)
        return call

    async def hangup(self, target: PeerCall | PeerChannel | str, who: str = "customer") -> None:
        """Hang up a call's customer (with its agent) or its agent (then the customer
        hangs up too, at the end of the dialplan), or one channel by object or id."""
        if isinstance(target, PeerCall):
            if who == "agent" and target.agent is not None and target.agent.alive:
                await self._hangup(target.agent)
                await asyncio.sleep(0.01)
            await self._hangup(target.customer)
            return
        chan = target if isinstance(target, PeerChannel) else self.channels.get(target)
        if chan is not None and chan.alive:
            await self._hangup(chan)

    async def drop_websocket(self, app: str | None = None) -> None:
        """Close the events websocket(s) from the server side, as a network cut would."""
        for name, ws in list(self._sockets.items()):
            if app is None or name == app:
                del self._sockets[name]
                await ws.close()

    def send_raw(self, text: str, app: str = "callassist") -> None:
        """Put any text on the app's events websocket (malformed-message tests)."""
        self._outboxes[self._sockets[app]].put_nowait(text)

    def stop_rtp(self, target: PeerChannel | str) -> None:
        """No more RTP for the snoops of this channel (a stalled media path)."""
        chan = target if isinstance(target, PeerChannel) else self.channels[target]
        chan.rtp_stopped = True

    def after(self, op: str, action: Callable[..., Any], times: int = 1) -> None:
        """After serving the next `times` requests of kind `op` (snoop, externalMedia,
        createBridge, addChannel, continue, subscribe, hangup, destroyBridge, list...),
        run action(request_info) (sync or async) before the answer goes out."""
        self._after.append(_Action(op, action, times))

    def fail(self, op: str, status: int, message: str, times: int = 1) -> None:
        """Answer the next `times` requests of kind `op` with an error."""
        self._failures.setdefault(op, []).extend([(status, message)] * times)

    def delay(self, op: str, seconds: float) -> None:
        """Answer requests of kind `op` `seconds` late (0 to stop)."""
        self._delays[op] = seconds

    def connected(self, app: str = "callassist") -> bool:
        return app in self._sockets

    async def wait_connected(self, app: str = "callassist", timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while app not in self._sockets:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"app {app} did not connect")
            await asyncio.sleep(0.01)

    # -- introspection ----------------------------------------------------------------------
    def our_objects(self, prefix: str = "callassist-") -> tuple[list[str], list[str]]:
        """Ids of live channels and bridges whose id starts with `prefix` (the app's own)."""
        return ([c for c in self.channels if c.startswith(prefix)],
                [b for b in self.bridges if b.startswith(prefix)])

    def snoops_of(self, channel_id: str) -> list[PeerChannel]:
        return [c for c in self.channels.values() if c.snoop_of == channel_id]

    def by_kind(self, kind: str) -> list[PeerChannel]:
        return [c for c in self.channels.values() if c.kind == kind]

    # -- channel model ---------------------------------------------------------------------
    def _next_index(self) -> int:
        self._chan_index += 1
        return self._chan_index

    def _new_id(self) -> str:
        self._seq += 1
        return f"{self._boot}.{self._seq}"

    def _new_channel(self, kind: str, name: str, channel_id: str | None = None, **kw: Any) -> PeerChannel:
        chan = PeerChannel(id=channel_id or self._new_id(), name=name, kind=kind, **kw)
        self.channels[chan.id] = chan
        return chan

    def _id_conflict(self, new_id: str) -> str | None:
        """Asterisk 23.4.1 refuses an id equal to, or a prefix of, a live channel's id."""
        for existing in self.channels:
            if existing == new_id:
                return "duplicate"
            if existing.startswith(new_id):
                return "prefix"
        return None

    def _enter_stasis(self, chan: PeerChannel, app: str, args: list[str]) -> None:
        chan.stasis_app, chan.stasis_args = app, args
        self._emit("StasisStart", chan, args=args, channel=chan.to_json())

    def _leave_stasis(self, chan: PeerChannel) -> None:
        if chan.stasis_app is None:
            return
        self._emit("StasisEnd", chan, channel=chan.to_json())
        chan.stasis_app = None
        chan.app_name = chan.app_data = ""

    def _enter_stasis_later(self, chan: PeerChannel, app: str, args: list[str]) -> None:
        def enter() -> None:
            if chan.alive:
                self._enter_stasis(chan, app, args)
        asyncio.get_running_loop().call_later(random.uniform(*self.stasis_delay), enter)

    async def _hangup(self, chan: PeerChannel, cause: int = 16) -> None:
        if not chan.alive:
            return
        self._emit("ChannelHangupRequest", chan, cause=cause, channel=chan.to_json())
        call = next((c for c in self.calls if chan in (c.customer, c.agent)), None)
        if call is not None:
            if call.dial_task and chan is call.customer:
                call.dial_task.cancel()
            if call.dial_bridge is not None and call.dial_bridge.id in self.bridges:
                bridge = call.dial_bridge
                for member in list(bridge.channels):
                    self._leave_bridge(self.channels[member], bridge)
                self._destroy_bridge_now(bridge)
            if chan is call.customer and call.agent is not None and call.agent.alive:
                await self._hangup(call.agent)
        if chan.bridge is not None and chan.bridge in self.bridges:
            self._leave_bridge(chan, self.bridges[chan.bridge])
        self._leave_stasis(chan)
        self._destroy(chan, cause)
        snoops = self.snoops_of(chan.id)
        if snoops:   # Asterisk ends the snoops of a hung-up channel a few ms later
            await asyncio.sleep(random.uniform(0.004, 0.020))
            for snoop in snoops:
                self._end_channel(snoop)

    def _end_channel(self, chan: PeerChannel, cause: int = 16) -> None:
        """A channel of the app goes away: leaves its bridge, Stasis, then is destroyed."""
        if not chan.alive:
            return
        if chan.bridge is not None and chan.bridge in self.bridges:
            self._leave_bridge(chan, self.bridges[chan.bridge])
        self._leave_stasis(chan)
        self._destroy(chan, cause)

    def _destroy(self, chan: PeerChannel, cause: int) -> None:
        chan.alive = False
        self._emit("ChannelDestroyed", chan, cause=cause, cause_txt="Normal Clearing",
                   channel=chan.to_json())
        self.channels.pop(chan.id, None)
        if chan.rtp_socket is not None:
            chan.rtp_socket.close()
            chan.rtp_socket = None
        # the bridges drop a destroyed channel's subscription; nothing else to do

    def _leave_bridge(self, chan: PeerChannel, bridge: PeerBridge) -> None:
        if chan.id in bridge.channels:
            bridge.channels.remove(chan.id)
            chan.bridge = None
            self._emit("ChannelLeftBridge", chan, bridge=bridge.to_json(), channel=chan.to_json())
            self._update_media(bridge)

    def _destroy_bridge_now(self, bridge: PeerBridge) -> None:
        for member in list(bridge.channels):
            self._leave_bridge(self.channels[member], bridge)
        for task in bridge.media_tasks.values():
            task.cancel()
        bridge.media_tasks.clear()
        self.bridges.pop(bridge.id, None)
        for app in bridge.apps:
            self._emit_to(app, {"type": "BridgeDestroyed", "bridge": bridge.to_json()})

    # -- the dialplan after `continue` ------------------------------------------------------
    def _dialplan_next(self, call: PeerCall) -> None:
        customer = call.customer
        customer.priority += 1
        if call.agent_endpoint:
            customer.app_name, customer.app_data = "Dial", f"{call.agent_endpoint},30"
            self._emit("ChannelDialplan", customer, channel=customer.to_json(),
                       dialplan_app="Dial", dialplan_app_data=customer.app_data)
            call.dial_task = self._spawn(self._dial(call))

    async def _dial(self, call: PeerCall) -> None:
        customer = call.customer
        agent = self._new_channel("agent", f"{call.agent_endpoint}-{self._next_index():08x}",
                                  state="Down", caller=customer.caller, context="from-internal",
                                  exten=call.agent_endpoint.split("/")[-1])
        call.agent = agent
        dialstring = call.agent_endpoint.split("/", 1)[-1]

        def dial(status: str) -> None:
            self._emit("Dial", customer, caller=customer.to_json(), peer=agent.to_json(),
                       dialstring=dialstring, dialstatus=status, forward="")
        dial("")
        await asyncio.sleep(call.answer_after / 2)
        agent.state = "Ringing"
        dial("RINGING")
        await asyncio.sleep(call.answer_after / 2)
        if not (agent.alive and customer.alive):
            return
        agent.state = "Up"
        agent.audio = call.agent_audio
        agent.audio_t0 = asyncio.get_running_loop().time()
        customer.connected = ("", agent.exten)
        dial("ANSWER")
        bridge = PeerBridge(id=str(uuid.uuid4()), bridge_class="basic", creator="", stasis=False,
                            channels=[customer.id, agent.id])
        customer.bridge = agent.bridge = bridge.id
        self.bridges[bridge.id] = bridge
        call.dial_bridge = bridge
        self._emit("ChannelEnteredBridge", customer, bridge=bridge.to_json(), channel=customer.to_json())

    # -- media ------------------------------------------------------------------------------
    def _update_media(self, bridge: PeerBridge) -> None:
        members = [self.channels[c] for c in bridge.channels if c in self.channels]
        snoops = [c for c in members if c.kind == "snoop" and c.spy != "none"]
        ems = [c for c in members if c.kind == "external_media"]
        for em in ems:
            if snoops and em.id not in bridge.media_tasks:
                bridge.media_tasks[em.id] = self._spawn(self._send_rtp(bridge, em))
        for em_id, task in list(bridge.media_tasks.items()):
            if em_id not in bridge.channels or not snoops:
                task.cancel()
                del bridge.media_tasks[em_id]

    def _snoop_frame(self, snoop: PeerChannel, positions: dict[str, int], now: float) -> np.ndarray | None:
        """20 ms of what a snoop hears; None when its channel's media stopped."""
        target = self.channels.get(snoop.snoop_of or "")
        if target is None or target.rtp_stopped:
            return None
        sources: list[PeerChannel] = []
        if snoop.spy in ("in", "both"):
            sources.append(target)
        if snoop.spy in ("out", "both") and target.bridge in self.bridges:
            sources += [self.channels[c] for c in self.bridges[target.bridge].channels
                        if c != target.id and c in self.channels]
        frame = np.zeros(FRAME_SAMPLES, np.int32)
        for source in sources:
            if source.audio is None or source.audio_t0 is None:
                continue
            pos = positions.get(source.id)
            if pos is None:
                pos = int(round((now - source.audio_t0) * RATE))
            positions[source.id] = pos + FRAME_SAMPLES
            lo, hi = max(pos, 0), min(pos + FRAME_SAMPLES, len(source.audio))
            if hi > lo:
                frame[lo - pos:hi - pos] += source.audio[lo:hi]
        return np.clip(frame, -32768, 32767).astype(np.int16)

    async def _send_rtp(self, bridge: PeerBridge, em: PeerChannel) -> None:
        loop = asyncio.get_running_loop()
        assert em.rtp_socket is not None and em.external_host is not None
        sock, dest = em.rtp_socket, em.external_host
        seq, stamp, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
        payload_type = PAYLOAD_TYPES.get(em.format, 118)
        positions: dict[str, int] = {}
        next_at = loop.time()
        try:
            while True:
                now = loop.time()
                frames = [f for c in bridge.channels if c in self.channels
                          and self.channels[c].kind == "snoop"
                          and (f := self._snoop_frame(self.channels[c], positions, now)) is not None]
                if frames:
                    mixed = np.clip(np.sum(np.stack(frames).astype(np.int32), axis=0), -32768, 32767)
                    header = struct.pack("!BBHII", 0x80, payload_type, seq, stamp, ssrc)
                    try:
                        sock.sendto(header + mixed.astype(">i2").tobytes(), dest)
                        self.rtp_packets_sent += 1
                    except OSError:
                        pass        # nobody listens (ICMP unreachable): RTP is fire and forget
                    seq = (seq + 1) & 0xFFFF
                    stamp = (stamp + FRAME_SAMPLES) & 0xFFFFFFFF
                next_at += FRAME_SAMPLES / RATE
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        except asyncio.CancelledError:
            pass

    # -- events ----------------------------------------------------------------------------
    def _apps_for(self, chan: PeerChannel) -> set[str]:
        apps = set(chan.subscribers)
        if chan.stasis_app:
            apps.add(chan.stasis_app)
        return apps

    def _emit(self, type_: str, chan: PeerChannel, **fields: Any) -> None:
        for app in self._apps_for(chan):
            self._emit_to(app, {"type": type_, **fields})

    def _emit_to(self, app: str, body: dict[str, Any]) -> None:
        event = {"type": body["type"], "timestamp": _timestamp(), **body,
                 "asterisk_id": ASTERISK_ID, "application": app}
        ws = self._sockets.get(app)
        if ws is None or ws.closed:
            self.events_dropped.append(event)
            return
        self.events_sent.append(event)
        self._outboxes[ws].put_nowait(json.dumps(event))

    async def _events_ws(self, request: web.Request) -> web.StreamResponse:
        app = request.query.get("app", "")
        if not app:
            return _error(400, "Missing param app")
        if self.refuse_websocket:
            return _error(503, "Service Unavailable")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.websocket_connects += 1
        old = self._sockets.get(app)
        if old is not None and old in self._outboxes:
            # Asterisk tells the old session and stops sending it events, but leaves it open
            self._outboxes[old].put_nowait(json.dumps({"type": "ApplicationReplaced", "application": app,
                                                       "timestamp": _timestamp()}))
        self._sockets[app] = ws
        outbox: asyncio.Queue = asyncio.Queue()
        self._outboxes[ws] = outbox
        writer = self._spawn(self._write_events(ws, outbox))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            writer.cancel()
            self._outboxes.pop(ws, None)
            if self._sockets.get(app) is ws:
                del self._sockets[app]
        return ws

    @staticmethod
    async def _write_events(ws: web.WebSocketResponse, outbox: asyncio.Queue) -> None:
        while True:
            text = await outbox.get()
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    # -- REST plumbing ---------------------------------------------------------------------
    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response({"message": "Authentication required"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'})
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        api_key = request.query.get("api_key")
        if api_key is not None:
            return api_key == f"{self.username}:{self.password}"
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        import base64
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (user, password) == (self.username, self.password)

    async def _serve(self, op: str, request: web.Request,
                     handle: Callable[[], web.Response]) -> web.Response:
        self.requests.append((op, request.method, request.path_qs))
        if self._delays.get(op):
            await asyncio.sleep(self._delays[op])
        failures = self._failures.get(op)
        if failures:
            status, message = failures.pop(0)
            return _error(status, message)
        response = handle()
        for action in list(self._after):
            if action.op == op and action.times > 0:
                action.times -= 1
                if action.times == 0:
                    self._after.remove(action)
                result = action.action({"op": op, "path": request.path, "query": dict(request.query),
                                        "status": response.status})
                if asyncio.iscoroutine(result):
                    await result
        return response

    def _channel_or_404(self, channel_id: str) -> PeerChannel:
        chan = self.channels.get(channel_id)
        if chan is None or not chan.alive:
            raise _HttpError(404, "Channel not found")
        return chan

    # -- REST: asterisk ---------------------------------------------------------------------
    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"version": "23.4.1", "entity_id": ASTERISK_ID}})

    # -- REST: channels ---------------------------------------------------------------------
    async def _list_channels(self, request: web.Request) -> web.Response:
        return await self._serve("listChannels", request, lambda: web.json_response(
            [c.to_json() for c in self.channels.values() if c.alive]))

    async def _get_channel(self, request: web.Request) -> web.Response:
        return await self._serve("getChannel", request, _guard(lambda: web.json_response(
            self._channel_or_404(request.match_info["id"]).to_json())))

    async def _get_variable(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            chan = self._channel_or_404(request.match_info["id"])
            name = request.query.get("variable")
            if not name:
                raise _HttpError(400, "Missing variable parameter.")
            if name not in chan.channelvars:
                raise _HttpError(404, "Provided variable was not found")
            return web.json_response({"value": chan.channelvars[name]})
        return await self._serve("getVariable", request, _guard(handle))

    async def _hangup_channel(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            self._channel_or_404(request.match_info["id"])
            return web.Response(status=204)
        chan = self.channels.get(request.match_info["id"])
        response = await self._serve("hangup", request, _guard(handle))
        if response.status == 204 and chan is not None:
            if chan.kind in ("customer", "agent"):
                await self._hangup(chan)
            else:
                self._end_channel(chan)
        return response

    async def _snoop(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            target = self._channel_or_404(request.match_info["id"])
            q = request.query
            app = q.get("app")
            if not app:
                raise _HttpError(400, "app cannot be empty")
            spy, whisper = q.get("spy", "none"), q.get("whisper", "none")
            if spy not in ("none", "both", "out", "in") or whisper not in ("none", "both", "out", "in"):
                raise _HttpError(400, "Invalid direction specified for spy/whisper")
            if spy == "none" and whisper == "none":
                raise _HttpError(400, "Direction must be specified for at least spy or whisper")
            snoop_id = request.match_info.get("snoop_id") or q.get("snoopId") or self._new_id()
            if (conflict := self._id_conflict(snoop_id)) is not None:
                raise _HttpError(409 if conflict == "duplicate" else 500,
                                 "Channel with given unique ID already exists" if conflict == "duplicate"
                                 else "Allocation failed")
            snoop = self._new_channel("snoop", f"Snoop/{target.id}-{self._next_index():08x}", snoop_id,
                                      snoop_of=target.id, spy=spy, whisper=whisper,
                                      app_name="Stasis", app_data=app)
            args = [a for a in q.get("appArgs", "").split(",")] if q.get("appArgs") else []
            self._enter_stasis_later(snoop, app, args)
            return web.json_response(snoop.to_json())
        return await self._serve("snoop", request, _guard(handle))

    async def _external_media(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            q = request.query
            app = q.get("app")
            if not app:
                raise _HttpError(400, "app cannot be empty")
            if q.get("encapsulation", "rtp") != "rtp" or q.get("transport", "udp") != "udp":
                raise _HttpError(501, "The encapsulation and/or transport is not supported")
            host, _, port = q.get("external_host", "").rpartition(":")
            if not host or not port.isdigit():
                raise _HttpError(400, "external_host must be <host>:<port> for all transports other than websocket")
            fmt = q.get("format")
            if not fmt:
                raise _HttpError(400, "format cannot be empty")
            channel_id = q.get("channelId") or self._new_id()
            if (conflict := self._id_conflict(channel_id)) is not None:
                raise _HttpError(409 if conflict == "duplicate" else 500,
                                 "Channel with given unique ID already exists" if conflict == "duplicate"
                                 else "An internal error prevented this request from being handled")
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind(("127.0.0.1", 0))
            rtp.setblocking(False)
            local_port = rtp.getsockname()[1]
            em = self._new_channel("external_media", f"UnicastRTP/{host}:{port}-0x{random.getrandbits(44):x}",
                                   channel_id, external_host=(host, int(port)), format=fmt,
                                   rtp_socket=rtp, app_name="Stasis", app_data=app,
                                   channelvars={"UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1",
                                                "UNICASTRTP_LOCAL_PORT": str(local_port)})
            args = q.get("data", "").split(",") if q.get("data") else []
            self._enter_stasis_later(em, app, args)
            return web.json_response(em.to_json())
        return await self._serve("externalMedia", request, _guard(handle))

    async def _continue(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            chan = self._channel_or_404(request.match_info["id"])
            if chan.stasis_app is None:
                raise _HttpError(409, "Channel not in a Stasis application")
            return web.Response(status=204)
        response = await self._serve("continue", request, _guard(handle))
        if response.status == 204:
            chan = self.channels[request.match_info["id"]]
            self._leave_stasis(chan)
            call = next((c for c in self.calls if c.customer is chan), None)
            if call is not None:
                self._dialplan_next(call)
        return response

    async def _play(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            chan = self._channel_or_404(request.match_info["id"])
            if chan.stasis_app is None:
                raise _HttpError(409, "Channel not in a Stasis application")
            media = request.query.get("media")
            if not media:
                raise _HttpError(400, "media cannot be empty")
            playback = {"id": request.query.get("playbackId") or f"{random.getrandbits(64):016x}",
                        "media_uri": media, "target_uri": f"channel:{chan.id}", "language": "en",
                        "state": "playing"}
            self.playbacks.append({**playback, "channel": chan.id, "whisper": chan.whisper,
                                   "snoop_of": chan.snoop_of})
            self._emit("PlaybackStarted", chan, playback=playback)
            return web.json_response(playback, status=201)
        return await self._serve("play", request, _guard(handle))

    # -- REST: bridges ---------------------------------------------------------------------
    async def _list_bridges(self, request: web.Request) -> web.Response:
        return await self._serve("listBridges", request, lambda: web.json_response(
            [b.to_json() for b in self.bridges.values()]))

    async def _get_bridge(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            bridge = self.bridges.get(request.match_info["id"])
            if bridge is None:
                raise _HttpError(404, "Bridge not found")
            return web.json_response(bridge.to_json())
        return await self._serve("getBridge", request, _guard(handle))

    async def _create_bridge(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            bridge_id = request.match_info.get("id") or request.query.get("bridgeId") or \
                f"{random.getrandbits(128):032x}"
            if bridge_id in self.bridges:
                raise _HttpError(409, "Bridge with the same bridgeId already exists")
            kinds = set((request.query.get("type") or "mixing").split(","))
            if not kinds <= {"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"}:
                raise _HttpError(400, "Invalid bridge type")
            bridge = PeerBridge(id=bridge_id, name=request.query.get("name", ""))
            self.bridges[bridge_id] = bridge
            return web.json_response(bridge.to_json())
        return await self._serve("createBridge", request, _guard(handle))

    async def _destroy_bridge(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            bridge = self.bridges.get(request.match_info["id"])
            if bridge is None:
                raise _HttpError(404, "Bridge not found")
            self._destroy_bridge_now(bridge)
            return web.Response(status=204)
        return await self._serve("destroyBridge", request, _guard(handle))

    async def _add_channel(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            bridge = self.bridges.get(request.match_info["id"])
            if bridge is None:
                raise _HttpError(404, "Bridge not found")
            ids = [c for c in request.query.get("channel", "").split(",") if c]
            if len(ids) != 1:
                # the facts file: two channels in one request failed in the field
                raise _HttpError(400, "Channel not found")
            chan = self.channels.get(ids[0])
            if chan is None or not chan.alive:
                raise _HttpError(400, "Channel not found")
            if chan.stasis_app is None:
                raise _HttpError(422, "Channel not in Stasis application")
            if not bridge.stasis:
                raise _HttpError(409, "Bridge not in Stasis application")
            if chan.bridge == bridge.id:
                return web.Response(status=204)
            if chan.bridge is not None and chan.bridge in self.bridges:
                self._leave_bridge(chan, self.bridges[chan.bridge])
            bridge.channels.append(chan.id)
            bridge.apps |= self._apps_for(chan)
            chan.bridge = bridge.id
            self._emit("ChannelEnteredBridge", chan, bridge=bridge.to_json(), channel=chan.to_json())
            self._update_media(bridge)
            return web.Response(status=204)
        return await self._serve("addChannel", request, _guard(handle))

    async def _remove_channel(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            bridge = self.bridges.get(request.match_info["id"])
            if bridge is None:
                raise _HttpError(404, "Bridge not found")
            chan = self.channels.get(request.query.get("channel", ""))
            if chan is None:
                raise _HttpError(400, "Channel not found")
            if chan.id not in bridge.channels:
                raise _HttpError(422, "Channel not in this bridge")
            self._leave_bridge(chan, bridge)
            return web.Response(status=204)
        return await self._serve("removeChannel", request, _guard(handle))

    # -- REST: applications ----------------------------------------------------------------
    async def _subscribe(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            app = request.match_info["app"]
            source = request.query.get("eventSource")
            if not source:
                raise _HttpError(400, "Missing parameter eventSource")
            for item in source.split(","):
                scheme, _, object_id = item.partition(":")
                if scheme != "channel":
                    raise _HttpError(400, "Invalid event source URI scheme")
                chan = self.channels.get(object_id)
                if chan is None or not chan.alive:
                    raise _HttpError(422, "Unable to find event source")
                chan.subscribers.add(app)
            return web.json_response(self._application_json(app))
        return await self._serve("subscribe", request, _guard(handle))

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        def handle() -> web.Response:
            app = request.match_info["app"]
            scheme, _, object_id = request.query.get("eventSource", "").partition(":")
            chan = self.channels.get(object_id)
            if chan is None:
                raise _HttpError(422, "Unable to find event source")
            if app not in chan.subscribers:
                raise _HttpError(409, "Application not subscribed to event source")
            chan.subscribers.discard(app)
            return web.json_response(self._application_json(app))
        return await self._serve("unsubscribe", request, _guard(handle))

    def _application_json(self, app: str) -> dict[str, Any]:
        return {"name": app, "channel_ids": [c.id for c in self.channels.values() if app in self._apps_for(c)],
                "bridge_ids": [b.id for b in self.bridges.values() if app in b.apps],
                "endpoint_ids": [], "device_names": [], "events_allowed": [], "events_disallowed": []}


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _guard(handle: Callable[[], web.Response]) -> Callable[[], web.Response]:
    def guarded() -> web.Response:
        try:
            return handle()
        except _HttpError as exc:
            return _error(exc.status, exc.message)
    return guarded
