"""callassist as a cluster of processes (issue 10): real `callassist serve` nodes, real
PostgreSQL, real Redis, two real Asterisks, crashes by kill -9.

The cluster: an ARI controller per Asterisk (ari-a, ari-b; ari-a2 a standby for A), two workers (media + Whisper),
two web nodes; every node is `python -m callassist serve` with its own environment over one
shared configuration file (tests/cluster_fixture.py). Agents log in through the web form and
watch their calls on the real /ws websocket.

- a call through each Asterisk reaches its own agent's screen (on different web nodes) with
  its transcript and card, and not the other agent's;
- kill -9 of the worker hosting a live call: the call moves to the other worker (Asterisk's
  externalMedia now sends there), a CallFault names the gap, the card of the sentence after the
  kill arrives, the card of before is neither lost nor shown twice;
- kill -9 of the web node an agent watches (the store writer's leader): the screen reconnects
  to the other web node with its last seq and ends up with every stored event of the call once;
- PostgreSQL down mid-call (stopped until the bus has carried events of the call, then
  started): every event the bus carried for the call is stored, once; the screen goes on;
- kill -9 of the ARI controller holding Asterisk A's lease: the standby (ari-a2) takes the
  lease and the Asterisk, and the next call through it is carded;
- every node stops cleanly on SIGTERM.

Before those, one `serve` process (role "all") on the same servers and calls: the control
that the harness (dialplan, audio, screens, accounts) works without the cluster.

The figures (move time after a kill, reconnect time, events checked) are printed at the end
of the module (`-s` not needed).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asterisk_fixture import RealAsterisk, launch_asterisk, network_for, unavailable, unpack_asterisk
from cluster_fixture import (CLUSTER_DIALPLAN, AgentScreen, BusView, Cluster, agent_endpoint, card_of,
                             customer_audio, find_whisper_model, have_tools, media_ports, place_call,
                             superseded, wait_until)
from servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

AGENT_A, AGENT_B = "1001", "1002"                  # extensions: agent A answers on Asterisk A
USER_A, USER_B = "agent.a", "agent.b"
FIRST, AFTER = "s3", "s4"                          # 我要去工信部投诉你们。 / 我已经请了律师，准备起诉你们。
FIRST_CARD, AFTER_CARD = "regulator_complaint", "lawsuit_threat"
# Silence between the two sentences: room for the card of the first, the kill, the worker
# timeout (3 s) and the move, before the second is spoken.
GAP = 22.0
CALL_TIMEOUT = 90.0                                # Whisper on 2 shared cores, several processes
MOVE_TIMEOUT = 30.0
TRANSIENT = {"ConversationUpdated"}                # on the bus, never stored (events.TRANSIENT_EVENTS)

FIGURES: dict[str, Any] = {}


def figure(name: str, value: Any) -> None:
    FIGURES[name] = value
    print(f"figure: {name} = {value}")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tools() -> None:
    why = have_tools()
    if why:
        unavailable(why)


@pytest.fixture(scope="module")
def whisper_model(tools: None) -> Path:
    found = find_whisper_model()
    if found is None:
        unavailable("the cluster's workers need the Whisper base model (asr.models.find_model)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def asterisks(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RealAsterisk]]:
    """Two independent Asterisks (systemname pbx-a / pbx-b) from one unpacked build."""
    root = unpack_asterisk(tmp_path_factory.mktemp("asterisk-build"))
    servers, reals = [], {}
    try:
        for name in ("a", "b"):
            server, real = launch_asterisk(root, tmp_path_factory.getbasetemp(), systemname=f"pbx-{name}",
                                           extra_dialplan=CLUSTER_DIALPLAN)
            servers.append(server)
            settings = server.cli("core show settings")
            assert f"pbx-{name}" in settings, settings
            reals[name] = real
        yield reals
    finally:
        for server in servers:
            server.stop()


def make_cluster(base: Path, postgres: PostgresServer, redis: RedisServer, asterisks: dict[str, RealAsterisk],
                 whisper: Path) -> Cluster:
    base.mkdir(parents=True, exist_ok=True)
    audio = base / "audio"
    audio.mkdir()
    audio.chmod(0o755)
    cluster = Cluster(base_dir=base, config_path=base / "callassist.toml", data_dir=base / "shared-data",
                      database_url=postgres.fresh_url(), bus_url=redis.fresh_url(), asterisks=asterisks,
                      whisper_model=whisper, audio_dir=audio)
    cluster.write_config()
    return cluster


class ReportOnFailure:
    """A pytest plugin while the module runs: a failed test's report carries every node's
    key log lines and tail."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        if call.excinfo is not None and call.when in ("setup", "call") and item.module is not None \
                and item.module.__name__ == __name__:
            item.add_report_section(call.when, "cluster logs", self.cluster.report())
        return (yield)


def random_rtp_range(size: int = 100) -> tuple[int, int]:
    low = random.randrange(41000, 49000, size)
    return low, low + size - 1


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            postgres_server: PostgresServer, redis_server: RedisServer,
            asterisks: dict[str, RealAsterisk], whisper_model: Path) -> Iterator[Cluster]:
    cluster = make_cluster(tmp_path_factory.mktemp("cluster"), postgres_server, redis_server, asterisks,
                           whisper_model)
    plugin = ReportOnFailure(cluster)
    request.config.pluginmanager.register(plugin, "callassist-cluster-report")
    cluster.add_node("ari-a", "ari", asterisk="a")
    cluster.add_node("ari-b", "ari", asterisk="b")
    cluster.add_node("ari-a2", "ari", asterisk="a")          # a standby controller for Asterisk A
    first = random_rtp_range()
    second = (first[1] + 1, first[1] + 100) if first[1] + 100 < 50000 else (first[0] - 100, first[0] - 1)
    cluster.add_node("worker-1", "worker", rtp_range=first)
    cluster.add_node("worker-2", "worker", rtp_range=second)
    cluster.add_node("web-1", "web")
    cluster.add_node("web-2", "web")
    try:
        # accounts first, by the command line on the shared database (it creates the schema)
        cluster.add_user(USER_A, "agent", [agent_endpoint(AGENT_A)])
        cluster.add_user(USER_B, "agent", [agent_endpoint(AGENT_B)])
        started = time.monotonic()
        try:
            cluster.start()
            figure("cluster start (7 nodes to /healthz 200) s", round(time.monotonic() - started, 1))
            in_thread(wait_cluster_formed(cluster))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\n{cluster.report()}") from None
        figure("cluster formed (workers registered, lease held, ARI apps connected) s",
               round(time.monotonic() - started, 1))
        yield cluster
    finally:
        codes = cluster.stop()
        request.config.pluginmanager.unregister(plugin)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():      # the figures show without -s
                reporter.write_line(f"\ncluster node exit codes at the end: {codes}")
                for name, value in FIGURES.items():
                    reporter.write_line(f"cluster figure: {name} = {value}")


def in_thread(coroutine: Any) -> Any:
    """Run a coroutine to its end from a synchronous fixture, on a loop of its own in another
    thread (the test's own loop, pytest-asyncio's, stays untouched)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def wait_cluster_formed(cluster: Cluster) -> None:
    """Both workers registered, the store writer's lease held, each Asterisk's Stasis app
    registered (its controller is connected)."""
    bus = BusView(cluster.bus_url)
    try:
        await wait_until(lambda: _same(bus.workers(), {"worker-1", "worker-2"}), 60,
                         "both workers in the registry (callassist:worker:*)",
                         lambda: bus.workers())
        await wait_until(lambda: bus.lease_holder("store-writer"), 60,
                         "a web node holding the store-writer lease")
    finally:
        await bus.close()
    for name, asterisk in cluster.asterisks.items():
        async with network_for(asterisk.ari) as network:
            async def registered(network: Any = network) -> bool:
                async with network.session.get(f"{network.ari.url}/ari/applications") as resp:
                    return any(app["name"] == "callassist" for app in await resp.json())
            await wait_until(registered, 60, f"Asterisk {name}: the callassist ARI app connected")


async def _same(found: Any, expected: set[str]) -> bool:
    return set(await found) == expected


@pytest.fixture
async def bus(cluster: Cluster) -> Any:
    view = BusView(cluster.bus_url)
    yield view
    await view.close()


@pytest.fixture
async def whole(cluster: Cluster) -> Cluster:
    """The cluster with every node running again (a test before killed one)."""
    restarted = await asyncio.to_thread(cluster.restart_dead)
    if restarted:
        await wait_cluster_formed(cluster)
        print(f"restarted {restarted}")
    return cluster


async def screen_on(node: Any, username: str) -> AgentScreen:
    screen = AgentScreen(username)
    await screen.login(node)
    await screen.connect(node)
    return screen


def two_sentences(cluster: Cluster, tag: str) -> tuple[str, Any]:
    return customer_audio(cluster.audio_dir, tag, [(0.3, FIRST), (GAP, AFTER)], tail=40.0)


def card_ids(events: list[dict[str, Any]]) -> Counter:
    return Counter(e["card"]["card_id"] for e in events if e["type"] == "CardFired")


def canonical(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------- control: one process

async def test_single_process_serve_on_the_same_servers(tmp_path: Path, postgres_server: PostgresServer,
                                                        redis_server: RedisServer,
                                                        asterisks: dict[str, RealAsterisk],
                                                        whisper_model: Path) -> None:
    """The harness without the cluster: one `serve` (role "all", no bus) on Asterisk A and
    the shared database; the same call and screen as below."""
    solo = make_cluster(tmp_path / "solo", postgres_server, redis_server, asterisks, whisper_model)
    node = solo.add_node("solo", "all", asterisk="a", rtp_range=random_rtp_range(),
                         extra={"CALLASSIST_CLUSTER_BUS_URL": ""})
    screen = None
    try:
        solo.add_user(USER_A, "agent", [agent_endpoint(AGENT_A)])
        await asyncio.to_thread(solo.start)
        screen = await screen_on(node, USER_A)
        audio, _ = customer_audio(solo.audio_dir, "solo", [(0.3, FIRST)], tail=30.0)
        async with network_for(asterisks["a"].ari) as network:
            await wait_until(lambda: _app_registered(network), 30, "the callassist ARI app connected")
            call_id = await place_call(network, AGENT_A, audio)
            try:
                joined = await screen.wait_for(call_id, "AgentJoined", CALL_TIMEOUT)
                assert joined["endpoint"] == agent_endpoint(AGENT_A)
                await screen.wait_for(call_id, "TranscriptUpdate", CALL_TIMEOUT)
                await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(FIRST_CARD))
            finally:
                await network.hangup(call_id)
            await screen.wait_for(call_id, "CallEnded", 30)
    except BaseException:
        print(solo.report())
        raise
    finally:
        if screen is not None:
            await screen.close()
        codes = await asyncio.to_thread(solo.stop)
    assert codes == {"solo": 0}, solo.report()


async def _app_registered(network: Any) -> bool:
    async with network.session.get(f"{network.ari.url}/ari/applications") as resp:
        return any(app["name"] == "callassist" for app in await resp.json())


# ---------------------------------------------------------------- (a) two Asterisks, two agents

async def test_a_call_through_each_asterisk_reaches_its_own_agent(whole: Cluster, bus: BusView) -> None:
    cluster = whole
    web1, web2 = cluster.nodes["web-1"], cluster.nodes["web-2"]
    screen_a, screen_b = await screen_on(web1, USER_A), await screen_on(web2, USER_B)
    audio, _ = customer_audio(cluster.audio_dir, "each", [(0.3, FIRST)], tail=40.0)
    try:
        async with network_for(cluster.asterisks["a"].ari) as net_a, \
                network_for(cluster.asterisks["b"].ari) as net_b:
            placed = time.monotonic()
            call_a = await place_call(net_a, AGENT_A, audio)
            call_b = await place_call(net_b, AGENT_B, audio)
            try:
                for screen, call_id, agent in ((screen_a, call_a, AGENT_A), (screen_b, call_b, AGENT_B)):
                    joined = await screen.wait_for(call_id, "AgentJoined", CALL_TIMEOUT)
                    assert joined["endpoint"] == agent_endpoint(agent)
                    said = await screen.wait_for(call_id, "TranscriptUpdate", CALL_TIMEOUT,
                                                 lambda e: e["speaker"] == "customer")
                    card = await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(FIRST_CARD))
                    figure(f"(a) {call_id[:12]} via {screen.node}: first card after s",
                           round(time.monotonic() - placed, 1))
                    print(f"(a) {screen.username}: {said['text']!r} -> card {card['card']['title']}")
                # which workers took them (Asterisk sends each leg's RTP into a worker's range)
                ports_a, ports_b = await media_ports(net_a), await media_ports(net_b)
                figure("(a) workers of the two calls",
                       sorted({cluster.worker_of_rtp_port(p) for p in ports_a + ports_b}))
            finally:
                await net_a.hangup(call_a)
                await net_b.hangup(call_b)
            await screen_a.wait_for(call_a, "CallEnded", 30)
            await screen_b.wait_for(call_b, "CallEnded", 30)
        # each agent saw their own call (above) and nothing of the other's
        assert screen_a.events(call_b) == [] and screen_b.events(call_a) == []
        assert {r.node for r in screen_a.received} == {"web-1"}
        assert {r.node for r in screen_b.received} == {"web-2"}
        # both calls are in the shared database, each event once
        for call_id in (call_a, call_b):
            stored = await asyncio.to_thread(cluster.stored_events, call_id)
            assert stored and len({canonical(e) for _, e in stored}) == len(stored)
    finally:
        await screen_a.close()
        await screen_b.close()


# ---------------------------------------------------------------- (b) kill -9 a worker

async def test_b_killing_the_worker_of_a_live_call_moves_the_call(whole: Cluster, bus: BusView) -> None:
    cluster = whole
    screen = await screen_on(cluster.nodes["web-1"], USER_A)
    audio, spoken = two_sentences(cluster, "worker-kill")
    try:
        async with network_for(cluster.asterisks["a"].ari) as network:
            call_id = await place_call(network, AGENT_A, audio)
            try:
                before = await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(FIRST_CARD))
                hosts = {cluster.worker_of_rtp_port(p) for p in await media_ports(network)}
                assert len(hosts) == 1 and None not in hosts, f"the call's RTP goes to {hosts}"
                victim = hosts.pop()
                assert victim is not None
                survivor = next(n for n in ("worker-1", "worker-2") if n != victim)
                assert victim in await bus.workers()            # control: registered while alive
                killed = time.monotonic()
                cluster.nodes[victim].kill9()

                async def moved() -> bool:
                    owners = {cluster.worker_of_rtp_port(p) for p in await media_ports(network)}
                    return owners == {survivor}
                await wait_until(moved, MOVE_TIMEOUT, f"the call's media moved from {victim} to {survivor}",
                                 lambda: media_ports(network))
                figure("(b) move time after kill -9 (Asterisk sends to the new worker) s",
                       round(time.monotonic() - killed, 2))
                fault = await screen.wait_for(call_id, "CallFault", MOVE_TIMEOUT, lambda e: victim in e["problem"])
                figure("(b) CallFault on screen after kill s", round(time.monotonic() - killed, 2))
                print(f"(b) CallFault: {fault['problem']}")
                assert survivor in fault["problem"], f"the CallFault does not name where the call went: {fault}"
                assert victim not in await bus.workers()
                after = await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(AFTER_CARD))
                figure("(b) card of the sentence after the kill, s after kill",
                       round(time.monotonic() - killed, 1))
                print(f"(b) spoken {spoken}; card after: {after['card']['text']!r}")
            finally:
                await network.hangup(call_id)
            await screen.wait_for(call_id, "CallEnded", 30)
        shown = card_ids(screen.events(call_id))
        assert shown[before["card"]["card_id"]] == 1 and shown[after["card"]["card_id"]] == 1, shown
        assert all(n == 1 for n in shown.values()), f"a card shown twice: {shown}"
        firsts = [e for e in screen.events(call_id, "CardFired") if e["card"]["category"] == FIRST_CARD]
        assert len(firsts) == 1, f"the sentence before the kill fired again after the move: {firsts}"
        stored = [e for _, e in await asyncio.to_thread(cluster.stored_events, call_id)]
        assert card_ids(stored) == shown, (card_ids(stored), shown)
        assert any(e["type"] == "CallFault" and victim in e["problem"] for e in stored)
    finally:
        await screen.close()


# ---------------------------------------------------------------- (c) kill -9 a web node

async def test_c_killing_the_web_node_of_a_screen_loses_no_event(whole: Cluster, bus: BusView) -> None:
    cluster = whole
    leader = await bus.lease_holder("store-writer")
    assert leader in ("web-1", "web-2"), f"store-writer lease held by {leader!r}"
    doomed, other = cluster.nodes[leader], cluster.nodes["web-2" if leader == "web-1" else "web-1"]
    screen = await screen_on(doomed, USER_B)
    audio, _ = two_sentences(cluster, "web-kill")
    try:
        async with network_for(cluster.asterisks["b"].ari) as network:
            call_id = await place_call(network, AGENT_B, audio)
            try:
                await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(FIRST_CARD))
                killed = time.monotonic()
                doomed.kill9()
                await asyncio.wait_for(screen.closed.wait(), 30)
                last = screen.last_seq

                async def reconnected() -> bool:
                    try:
                        await screen.connect(other)
                    except Exception as exc:                      # retried: the node may be taking over
                        print(f"(c) reconnect to {other.node_id}: {exc!r}")
                        return False
                    return True
                await wait_until(reconnected, 30, f"the screen reconnected to {other.node_id}", every=0.5)
                figure("(c) screen reconnected to the other web node after kill s",
                       round(time.monotonic() - killed, 2))
                figure("(c) last_seq sent on reconnect", last)
                await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(AFTER_CARD))
                figure("(c) store-writer lease after kill", await bus.lease_holder("store-writer"))
            finally:
                await network.hangup(call_id)
            await screen.wait_for(call_id, "CallEnded", 30)

        async def stored_seqs() -> list[int]:
            return [seq for seq, _ in await asyncio.to_thread(cluster.stored_events, call_id)]

        async def screen_has_all() -> bool:
            return set(await stored_seqs()) <= set(screen.seqs(call_id))
        async def difference() -> str:
            stored = await asyncio.to_thread(cluster.stored_events, call_id)
            shown = set(screen.seqs(call_id))
            return (f"stored, not on the screen: {[(q, e['type']) for q, e in stored if q not in shown]}; "
                    f"on the screen, not stored: {sorted(shown - {q for q, _ in stored})}; "
                    f"screen: {[(r.seq, r.event['type'], r.node) for r in screen.received]}")
        await wait_until(screen_has_all, 30, "the screen holds every stored event of the call", difference)
        stored = await asyncio.to_thread(cluster.stored_events, call_id)
        seen = Counter(screen.seqs(call_id))
        assert all(n == 1 for n in seen.values()), f"events sent twice: {[s for s, n in seen.items() if n > 1]}"
        # what the screen has beyond the database: interims replaced since (stored: the latest only)
        stored_seqs_now = {q for q, _ in stored}
        extra = [r.event for r in screen.received if r.event.get("call_id") == call_id and r.seq not in stored_seqs_now]
        assert all(e["type"] == "TranscriptUpdate" and not e["final"] for e in extra), extra
        nodes = Counter(r.node for r in screen.received if r.event.get("call_id") == call_id)
        assert nodes[doomed.node_id] > 0 and nodes[other.node_id] > 0, nodes    # both sides carried some
        assert len({canonical(e) for _, e in stored}) == len(stored), "an event stored twice"
        figure("(c) events checked (screen vs database)", len(stored))
        figure("(c) events per web node", dict(nodes))
    finally:
        await screen.close()


# ---------------------------------------------------------------- (d) PostgreSQL restart

async def test_d_postgres_down_mid_call_loses_nothing(whole: Cluster, bus: BusView,
                                                       postgres_server: PostgresServer) -> None:
    """PostgreSQL stopped after the first card and started again only once the bus has
    carried an event of the call the database keeps (a final transcript, a card), which could
    not be stored meanwhile."""
    cluster = whole
    screen = await screen_on(cluster.nodes["web-1"], USER_A)
    audio, _ = two_sentences(cluster, "pg-restart")

    async def kept_on_bus() -> list[dict[str, Any]]:
        """The bus's events of the call that the database keeps (not transient, not an
        interim replaced by a later transcript of its utterance)."""
        events = await bus.events(call_id)
        replaced = {canonical(e) for e in superseded(events)}
        return [e for e in events if e["type"] not in TRANSIENT and canonical(e) not in replaced]

    try:
        async with network_for(cluster.asterisks["a"].ari) as network:
            call_id = await place_call(network, AGENT_A, audio)
            try:
                await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(FIRST_CARD))
                before = len(await bus.events(call_id))
                began = time.monotonic()
                await asyncio.to_thread(postgres_server.stop)
                try:
                    async def published_meanwhile() -> list[dict[str, Any]]:
                        """Non-transient events since the stop, once one of them is kept for
                        good in the database (not an interim a later transcript replaces)."""
                        since = [e for e in (await bus.events(call_id))[before:] if e["type"] not in TRANSIENT]
                        kept = any(e["type"] != "TranscriptUpdate" or e["final"] for e in since)
                        return since if kept else []
                    meanwhile = await wait_until(published_meanwhile, CALL_TIMEOUT,
                                                 "a lasting event of the call on the bus while PostgreSQL is down")
                finally:
                    await asyncio.to_thread(postgres_server.start)
                figure("(d) PostgreSQL down for s", round(time.monotonic() - began, 1))
                figure("(d) events published while it was down", [e["type"] for e in meanwhile])
                await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(AFTER_CARD))
                figure("(d) card after the outage on screen, s after the stop",
                       round(time.monotonic() - began, 1))
            finally:
                await network.hangup(call_id)
            await screen.wait_for(call_id, "CallEnded", 30)

        async def missing() -> list[str]:
            on_bus = {canonical(e) for e in await kept_on_bus()}
            stored = {canonical(e) for _, e in await asyncio.to_thread(cluster.stored_events, call_id)}
            return sorted(on_bus - stored)
        await wait_until(lambda: _empty(missing()), 30, "every bus event of the call stored",
                         lambda: missing())
        on_bus = await kept_on_bus()
        stored = [e for _, e in await asyncio.to_thread(cluster.stored_events, call_id)]
        counts = Counter(canonical(e) for e in stored)
        assert on_bus and all(counts[canonical(e)] == 1 for e in on_bus), \
            [e for e in on_bus if counts[canonical(e)] != 1]
        assert all(n == 1 for n in counts.values()), "an event stored twice"
        figure("(d) bus events checked against the database", len(on_bus))
    finally:
        await screen.close()


async def _empty(found: Any) -> bool:
    return not await found


# ---------------------------------------------------------------- kill -9 the active ARI controller

async def test_d2_a_standby_controller_takes_over_its_asterisk(whole: Cluster, bus: BusView) -> None:
    cluster = whole
    lease = f"ari:{cluster.asterisks['a'].ari.url}"
    await wait_until(lambda: bus.lease_holder(lease), 30, f"a controller holding {lease}")
    active = await bus.lease_holder(lease)
    assert active in ("ari-a", "ari-a2"), active
    standby = next(n for n in ("ari-a", "ari-a2") if n != active)
    status, health = await asyncio.to_thread(cluster.nodes[standby].read_health) or (0, {})
    assert status == 200 and health["checks"]["ari"]["state"] == "standby", health      # control
    killed = time.monotonic()
    cluster.nodes[active].kill9()
    await wait_until(lambda: _holds(bus, lease, standby), 30, f"{standby} taking over {lease}")
    figure("(d2) standby ARI controller holds the Asterisk after kill -9, s", round(time.monotonic() - killed, 1))
    screen = await screen_on(cluster.nodes["web-2"], USER_A)
    audio, _ = customer_audio(cluster.audio_dir, "standby", [(0.3, FIRST)], tail=20.0)
    try:
        async with network_for(cluster.asterisks["a"].ari) as network:
            async def registered() -> bool:
                async with network.session.get(f"{network.ari.url}/ari/applications") as resp:
                    return any(app["name"] == "callassist" for app in await resp.json())
            await wait_until(registered, 30, "the standby's ARI app connected")
            call_id = await place_call(network, AGENT_A, audio)
            try:
                await screen.wait_for(call_id, "CardFired", CALL_TIMEOUT, card_of(FIRST_CARD))
                figure("(d2) first call after the takeover carded, s after kill", round(time.monotonic() - killed, 1))
            finally:
                await network.hangup(call_id)
            await screen.wait_for(call_id, "CallEnded", 30)
    finally:
        await screen.close()


async def _holds(bus: BusView, lease: str, node: str) -> bool:
    return await bus.lease_holder(lease) == node


# ---------------------------------------------------------------- a clean stop

async def test_e_every_node_stops_cleanly_on_sigterm(whole: Cluster) -> None:
    """What a service manager's stop does: each node exits 0 (a node that dies by the
    signal leaves its lease, its registry key and its RPC queue to time out)."""
    codes = await asyncio.to_thread(whole.stop)
    assert set(codes) == set(whole.nodes) and all(code is not None for code in codes.values())
    assert all(code == 0 for code in codes.values()), codes
