"""A small typed ARI client over aiohttp: the dozen endpoints callassist uses.

One ClientSession with a capped connection pool (Asterisk's http.conf sessionlimit
is shared by REST, the events websocket and media websockets) and a total timeout
on every request (one real run hung without them). Errors are AriError with the
HTTP status; 404 is AriNotFound because cleanup must tolerate objects Asterisk
already removed; a timeout or refused connection is AriUnavailable (status 0).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ari_app.models import AriEvent, Bridge, Channel
from callassist.config import AriConfig

log = logging.getLogger(__name__)


class AriError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.message = message
        super().__init__(f"ARI {method} {path}: {status or 'no answer'} {message}".rstrip())


class AriNotFound(AriError):
    """404: the channel/bridge/variable does not exist (any more)."""


class AriUnavailable(AriError):
    """No HTTP answer: timeout, refused or broken connection (status 0)."""


class AriDisconnected(Exception):
    """The events websocket closed or broke."""


class EventSocket:
    """The open events websocket; iterate for AriEvent until it drops."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.malformed = 0

    def __aiter__(self) -> AsyncIterator[AriEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AriEvent]:
        while True:
            msg = await self._ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                    event = AriEvent.from_json(data)
                except (ValueError, KeyError, TypeError) as exc:
                    self.malformed += 1
                    log.warning("ARI events: ignoring malformed message (%s): %.200s", exc, msg.data)
                    continue
                yield event
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED):
                raise AriDisconnected(f"events websocket closed (code {self._ws.close_code})")
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise AriDisconnected(f"events websocket failed: {self._ws.exception()}")
            # BINARY/PING/PONG: nothing for us (aiohttp answers pings itself)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def close(self) -> None:
        await self._ws.close()


class AriClient:
    def __init__(self, url: str, username: str, password: str, app: str, *,
                 request_timeout: float = 5.0, max_connections: int = 8,
                 heartbeat: float = 10.0) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"ARI url must be http(s)://HOST:PORT, got {url!r}")
        base_path = parts.path if parts.path.endswith("/ari") else parts.path + "/ari"
        self.base = urlunsplit((parts.scheme, parts.netloc, base_path, "", ""))
        self.events_url = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc,
                                      base_path + "/events", "", ""))
        self.app = app
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._api_key = f"{username}:{password}"
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.heartbeat = heartbeat
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: AriConfig) -> "AriClient":
        return cls(config.url, config.username, config.password, config.app,
                   request_timeout=config.request_timeout, max_connections=config.max_connections)

    # -- session -------------------------------------------------------------------
    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout), headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "AriClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing --------------------------------------------------------------------
    async def request(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """One REST call; returns the decoded JSON body (None for 204)."""
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self.session.request(method, self.base + path, params=query,
                                            timeout=aiohttp.ClientTimeout(total=self.request_timeout)) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    message = _error_message(body) or resp.reason or ""
                    error = AriNotFound if resp.status == 404 else AriError
                    raise error(resp.status, method, path, message)
                if resp.status == 204 or not body:
                    return None
                try:
                    return json.loads(body)
                except ValueError:
                    raise AriError(resp.status, method, path, f"answer is not JSON: {body[:100]!r}") from None
        except asyncio.TimeoutError:
            raise AriUnavailable(0, method, path, f"timed out after {self.request_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise AriUnavailable(0, method, path, f"{type(exc).__name__}: {exc}") from None

    # -- channels -------------------------------------------------------------------
    async def get_channel(self, channel_id: str) -> Channel:
        return Channel.from_json(await self.request("GET", f"/channels/{channel_id}"))

    async def list_channels(self) -> list[Channel]:
        return [Channel.from_json(c) for c in await self.request("GET", "/channels") or []]

    async def snoop(self, channel_id: str, *, snoop_id: str, spy: str = "in", whisper: str = "none",
                    app_args: str = "") -> Channel:
        """A Snoop channel on `channel_id` that enters our app (it gets its own StasisStart)."""
        data = await self.request("POST", f"/channels/{channel_id}/snoop/{snoop_id}",
                                  {"app": self.app, "spy": spy, "whisper": whisper,
                                   "appArgs": app_args or None})
        return Channel.from_json(data)

    async def external_media(self, *, channel_id: str, external_host: str, format: str = "slin16",
                             data: str = "") -> Channel:
        """An externalMedia channel sending RTP to `external_host` (host:port)."""
        result = await self.request("POST", "/channels/externalMedia",
                                    {"app": self.app, "channelId": channel_id,
                                     "external_host": external_host, "format": format,
                                     "encapsulation": "rtp", "transport": "udp",
                                     "data": data or None})
        return Channel.from_json(result)

    async def continue_in_dialplan(self, channel_id: str, *, context: str | None = None,
                                   extension: str | None = None, priority: int | None = None) -> None:
        await self.request("POST", f"/channels/{channel_id}/continue",
                           {"context": context, "extension": extension, "priority": priority})

    async def hangup(self, channel_id: str, reason: str | None = None) -> None:
        await self.request("DELETE", f"/channels/{channel_id}", {"reason": reason})

    async def play(self, channel_id: str, media: str, playback_id: str | None = None) -> dict[str, Any]:
        return await self.request("POST", f"/channels/{channel_id}/play",
                                  {"media": media, "playbackId": playback_id}) or {}

    async def get_variable(self, channel_id: str, variable: str) -> str:
        data = await self.request("GET", f"/channels/{channel_id}/variable", {"variable": variable})
        return str((data or {}).get("value") or "")

    # -- bridges ------------------------------------------------------------------------
    async def create_bridge(self, bridge_id: str, name: str = "", type: str = "mixing") -> Bridge:
        return Bridge.from_json(await self.request("POST", f"/bridges/{bridge_id}",
                                                   {"type": type, "name": name or None}))

    async def add_channel(self, bridge_id: str, channel_id: str) -> None:
        """One channel per request: two in one request failed in the field (facts file)."""
        await self.request("POST", f"/bridges/{bridge_id}/addChannel", {"channel": channel_id})

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}")

    async def list_bridges(self) -> list[Bridge]:
        return [Bridge.from_json(b) for b in await self.request("GET", "/bridges") or []]

    # -- applications -----------------------------------------------------------------
    async def subscribe(self, event_source: str) -> None:
        """e.g. channel:{id}: events keep coming after the channel leaves Stasis."""
        await self.request("POST", f"/applications/{self.app}/subscription", {"eventSource": event_source})

    async def unsubscribe(self, event_source: str) -> None:
        await self.request("DELETE", f"/applications/{self.app}/subscription", {"eventSource": event_source})

    # -- events ---------------------------------------------------------------------------
    async def connect_events(self) -> EventSocket:
        """Open the events websocket for our app (heartbeat pings detect a dead peer)."""
        try:
            ws = await self.session.ws_connect(
                self.events_url, params={"app": self.app, "api_key": self._api_key},
                heartbeat=self.heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.request_timeout))
        except aiohttp.WSServerHandshakeError as exc:
            error = AriNotFound if exc.status == 404 else AriError
            raise error(exc.status, "GET", "/events", exc.message or "websocket refused") from None
        except asyncio.TimeoutError:
            raise AriUnavailable(0, "GET", "/events", f"timed out after {self.request_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise AriUnavailable(0, "GET", "/events", f"{type(exc).__name__}: {exc}") from None
        return EventSocket(ws)

    async def events(self) -> AsyncIterator[AriEvent]:
        """Events until the websocket drops (AriDisconnected)."""
        socket = await self.connect_events()
        try:
            async for event in socket:
                yield event
        finally:
            await socket.close()


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))     # lists in query strings are comma-separated
    return str(value)


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or "")
    return ""
