"""Incoming W3C trace context: parsed strictly, carried from the channel (or an Originate) onto the
call's CALL_CREATED, and used by the CTI publisher's ``traceparent`` headers for the whole call."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.freeswitch.codec import EslEvent, EslParser
from adapters.freeswitch.mapping import map_event
from adapters.nats.subjects import cti_frame, traceparent
from engine.fsm import call as C
from engine.messages import ChannelCreated, Originate, PublishCti
from engine.tracecontext import derived_trace_id, incoming_traceparent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize("value, expected", [
    (TP, (TRACE, SPAN)),
    (f"  {TP}  ", (TRACE, SPAN)),
    (f"01-{TRACE}-{SPAN}-00-extra", (TRACE, SPAN)),  # a future version may append fields
    (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 may not
    (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is forbidden
    (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
    (f"00-{TRACE.upper()}-{SPAN}-01", None),  # upper-case hex
    (f"00-{TRACE[:-1]}-{SPAN}-01", None),
    ("", None), ("garbage", None), (TP + "x" * 600, None),
])
def test_parse_traceparent(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(value) == expected


@given(st.text(max_size=80))
def test_parse_never_raises_and_only_accepts_the_format(value: str) -> None:
    got = parse_traceparent(value)
    if got is not None:
        trace, span = got
        assert len(trace) == 32 and len(span) == 16 and trace in value and span in value


@given(st.from_regex(r"[0-9a-f]{32}", fullmatch=True), st.from_regex(r"[0-9a-f]{16}", fullmatch=True))
def test_well_formed_values_round_trip(trace: str, span: str) -> None:
    expected = None if set(trace) == {"0"} or set(span) == {"0"} else (trace, span)
    assert parse_traceparent(f"00-{trace}-{span}-01") == expected


def test_incoming_traceparent_takes_the_first_valid_variable() -> None:
    assert incoming_traceparent({}) == ""
    assert incoming_traceparent({"sip_h_traceparent": TP}) == TP
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    assert incoming_traceparent({"traceparent": other, "sip_h_traceparent": TP}) == other
    assert incoming_traceparent({"traceparent": "junk", "sip_h_traceparent": TP}) == TP


def _created(effects: list) -> dict:
    ev = next(e.event for e in effects if isinstance(e, PublishCti) and e.event.name == "CALL_CREATED")
    return dict(ev.data)


def test_a_channel_with_a_trace_context_puts_it_on_call_created() -> None:
    _, effects = C.new_call(ChannelCreated(call_id="c1", at=1.0, variables={"sip_h_traceparent": TP}))
    assert _created(effects)["traceparent"] == TP
    _, effects = C.new_call(ChannelCreated(call_id="c2", at=1.0, variables={"traceparent": "not-one"}))
    assert "traceparent" not in _created(effects)
    _, effects = C.new_call(ChannelCreated(call_id="c3", at=1.0))
    assert "traceparent" not in _created(effects)


def test_an_originate_with_a_trace_context_puts_it_on_call_created() -> None:
    _, effects = C.originate_call(Originate(call_id="o1", at=1.0, from_extension="1001", to="2002",
                                            traceparent=TP))
    assert _created(effects)["traceparent"] == TP
    _, effects = C.originate_call(Originate(call_id="o2", at=1.0, from_extension="1001", to="2002",
                                            traceparent="bad"))
    assert "traceparent" not in _created(effects)


def test_the_esl_mapping_keeps_an_incoming_trace_context_variable() -> None:
    frame = (f"Event-Name: CHANNEL_CREATE\nUnique-ID: u-1\nCall-Direction: inbound\n"
             f"Caller-Caller-ID-Number: 1001\nCaller-Destination-Number: 5000\n"
             f"variable_sip_h_traceparent: {TP}\nvariable_unrelated: x\n\n")
    body = frame.encode()
    p = EslParser()
    p.receive_data(b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body)
    ev = next(f.event for f in p if f.event is not None)
    assert isinstance(ev, EslEvent)
    m = map_event(ev, now=1.0, node="fs1")
    assert isinstance(m, ChannelCreated)
    assert m.variables == {"sip_h_traceparent": TP}


def test_headers_use_the_resumed_trace_else_the_derived_one() -> None:
    assert traceparent("t", "c1", 5) == f"00-{derived_trace_id('t', 'c1')}-0000000000000005-01"
    assert traceparent("t", "c1", 5, TRACE) == f"00-{TRACE}-0000000000000005-01"
    assert f"traceparent: 00-{TRACE}-".encode() in cti_frame("cti.t.call.c1.X", b"{}", "t", "c1", 5, TRACE)
    assert f"traceparent: 00-{derived_trace_id('t', 'c1')}-".encode() in cti_frame("cti.t.call.c1.X", b"{}",
                                                                                  "t", "c1", 5)

