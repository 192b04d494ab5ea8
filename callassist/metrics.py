"""Prometheus metrics (text exposition format, served at GET /metrics by the web app).

    callassist_active_calls                      gauge    calls started and not ended
    callassist_ari_connected                     gauge    1 while the ARI events websocket is up
    callassist_ari_connection_state{state}       gauge    1 for the current state (ARI_STATES)
    callassist_ari_reconnects_total              counter  connections made again after a drop
    callassist_rtp_packets_received_total        counter  datagrams on our RTP ports
    callassist_rtp_packets_lost_total            counter  packets that never came (filled with silence)
    callassist_rtp_packets_late_total            counter  packets that came after their slot was filled
    callassist_rtp_frames_overflow_total         counter  frames dropped: the consumer fell behind
    callassist_asr_backlog_seconds{engine}       gauge    audio handed to the engine, not decoded yet
    callassist_asr_real_time_factor{engine}      gauge    decode time / audio time, recent decodes
    callassist_asr_audio_seconds_total{engine}   counter  audio decoded
    callassist_asr_decode_seconds_total{engine}  counter  time spent decoding it
    callassist_asr_lag_seconds{engine}           gauge    how long the oldest customer sentence waits
                                                 for the decoder (asr.scheduler)
    callassist_asr_behind{engine}                gauge    1 while the decoder is behind (new calls
                                                 are decoded after the ones on screen)
    callassist_asr_interims_shed_total{engine}   counter  interim decodes dropped to keep finals in time
    callassist_card_latency_seconds              histogram  end of the trigger utterance's
                                                 audio to CardFired publication (see CallMetrics)
    callassist_events_stored_total               counter  call events committed to the store

Most values are read when scraped from the objects that keep them (ServiceCollector), so
the RTP and decode paths only bump plain integers; what happens on the bus is counted
by CallMetrics.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ari_app.rtp import RTP_TOTALS
from callassist.events import CallEnded, CallStarted, CardFired
from callassist.health import ServiceHealth

# Seconds: the target is 1.5 s p95 (issue 8); the upper buckets show how late "late" is.
ARI_STATES = ("not_configured", "connecting", "connected", "unauthorized", "unreachable", "error")
CARD_LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0)


class CallMetrics:
    """What the bus and the store say: active calls, card latency, events stored.

    Card latency is CardFired.at - (CallStarted.at + card.end): a call's timeline starts
    when its customer entered Stasis (CallStarted is published at that moment) and its
    audio arrives in real time, so CallStarted.at + card.end is the wall-clock moment the
    trigger utterance's last audio reached us (plus the RTP reorder window). Only ARI calls
    are measured: the demo and imports do not play their audio in real time, and calls
    tapped again after a restart have no CallStarted in this process.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.card_latency = Histogram("callassist_card_latency_seconds",
                                      "Seconds from the end of the trigger utterance's audio to the "
                                      "card's publication", buckets=CARD_LATENCY_BUCKETS,
                                      registry=registry)
        self.call_started_at: dict[str, float] = {}
        self._live: set[str] = set()         # ARI calls: audio in real time from CallStarted on
        self.events_stored = 0

    @property
    def active_calls(self) -> int:
        return len(self.call_started_at)

    def observe(self, event: Any) -> None:
        if isinstance(event, CallStarted):
            self.call_started_at[event.call_id] = event.at
            if event.source == "ari":
                self._live.add(event.call_id)
        elif isinstance(event, CallEnded):
            self.call_started_at.pop(event.call_id, None)
            self._live.discard(event.call_id)
        elif isinstance(event, CardFired) and event.call_id in self._live:
            started = self.call_started_at.get(event.call_id)
            if started is not None:
                self.card_latency.observe(max(0.0, event.at - (started + event.card.end)))

    async def follow(self, bus: Any, store: Any) -> None:
        """Count until cancelled (the web app runs this for its lifetime). Without `store`
        (a worker or ARI node: the store's commits are the web nodes' to count) only the bus."""
        subscription = bus.subscribe() if bus is not None else None
        stored = store.events.listen() if store is not None else None

        async def bus_events() -> None:
            if subscription is None:
                return
            async for event in subscription:
                self.observe(event)

        async def store_commits() -> None:
            if stored is None:
                return
            while True:
                await stored.get()
                self.events_stored += 1

        try:
            await asyncio.gather(bus_events(), store_commits())
        finally:
            if subscription is not None:
                subscription.close()
            if stored is not None:
                store.events.unlisten(stored)


class ServiceCollector(Collector):
    """Reads the ARI app, the RTP totals and the engines' meters at scrape time."""

    def __init__(self, health: ServiceHealth, calls: CallMetrics) -> None:
        self.health = health
        self.calls = calls

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("callassist_active_calls", "Calls started and not ended",
                                value=self.calls.active_calls)
        ari = self.health.ari
        connected = ari is not None and ari.connection.state == "connected"
        yield GaugeMetricFamily("callassist_ari_connected",
                                "1 while the ARI events websocket to Asterisk is up",
                                value=1 if connected else 0)
        state = GaugeMetricFamily("callassist_ari_connection_state",
                                  "1 for the ARI connection's current state (401 is unauthorized, "
                                  "no answer unreachable)", labels=["state"])
        current = ari.connection.state if ari is not None else ("connecting" if self.health.ari_url
                                                                 else "not_configured")
        for name in ARI_STATES:
            state.add_metric([name], 1 if name == current else 0)
        yield state
        yield CounterMetricFamily("callassist_ari_reconnects",
                                  "ARI events websocket connections made again after a drop",
                                  value=ari.connection.reconnects if ari is not None else 0)
        rtp = RTP_TOTALS.snapshot()
        for name, help_text, value in (
                ("received", "RTP datagrams that reached our ports", rtp.received),
                ("lost", "RTP packets that never came (filled with silence)", rtp.lost_filled),
                ("late", "RTP packets that came after their slot was filled", rtp.late)):
            yield CounterMetricFamily(f"callassist_rtp_packets_{name}", help_text, value=value)
        yield CounterMetricFamily("callassist_rtp_frames_overflow",
                                  "Audio frames dropped because their consumer fell behind",
                                  value=rtp.overflow)
        backlog = GaugeMetricFamily("callassist_asr_backlog_seconds",
                                    "Seconds of audio handed to the engine and not decoded yet",
                                    labels=["engine"])
        rtf = GaugeMetricFamily("callassist_asr_real_time_factor",
                                "Decode time over audio time, recent decodes", labels=["engine"])
        audio = CounterMetricFamily("callassist_asr_audio_seconds", "Seconds of audio decoded",
                                    labels=["engine"])
        spent = CounterMetricFamily("callassist_asr_decode_seconds", "Seconds spent decoding",
                                    labels=["engine"])
        lag = GaugeMetricFamily("callassist_asr_lag_seconds",
                                "How long the oldest customer sentence waits for the decoder",
                                labels=["engine"])
        behind = GaugeMetricFamily("callassist_asr_behind",
                                   "1 while the decoder is behind: new calls wait for the ones on screen",
                                   labels=["engine"])
        shed = CounterMetricFamily("callassist_asr_interims_shed",
                                   "Interim decodes dropped to keep the finals in time", labels=["engine"])
        for engine in self.health.engines:
            meter = engine.meter
            backlog.add_metric([engine.name], meter.backlog_seconds)
            rtf.add_metric([engine.name], meter.real_time_factor)
            audio.add_metric([engine.name], meter.audio_seconds_total)
            spent.add_metric([engine.name], meter.decode_seconds_total)
            lag.add_metric([engine.name], meter.lag_seconds)
            behind.add_metric([engine.name], 1 if meter.behind else 0)
            shed.add_metric([engine.name], meter.interims_shed)
        yield from (backlog, rtf, audio, spent, lag, behind, shed)
        yield CounterMetricFamily("callassist_events_stored", "Call events committed to the store",
                                  value=self.calls.events_stored)


class ServiceMetrics:
    """One registry per web app (tests run several apps in one process)."""

    def __init__(self, health: ServiceHealth) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = CallMetrics(self.registry)
        self.registry.register(ServiceCollector(health, self.calls))

    def follow_context(self, bus: Any, store: Any):
        """An aiohttp cleanup_ctx that counts for the app's lifetime."""
        async def follow(app: Any):
            task = asyncio.create_task(self.calls.follow(bus, store), name="metrics")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return follow
