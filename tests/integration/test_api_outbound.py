"""Click-to-call (CallControl/Originate) and blind transfers (CallControl/BlindTransfer) to outside
numbers over the HTTP API of ``callengine run`` (in process): they dial the tenant's trunks through
the outbound plan (``api.services.OutboundPlanner``), with failover, not ``user/<n>``; numbers the
plan refuses get typed errors (no route: FAILED_PRECONDITION, all trunks full: RESOURCE_EXHAUSTED)
before anything rings; an internal extension is dialled as before. Trunks and routes are rows in
embedded PostgreSQL; FreeSWITCH is the emulator over real ESL on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import pytest

from api.auth import issue_token
from tests.support.engine import SECRET, run_engine_plainly
from tests.support.engine import until as _until
from tests.support.nats import http_call

TENANT = "default"


@pytest.mark.timeout(120)
def test_click_to_call_and_blind_transfer_dial_trunks_over_http(monkeypatch) -> None:
    out: dict = {}
    run_engine_plainly(monkeypatch, lambda engine, emu: _exercise(engine, emu, out), phones=("2001", "2002"))
    _check(out)


async def _exercise(engine, emu, out: dict) -> None:
    from adapters.postgres.config import OutboundRoute, Trunk

    admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))
    store = engine.store
    await store.create(Trunk(tenant=TENANT, trunk_id="A", host="carrier-a.example", max_channels=4))
    await store.create(Trunk(tenant=TENANT, trunk_id="B", host="carrier-b.example", max_channels=4))
    await store.create(Trunk(tenant=TENANT, trunk_id="C", host="carrier-c.example", enabled=False))
    await store.create(OutboundRoute(tenant=TENANT, route_id="intl", pattern="00[0-9]+", priority=10,
                                     trunks=("A", "B")))
    await store.create(OutboundRoute(tenant=TENANT, route_id="premium", pattern="09[0-9]+",
                                     priority=20, trunks=("C",)))
    await _until(lambda: TENANT in engine.outbound and len(engine.outbound[TENANT].routes) == 2)
    emu.set_gateway("A", outcome="busy")
    emu.set_gateway("B", outcome="answer")

    async def api(method: str, params: dict) -> tuple[int, dict]:
        return await http_call(engine.stack, f"CallControl/{method}", params, admin)

    # typed refusals, before anything rings
    out["no_route"] = await api("Originate", {"to": "5551234", "from_extension": "2001"})
    out["full"] = await api("Originate", {"to": "0900123", "from_extension": "2001"})
    out["dialled_after_refusals"] = len([c for c in emu.command_log if "originate " in c])
    # click-to-call to an outside number: the user's phone, then trunk A (busy), then B
    status, body = await api("Originate", {"to": "0044201234", "from_extension": "2001"})
    assert status == 200, body
    call_id = body["call_id"]
    await _until(lambda: engine.trunk_ledger.usage(TENANT) == {"B": 1}, 10)
    out["click_log"] = list(emu.gateway_log)
    await _until(lambda: getattr(engine.node.runtime.state_of("call", call_id), "state", None)
                 is not None and engine.node.runtime.state_of("call", call_id).state.name == "ACTIVE")
    # blind transfer to another outside number: an inbound call from phone 2003 out on
    # trunk B (A busy); transferring it to a number no route takes is refused, typed,
    # and the call goes on; to an outside number it dials trunk A again (busy), not
    # user/<n>, then fails over to B, and the caller (parked out of its old bridge before
    # that leg was hung up) is bridged to the trunk B leg.
    inbound = await emu.place_inbound_call("2003", "0044209999")
    await _until(lambda: inbound.peer is not None, 10)
    await _until(lambda: engine.trunk_ledger.usage(TENANT) == {"B": 2}, 10)
    out["transfer_refused"] = await api("BlindTransfer", {"call_id": inbound.uuid, "target": "5551234"})
    out["still_up"] = inbound.up and emu.channels[inbound.peer].up
    with engine.stack.hub.subscribe(TENANT, capacity=10000) as sub:
        out["transfer"] = await api("BlindTransfer", {"call_id": inbound.uuid, "target": "0033142685300"})
        await _until(lambda: len(emu.gateway_log) == 6, 10)
        await _until(lambda: any(type(e[0]).__name__ == "CallTrunkSeized" for e in sub.buffer), 10)
        out["seized"] = [(e[0].trunk, e[0].number) for e in sub.buffer
                         if type(e[0]).__name__ == "CallTrunkSeized"]
    out["transfer_log"] = list(emu.gateway_log[2:])
    await _until(lambda: inbound.peer is not None, 10)
    out["after_transfer"] = inbound.up and any(f"origination_uuid={inbound.peer}," in c
                                               and "sofia/gateway/B/0033142685300" in c for c in emu.command_log)
    out["transfer_dials"] = [c for c in emu.command_log if "originate " in c and "0033142685300" in c]
    # an internal extension is dialled as an extension, not planned
    out["internal"] = await api("Originate", {"to": "2002", "from_extension": "2001"})
    await _until(lambda: any("user/2002" in c for c in emu.command_log), 10)
    out["gateway_log_end"] = list(emu.gateway_log)


def _check(out: dict) -> None:
    status, body = out["no_route"]
    assert status == 400 and body["code"] == "failed_precondition" and body["message"].startswith("no_route"), body
    status, body = out["full"]
    assert status == 429 and body["code"] == "resource_exhausted", body
    assert body["message"].startswith("all_trunks_full") and "C" in body["message"], body
    assert out["dialled_after_refusals"] == 0
    assert out["click_log"] == [("A", "0044201234"), ("B", "0044201234")]
    status, body = out["transfer_refused"]
    assert status == 400 and body["message"].startswith("no_route"), body
    assert out["still_up"]
    assert out["transfer"][0] == 200, out["transfer"]
    assert out["transfer_log"] == [("A", "0044209999"), ("B", "0044209999"), ("A", "0033142685300"),
                                   ("B", "0033142685300")]
    assert out["after_transfer"]
    assert ["sofia/gateway/A/0033142685300 " in d for d in out["transfer_dials"]] == [True, False], out
    assert "sofia/gateway/B/0033142685300 " in out["transfer_dials"][1], out["transfer_dials"]
    assert out["seized"][:1] == [("A", "0033142685300")], out["seized"]
    assert out["internal"][0] == 200, out["internal"]
    assert out["gateway_log_end"] == out["click_log"] + out["transfer_log"]


def test_call_contact_is_a_typed_wire_event() -> None:
    """The contact lookup's CALL_CONTACT (adapters/webhooks/lookup.py) reaches clients typed, not as
    UNKNOWN: its type on the wire, the CRM's keys in ``data`` (``name`` as ``contact_name``), a
    round trip through the typed decoder, and a webhook may take it. (Kept in this file: the
    contract's own test file belongs to another part of the work.)"""
    from adapters.webhooks.config import fields_of, known_event_types
    from adapters.webhooks.lookup import CONTACT_EVENT, _contact
    from api.events import CallContact, CtiUnknown, decode_event, encode_event, event_name, to_wire
    from engine.messages import CtiEvent

    contact = _contact(b'{"name": "Ada Lovelace", "crm_id": 42, "url": "https://crm/42", "tags": ["x"]}')
    assert contact == {"contact_name": "Ada Lovelace", "crm_id": 42, "url": "https://crm/42"}
    wire = to_wire(CtiEvent(name=CONTACT_EVENT, tenant="acme", at=1.0, call_id="c1", agent_id="a1",
                            data=contact), seq=5)
    assert isinstance(wire, CallContact) and not isinstance(wire, CtiUnknown)
    assert event_name(wire) == "CALL_CONTACT" and wire.data == contact and wire.agent_id == "a1"
    raw = encode_event(wire)
    assert raw.startswith(b'{"type":"CALL_CONTACT"') and b'"name"' not in raw
    assert decode_event(raw) == wire
    assert "CALL_CONTACT" in known_event_types() and "data" in fields_of("CALL_CONTACT")
