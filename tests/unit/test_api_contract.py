"""The CTI contract, subjects, tokens, token buckets, the hub and the method table (no I/O)."""

from __future__ import annotations

import msgspec
import pytest
import trio

from adapters.nats.subjects import event_subject, token, traceparent
from api.auth import Authenticator, Principal, RateLimiter, issue_token
from api.errors import ApiError
from api.events import EVENT_TYPES, CallEnded, CtiUnknown, decode_event, encode_event, to_wire
from api.hub import EventFilter, EventHub
from api.services import METHODS, SERVICES
from engine import messages as m
from engine.messages import CtiEvent

SECRET = "unit-secret-0123456789-0123456789-abc"


def test_machine_events_become_typed_wire_events_and_round_trip():
    e = CtiEvent(name="CALL_ENDED", tenant="t", at=2.0, call_id="c", agent_id="a",
                 data={"disposition": "answered", "cause": "NORMAL_CLEARING", "new_field": 3})
    wire = to_wire(e, seq=7)
    assert isinstance(wire, CallEnded) and wire.seq == 7 and wire.disposition == "answered"
    assert wire.data == {"new_field": 3}  # unknown keys are kept, not lost
    assert decode_event(encode_event(wire)) == wire
    unknown = to_wire(CtiEvent(name="SOMETHING_NEW", tenant="t", at=1.0, data={"x": 1}), seq=1)
    assert isinstance(unknown, CtiUnknown) and unknown.name == "SOMETHING_NEW"


def test_added_fields_always_default_and_old_clients_ignore_new_ones():
    for cls in EVENT_TYPES.values():
        cls(tenant="t")  # every field but tenant has a default
    newer = b'{"type":"CALL_HELD","tenant":"t","seq":1,"brand_new":{"a":1}}'
    assert decode_event(newer).seq == 1


def test_every_name_the_machines_emit_has_a_typed_event():
    import pathlib
    import re

    source = "".join(p.read_text() for p in pathlib.Path("engine/fsm").glob("*.py"))
    emitted = set(re.findall(r'out\.cti\("([A-Z_]+)"', source)) | {"ACTOR_ERROR"}
    assert emitted <= set(EVENT_TYPES), emitted - set(EVENT_TYPES)


def test_subject_tokens_cannot_widen_or_shift_a_subject():
    assert token("a.b*c> d") == "a_b_c__d" and token("") == "-"
    assert event_subject("t.x", "call", "id>", "CALL_HELD") == "cti.t_x.call.id_.CALL_HELD"
    tp = traceparent("t", "c", 5)
    assert tp.startswith("00-") and tp.endswith("-0000000000000005-01")


def test_tokens_are_verified():
    auth = Authenticator(SECRET)
    p = auth.authenticate(issue_token(SECRET, tenant="t", sub="u", roles=["agent", "root"], agent_id="a7"))
    assert (p.tenant, p.subject, p.roles, p.agent_id) == ("t", "u", frozenset({"agent"}), "a7")
    for bad in (None, "", "x.y.z", issue_token("other-secret-0123456789-0123456789", tenant="t", sub="u", roles=[]),
                issue_token(SECRET, tenant="t", sub="u", roles=[], ttl_s=-100)):
        with pytest.raises(ApiError) as info:
            auth.authenticate(bad)
        assert info.value.code == "UNAUTHENTICATED"


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=2, clock=lambda: now[0])
    p = Principal(tenant="t", subject="s", roles=frozenset(), key="k")
    limiter.check(p)
    limiter.check(p)
    with pytest.raises(ApiError) as info:
        limiter.check(p)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    now[0] = 0.5
    limiter.check(p)  # one token back after 0.5 s at 2/s


def test_hub_is_per_tenant_bounded_and_never_blocks():
    async def main():
        hub = EventHub()
        mine = hub.subscribe("t1", EventFilter(types=["CALL_HELD"]), capacity=2)
        other = hub.subscribe("t2", capacity=100)
        events = [(to_wire(CtiEvent(name="CALL_HELD", tenant="t1", at=0, call_id=f"c{i}"), i), "{}") for i in range(1, 4)]
        hub.publish_batch(events)
        assert not other.buffer
        assert mine.overflowed and len(mine.buffer) == 2
        assert [e.seq for e, _ in await mine.next_batch()] == [1, 2]
        assert await mine.next_batch() == []  # overflowed: the transport drops the client

    trio.run(main)


def test_method_table_covers_every_command_and_names_roles():
    call_commands = {t.__name__ for t in m.CallCommand.__args__}
    call_methods = {name for name, _ in ((x.name, x) for x in SERVICES["CallControl"])}
    expected = {"Originate", "Answer", "Hangup", "Hold", "Retrieve", "BlindTransfer", "AttendedTransferStart",
                "AttendedTransferComplete", "AttendedTransferCancel", "Park", "Pickup", "SendDtmf",
                "StartRecording", "StopRecording", "PauseRecording", "ResumeRecording", "JoinConference"}
    assert call_methods == expected == call_commands
    assert {x.name for x in SERVICES["Agents"]} == {"Login", "Logout", "SetReady", "SetNotReady", "EndWrapUp", "Get", "List"}
    assert {x.name for x in SERVICES["Queues"]} == {"Get", "List", "Stats", "Join", "Leave"}
    assert all(x.roles == {"admin"} and x.audited for x in SERVICES["Admin"])
    for method in METHODS.values():
        assert "tenant" not in method.request.__struct_fields__ or method.service == "Admin"
        with pytest.raises(msgspec.ValidationError):
            method.decoder.decode(b'{"unexpected_field": 1}')


def test_schema_out_writes_json_schema_and_asyncapi(tmp_path):
    import json

    import jsonschema

    from api.schema import write_schema

    paths = write_schema(tmp_path)
    assert sorted(p.name for p in paths) == ["api.schema.json", "asyncapi.yaml", "messages.schema.json"]
    doc = json.loads((tmp_path / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["channels"]["cti_call"]["address"] == "cti.{tenant}.call.{id}.{event}"
    assert doc["channels"]["CallControl_Hold"]["address"] == "api.{tenant}.CallControl.Hold"
    api = json.loads((tmp_path / "api.schema.json").read_text())
    event = json.loads(encode_event(to_wire(CtiEvent(name="CALL_HELD", tenant="t", at=1.0, call_id="c"), 3)))
    jsonschema.validate(event, {**api["$defs"]["CallHeld"], "$defs": api["$defs"]})
