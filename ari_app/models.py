"""Typed views of the ARI objects and events callassist uses, and the ids it gives its own.

Shapes follow Asterisk's Swagger models (rest-api/api-docs/*.json): only the fields
the app reads are typed; `raw` keeps the whole object for logs and the rare extra.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

_CHANNEL_SUFFIX = re.compile(r"-[0-9a-fA-F]{8}(;\d+)?$")   # PJSIP/1001-0000002a, Local/x@y-00000003;1


@dataclass(frozen=True, slots=True)
class CallerId:
    name: str = ""
    number: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "CallerId":
        data = data or {}
        return cls(str(data.get("name") or ""), str(data.get("number") or ""))


@dataclass(frozen=True, slots=True)
class DialplanCep:
    context: str = ""
    exten: str = ""
    priority: int = 0
    app_name: str = ""
    app_data: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "DialplanCep":
        data = data or {}
        return cls(str(data.get("context") or ""), str(data.get("exten") or ""),
                   int(data.get("priority") or 0), str(data.get("app_name") or ""),
                   str(data.get("app_data") or ""))


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    name: str
    state: str
    caller: CallerId = CallerId()
    connected: CallerId = CallerId()
    dialplan: DialplanCep = DialplanCep()
    creationtime: str = ""
    channelvars: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Channel":
        return cls(id=str(data["id"]), name=str(data.get("name") or ""),
                   state=str(data.get("state") or ""),
                   caller=CallerId.from_json(data.get("caller")),
                   connected=CallerId.from_json(data.get("connected")),
                   dialplan=DialplanCep.from_json(data.get("dialplan")),
                   creationtime=str(data.get("creationtime") or ""),
                   channelvars={str(k): str(v) for k, v in (data.get("channelvars") or {}).items()},
                   raw=data)

    @property
    def endpoint(self) -> str:
        """The device behind the channel: PJSIP/1001-0000002a -> PJSIP/1001
        (Local/agent@ctx-00000003;1 -> Local/agent@ctx)."""
        return _CHANNEL_SUFFIX.sub("", self.name)

    def in_stasis_app(self, app: str) -> bool:
        """True while the channel sits in Stasis(app[,args]) in the dialplan."""
        return (self.dialplan.app_name.lower() == "stasis"
                and self.dialplan.app_data.split(",")[0].strip() == app)


@dataclass(frozen=True, slots=True)
class Bridge:
    id: str
    technology: str
    bridge_type: str
    bridge_class: str
    creator: str
    name: str
    channels: tuple[str, ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Bridge":
        return cls(id=str(data["id"]), technology=str(data.get("technology") or ""),
                   bridge_type=str(data.get("bridge_type") or ""),
                   bridge_class=str(data.get("bridge_class") or ""),
                   creator=str(data.get("creator") or ""), name=str(data.get("name") or ""),
                   channels=tuple(str(c) for c in data.get("channels") or ()), raw=data)


@dataclass(frozen=True, slots=True)
class AriEvent:
    """One message from the events websocket. `channel` is the event's subject channel;
    Dial events also carry `caller` and `peer`; bridge events carry `bridge`."""
    type: str
    application: str = ""
    timestamp: str = ""
    channel: Channel | None = None
    bridge: Bridge | None = None
    caller: Channel | None = None
    peer: Channel | None = None
    args: tuple[str, ...] = ()
    dialstatus: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AriEvent":
        def channel(key: str) -> Channel | None:
            value = data.get(key)
            return Channel.from_json(value) if isinstance(value, dict) and "id" in value else None
        bridge = data.get("bridge")
        return cls(type=str(data.get("type") or ""), application=str(data.get("application") or ""),
                   timestamp=str(data.get("timestamp") or ""), channel=channel("channel"),
                   bridge=Bridge.from_json(bridge) if isinstance(bridge, dict) and "id" in bridge else None,
                   caller=channel("caller"), peer=channel("peer"),
                   args=tuple(str(a) for a in data.get("args") or ()),
                   dialstatus=data.get("dialstatus") if "dialstatus" in data else None, raw=data)


class OwnIds:
    """Ids of the channels and bridges the app creates, recognisable by prefix.

    Every id is `<app>-<kind>-<32 hex digits>`: fixed width, so one of ours is never a
    prefix of another (Asterisk 23.4.1 refuses to create an id that is a prefix of a
    live channel's id), and the app name keeps two deployments sharing one Asterisk
    from sweeping each other's objects.
    """

    KINDS = ("snoop", "em", "br", "cue")

    def __init__(self, app: str) -> None:
        self.app = app
        self.prefixes = {kind: f"{app}-{kind}-" for kind in self.KINDS}

    def new(self, kind: str) -> str:
        return self.prefixes[kind] + uuid.uuid4().hex

    def kind_of(self, object_id: str) -> str | None:
        for kind, prefix in self.prefixes.items():
            if object_id.startswith(prefix) and len(object_id) == len(prefix) + 32:
                return kind
        return None

    def is_ours(self, object_id: str) -> bool:
        return self.kind_of(object_id) is not None
