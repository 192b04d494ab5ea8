"""UDP ports for externalMedia RTP: one port per stream (two per call), from a fixed range.

A port per stream means a stream's packets are identified by where they arrive, not
by guessing from their contents. Ports are handed out round-robin so that a port just
released is reused as late as possible: a stale externalMedia channel still sending to
it would otherwise be the first sender a new stream locks to.
"""
from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from ari_app.rtp import RtpStream
from callassist.config import RtpConfig

log = logging.getLogger(__name__)

# Errors that mean "this port, not the others": taken by another process, or reserved.
_PORT_REFUSED = {errno.EADDRINUSE, errno.EACCES, errno.EPERM}


class PortRangeExhausted(RuntimeError):
    """No port of the range could be bound."""


class PortPool:
    def __init__(self, bind_host: str, port_min: int, port_max: int, **stream_defaults: Any) -> None:
        if not 0 < port_min <= port_max <= 65535:
            raise ValueError(f"bad RTP port range {port_min}-{port_max}")
        self.bind_host = bind_host
        self.port_min = port_min
        self.port_max = port_max
        self.stream_defaults = stream_defaults
        self._in_use: dict[int, RtpStream] = {}
        self._cursor = port_min

    @classmethod
    def from_config(cls, rtp: RtpConfig) -> PortPool:
        return cls(rtp.bind_host, rtp.port_min, rtp.port_max,
                   jitter_ms=rtp.jitter_ms, stall_timeout=rtp.stall_timeout)

    @property
    def capacity(self) -> int:
        return self.port_max - self.port_min + 1

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    async def open_stream(self, **kwargs: Any) -> RtpStream:
        """Bind the next free port; the port returns to the pool when the stream closes.
        Keyword arguments go to RtpStream (over the pool's defaults from the config)."""
        options = {**self.stream_defaults, **kwargs}
        refused = 0
        for _ in range(self.capacity):
            port = self._cursor
            self._cursor = port + 1 if port < self.port_max else self.port_min
            if port in self._in_use:
                continue
            try:
                stream = await RtpStream.bind(self.bind_host, port, **options)
            except OSError as exc:
                if exc.errno in _PORT_REFUSED:
                    refused += 1
                    log.debug("RTP port %d refused by the OS: %s", port, exc.strerror)
                    continue
                raise OSError(exc.errno, f"cannot bind RTP on {self.bind_host}:{port}: "
                                         f"{exc.strerror} (check [rtp] bind_host)") from exc
            self._in_use[port] = stream
            stream.add_close_callback(self._release)
            return stream
        raise PortRangeExhausted(
            f"no free RTP port in {self.port_min}-{self.port_max} on {self.bind_host}: "
            f"{self.in_use} in use by callassist, {refused} refused by the OS "
            f"(widen [rtp] port_min/port_max; each call needs two)")

    async def close_all(self) -> None:
        """Close every stream still open (shutdown) and wait for their ports to be free."""
        streams = list(self._in_use.values())
        if streams:
            await asyncio.gather(*(stream.aclose() for stream in streams))

    def _release(self, stream: RtpStream) -> None:
        if self._in_use.get(stream.port) is stream:
            del self._in_use[stream.port]
