"""The in-process bus and the forwarding bus a worker uses (callassist.bus)."""
from __future__ import annotations

from callassist.bus import EventBus, ForwardingBus
from callassist.events import CallEvent, CallFault, CallStarted


def test_a_forwarding_bus_hands_each_event_to_its_subscribers_and_forwards_it_once() -> None:
    forwarded: list[CallEvent] = []
    bus = ForwardingBus(forwarded.append)
    subscription = bus.subscribe()
    events = [CallStarted("c1", at=1.0), CallFault("c1", "RTP stalled", at=2.0)]
    for event in events:
        bus.publish(event)
    assert forwarded == events
    assert [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())] == events
    subscription.close()
    bus.publish(CallFault("c1", "after close", at=3.0))
    assert subscription.queue.empty() and len(forwarded) == 3     # still forwarded


def test_a_bounded_subscriber_drops_its_oldest_event_and_counts_it() -> None:
    bus = EventBus()
    slow, fast = bus.subscribe(maxsize=2), bus.subscribe()
    for second in range(3):
        bus.publish(CallFault("c1", "x", at=float(second)))
    assert slow.dropped == 1 and [slow.queue.get_nowait().at for _ in range(2)] == [1.0, 2.0]
    assert fast.dropped == 0 and fast.queue.qsize() == 3           # control: unbounded keeps all
