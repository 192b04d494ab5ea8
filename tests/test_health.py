"""Health you can see: GET /healthz and GET /metrics of the real web app, with the ARI app
connected to the ARI test peer (real websocket, real RTP over UDP, the real pipeline with
the scripted engine), and the reconnect after a long Asterisk outage."""
from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from ari_peer import AriPeer
from prometheus_client.parser import text_string_to_metric_families
from web_fixtures import LiveServer, make_store, until

from agent_ui.app import create_app
from agent_ui.store import Store
from ari_app.app import AriApp
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.config import Config, load_config
from callassist.events import CardFired
from callassist.health import ServiceHealth
from callassist.pipeline import CallPipeline
from prompts.matcher import Matcher
from prompts.playbook import load_playbook

ROOT = Path(__file__).resolve().parents[1]
CUSTOMER_WAV = ROOT.parent / "shared" / "audio" / "mandarin-samples" / "01_aishell1_BAC009S0764W0121.wav"
SCRIPTS = {"customer": [ScriptedUtterance("我 要 去 工信部 投诉 你们", 0.3, 1.5)],
           "agent": [ScriptedUtterance("您好 请 讲", 0.2, 0.9)]}

pytestmark = pytest.mark.skipif(not CUSTOMER_WAV.is_file(), reason=f"{CUSTOMER_WAV} not found")


def stack_config(data_dir: Path, peer: AriPeer, **env: str) -> Config:
    base = {"CALLASSIST_STORAGE_DATA_DIR": str(data_dir), "CALLASSIST_ARI_URL": peer.url,
            "CALLASSIST_ARI_PASSWORD": "secret", "CALLASSIST_ARI_REQUEST_TIMEOUT": "2",
            "CALLASSIST_ARI_RECONNECT_INITIAL_DELAY": "0.05", "CALLASSIST_ARI_RECONNECT_MAX_DELAY": "0.4",
            "CALLASSIST_RTP_PORT_MIN": "43000", "CALLASSIST_RTP_PORT_MAX": "43999"}
    return load_config(env={**base, **env})


@dataclass
class Stack:
    """What `callassist serve` runs: the web app with its health sources, and the ARI app."""
    peer: AriPeer
    store: Store
    bus: EventBus
    engine: ScriptedEngine
    ari: AriApp
    server: LiveServer

    async def get(self, path: str) -> tuple[int, str, str]:
        async with aiohttp.ClientSession() as http, http.get(self.server.url + path) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()

    async def health(self) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.get(self.server.url + "/healthz") as response:
            return response.status, await response.json()

    async def wait_status(self, status: str, timeout: float = 10.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            _, report = await self.health()
            if report["status"] == status:
                return report
            assert asyncio.get_running_loop().time() < deadline, f"still {report}"
            await asyncio.sleep(0.05)

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, parsed by prometheus_client's own text parser."""
        status, content_type, text = await self.get("/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


async def start_stack(tmp_path: Path, peer: AriPeer, **env: str) -> Stack:
    config = stack_config(tmp_path, peer, **env)
    store = make_store(config)
    bus = EventBus()
    engine = ScriptedEngine(SCRIPTS)
    matcher = Matcher(load_playbook())
    ari = AriApp(config, bus, lambda call_id: CallPipeline(call_id, engine, matcher, bus.publish,
                                                           skip_silence=False),
                 store.recordings_dir)
    health = ServiceHealth(store, engine, ari_url=config.ari.url)
    health.ari = ari
    server = await LiveServer(create_app(config, store, bus, None, health)).start()
    await ari.start()
    return Stack(peer, store, bus, engine, ari, server)


@pytest.fixture
async def peer() -> AsyncIterator[AriPeer]:
    peer = await AriPeer().start()
    yield peer
    await peer.stop()


@pytest.fixture
async def stack(tmp_path, peer):
    started: list[Stack] = []

    async def make(**env: str) -> Stack:
        s = await start_stack(tmp_path, peer, **env)
        started.append(s)
        return s
    yield make
    for s in started:
        await s.ari.stop()
        await s.server.stop()
        s.engine.close()
        s.store.close()


# -- /healthz -------------------------------------------------------------------------------------

async def test_healthz_ok_while_connected_and_down_when_asterisk_goes_then_ok_again(stack, peer):
    s = await stack()
    await s.ari.wait_ready(5)
    status, report = await s.health()
    assert (status, report["status"], report["reasons"]) == (200, "ok", [])
    assert report["checks"]["ari"]["state"] == "connected"
    assert report["checks"]["store"] == {"writable": True}
    assert report["checks"]["speech"]["loaded"] is True

    await peer.stop()                                    # Asterisk goes away
    report = await s.wait_status("down")
    status, _ = await s.health()
    assert status == 503
    assert report["checks"]["ari"]["state"] == "unreachable"
    assert report["reasons"] == ["ARI: cannot connect to Asterisk"]
    assert "未连接 Asterisk" in report["notices"][0]
    assert peer.url not in str(report)                   # no address for anonymous callers
    samples = await s.metrics()
    assert samples["callassist_ari_connected"] == 0
    assert samples["callassist_ari_connection_state{state=unreachable}"] == 1

    await peer.start()                                   # same port: Asterisk is back
    report = await s.wait_status("ok")
    assert report["checks"]["ari"]["reconnects"] == 1


async def test_healthz_down_with_the_wrong_password_says_401(stack, peer):
    s = await stack(CALLASSIST_ARI_PASSWORD="wrong")
    report = await s.wait_status("down")
    status, _ = await s.health()
    assert status == 503
    assert report["checks"]["ari"]["state"] == "unauthorized"
    assert report["reasons"] == ["ARI: Asterisk refused the username/password (401)"]
    assert "用户名或密码被拒绝" in report["notices"][0]
    assert not s.ari.ready


async def test_healthz_degraded_while_connecting_and_when_decoding_falls_behind(tmp_path, peer):
    config = stack_config(tmp_path, peer)
    store = make_store(config)
    engine = ScriptedEngine(SCRIPTS)
    try:
        health = ServiceHealth(store, engine, ari_url=config.ari.url)   # the ARI app not made yet
        report = await health.assess()
        assert (report.status, report.http_status) == ("degraded", 200)
        assert report.reasons == ["ARI: connecting to Asterisk"]
        without_asterisk = ServiceHealth(store, engine)
        assert (await without_asterisk.assess()).status == "ok"          # the control
        with engine.meter.pending(12.0):                                   # 12 s of audio queued
            report = await without_asterisk.assess()
        assert report.status == "degraded" and report.reasons == ["speech: decoding 12.0 s behind"]
        assert report.notices == ["识别延迟 12 秒，提示卡会晚到"]
        engine.meter.set_lag(2.5)                   # a scheduler marks customers' sentences waiting
        engine.meter.set_behind(True)
        report = await without_asterisk.assess()
        assert report.status == "degraded" and report.reasons == [
            "speech: decoding behind, customers' sentences wait 2.5 s; new calls wait for the ones on screen"]
        assert report.notices == ["识别繁忙：客户的话要等 2 秒才识别，提示卡会晚到，新来电的转写会延后"]
        engine.meter.set_behind(False)
        engine.close()
        report = await without_asterisk.assess()
        assert (report.status, report.http_status) == ("down", 503)
    finally:
        engine.close()
        store.close()


# -- /metrics -------------------------------------------------------------------------------------

async def test_metrics_follow_the_exposition_format_and_move_with_a_call(stack, peer):
    s = await stack()
    await s.ari.wait_ready(5)
    status, _, text = await s.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in (("callassist_active_calls", "gauge"), ("callassist_ari_connected", "gauge"),
                       ("callassist_ari_reconnects", "counter"),
                       ("callassist_rtp_packets_received", "counter"),
                       ("callassist_rtp_packets_lost", "counter"), ("callassist_rtp_packets_late", "counter"),
                       ("callassist_rtp_frames_overflow", "counter"),
                       ("callassist_asr_backlog_seconds", "gauge"),
                       ("callassist_asr_real_time_factor", "gauge"),
                       ("callassist_asr_lag_seconds", "gauge"), ("callassist_asr_behind", "gauge"),
                       ("callassist_asr_interims_shed", "counter"),
                       ("callassist_card_latency_seconds", "histogram"),
                       ("callassist_events_stored", "counter")):
        assert families[name].type == kind, name
        exposed = f"{name}_total" if kind == "counter" else name      # a counter's samples end in _total
        assert f"# HELP {exposed} " in text
        assert f"# TYPE {exposed} {kind}\n" in text
    assert "callassist_rtp_packets_received_total " in text and "callassist_events_stored_total " in text
    assert 'callassist_card_latency_seconds_bucket{le="+Inf"} 0.0' in text
    assert "callassist_card_latency_seconds_count 0.0" in text
    assert "callassist_card_latency_seconds_sum 0.0" in text

    before = await s.metrics()
    assert before["callassist_ari_connected"] == 1 and before["callassist_active_calls"] == 0
    assert before["callassist_ari_connection_state{state=connected}"] == 1
    assert before["callassist_ari_connection_state{state=unreachable}"] == 0
    assert before["callassist_card_latency_seconds_count"] == 0

    with s.bus.subscription() as events:
        call = peer.start_call(CUSTOMER_WAV, CUSTOMER_WAV, answer_after=0.2)
        fired = await asyncio.wait_for(_next(events, CardFired), 15)
    assert fired.card.category == "regulator_complaint"
    during = await _metrics_when(s, lambda m: m["callassist_card_latency_seconds_count"] == 1)
    assert during["callassist_active_calls"] == 1
    assert during["callassist_rtp_packets_received_total"] > before["callassist_rtp_packets_received_total"]
    assert during["callassist_card_latency_seconds_count"] == 1
    assert 0 <= during["callassist_card_latency_seconds_sum"] < 60
    assert during['callassist_card_latency_seconds_bucket{le=+Inf}'] == 1
    assert during["callassist_events_stored_total"] > before["callassist_events_stored_total"]

    await peer.hangup(call)
    await until(lambda: s.ari.calls == {}, timeout=10)
    after = await s.metrics()
    assert after["callassist_active_calls"] == 0
    assert after["callassist_rtp_packets_received_total"] >= during["callassist_rtp_packets_received_total"]


async def _next(events, kind: type):
    async for event in events:
        if isinstance(event, kind):
            return event


async def _metrics_when(s: Stack, condition, timeout: float = 10.0) -> dict[str, float]:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition(samples := await s.metrics()):
        assert asyncio.get_running_loop().time() < deadline, samples
        await asyncio.sleep(0.05)
    return samples


def _own_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("metrics_remote", [False, True])
async def test_metrics_need_no_login_from_loopback_and_elsewhere_only_when_configured(
        tmp_path, peer, metrics_remote):
    address = _own_address()
    if address is None:
        pytest.skip("no non-loopback address to call from")
    config = stack_config(tmp_path, peer, CALLASSIST_WEB_METRICS_REMOTE=str(metrics_remote).lower())
    store = make_store(config)
    runner = web.AppRunner(create_app(config, store))
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]          # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200                      # loopback, no login
                assert "callassist_active_calls 0.0" in await response.text()
            async with http.get(f"http://{address}:{port}/metrics") as response:
                assert response.status == (200 if metrics_remote else 403)
            async with http.get(f"http://{address}:{port}/healthz") as response:
                # from anywhere (the web app on its own: nothing to be down about)
                assert response.status == 200 and (await response.json())["status"] == "ok"
    finally:
        await runner.cleanup()
        store.close()


# -- the decode meter ---------------------------------------------------------------------------------

async def test_vosk_engine_counts_backlog_and_real_time_factor(vosk_engine):
    stream = vosk_engine.open_stream(16000)
    before = vosk_engine.meter.audio_seconds_total
    for _ in range(25):                               # half a second, 20 ms at a time
        await stream.feed(bytes(640))
    stream.close()
    assert vosk_engine.meter.audio_seconds_total - before == pytest.approx(0.5)
    assert vosk_engine.meter.decode_seconds_total > 0 and vosk_engine.meter.real_time_factor > 0
    assert vosk_engine.meter.backlog_seconds == pytest.approx(0.0, abs=1e-9)


# -- reconnect after a long outage ----------------------------------------------------------------

async def test_a_returning_asterisk_is_picked_up_within_the_shipped_ceiling(tmp_path, peer, caplog):
    """With the shipped backoff ([ari] reconnect_initial_delay 0.5 s, doubling), an outage
    long enough to reach the ceiling: no wait between attempts is longer than
    reconnect_max_delay (5 s), so a returning Asterisk is found within it."""
    config = load_config(env={"CALLASSIST_STORAGE_DATA_DIR": str(tmp_path), "CALLASSIST_ARI_URL": peer.url,
                              "CALLASSIST_ARI_PASSWORD": "secret",
                              "CALLASSIST_RTP_PORT_MIN": "43000", "CALLASSIST_RTP_PORT_MAX": "43999"})
    app = AriApp(config, EventBus(), None, tmp_path)
    delays: list[float] = []

    class Delays(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if m := re.search(r"(?:retrying|reconnecting) in ([\d.]+) s", record.getMessage()):
                delays.append(float(m.group(1)))
    handler = Delays()
    logging.getLogger("ari_app.app").addHandler(handler)
    try:
        await app.start()
        await app.wait_ready(5)
        await peer.stop()
        # 0.5 + 1 + 2 + 4 s of waits: the fifth is where the old ceiling let it grow on (8 s)
        await until(lambda: len(delays) >= 5, timeout=30, interval=0.05)
        await peer.start()
        await app.wait_ready(config.ari.reconnect_max_delay + 10)      # picked up again
        assert app.connection.state == "connected" and app.connection.reconnects == 1
    finally:
        logging.getLogger("ari_app.app").removeHandler(handler)
        await app.stop()
    assert max(delays) > 3.0                      # the control: the backoff did grow
    assert max(delays) <= 5.0                     # a returning Asterisk waits at most this


# -- the start-up banner tells the truth ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", ["connected", "wrong password", "refused"])
async def test_serve_says_it_is_connecting_then_connected_or_why_not(tmp_path, peer, case):
    from test_serve_start import Running, free_port
    url = peer.url
    if case == "refused":
        url = f"http://127.0.0.1:{free_port()}"           # nothing listens there
    port = free_port()
    serve = Running("serve", cwd=tmp_path, env={
        "CALLASSIST_STORAGE_DATA_DIR": str(tmp_path / "data"), "CALLASSIST_WEB_PORT": str(port),
        "CALLASSIST_ARI_URL": url, "CALLASSIST_ARI_PASSWORD": "wrong" if case == "wrong password" else "secret",
        "CALLASSIST_RTP_PORT_MIN": "43000", "CALLASSIST_RTP_PORT_MAX": "43999",
        "CALLASSIST_ASR_POST_CALL_ENGINE": ""})
    try:
        # the peer answers on this loop: wait for the output in a thread
        banner = await asyncio.to_thread(serve.wait_for, "callassist: ARI application")
        assert banner == (f"callassist: ARI application 'callassist': connecting to Asterisk at {url} "
                          f"(the log says when it is connected, or why not; GET /healthz tells monitoring)")
        outcome = {"connected": "ARI events: connected to", "wrong password": "ARI refused user 'callassist' (401)",
                   "refused": "is Asterisk running, is [ari] url right?"}[case]
        await asyncio.to_thread(serve.wait_for, outcome, 60)
        async with aiohttp.ClientSession() as http:
            while True:          # "connected" is logged before the first resync, ok comes after it
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    report = await response.json()
                if report["status"] != "degraded":
                    break
                await asyncio.sleep(0.05)
        if case == "connected":
            assert (response.status, report["status"]) == (200, "ok")
        else:
            assert (response.status, report["status"]) == (503, "down")
            assert report["checks"]["ari"]["state"] == ("unauthorized" if case == "wrong password" else "unreachable")
    finally:
        code = await asyncio.to_thread(serve.finish)
    assert code == 0, "\n".join(serve.lines)
    assert not any(" on http://127.0.0.1:" in line and "ARI application" in line for line in serve.lines)
