"""Is assist working? One verdict for /healthz and the screens' banner.

    status  HTTP  meaning
    ok      200   Asterisk connected (or none configured), store writable, engine loaded,
                  decoding keeps up
    degraded 200  calls are assisted, but late or at risk: reconnecting to Asterisk (the
                  websocket dropped, a new one is on its way), the decoder is behind
                  (asr.scheduler: customers' sentences wait, new calls are decoded after the
                  ones on screen), or the decode backlog is above DEGRADED_BACKLOG_SECONDS
    down    503   calls are not assisted: Asterisk refuses us (401) or cannot be reached,
                  the store cannot be written, or no speech engine is loaded

Degraded answers 200 on purpose: a load balancer or orchestrator must not restart a
process that is doing its job slowly; 503 says restarting or paging is warranted.

The verdict never names addresses or users (/healthz needs no login); the log has those.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "degraded", "down"]
DEGRADED_BACKLOG_SECONDS = 3.0     # audio waiting to be decoded: cards come this much later
_RANK = {"ok": 0, "degraded": 1, "down": 2}


@dataclass
class HealthReport:
    status: Status = "ok"
    reasons: list[str] = field(default_factory=list)        # English, for operators and tools
    notices: list[str] = field(default_factory=list)        # Chinese, for the screens' banner
    checks: dict[str, Any] = field(default_factory=dict)

    def worsen(self, status: Status, reason: str, notice: str) -> None:
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        self.reasons.append(reason)
        self.notices.append(notice)

    @property
    def http_status(self) -> int:
        return 503 if self.status == "down" else 200

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": self.reasons, "notices": self.notices,
                "checks": self.checks, "at": round(time.time(), 3)}


class ServiceHealth:
    """The parts whose state makes the verdict. `ari` (ari_app.app.AriApp) is attached by
    `serve` once it exists; until then a configured Asterisk counts as connecting. Without
    `engine` (a web app on its own) speech is not judged."""

    def __init__(self, store: Any, engine: Any = None, *, ari_url: str = "",
                 engines: tuple[Any, ...] = ()) -> None:
        self.store = store
        self.engine = engine                 # the live engine
        self.engines = tuple(e for e in (engine, *engines) if e is not None)
        self.ari_url = ari_url
        self.ari: Any = None
        self.ari_standby = False             # a controller waiting while another holds the Asterisk

    async def assess(self) -> HealthReport:
        report = HealthReport()
        self._check_ari(report)
        await self._check_store(report)
        self._check_speech(report)
        return report

    def _check_ari(self, report: HealthReport) -> None:
        if not self.ari_url:
            report.checks["ari"] = {"state": "not configured"}
            return
        if self.ari_standby:                 # another controller of this Asterisk is active
            report.checks["ari"] = {"state": "standby"}
            return
        connection = self.ari.connection if self.ari is not None else None
        state = connection.state if connection is not None else "connecting"
        report.checks["ari"] = {"state": state,
                                "since": round(connection.since, 3) if connection else None,
                                "reconnects": connection.reconnects if connection else 0}
        if state == "connected":
            return
        if state == "connecting":
            report.worsen("degraded", "ARI: connecting to Asterisk",
                          "正在连接 Asterisk，新来电暂未被监听")
        elif state == "unauthorized":
            report.worsen("down", "ARI: Asterisk refused the username/password (401)",
                          "坐席助手未连接 Asterisk（用户名或密码被拒绝），通话未被监听")
        else:
            report.worsen("down", "ARI: cannot connect to Asterisk",
                          "坐席助手未连接 Asterisk，通话未被监听")

    async def _check_store(self, report: HealthReport) -> None:
        writable = await asyncio.to_thread(self.store.writable)   # a stat call may hang on a bad disk
        report.checks["store"] = {"writable": writable}
        if not writable:
            report.worsen("down", "store: the database cannot be written",
                          "数据库无法写入，通话记录会丢失")

    def _check_speech(self, report: HealthReport) -> None:
        live = self.engine
        if live is None:                 # a web app on its own (tests, tools): nothing to judge
            report.checks["speech"] = {"engine": None}
            return
        loaded = not getattr(live, "_closed", False)
        engines = {}
        for engine in self.engines:
            meter = engine.meter
            engines[engine.name] = {"backlog_seconds": round(meter.backlog_seconds, 2),
                                    "real_time_factor": round(meter.real_time_factor, 3),
                                    "lag_seconds": round(meter.lag_seconds, 2), "behind": meter.behind,
                                    "interims_shed": meter.interims_shed}
        report.checks["speech"] = {"engine": getattr(live, "name", None), "loaded": loaded,
                                   "engines": engines}
        if not loaded:
            report.worsen("down", "speech: no live engine loaded", "语音识别引擎未加载，不会有提示卡")
            return
        if live.meter.behind:
            report.worsen("degraded", f"speech: decoding behind, customers' sentences wait "
                          f"{live.meter.lag_seconds:.1f} s; new calls wait for the ones on screen",
                          f"识别繁忙：客户的话要等 {live.meter.lag_seconds:.0f} 秒才识别，"
                          "提示卡会晚到，新来电的转写会延后")
        backlog = live.meter.backlog_seconds
        if backlog > DEGRADED_BACKLOG_SECONDS:
            report.worsen("degraded", f"speech: decoding {backlog:.1f} s behind",
                          f"识别延迟 {backlog:.0f} 秒，提示卡会晚到")

