"""Several engine nodes on one NATS (``open_stack(..., fanout="nats")``): a watcher connected to
node A sees the events node B publishes for its tenant, each exactly once, in seq order, over
WebSocket, Connect streaming and NATS Events.Watch; tenants stay isolated; A's own events are not
doubled by their NATS echo; replay + live across nodes has no gap and no duplicate; two nodes
publishing one tenant are caught as a seq clash."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from adapters.nats.server import open_embedded_nats
from api.app import Stack
from engine.messages import CtiEvent
from tests.support.nats import api_stack, http_raw, setup_tenant, token, ws_client


def run(fn, timeout: float = 60) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def sup(tenant: str) -> str:
    return token(tenant=tenant, sub=f"sup-{tenant}", roles=("supervisor",))


@asynccontextmanager
async def two_nodes(fanout: str = "nats") -> AsyncIterator[tuple[Stack, Stack]]:
    async with open_embedded_nats() as server:
        async with api_stack(nats_url=server.url, fanout=fanout) as a, \
                api_stack(nats_url=server.url, fanout=fanout) as b:
            yield a, b


async def fed(stack: Stack, *tenants: str) -> None:
    """Wait until the node's NATS feed subscribed for these tenants (a watcher asked for them)."""
    with trio.fail_after(5):
        while not all(t in stack.fanout.subscribed for t in tenants):
            await trio.sleep(0.01)


def burst(stack: Stack, tenant: str, n: int, prefix: str) -> None:
    for i in range(n):
        stack.publisher.publish(CtiEvent(name="CALL_HELD", tenant=tenant, at=float(i), call_id=f"{prefix}{i}"))


async def events_of(ws, n: int, quiet_s: float = 0.3) -> list[dict]:
    """n events, then make sure nothing more (a duplicate) arrives within ``quiet_s``."""
    events = await ws.wait_events(n, timeout=10)
    with trio.move_on_after(quiet_s):
        while True:
            frame = json.loads(await ws.ws.get_message())
            ws.events.append(frame.get("event", frame))
    return events


def test_watcher_on_one_node_sees_another_nodes_events_once_in_order_and_tenants_stay_apart():
    async def main():
        async with two_nodes() as (a, b):
            async with ws_client(a, sup("t1")) as w1, ws_client(a, sup("t2")) as w2, \
                    ws_client(a, sup("t3")) as w3, ws_client(b, sup("t3")) as w3b:
                # "watching" means in place: from then on nothing another node publishes is missed
                for w in (w1, w2, w3, w3b):
                    assert (await w.call("Events/Watch", {}))["result"] == {"watching": True}
                burst(b, "t1", 120, "b")   # t1 and t2 are published by node B
                burst(b, "t2", 40, "x")
                burst(a, "t3", 30, "a")    # t3 by node A: local fast path + its NATS echo
                e1 = await events_of(w1, 120)
                e2 = await events_of(w2, 40)
                e3 = await events_of(w3, 30)
                e3b = await events_of(w3b, 30)
            # exactly once, in seq order, nothing of another tenant
            assert [e["seq"] for e in e1] == list(range(1, 121))
            assert [e["call_id"] for e in e1] == [f"b{i}" for i in range(120)]
            assert {e["tenant"] for e in e1} == {"t1"}
            assert [e["seq"] for e in e2] == list(range(1, 41)) and {e["tenant"] for e in e2} == {"t2"}
            assert [e["seq"] for e in e3] == list(range(1, 31)) and {e["tenant"] for e in e3} == {"t3"}
            assert [e["call_id"] for e in e3b] == [f"a{i}" for i in range(30)]
            assert a.hub.remote_published == 160 and a.fanout.skipped >= 30  # the t3 echo, dropped
            assert a.publisher.seq_clashes == b.publisher.seq_clashes == 0

    run(main)


def test_watching_is_sent_only_once_the_other_nodes_events_flow_in():
    """A slow subscription (latency injected before the real one) must delay "watching", not
    lose the events published right after it."""

    async def main():
        async with two_nodes() as (a, b):
            real = a.fanout._subscribe

            async def slow(tenants):
                await trio.sleep(0.5)
                await real(tenants)

            a.fanout._subscribe = slow
            async with ws_client(a, sup("t1")) as w:
                assert (await w.call("Events/Watch", {}))["result"] == {"watching": True}
                burst(b, "t1", 10, "b")
                events = await events_of(w, 10)
            assert [e["seq"] for e in events] == list(range(1, 11))

    run(main)


def test_single_node_fanout_keeps_a_node_blind_to_the_other():
    """The control: without the NATS feed a watcher on A does not see B's events (the gap this
    feed closes), so the test above can fail."""

    async def main():
        async with two_nodes(fanout="local") as (a, b):
            assert a.fanout is None
            async with ws_client(a, sup("t1")) as w:
                await w.call("Events/Watch", {})
                burst(b, "t1", 5, "b")
                await b.publisher.wait_idle()
                with trio.move_on_after(0.5):
                    await w.wait_events(1, timeout=1)
                assert w.events == []

    run(main)


def test_real_engine_events_reach_other_node_over_http_stream_and_nats_watch_with_replay():
    async def main():
        async with two_nodes() as (a, b):
            await setup_tenant(b, "t1")  # B hosts t1: queue, agents, logins -> CTI events on B
            await b.publisher.wait_idle()
            published = b.publisher.last_seq("t1")
            assert published >= 2
            # Connect streaming on A from seq 1: B's events are replayed (JetStream), then live
            request = json.dumps({"from_seq": 1, "max_events": published + 3, "timeout_s": 10}).encode()
            body = b"\x00" + len(request).to_bytes(4, "big") + request

            async def later() -> None:
                await fed(a, "t1")
                burst(b, "t1", 3, "live")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(later)
                status, raw, _ = await http_raw(a, "/callengine.v1.Events/Watch", body, sup("t1"),
                                                content_type="application/connect+json")
            assert status == 200
            frames = []
            while raw:
                flags, n = raw[0], int.from_bytes(raw[1:5], "big")
                frames.append((flags, json.loads(raw[5:5 + n])))
                raw = raw[5 + n:]
            assert frames[-1] == (2, {}), frames[-1]
            seqs = [f[1]["event"]["seq"] for f in frames[:-1]]
            assert seqs == list(range(1, published + 4)), seqs  # no gap, no duplicate
            assert [f[1]["event"]["call_id"] for f in frames[-4:-1]] == ["live0", "live1", "live2"]
            assert {f[1]["event"]["tenant"] for f in frames[:-1]} == {"t1"}

            # NATS Events.Watch served by A delivers B's live events too
            import nats

            assert a.bridge is not None

            token_ = trio.lowlevel.current_trio_token()

            async def nats_watch() -> list[int]:
                nc = await nats.connect(a.nats_url)
                try:
                    inbox = nc.new_inbox()
                    sub = await nc.subscribe(inbox)
                    reply = await nc.request("api.t1.Events.Watch",
                                             json.dumps({"deliver_subject": inbox, "max_events": 4}).encode(),
                                             timeout=5, headers={"Authorization": f"Bearer {sup('t1')}"})
                    assert json.loads(reply.data)["watching"] is True
                    token_.run_sync_soon(watching.set)
                    got: list[int] = []
                    while len(got) < 4:
                        msg = await sub.next_msg(timeout=5)
                        if "Cti-Control" in (msg.headers or {}):
                            continue
                        got.append(json.loads(msg.data)["seq"])
                    return got
                finally:
                    await nc.close()

            async with trio.open_nursery() as nursery:
                async def publish_after_reply() -> None:
                    await watching.wait()  # the reply means the relay's watch is in place
                    burst(b, "t1", 4, "nats")

                watching = trio.Event()
                nursery.start_soon(publish_after_reply)
                got = await a.bridge.aio(nats_watch)
            start = published + 4
            assert got == list(range(start, start + 4)), got

    run(main)


def test_two_nodes_publishing_one_tenant_is_reported_as_a_seq_clash():
    """The documented limit: seqs are per publisher; a second publisher of one tenant is caught."""

    async def main():
        async with two_nodes() as (a, b):
            burst(b, "t9", 1, "b")  # B: t9 seq 1 (B now counts t9 itself)
            await b.publisher.wait_idle()
            burst(a, "t9", 1, "a")  # A reads t9's last seq (1) from the stream: seq 2
            await a.publisher.wait_idle()
            burst(b, "t9", 1, "b")  # B's own count says 2 as well: JetStream drops it as a duplicate
            await b.publisher.wait_idle()
            assert (a.publisher.seq_clashes, b.publisher.seq_clashes) == (0, 1)

    run(main)
