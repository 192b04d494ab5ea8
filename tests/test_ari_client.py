"""AriClient against the ARI test peer: REST shapes, errors, timeouts, the events websocket."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ari_app.client import AriClient, AriDisconnected, AriError, AriNotFound, AriUnavailable
from ari_app.models import AriEvent, Channel, OwnIds
from ari_peer import AriPeer

SILENCE = np.zeros(16000, np.int16)


@pytest.fixture
async def peer():
    peer = await AriPeer().start()
    yield peer
    await peer.stop()


@pytest.fixture
async def client(peer):
    client = AriClient(peer.url, "callassist", "secret", "callassist", request_timeout=2.0)
    yield client
    await client.close()


async def next_event(events, type_: str, timeout: float = 2.0) -> AriEvent:
    async def find() -> AriEvent:
        async for event in events:
            if event.type == type_:
                return event
        raise AssertionError("websocket ended")
    return await asyncio.wait_for(find(), timeout)


async def test_typed_channel_and_bridge_calls(peer, client):
    socket = await client.connect_events()
    events = aiter(socket)
    call = peer.start_call(SILENCE, agent_endpoint=None)
    start = await next_event(events, "StasisStart")
    assert start.channel is not None and start.channel.id == call.customer.id
    assert start.channel.caller.number == "13800138000"
    assert start.channel.in_stasis_app("callassist")

    channels = await client.list_channels()
    assert [c.id for c in channels] == [call.customer.id]
    await client.subscribe(f"channel:{call.customer.id}")

    ids = OwnIds("callassist")
    em = await client.external_media(channel_id=ids.new("em"), external_host="127.0.0.1:9", format="slin16")
    assert em.channelvars["UNICASTRTP_LOCAL_ADDRESS"] == "127.0.0.1"
    assert em.name.startswith("UnicastRTP/127.0.0.1:9-")
    snoop = await client.snoop(call.customer.id, snoop_id=ids.new("snoop"), spy="in")
    assert snoop.name.startswith(f"Snoop/{call.customer.id}-")
    bridge = await client.create_bridge(ids.new("br"), name="test")
    assert (bridge.bridge_type, bridge.bridge_class) == ("mixing", "stasis")
    await next_event(events, "StasisStart")
    await next_event(events, "StasisStart")
    await client.add_channel(bridge.id, snoop.id)
    await client.add_channel(bridge.id, em.id)
    [listed] = [b for b in await client.list_bridges() if b.id == bridge.id]
    assert set(listed.channels) == {snoop.id, em.id}
    assert await client.get_variable(em.id, "UNICASTRTP_LOCAL_PORT") == em.channelvars["UNICASTRTP_LOCAL_PORT"]

    await client.continue_in_dialplan(call.customer.id)
    end = await next_event(events, "StasisEnd")
    assert end.channel is not None and end.channel.id == call.customer.id
    await peer.hangup(call)
    destroyed = await next_event(events, "ChannelDestroyed")   # the subscription survived StasisEnd
    assert destroyed.channel is not None and destroyed.channel.id == call.customer.id
    await asyncio.sleep(0.05)
    # Asterisk removed the snoop; the externalMedia channel and our bridge are left to us
    with pytest.raises(AriNotFound):
        await client.hangup(snoop.id)
    await client.hangup(em.id)
    await client.destroy_bridge(bridge.id)
    with pytest.raises(AriNotFound) as gone:
        await client.destroy_bridge(bridge.id)
    assert gone.value.status == 404 and gone.value.message == "Bridge not found"
    await socket.close()


async def test_add_channel_before_stasis_start_is_422(peer, client):
    peer.stasis_delay = (0.2, 0.2)
    call = peer.start_call(SILENCE, agent_endpoint=None)
    ids = OwnIds("callassist")
    snoop = await client.snoop(call.customer.id, snoop_id=ids.new("snoop"))
    bridge = await client.create_bridge(ids.new("br"))
    with pytest.raises(AriError) as refused:
        await client.add_channel(bridge.id, snoop.id)
    assert refused.value.status == 422
    assert refused.value.message == "Channel not in Stasis application"


async def test_snoop_on_a_gone_channel_is_not_found(client):
    with pytest.raises(AriNotFound):
        await client.snoop("1234.5", snoop_id=OwnIds("callassist").new("snoop"))


async def test_bad_credentials_are_refused(peer):
    async with AriClient(peer.url, "callassist", "wrong", "callassist") as bad:
        with pytest.raises(AriError) as rest:
            await bad.list_channels()
        assert rest.value.status == 401
        with pytest.raises(AriError) as ws:
            await bad.connect_events()
        assert ws.value.status == 401


async def test_a_hung_request_times_out(peer):
    peer.delay("listChannels", 5.0)
    async with AriClient(peer.url, "callassist", "secret", "callassist", request_timeout=0.3) as client:
        began = time.monotonic()
        with pytest.raises(AriUnavailable) as timed_out:
            await client.list_channels()
        assert time.monotonic() - began < 2.0
        assert timed_out.value.status == 0 and "timed out" in timed_out.value.message


async def test_unreachable_asterisk_is_unavailable():
    async with AriClient("http://127.0.0.1:9", "u", "p", "callassist", request_timeout=1.0) as client:
        with pytest.raises(AriUnavailable):
            await client.list_channels()
        with pytest.raises(AriUnavailable):
            await client.connect_events()


async def test_events_socket_outlives_the_request_timeout_and_reports_drops(peer):
    async with AriClient(peer.url, "callassist", "secret", "callassist", request_timeout=0.3) as client:
        socket = await client.connect_events()
        events = aiter(socket)
        await asyncio.sleep(0.8)                   # longer than the per-request timeout
        peer.send_raw("{not json")                 # skipped and counted, not fatal
        peer.send_raw('["a list"]')
        call = peer.start_call(SILENCE, agent_endpoint=None)
        start = await next_event(events, "StasisStart")
        assert start.channel is not None and start.channel.id == call.customer.id
        assert socket.malformed == 2
        await peer.drop_websocket()
        with pytest.raises(AriDisconnected):
            await next_event(events, "never")


def test_models_parse_swagger_shapes():
    data = {"id": "1700000000.42", "name": "PJSIP/1001-0000002a", "state": "Up", "protocol_id": "",
            "caller": {"name": "", "number": "1001"}, "connected": {"name": "", "number": ""},
            "accountcode": "", "dialplan": {"context": "default", "exten": "s", "priority": 1,
                                            "app_name": "Stasis", "app_data": "callassist,x"},
            "creationtime": "2025-01-01T00:00:00.000+0000", "language": "en"}
    channel = Channel.from_json(data)
    assert channel.endpoint == "PJSIP/1001"
    local = Channel.from_json({**data, "name": "Local/agent@callassist-test-agent-00000003;1"})
    assert local.endpoint == "Local/agent@callassist-test-agent"
    assert channel.in_stasis_app("callassist") and not channel.in_stasis_app("other")
    event = AriEvent.from_json({"type": "Dial", "dialstatus": "", "peer": data, "caller": data,
                                "application": "callassist", "timestamp": "x"})
    assert event.dialstatus == "" and event.peer == channel


def test_own_ids_are_fixed_width_and_never_prefixes():
    ids = OwnIds("callassist")
    made = [ids.new(kind) for kind in OwnIds.KINDS for _ in range(50)]
    assert len(set(made)) == len(made)
    assert len({len(i) for i in made if i.startswith("callassist-em-")}) == 1
    assert not any(a != b and b.startswith(a) for a in made for b in made)
    assert all(ids.is_ours(i) for i in made)
    assert not ids.is_ours("callassist-em-1") and not ids.is_ours("1700000000.1")
    assert not OwnIds("other").is_ours(made[0])
