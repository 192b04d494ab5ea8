"""The ARI app as `callassist serve` wires it (AriApp.from_config: one CallPipeline per call)
on a scripted engine that says one numbered line per second of speech fed to it; used
by tests/test_retap.py in the test process and in the subprocess it kills."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ari_app.app import AriApp
from ari_app.calls import LegTap
from ari_app.media import LocalMediaHost
from asr.fake import ScriptedEngine, ScriptedUtterance
from callassist.bus import EventBus
from callassist.config import load_config
from prompts.matcher import Matcher
from prompts.playbook import load_playbook


def make_app(url: str, recordings_dir: Path, bus: EventBus, fmt: str, ports: int,
             user: str = "callassist", password: str = "secret", **kwargs: Any) -> AriApp:
    config = load_config(env={
        "CALLASSIST_ARI_URL": url, "CALLASSIST_ARI_USERNAME": user, "CALLASSIST_ARI_PASSWORD": password,
        "CALLASSIST_ARI_REQUEST_TIMEOUT": "2", "CALLASSIST_RECORDING_FORMAT": fmt,
        "CALLASSIST_ARI_RECONNECT_INITIAL_DELAY": "0.05", "CALLASSIST_ARI_RECONNECT_MAX_DELAY": "0.4",
        "CALLASSIST_RTP_PORT_MIN": str(ports), "CALLASSIST_RTP_PORT_MAX": str(ports + 499)})
    lines = {speaker: [ScriptedUtterance(f"{speaker} 第 {i} 句", i + 0.1, i + 0.6) for i in range(120)]
             for speaker in ("customer", "agent")}
    return AriApp.from_config(config, bus, ScriptedEngine(lines, endpoint_delay=0.2),
                              Matcher(load_playbook()), recordings_dir, **kwargs)


def frames(app: AriApp, call_id: str, leg: LegTap) -> int:
    """Frames the app's media host (in this process) took from the leg."""
    assert isinstance(app.media, LocalMediaHost)
    media = app.media.leg(call_id, leg.media_id)
    return media.frames if media is not None else 0
