"""Auth, RBAC, tenant isolation (tests that try to cross tenants), rate limits, audit, replay after
reconnect and WebSocket robustness, against real servers."""

from __future__ import annotations

import json

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from adapters.nats.server import open_embedded_nats
from api.auth import issue_token
from tests.support.nats import (
    SECRET,
    api_stack,
    connected_call,
    http_call,
    http_raw,
    nats_call,
    setup_tenant,
    token,
    ws_client,
)


def run(fn, timeout: float = 60) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


SUP1 = token(tenant="t1", sub="sup1", roles=("supervisor",))
AGENT_A1 = token(tenant="t1", sub="a1", roles=("agent",))
AGENT_A2 = token(tenant="t1", sub="a2", roles=("agent",))
ADMIN2 = token(tenant="t2", sub="root2", roles=("admin",))


def test_authentication_is_required_and_checked_on_every_transport():
    async def main():
        async with api_stack() as stack:
            await setup_tenant(stack)
            expired = issue_token(SECRET, tenant="t1", sub="x", roles=["admin"], ttl_s=-60)
            forged = issue_token("another-secret-0123456789-0123456789", tenant="t1", sub="x", roles=["admin"])
            for tok in (None, "garbage", expired, forged):
                status, body = await http_call(stack, "Agents/List", {}, tok)
                assert (status, body["code"]) == (401, "unauthenticated")
                code, body = await nats_call(stack, "Agents/List", {}, tok)
                assert code == "UNAUTHENTICATED"
            async with ws_client(stack) as ws:
                frame = await ws.call("Agents/List", {})
                assert frame["error"]["code"] == "UNAUTHENTICATED"
                frame = await ws.call("auth", {"token": forged})
                assert frame["error"]["code"] == "UNAUTHENTICATED"
            assert sum(1 for r in stack.api.audit.records if r.outcome == "UNAUTHENTICATED") >= 9

    run(main)


def test_rbac_agents_control_only_their_own_calls_and_state():
    async def main():
        async with api_stack() as stack:
            await setup_tenant(stack)
            await connected_call(stack, "c1")  # rings and is answered by a1 (longest idle)
            owner = stack.node.runtime.state_of("call", "c1").agent_id
            mine, other = (AGENT_A1, AGENT_A2) if owner == "a1" else (AGENT_A2, AGENT_A1)
            status, body = await http_call(stack, "CallControl/Hold", {"call_id": "c1"}, other)
            assert (status, body["code"]) == (403, "permission_denied")
            assert (await http_call(stack, "CallControl/Hold", {"call_id": "c1"}, mine))[0] == 200
            assert (await http_call(stack, "CallControl/Retrieve", {"call_id": "c1"}, SUP1))[0] == 200
            status, body = await http_call(stack, "Agents/SetNotReady", {"agent_id": owner}, other)
            assert status == 403
            status, _ = await http_call(stack, "Admin/ListQueues", {}, SUP1)
            assert status == 403
            code, _ = await nats_call(stack, "Admin/CreateQueue", {"id": "x"}, AGENT_A1)
            assert code == "PERMISSION_DENIED"
            denied = [r for r in stack.api.audit.records if r.outcome == "PERMISSION_DENIED"]
            assert len(denied) == 4 and all(r.tenant == "t1" for r in denied)
            # an agent watching events sees only its own
            async with ws_client(stack, other) as ws:
                assert (await ws.call("Events/Watch", {"from_seq": 1}))["result"] == {"watching": True}
                frame = await ws.call("Events/Watch", {"agent_id": owner})
                assert frame["error"]["code"] == "PERMISSION_DENIED"

    run(main)


def test_tenant_isolation_no_event_command_or_query_crosses_tenants():
    async def main():
        async with api_stack() as stack:
            await setup_tenant(stack)
            await setup_tenant(stack, tenant="t2", agents=("b1",), queue="support")
            await connected_call(stack, "c1")
            # t2's admin cannot see or touch t1's call, agents, queues, config
            for method, params in [("CallControl/Hold", {"call_id": "c1"}),
                                   ("CallControl/Hangup", {"call_id": "c1"}),
                                   ("Agents/Get", {"agent_id": "a1"}),
                                   ("Agents/SetNotReady", {"agent_id": "a1"}),
                                   ("Agents/Login", {"agent_id": "a1", "extension": "x"}),
                                   ("Queues/Get", {"queue_id": "sales"}),
                                   ("Queues/Stats", {"queue_id": "sales"}),
                                   ("Queues/Join", {"queue_id": "sales", "agent_id": "b1"}),
                                   ("Admin/GetQueue", {"id": "sales"}),
                                   ("Admin/GetAgent", {"id": "a1"}),
                                   ("Admin/DeleteAgent", {"id": "a1"})]:
                status, body = await http_call(stack, method, params, ADMIN2)
                assert (status, body["code"]) == (404, "not_found"), (method, body)
            status, body = await http_call(stack, "Agents/List", {}, ADMIN2)
            assert [a["agent_id"] for a in body["agents"]] == ["b1"]
            status, body = await http_call(stack, "Queues/List", {}, ADMIN2)
            assert [q["queue_id"] for q in body["queues"]] == ["support"]
            # a login may not name another tenant's queue
            status, body = await http_call(stack, "Agents/Logout", {"agent_id": "b1"}, ADMIN2)
            status, body = await http_call(stack, "Agents/Login", {"agent_id": "b1", "queues": ["sales"]}, ADMIN2)
            assert status == 404
            # NATS: t2's token on t1's subject
            code, body = await nats_call(stack, "Agents/List", {}, ADMIN2, tenant="t1")
            assert code == "PERMISSION_DENIED"
            # a request may not carry a tenant
            status, body = await http_call(stack, "Agents/List", {"tenant": "t1"}, ADMIN2)
            assert status == 400
            # events: t2's watcher (live and replay) never sees t1's events, and vice versa
            async with ws_client(stack, ADMIN2) as w2, ws_client(stack, SUP1) as w1:
                await w2.call("Events/Watch", {"from_seq": 1})
                await w1.call("Events/Watch", {})
                assert (await http_call(stack, "CallControl/Hold", {"call_id": "c1"}, SUP1))[0] == 200
                await w1.wait_events(1)
                await w2.wait_events(1)  # b1's login, from the replay
                await trio.sleep(0.3)
                assert {e["tenant"] for e in w1.events} == {"t1"}
                assert {e["tenant"] for e in w2.events} == {"t2"}
                assert all(e["type"] != "CALL_HELD" for e in w2.events)
            # audit: every denial recorded under the denied caller's tenant
            assert all(r.tenant == "t2" for r in stack.api.audit.records if r.outcome == "PERMISSION_DENIED")

    run(main)


def test_rate_limit_per_token_gives_resource_exhausted():
    async def main():
        async with api_stack(rate=1.0, burst=3.0) as stack:
            await setup_tenant(stack, login=False)
            codes = [(await http_call(stack, "Queues/List", {}, SUP1))[0] for _ in range(5)]
            assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
            # another token has its own bucket
            assert (await http_call(stack, "Queues/List", {}, AGENT_A1))[0] == 200
            code, _ = await nats_call(stack, "Queues/List", {}, SUP1)
            assert code == "RESOURCE_EXHAUSTED"
            assert sum(1 for r in stack.api.audit.records if r.outcome == "RESOURCE_EXHAUSTED") == 3

    run(main)


def test_replay_after_reconnect_and_seq_survives_an_engine_restart():
    async def main():
        async with open_embedded_nats() as server:
            async with api_stack(nats_url=server.url) as stack:
                await setup_tenant(stack)
                async with ws_client(stack, SUP1) as ws:
                    await ws.call("Events/Watch", {})
                    await connected_call(stack, "c1")
                    events = await ws.wait_events(3)
                    last = events[-1]["seq"]
                # disconnected: more happens
                for method in ("Hold", "Retrieve", "Hold"):
                    assert (await http_call(stack, f"CallControl/{method}", {"call_id": "c1"}, SUP1))[0] == 200
                await stack.publisher.wait_idle()
                total = stack.publisher.last_seq("t1")
                async with ws_client(stack, SUP1) as ws:
                    await ws.call("Events/Watch", {"from_seq": last + 1})
                    await ws.wait_events(total - last)
                    assert (await http_call(stack, "CallControl/Retrieve", {"call_id": "c1"}, SUP1))[0] == 200
                    events = await ws.wait_events(total - last + 1)
                    seqs = [e["seq"] for e in events]
                    assert seqs == list(range(last + 1, total + 2))  # no gap, no duplicate
                    assert [e["type"] for e in events[-4:]] == ["CALL_HELD", "CALL_RETRIEVED", "CALL_HELD",
                                                                "CALL_RETRIEVED"]
                before = stack.publisher.last_seq("t1")
            # a new engine on the same JetStream continues the tenant's sequence
            async with api_stack(nats_url=server.url) as stack:
                await setup_tenant(stack, tenant="t1", agents=("a9",), queue="q9")
                await stack.publisher.wait_idle()
                assert stack.publisher.last_seq("t1") == before + 1
                async with ws_client(stack, SUP1) as ws:
                    await ws.call("Events/Watch", {"from_seq": before})
                    events = await ws.wait_events(2)
                    assert [e["seq"] for e in events] == [before, before + 1]

    run(main)


def test_nats_subjects_headers_and_dedupe():
    async def main():
        async with api_stack() as stack:
            import nats

            got = []

            async def subscribe():
                nc = await nats.connect(stack.nats_url)
                async def append(m):
                    got.append(m)

                sub = await nc.subscribe("cti.t1.>", cb=append)
                return nc, sub

            nc, _ = await stack.bridge.aio(subscribe)
            await setup_tenant(stack)
            await connected_call(stack, "c1")
            await stack.publisher.wait_idle()
            await trio.sleep(0.2)
            subjects = [m.subject for m in got]
            assert "cti.t1.agent.a1.AGENT_STATE_CHANGED" in subjects
            assert "cti.t1.call.c1.CALL_CREATED" in subjects
            assert "cti.t1.queue.sales.QUEUE_ENTERED" in subjects
            first = got[0]
            assert first.headers["Nats-Msg-Id"] == "t1:1"
            assert first.headers["traceparent"].startswith("00-") and len(first.headers["traceparent"]) == 55
            call_traces = {m.headers["traceparent"][3:35] for m in got if ".call.c1." in m.subject}
            assert len(call_traces) == 1  # one trace per call
            # re-publishing a batch (a retry) is deduplicated by the stream
            info = await stack.bridge.aio(stack.bridge.jsm.stream_info, "CTI")
            await stack.bridge.publish_batch([(m.subject, m.data, dict(m.headers)) for m in got])
            again = await stack.bridge.aio(stack.bridge.jsm.stream_info, "CTI")
            assert again.state.messages == info.state.messages
            assert info.config.max_age and info.config.max_bytes
            await stack.bridge.aio(nc.close)

    run(main)


def test_websocket_robustness_malformed_oversize_slow_client_and_ping():
    async def main():
        async with api_stack(ws_options={"out_queue": 8, "max_message_size": 4096, "ping_interval_s": 0.05}) as stack:
            await setup_tenant(stack)
            async with ws_client(stack, SUP1) as ws:
                await ws.ws.send_message("{not json")
                frame = json.loads(await ws.ws.get_message())
                assert frame["id"] is None and frame["error"]["code"] == "INVALID_ARGUMENT"
                assert (await ws.call("Queues/List"))["result"]["queues"]  # still connected
                await trio.sleep(0.3)  # several heartbeats answered
                assert stack.ws.dropped_unresponsive == 0
                assert (await ws.call("Agents/Get", {"agent_id": "a1"}))["result"]["state"] == "AVAILABLE"
            # oversize: closed with 1009
            async with open_websocket_url(stack.ws_url + "/", extra_headers=[("Authorization", f"Bearer {SUP1}")]) as ws:
                await ws.send_message("x" * 10_000)
                try:
                    await ws.get_message()
                    raise AssertionError("not closed")
                except ConnectionClosed as closed:
                    assert closed.reason.code == 1009
            # slow client: it stops reading; the engine keeps going, the client is told and dropped
            async with open_websocket_url(stack.ws_url + "/", extra_headers=[("Authorization", f"Bearer {SUP1}")],
                                          message_queue_size=1) as slow:
                await slow.send_message(json.dumps({"id": 1, "method": "Events/Watch", "params": {}}))
                await trio.sleep(0.1)
                for i in range(400):
                    stack.node.deliver_nowait(_created(stack, f"flood{i}"))
                with trio.fail_after(10):
                    while stack.ws.dropped_slow == 0:
                        await trio.sleep(0.02)
                frames = []
                try:
                    while True:
                        frames.append(json.loads(await slow.get_message()))
                except ConnectionClosed as closed:
                    assert closed.reason.code == 1013
                assert frames[-1]["error"]["code"] == "RESOURCE_EXHAUSTED"
                assert "from_seq=" in frames[-1]["error"]["message"]
            assert stack.node.statistics().calls_created >= 400
            assert (await http_call(stack, "Queues/List", {}, SUP1))[0] == 200  # the engine is fine

    run(main)


def _created(stack, call_id):
    from engine.messages import ChannelCreated

    return ChannelCreated(call_id=call_id, at=stack.node.runtime.clock(), destination="999", tenant="t1")


def test_http_typed_errors_for_wrong_method_path_type_and_size():
    async def main():
        async with api_stack() as stack:
            status, body, _ = await http_raw(stack, "/callengine.v1.Nope/Nothing", b"{}", SUP1)
            assert (status, json.loads(body)["code"]) == (501, "unimplemented")
            status, body, _ = await http_raw(stack, "/callengine.v1.Queues/List", b"{}", SUP1, content_type="text/plain")
            assert status == 415
            status, body, _ = await http_raw(stack, "/callengine.v1.Queues/List", b"{" * 2_000_000, SUP1)
            assert (status, json.loads(body)["code"]) == (429, "resource_exhausted")
            status, body, _ = await http_raw(stack, "/callengine.v1.CallControl/Hold", b'{"call_id": 5}', SUP1)
            assert (status, json.loads(body)["code"]) == (400, "invalid_argument")

    run(main)
