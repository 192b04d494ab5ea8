"""Calls per core for each role, and the card's latency through the cluster against one process.

Real processes on a real Asterisk, PostgreSQL and Redis (tests/cluster_fixture.py): the same N
concurrent complaint calls (TTS sentences through Asterisk's Local channels, each agent watching
its screen over the real websocket) go first through a cluster (an ARI controller, N/2 calls per
worker on two workers, a web node) and then through one `serve` process (role "all") on the same
servers; alternated `--rounds` times. Printed, in one run:

- CPU seconds per second of call for each role's process (psutil), hence calls per core;
- card latency on the agent's screen after the sentence's last audio, p50 / p95, cluster and
  single process, and their ratio;
- bus entries and PostgreSQL transactions per call minute.

    python benchmarks/bench_roles.py [--calls 4] [--rounds 1]

Needs ../shared (Asterisk, TTS sentences), Debian's postgresql and redis-server, Whisper base.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis.asyncio import Redis  # noqa: E402

from asterisk_fixture import launch_asterisk, network_for, unpack_asterisk  # noqa: E402
from cluster_fixture import (CLUSTER_DIALPLAN, AgentScreen, Cluster, Node, agent_endpoint,  # noqa: E402
                             customer_audio, find_whisper_model, place_call)
from servers import running_postgres, running_redis  # noqa: E402

SENTENCES = (("s3", "regulator_complaint"), ("s4", "lawsuit_threat"), ("s2", "media_exposure"),
             ("s1", "compensation_demand"))
PAUSE = 6.0                   # s of silence before each sentence
TAIL = 4.0


def cpu_seconds(node: Node) -> float:
    assert node.proc is not None
    times = psutil.Process(node.proc.pid).cpu_times()
    return times.user + times.system


async def run_calls(cluster: Cluster, nodes: list[Node], web: Node, calls: int, tag: str) -> dict:
    """Place `calls` calls at once, each agent watching; CPU per node and card latencies."""
    audio, spoken = customer_audio(cluster.audio_dir, tag, [(PAUSE, name) for name, _ in SENTENCES], TAIL)
    screens = []
    for i in range(calls):
        screen = AgentScreen(f"agent{i}")
        await screen.login(web)
        await screen.connect(web)
        screens.append(screen)
    bus = Redis.from_url(cluster.bus_url)
    entries_before = await bus.xlen("callassist:events")
    store = cluster.open_store()
    xacts_before = _xacts(store)
    cpu_before = {node.node_id: cpu_seconds(node) for node in nodes}
    began = time.monotonic()
    async with network_for(cluster.asterisks["a"].ari) as network:
        placed = [(await place_call(network, str(1001 + i), audio), time.monotonic()) for i in range(calls)]
        seen = await asyncio.gather(*(cards_seen(screen, call_id) for screen, (call_id, _) in zip(screens, placed)))
        latencies = [seen_at[category] - at - sentence.end
                     for seen_at, (_, at) in zip(seen, placed)
                     for sentence, (_, category) in zip(spoken, SENTENCES) if category in seen_at]
        for screen, (call_id, _) in zip(screens, placed):
            await screen.wait_for(call_id, "CallEnded", 90)
    seconds = time.monotonic() - began
    cpu = {node.node_id: cpu_seconds(node) - cpu_before[node.node_id] for node in nodes}
    entries = await bus.xlen("callassist:events") - entries_before
    xacts = _xacts(store) - xacts_before
    store.close()
    await bus.aclose()
    for screen in screens:
        await screen.close()
    call_seconds = calls * (spoken[-1].end + TAIL)
    return {"cpu": cpu, "latencies": latencies, "seconds": seconds, "call_seconds": call_seconds,
            "entries": entries, "xacts": xacts}


async def cards_seen(screen: AgentScreen, call_id: str, timeout: float = 120.0) -> dict[str, float]:
    """When each category's first card reached the screen (polled every 20 ms), until the call ends."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not screen.events(call_id, "CallEnded"):
        for event in screen.events(call_id, "CardFired"):
            seen.setdefault(event["card"]["category"], time.monotonic())
        await asyncio.sleep(0.02)
    return seen


def _xacts(store) -> int:
    with store.db.query() as db:
        return int(db.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                              ).fetchone()[0])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    whisper = find_whisper_model()
    if whisper is None:
        sys.exit("needs the Whisper base model")
    with tempfile.TemporaryDirectory(prefix="bench-roles-") as name, \
            running_redis("bench-roles-redis-") as redis, running_postgres("bench-roles-pg-") as pg:
        base = Path(name)
        base.chmod(0o755)
        (base / "ast").mkdir()
        server, real = launch_asterisk(unpack_asterisk(base / "ast"), base, systemname="pbx-a",
                                       extra_dialplan=CLUSTER_DIALPLAN)
        (base / "audio").mkdir()
        (base / "audio").chmod(0o755)
        cluster = Cluster(base_dir=base, config_path=base / "callassist.toml", data_dir=base / "data",
                          database_url=pg.fresh_url(), bus_url=redis.fresh_url(), asterisks={"a": real},
                          whisper_model=whisper, audio_dir=base / "audio")
        cluster.write_config()
        for i in range(args.calls):
            cluster.add_user(f"agent{i}", "agent", [agent_endpoint(str(1001 + i))])
        results: dict[str, list[dict]] = {"cluster": [], "single": []}
        try:
            for round_ in range(args.rounds):
                for mode in ("cluster", "single"):
                    cluster.nodes.clear()
                    if mode == "cluster":
                        nodes = [cluster.add_node("ari-a", "ari", asterisk="a"),
                                 cluster.add_node("worker-1", "worker", rtp_range=(42000, 42099)),
                                 cluster.add_node("worker-2", "worker", rtp_range=(42100, 42199)),
                                 cluster.add_node("web-1", "web")]
                    else:
                        nodes = [cluster.add_node("all", "all", asterisk="a",
                                                  extra={"CALLASSIST_CLUSTER_BUS_URL": "",
                                                         "CALLASSIST_RTP_PORT_MIN": "42200",
                                                         "CALLASSIST_RTP_PORT_MAX": "42299"})]
                    cluster.start()
                    await asyncio.sleep(3.0)          # the controller connected, workers registered
                    web = nodes[-1]
                    results[mode].append(await run_calls(cluster, nodes, web, args.calls, f"{mode}{round_}"))
                    cluster.stop()
        finally:
            cluster.stop()
            server.stop()
    report(results, args.calls)


def report(results: dict[str, list[dict]], calls: int) -> None:
    print(f"\n{calls} concurrent calls of {len(SENTENCES)} complaint sentences; Whisper base live; "
          f"{len(results['cluster'])} round(s)")
    print("\nCPU seconds per second of call, per role (all its processes; calls per core = 1 / that)")
    for mode, runs in results.items():
        totals: dict[str, float] = {}
        processes: dict[str, set[str]] = {}
        call_seconds = sum(r["call_seconds"] for r in runs)
        for r in runs:
            for node, cpu in r["cpu"].items():
                role = node.split("-")[0]
                totals[role] = totals.get(role, 0.0) + cpu
                processes.setdefault(role, set()).add(node)
        for role, cpu in totals.items():
            per = cpu / call_seconds
            print(f"  {mode:<8}{role:<8}{len(processes[role]):2d} process(es) {per:8.3f} s/s  "
                  f"{1 / per if per else float('inf'):7.1f} calls per core")
    print("\ncard on the agent's screen after the sentence's last audio, s (placing the call counts as t=0)")
    single = [v for r in results["single"] for v in r["latencies"]]
    multi = [v for r in results["cluster"] for v in r["latencies"]]
    for mode, values in (("single", single), ("cluster", multi)):
        print(f"  {mode:<8} n={len(values):3d} p50 {pct(values, .5):6.2f}  p95 {pct(values, .95):6.2f}")
    if single and multi:
        print(f"  ratio cluster / single: p50 {pct(multi, .5) / pct(single, .5):.2f}, "
              f"p95 {pct(multi, .95) / pct(single, .95):.2f}; mean difference "
              f"{statistics.mean(multi) - statistics.mean(single):+.2f} s")
    runs = results["cluster"]
    minutes = sum(r["call_seconds"] for r in runs) / 60
    print(f"\nper call minute (cluster): {sum(r['entries'] for r in runs) / minutes:.0f} bus entries, "
          f"{sum(r['xacts'] for r in runs) / minutes:.0f} PostgreSQL transactions (all nodes, reads included)")


if __name__ == "__main__":
    asyncio.run(main())
