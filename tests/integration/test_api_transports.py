"""Every API method on every transport (Connect HTTP, WebSocket, NATS micro request-reply),
against a real nats-server, hypercorn and trio-websocket, on a real Node with in-memory media."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from api.services import METHODS
from engine.actors import route_by_destination
from engine.messages import ChannelCreated, MediaOriginate
from tests.support.nats import (
    api_stack,
    connected_call,
    http_call,
    nats_call,
    setup_tenant,
    token,
    ws_client,
)

Call = Callable[[str, dict[str, Any], str], Awaitable[tuple[str, dict[str, Any]]]]
TENANTS = ("th", "tn", "tw")  # one tenant per transport, all in one engine
ROUTES = {f"100-{t}": f"sales-{t}" for t in TENANTS}


def run(fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def via_http(stack) -> Call:
    async def call(method: str, params: dict[str, Any], tok: str) -> tuple[str, dict[str, Any]]:
        status, body = await http_call(stack, method, params, tok)
        return ("OK" if status == 200 else body["code"].upper()), body

    return call


def via_nats(stack, tenant: str) -> Call:
    async def call(method: str, params: dict[str, Any], tok: str) -> tuple[str, dict[str, Any]]:
        return await nats_call(stack, method, params, tok, tenant=tenant)

    return call


def via_ws(ws) -> Callable[[str], Call]:
    async def call(method: str, params: dict[str, Any], tok: str) -> tuple[str, dict[str, Any]]:
        await ws.call("auth", {"token": tok})
        frame = await ws.call(method, params)
        if "error" in frame:
            return frame["error"]["code"], frame["error"]
        return "OK", frame["result"]

    return call


async def wait_for(predicate: Callable[[], bool], timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def exercise(stack, call: Call, tenant: str) -> set[str]:
    """Call every unary method once (and a few twice); returns the names that were called."""
    admin = token(tenant=tenant, sub=f"root-{tenant}", roles=("admin",))
    sup = token(tenant=tenant, sub=f"sup-{tenant}", roles=("supervisor",))
    a1, a2, queue = f"{tenant}-a1", f"{tenant}-a2", f"sales-{tenant}"
    agent = token(tenant=tenant, sub=a1, roles=("agent",))
    called: set[str] = set()

    async def ok(method: str, params: dict[str, Any], tok: str = admin, expect: str = "OK") -> dict[str, Any]:
        called.add(method)
        code, body = await call(method, params, tok)
        assert code == expect, (method, params, code, body)
        return body

    # Admin CRUD on every kind
    for noun, record in [("Extension", {"id": "e1", "name": "Reception", "sip_user": "1000"}),
                         ("Flow", {"id": "f1", "definition": {"start": "menu"}}),
                         ("Queue", {"id": queue, "ring_timeout_s": 20}),
                         ("Agent", {"id": a1, "extension": f"{tenant}-201", "queues": [queue]})]:
        assert (await ok(f"Admin/Create{noun}", record))["id"] == record["id"]
        await ok(f"Admin/Create{noun}", record, expect="ALREADY_EXISTS")
        assert (await ok(f"Admin/Get{noun}", {"id": record["id"]}))["id"] == record["id"]
        updated = await ok(f"Admin/Update{noun}", {**record, "name": "renamed"})
        assert updated["name"] == "renamed"
        assert [r["id"] for r in (await ok(f"Admin/List{noun}s", {}))["items"]] == [record["id"]]
        if noun in ("Extension", "Flow"):
            await ok(f"Admin/Delete{noun}", {"id": record["id"]})
            await ok(f"Admin/Get{noun}", {"id": record["id"]}, expect="NOT_FOUND")
    await ok("Admin/CreateAgent", {"id": a2, "extension": f"{tenant}-202"})
    await ok("Admin/CreateQueue", {"id": f"tmp-{tenant}"})
    await ok("Admin/DeleteQueue", {"id": f"tmp-{tenant}"})

    # Agents
    await ok("Agents/Login", {"ready": True}, agent)
    await ok("Agents/Login", {"agent_id": a2}, sup)
    await ok("Agents/Login", {"ready": True}, agent, expect="FAILED_PRECONDITION")
    assert (await ok("Agents/Get", {}, agent))["state"] == "AVAILABLE"
    await ok("Agents/SetNotReady", {"reason": "lunch"}, agent)
    info = await ok("Agents/Get", {"agent_id": a1}, sup)
    assert (info["state"], info["reason"]) == ("NOT_READY", "lunch")
    await ok("Agents/SetReady", {}, agent)
    assert [a["agent_id"] for a in (await ok("Agents/List", {}, sup))["agents"]] == [a1, a2]
    assert [a["agent_id"] for a in (await ok("Agents/List", {}, agent))["agents"]] == [a1]
    await ok("Agents/EndWrapUp", {}, agent, expect="FAILED_PRECONDITION")  # not in wrap-up
    # Queues
    assert (await ok("Queues/Get", {"queue_id": queue}, agent))["members"] == [a1]
    assert [q["queue_id"] for q in (await ok("Queues/List", {}, sup))["queues"]] == [queue]
    joined = await ok("Queues/Join", {"queue_id": queue, "agent_id": a2}, sup)
    assert (joined["effect"], joined["queues"]) == ("applied", [queue])
    await wait_for(lambda: stack.node.state_of("queue", queue, tenant).members.keys() == {a1, a2})
    await ok("Queues/Leave", {"queue_id": queue, "agent_id": a2}, sup)
    await ok("Agents/Logout", {"agent_id": a2}, sup)
    stats = await ok("Queues/Stats", {"queue_id": queue}, sup)
    assert stats["agents_logged_in"] >= 1

    # CallControl on a real call routed to the queue and answered by a1
    call_id = f"call-{tenant}"
    await connected_call(stack, call_id, tenant=tenant, destination=f"100-{tenant}")
    for method, params in [("CallControl/Hold", {}), ("CallControl/Retrieve", {}),
                           ("CallControl/SendDtmf", {"digits": "12#"}),
                           ("CallControl/StartRecording", {}), ("CallControl/PauseRecording", {}),
                           ("CallControl/ResumeRecording", {}), ("CallControl/StopRecording", {}),
                           ("CallControl/AttendedTransferStart", {"target": "300"}),
                           ("CallControl/AttendedTransferCancel", {}),
                           ("CallControl/JoinConference", {"room": "r1"})]:
        await ok(method, {"call_id": call_id, **params}, agent)
    # Conferences: this stack has no conference service (engine/conference.py): typed UNIMPLEMENTED,
    # and the role gate first (Get/List are staff only); tests/integration/test_conference_esl.py
    # drives them against the emulator
    await ok("Conferences/List", {}, agent, expect="PERMISSION_DENIED")
    for method, params in [("Conferences/List", {}), ("Conferences/Get", {"room": "3000"}),
                           ("Conferences/Mute", {"room": "3000", "member_id": 1}),
                           ("Conferences/Unmute", {"room": "3000", "member_id": 1}),
                           ("Conferences/Kick", {"room": "3000", "member_id": 1})]:
        await ok(method, params, sup, expect="UNIMPLEMENTED")
    # rooms are PostgreSQL rows (callengine run); this stack's in-memory admin store has none
    await ok("Conferences/PutRoom", {"room": "3000"}, sup, expect="PERMISSION_DENIED")
    await ok("Conferences/PutRoom", {"room": "3000", "moderator_pin": "4321"}, admin, expect="UNIMPLEMENTED")
    await ok("Conferences/DeleteRoom", {"room": "3000"}, admin, expect="UNIMPLEMENTED")
    # Recordings: the default policy is read; this stack has no recordings catalog (UNIMPLEMENTED)
    policy = await ok("Admin/GetRecordingPolicy", {})
    await ok("Admin/SetRecordingPolicy", policy, expect="UNIMPLEMENTED")  # nowhere to store it
    await ok("Recordings/List", {}, sup, expect="UNIMPLEMENTED")
    await ok("Recordings/Get", {"recording_id": "r1"}, sup, expect="UNIMPLEMENTED")
    # Voicemail: admin/staff only, and this stack has no voicemail service (UNIMPLEMENTED);
    # tests/integration/test_run_voicemail.py drives it through callengine run
    await ok("Voicemail/SetPin", {"box": "1001", "pin": "2468"}, sup, expect="PERMISSION_DENIED")
    for method, params in [("Voicemail/SetPin", {"box": "1001", "pin": "2468"}),
                           ("Voicemail/SetMailbox", {"box": "1001"}), ("Voicemail/GetMailbox", {"box": "1001"}),
                           ("Voicemail/ListMessages", {"box": "1001"}),
                           ("Voicemail/SaveMessage", {"box": "1001", "message_id": "m1"}),
                           ("Voicemail/DeleteMessage", {"box": "1001", "message_id": "m1"}),
                           ("Voicemail/DeleteMailbox", {"box": "1001"}), ("Voicemail/EraseMailbox", {"box": "1001"}),
                           ("Voicemail/EraseCaller", {"caller_id": "+15550001"})]:
        await ok(method, params, expect="UNIMPLEMENTED")
    # Webhooks: admin only, and this stack has no PostgreSQL webhooks (UNIMPLEMENTED);
    # tests/integration/test_webhooks_admin.py drives them through callengine run
    await ok("Webhooks/List", {}, sup, expect="PERMISSION_DENIED")
    for method, params in [("Webhooks/Put", {"id": "w", "url": "https://crm.example/h", "events": ["CDR"]}),
                           ("Webhooks/Get", {"id": "w"}), ("Webhooks/List", {}), ("Webhooks/Delete", {"id": "w"}),
                           ("Webhooks/PutContactLookup", {"url": "https://crm.example/l"}),
                           ("Webhooks/GetContactLookup", {}), ("Webhooks/DeleteContactLookup", {}),
                           ("Webhooks/ListDeadLetters", {}), ("Webhooks/Redrive", {"ids": [1]}),
                           ("Webhooks/Stats", {})]:
        await ok(method, params, expect="UNIMPLEMENTED")
    await ok("CallControl/Hold", {"call_id": call_id}, sup)
    await ok("CallControl/Hold", {"call_id": call_id}, sup, expect="FAILED_PRECONDITION")
    await ok("CallControl/Retrieve", {"call_id": call_id}, sup)
    await ok("CallControl/AttendedTransferComplete", {"call_id": call_id}, agent, expect="FAILED_PRECONDITION")
    parked = await ok("CallControl/Park", {"call_id": call_id}, agent)
    assert parked["data"]["slot"]
    listed = await ok("Parking/List", {}, agent)
    assert listed["items"] == [{"slot": parked["data"]["slot"], "call_id": call_id}], listed
    await ok("CallControl/Pickup", {"call_id": call_id, "extension": "555"}, sup)
    # picked up = ringing the extension: a transfer must wait for the answer
    await ok("CallControl/BlindTransfer", {"call_id": call_id, "target": "400"}, sup, expect="FAILED_PRECONDITION")
    await ok("CallControl/Hangup", {"call_id": call_id}, sup)
    await wait_for(lambda: stack.node.runtime.state_of("call", call_id) is None)
    await ok("CallControl/Hold", {"call_id": call_id}, sup, expect="NOT_FOUND")

    # Answer: a call nobody routed waits in ROUTING; the API answers it
    routing = f"routing-{tenant}"
    stack.node.deliver_nowait(ChannelCreated(call_id=routing, at=stack.node.runtime.clock(),
                                             destination="999", tenant=tenant))
    await wait_for(lambda: stack.node.runtime.state_of("call", routing) is not None)
    await ok("CallControl/Answer", {"call_id": routing}, sup)

    # Originate: click-to-call from the agent's own extension
    body = await ok("CallControl/Originate", {"to": "+15551234"}, agent)
    await wait_for(lambda: any(isinstance(c, MediaOriginate) and c.call_id == body["call_id"]
                               and c.destination == f"{tenant}-201" for c in stack.media.items))
    await ok("CallControl/Hangup", {"call_id": body["call_id"]}, agent)
    await ok("CallControl/Originate", {"to": "1", "from_extension": "999"}, agent, expect="PERMISSION_DENIED")
    await ok("Admin/DeleteAgent", {"id": a2})
    await ok("Admin/GetAgent", {"id": a2}, expect="NOT_FOUND")
    return called


def test_every_unary_method_on_every_transport():
    async def main():
        router = route_by_destination(ROUTES)
        async with api_stack(node_options={"router": router}) as stack:
            unary = {m.full_name.removeprefix("callengine.v1.") for m in METHODS.values() if not m.streaming}
            called = await exercise(stack, via_http(stack), "th")
            assert "Admin/DeleteAgent" in called and len(unary) == 80, sorted(unary - called)
            assert unary <= called, unary - called
            assert unary <= await exercise(stack, via_nats(stack, "tn"), "tn")
            async with ws_client(stack) as ws:
                assert unary <= await exercise(stack, via_ws(ws), "tw")
            # every admin action was audited, per tenant
            admin_actions = [r for r in stack.api.audit.for_tenant("tn") if r.method.startswith("callengine.v1.Admin/")]
            assert len(admin_actions) >= 24 and {r.transport for r in admin_actions} == {"nats"}
            assert {"OK", "ALREADY_EXISTS"} <= {r.outcome for r in admin_actions}

    run(main, 90)


def test_micro_services_are_discoverable_with_stats():
    async def main():
        async with api_stack() as stack:
            await setup_tenant(stack)
            await nats_call(stack, "Queues/List", {}, token(tenant="t1", sub="x", roles=("supervisor",)))

            async def discover():
                import nats

                nc = await nats.connect(stack.nats_url)
                try:
                    infos = []
                    sub = await nc.subscribe(nc.new_inbox())
                    await nc.publish("$SRV.INFO", b"", reply=sub.subject)
                    stats_reply = await nc.request("$SRV.STATS.callengine-Queues", b"", timeout=2)
                    while True:
                        try:
                            infos.append(json.loads((await sub.next_msg(timeout=0.5)).data))
                        except Exception:
                            break
                    return infos, json.loads(stats_reply.data)
                finally:
                    await nc.close()

            infos, stats = await stack.bridge.aio(discover)
            names = {i["name"] for i in infos}
            assert names == {"callengine-CallControl", "callengine-Agents", "callengine-Queues", "callengine-Admin",
                             "callengine-Events", "callengine-Parking", "callengine-Conferences", "callengine-Recordings",
                             "callengine-Voicemail", "callengine-Webhooks"}
            events = next(i for i in infos if i["name"] == "callengine-Events")
            assert {e["subject"] for e in events["endpoints"]} == {"api.*.Events.Watch"}
            queues = next(i for i in infos if i["name"] == "callengine-Queues")
            assert {e["subject"] for e in queues["endpoints"]} >= {"api.*.Queues.List", "api.*.Queues.Stats"}
            listed = next(e for e in stats["endpoints"] if e["name"] == "List")
            assert listed["num_requests"] == 1

    run(main)


# a stream cut short (max_events) must close its JetStream consumer in place: a generator left
# to the garbage collector unsubscribes outside the bridge's loop ("coroutine '_call_defer' was
# never awaited")
@pytest.mark.filterwarnings("error::RuntimeWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_connect_server_streaming_watch_over_http():
    async def main():
        async with api_stack() as stack:
            await setup_tenant(stack)
            from tests.support.nats import http_raw

            request = json.dumps({"from_seq": 1, "max_events": 2}).encode()
            body = b"\x00" + len(request).to_bytes(4, "big") + request
            status, raw, headers = await http_raw(stack, "/callengine.v1.Events/Watch", body,
                                                  token(tenant="t1", sub="s", roles=("supervisor",)),
                                                  content_type="application/connect+json")
            assert status == 200 and headers["content-type"] == "application/connect+json"
            frames = []
            while raw:
                flags, n = raw[0], int.from_bytes(raw[1:5], "big")
                frames.append((flags, json.loads(raw[5:5 + n])))
                raw = raw[5 + n:]
            assert [f[0] for f in frames] == [0, 0, 2] and frames[-1][1] == {}
            assert [f[1]["event"]["seq"] for f in frames[:2]] == [1, 2]
            # errors arrive in the end-of-stream message
            status, raw, _ = await http_raw(stack, "/callengine.v1.Events/Watch", body, None,
                                            content_type="application/connect+json")
            assert status == 200 and raw[0] == 2
            assert json.loads(raw[5:])["error"]["code"] == "unauthenticated"

    run(main)
