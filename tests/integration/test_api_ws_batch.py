"""WebSocket batching (opt-in ``{"batch": true}``): several events per message, seq order, no loss;
clients that do not opt in keep one ``{"event": ...}`` message per event."""

from __future__ import annotations

import json

import trio

from engine.messages import CtiEvent
from tests.support.nats import SUP1, api_stack, token, ws_client


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def test_batched_watchers_get_many_events_per_message_in_order_and_others_one_each():
    async def main():
        # max_batch well below the burst: each message is bounded by it and still carries many
        async with api_stack(nats=False, http=False, micro=False, ws_options={"max_batch": 64}) as stack:
            sup = token(**SUP1)
            async with ws_client(stack, sup) as batched, ws_client(stack, sup) as single:
                assert (await batched.call("Events/Watch", {"batch": True}))["result"] == {"watching": True}
                assert (await single.call("Events/Watch", {}))["result"] == {"watching": True}
                for i in range(300):
                    stack.publisher.publish(CtiEvent(name="CALL_HELD", tenant="t1", at=float(i), call_id=f"c{i}"))
                    stack.publisher.publish(CtiEvent(name="CALL_HELD", tenant="t2", at=float(i), call_id=f"x{i}"))
                sizes, events = [], []
                while len(events) < 300:
                    frame = json.loads(await batched.ws.get_message())
                    assert "event" not in frame
                    events += frame["events"]
                    sizes.append(len(frame["events"]))
                assert [e["seq"] for e in events] == list(range(1, 301))
                assert {e["tenant"] for e in events} == {"t1"}
                # batched: a burst of 300 travels in few messages (a max_batch of 1 would need 300)
                assert len(sizes) <= 300 / 4, sizes
                assert max(sizes) > 1, sizes
                # ... and no message carries more than max_batch (a run from the hub is split)
                assert max(sizes) <= 64, sizes
                singles = []
                while len(singles) < 300:
                    frame = json.loads(await single.ws.get_message())
                    singles.append(frame["event"])
                assert [e["call_id"] for e in singles] == [e["call_id"] for e in events]
                # replies still arrive as their own frames on a batching connection
                assert "result" in await batched.call("Queues/List", {})

    run(main)
