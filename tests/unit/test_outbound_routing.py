"""Outbound routing: plan() (examples and hypothesis properties), the call machine's trunk failover,
the trunk dial string and the trunk-usage ledger."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.freeswitch.mapping import CommandError, originate_line
from engine.fsm import call as C
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    CtiEvent,
    MediaBridge,
    MediaHangup,
    MediaOriginate,
    PublishCti,
    SendMedia,
    TimerFired,
    WriteCdr,
)
from engine.routing.outbound import (
    AllTrunksFull,
    Blocked,
    CallerIdRule,
    DialPlan,
    EmergencyNumbers,
    InvalidNumber,
    NoRoute,
    OutboundConfig,
    OutboundConfigError,
    OutboundRoute,
    Trunk,
    compile_pattern,
    plan,
    to_route,
)
from engine.routing.usage import LedgerCti, TrunkLedger

S = C.CallState

A = Trunk(trunk_id="A", gateway="gw_a", max_concurrent=2)
B = Trunk(trunk_id="B", gateway="gw_b", max_concurrent=1)
X = Trunk(trunk_id="X", gateway="gw_x")  # unlimited
CONFIG = OutboundConfig(
    trunks=(A, B, X),
    routes=(
        OutboundRoute(route_id="intl", pattern="_00.", priority=10, trunks=("A", "B"),
                      caller_id=CallerIdRule(mode="replace", value="442071234567")),
        OutboundRoute(route_id="natl", pattern="_0ZXXXXXXXX", priority=20, trunks=("B", "A"),
                      strip=1, prepend="+44", caller_id=CallerIdRule(mode="prefix", value="44")),
        OutboundRoute(route_id="any", pattern="^[0-9]+$", priority=90, trunks=("X",)),
    ),
)


# ------------------------------------------------------------------------------ patterns

@pytest.mark.parametrize("pattern,yes,no", [
    ("_00.", ["001", "0044123"], ["00", "0144"]),
    ("_0ZXXXXXXXX", ["0123456789"], ["0023456789", "012345678"]),
    ("_N[1-3]X", ["213", "930"], ["113", "243"]),
    ("_1!", ["1", "12345"], ["21"]),
    ("^\\+44[0-9]{10}$", ["+442071234567"], ["442071234567"]),
    ("112", ["112"], ["1120", "11"]),
])
def test_dial_patterns_match_in_full(pattern, yes, no) -> None:
    rx = compile_pattern(pattern)
    assert all(rx.fullmatch(n) for n in yes)
    assert not any(rx.fullmatch(n) for n in no)


@pytest.mark.parametrize("pattern", ["", "^00", "00.$x", "_0Q", "_[a]", "_[1-", "^(", "12a"])
def test_bad_patterns_are_refused_with_a_typed_error(pattern) -> None:
    with pytest.raises(OutboundConfigError) as info:
        OutboundRoute(route_id="r", pattern=pattern, trunks=("A",))
    assert info.value.field == "pattern"


@pytest.mark.parametrize("build,field", [
    (lambda: Trunk(trunk_id="t", gateway="g w"), "gateway"),
    (lambda: Trunk(trunk_id="t", gateway="g", max_concurrent=-1), "max_concurrent"),
    (lambda: OutboundRoute(route_id="r", pattern="_X.", trunks=()), "trunks"),
    (lambda: OutboundRoute(route_id="r", pattern="_X.", trunks=("A",), prepend="+4a"), "prepend"),
    (lambda: OutboundConfig(trunks=(A,), routes=(OutboundRoute(route_id="r", pattern="_X.", trunks=("Q",)),)),
     "trunks"),
    (lambda: OutboundConfig(trunks=(A, A)), "trunks"),
    (lambda: EmergencyNumbers(numbers=frozenset({"11 2"})), "numbers"),
])
def test_bad_configuration_is_a_typed_error(build, field) -> None:
    with pytest.raises(OutboundConfigError) as info:
        build()
    assert info.value.field == field


# ------------------------------------------------------------------------------ plan(): examples

def test_priority_order_transform_and_caller_id() -> None:
    p = plan("0044201234", CONFIG, {}, caller_id="2001")
    assert isinstance(p, DialPlan) and not p.emergency
    # intl (priority 10) first with its trunks A, B; then any (90) adds X
    assert [(a.trunk_id, a.gateway, a.number, a.caller_id) for a in p.attempts] == [
        ("A", "gw_a", "0044201234", "442071234567"),
        ("B", "gw_b", "0044201234", "442071234567"),
        ("X", "gw_x", "0044201234", "2001")]
    p = plan("0123456789", CONFIG, {}, caller_id="2001")
    assert isinstance(p, DialPlan)
    assert [(a.trunk_id, a.number, a.caller_id) for a in p.attempts] == [
        ("B", "+44123456789", "442001"), ("A", "+44123456789", "442001"), ("X", "0123456789", "2001")]


def test_full_and_disabled_trunks_are_skipped_and_all_full_is_typed() -> None:
    p = plan("0044201234", CONFIG, {"A": 2})
    assert isinstance(p, DialPlan) and [a.trunk_id for a in p.attempts] == ["B", "X"]
    only_ab = OutboundConfig(trunks=(A, B.__class__(trunk_id="B", gateway="gw_b", enabled=False)),
                             routes=(CONFIG.routes[0],))
    err = plan("0044201234", only_ab, {"A": 2})
    assert err == AllTrunksFull(number="0044201234", trunks=("A", "B"))


def test_typed_errors_for_invalid_unroutable_and_blocked_numbers() -> None:
    assert plan("12 3", CONFIG, {}) == InvalidNumber(number="12 3")
    assert plan("", CONFIG, {}) == InvalidNumber(number="")
    assert plan("+1555", CONFIG, {}) == NoRoute(number="+1555")
    err = plan("0044201234", CONFIG, {}, allowed_routes=frozenset({"natl"}))
    assert err == Blocked(number="0044201234", routes=("intl", "any")) and err.reason == "Blocked"
    p = plan("0044201234", CONFIG, {}, allowed_routes=frozenset({"any"}))
    assert isinstance(p, DialPlan) and [a.trunk_id for a in p.attempts] == ["X"]


def test_emergency_bypasses_class_of_service_and_limits() -> None:
    tight = OutboundConfig(trunks=(A, B), routes=(CONFIG.routes[0],))
    p = plan("112", tight, {"A": 2, "B": 0}, caller_id="2001", allowed_routes=frozenset())
    assert isinstance(p, DialPlan) and p.emergency
    assert [a.trunk_id for a in p.attempts] == ["B", "A"]  # the trunk with capacity first
    p = plan("112", tight, {"A": 5, "B": 9})  # everything over its limit: still dialled
    assert isinstance(p, DialPlan) and [a.trunk_id for a in p.attempts] == ["A", "B"]
    assert p.attempts[0].number == "112" and p.attempts[0].caller_id == ""
    down = OutboundConfig(trunks=(Trunk(trunk_id="D", gateway="gw_d", enabled=False),))
    p = plan("911", down, {})
    assert isinstance(p, DialPlan) and [a.trunk_id for a in p.attempts] == ["D"]
    assert plan("911", OutboundConfig(), {}) == NoRoute(number="911")


def test_to_route_carries_the_attempts() -> None:
    p = plan("0044201234", CONFIG, {})
    assert isinstance(p, DialPlan)
    msg = to_route(p, call_id="c1", at=5.0, timeout_s=20)
    assert msg.target == "0044201234" and msg.trunks == p.attempts and msg.timeout_s == 20


# ------------------------------------------------------------------------------ plan(): properties

_trunks = st.lists(st.builds(lambda i, limit, enabled: Trunk(trunk_id=f"t{i}", gateway=f"gw{i}",
                                                             max_concurrent=limit, enabled=enabled),
                             st.integers(0, 5), st.integers(0, 3), st.booleans()),
                   min_size=1, max_size=5, unique_by=lambda t: t.trunk_id)
_PATTERNS = ["_X.", "_0X.", "_00.", "_1XX", "^9[0-9]*$", "112", "_[1-3]!"]


@st.composite
def _configs(draw):
    trunks = draw(_trunks)
    ids = [t.trunk_id for t in trunks]
    routes = draw(st.lists(st.builds(
        lambda i, pat, prio, ts: OutboundRoute(route_id=f"r{i}", pattern=pat, priority=prio, trunks=tuple(ts)),
        st.integers(0, 9), st.sampled_from(_PATTERNS), st.integers(0, 3),
        st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True)),
        max_size=4, unique_by=lambda r: r.route_id))
    usage = draw(st.dictionaries(st.sampled_from(ids), st.integers(0, 6)))
    return OutboundConfig(trunks=tuple(trunks), routes=tuple(routes),
                          emergency=EmergencyNumbers(numbers=frozenset({"112", "911"}))), usage


# mostly numbers several patterns match (so priority order matters), sometimes anything
_numbers = st.one_of(st.sampled_from(["112", "911", "0044", "0012", "100", "9", "91"]),
                     st.sampled_from(["0044", "0099", "00"]),
                     st.text("0123456789", min_size=1, max_size=12))


@settings(max_examples=300, deadline=None)
@given(_configs(), _numbers, st.one_of(st.none(), st.frozensets(st.sampled_from([f"r{i}" for i in range(10)]))))
def test_property_emergency_never_blocked(cfg_usage, number, allowed) -> None:
    cfg, usage = cfg_usage
    for emergency in ("112", "911"):
        p = plan(emergency, cfg, usage, allowed_routes=allowed)
        assert isinstance(p, DialPlan) and p.emergency
        assert {a.trunk_id for a in p.attempts} == {t.trunk_id for t in cfg.trunks if t.enabled} or \
            not any(t.enabled for t in cfg.trunks)
        # a trunk with capacity always comes before one without
        free = [cfg.trunk(a.trunk_id).has_capacity(usage.get(a.trunk_id, 0)) for a in p.attempts]
        assert free == sorted(free, reverse=True)


@settings(max_examples=300, deadline=None)
@given(_configs(), _numbers)
def test_property_limits_and_priority_for_ordinary_numbers(cfg_usage, number) -> None:
    cfg, usage = cfg_usage
    p = plan(number, cfg, usage)
    if number in cfg.emergency:
        return
    matching = sorted((r for r in cfg.routes if r.matches(number)), key=lambda r: (r.priority, r.route_id))
    if isinstance(p, DialPlan):
        ids = [a.trunk_id for a in p.attempts]
        assert len(ids) == len(set(ids))
        for a in p.attempts:  # never a trunk at or over its limit, never a disabled one
            t = cfg.trunk(a.trunk_id)
            assert t.enabled and (t.max_concurrent == 0 or usage.get(a.trunk_id, 0) < t.max_concurrent)
        # priority: the attempts follow the matching routes' order (first route naming a trunk)
        order = []
        for r in matching:
            order += [t for t in r.trunks if t not in order]
        assert ids == [t for t in order if t in ids]
    elif matching:
        assert isinstance(p, AllTrunksFull)
        assert not any(cfg.trunk(t).enabled and cfg.trunk(t).has_capacity(usage.get(t, 0))
                       for r in matching for t in r.trunks)
    else:
        assert isinstance(p, NoRoute)


# ------------------------------------------------------------------------------ the call machine

def _media(effects, kind):
    return [e.command for e in effects if isinstance(e, SendMedia) and isinstance(e.command, kind)]


def _cti(effects, name):
    return [e.event for e in effects if isinstance(e, PublishCti) and e.event.name == name]


def _outbound_call(number="0044201234", usage=None):
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="2001", destination=number,
                                        direction="outbound", node="fs1"))
    p = plan(number, CONFIG, usage or {}, caller_id="2001")
    assert isinstance(p, DialPlan)
    return C.step(call, to_route(p, call_id="c1", at=1.0, timeout_s=20))


def test_fsm_dials_the_first_trunk_and_fails_over_on_busy_then_the_cdr_names_trunk_b() -> None:
    call, fx = _outbound_call()
    (orig,) = _media(fx, MediaOriginate)
    assert (orig.gateway, orig.destination, orig.caller_id) == ("gw_a", "0044201234", "442071234567")
    assert orig.variables["callengine_trunk_id"] == "A"
    assert call.state is S.RINGING and call.trunk == "A"
    assert [e.data["trunk"] for e in _cti(fx, "CALL_TRUNK_SEIZED")] == ["A"]
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause="USER_BUSY"))
    (orig_b,) = _media(fx, MediaOriginate)
    assert orig_b.gateway == "gw_b" and orig_b.leg != orig.leg and orig_b.timeout_s == 20
    (fo,) = _cti(fx, "CALL_TRUNK_FAILOVER")
    assert fo.data == {"from_trunk": "A", "to_trunk": "B", "cause": "USER_BUSY"}
    assert call.state is S.RINGING and call.trunk == "B" and not _cti(fx, "CALL_ENDED")
    call, fx = C.step(call, ChannelAnswered(call_id="c1", leg=orig_b.leg, at=3.0))
    assert _media(fx, MediaBridge) and call.state is S.ACTIVE
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg="a", at=9.0))
    (cdr,) = [e.cdr for e in fx if isinstance(e, WriteCdr)]
    assert cdr.trunk == "B" and cdr.disposition == "answered" and cdr.destination == "0044201234"


@pytest.mark.parametrize("cause", ["NORMAL_CIRCUIT_CONGESTION", "NO_ROUTE_DESTINATION", "GATEWAY_DOWN"])
def test_fsm_fails_over_on_congestion_no_route_and_gateway_down(cause) -> None:
    call, fx = _outbound_call()
    (orig,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause=cause))
    assert [o.gateway for o in _media(fx, MediaOriginate)] == ["gw_b"]


def test_fsm_does_not_fail_over_when_the_far_end_does_not_answer_or_rejects() -> None:
    call, fx = _outbound_call()
    (orig,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, TimerFired(key=f"ring:{orig.leg}", at=21.0))
    assert not _media(fx, MediaOriginate) and call.state is S.ENDED and call.disposition == "no_answer"
    call, fx = _outbound_call()
    (orig,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause="CALL_REJECTED"))
    assert not _media(fx, MediaOriginate) and call.state is S.ENDED and call.disposition == "busy"


def test_fsm_ends_busy_after_the_last_trunk_and_names_it() -> None:
    call, fx = _outbound_call()
    seen = []
    for _ in range(3):
        (orig,) = _media(fx, MediaOriginate)
        seen.append(orig.gateway)
        call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause="USER_BUSY"))
    assert seen == ["gw_a", "gw_b", "gw_x"] and call.state is S.ENDED
    (cdr,) = [e.cdr for e in fx if isinstance(e, WriteCdr)]
    assert cdr.trunk == "X" and cdr.disposition == "busy"
    assert any(isinstance(m, MediaHangup) and m.leg == "a" for m in _media(fx, MediaHangup))


def test_a_late_hangup_of_a_failed_trunk_leg_is_a_no_op() -> None:
    call, fx = _outbound_call()
    (orig,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause="USER_BUSY"))
    again, fx2 = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.1, cause="USER_BUSY"))
    assert again == call and fx2 == []


def test_caller_hanging_up_during_failover_cancels_the_ringing_trunk() -> None:
    call, fx = _outbound_call()
    (orig,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause="USER_BUSY"))
    (orig_b,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg="a", at=3.0))
    assert [m.leg for m in _media(fx, MediaHangup)] == [orig_b.leg]
    (cdr,) = [e.cdr for e in fx if isinstance(e, WriteCdr)]
    assert cdr.trunk == "B" and cdr.disposition == "abandoned"


# ------------------------------------------------------------------------------ dial string, ledger

def test_trunk_leg_dial_string_and_refusals() -> None:
    line = originate_line(MediaOriginate(call_id="c1", leg="c1-1", destination="+44201", gateway="gw_a"))
    assert line.endswith("}sofia/gateway/gw_a/+44201 &park()")
    for gw, dest in [("gw a", "1"), ("gw/x", "1"), ("gw", "1/2"), ("gw", "12a")]:
        with pytest.raises(CommandError):
            originate_line(MediaOriginate(call_id="c1", leg="c1-1", destination=dest, gateway=gw))


def test_ledger_counts_a_call_once_on_its_latest_trunk_and_rebuilds_from_the_switch() -> None:
    ledger = TrunkLedger()
    seen: list[CtiEvent] = []

    class Inner:
        def publish(self, event):
            seen.append(event)

    port = LedgerCti(ledger, Inner())

    def ev(name, call_id, tenant="t1", **data):
        port.publish(CtiEvent(name=name, tenant=tenant, at=0.0, call_id=call_id, data=data))

    ev("CALL_TRUNK_SEIZED", "c1", trunk="A")
    ev("CALL_TRUNK_SEIZED", "c2", trunk="A")
    ev("CALL_TRUNK_SEIZED", "c3", tenant="t2", trunk="A")
    assert ledger.usage("t1") == {"A": 2} and ledger.usage("t2") == {"A": 1}
    ev("CALL_TRUNK_SEIZED", "c1", trunk="B")  # failover moves the call
    assert ledger.usage("t1") == {"A": 1, "B": 1}
    ev("CALL_ENDED", "c2")
    ev("CALL_ENDED", "c9")  # unknown: harmless
    assert ledger.usage("t1") == {"B": 1} and len(seen) == 6
    n = ledger.rebuild([{"callengine_trunk_id": "A", "callengine_call_id": "x1"},
                        {"callengine_trunk_id": "A", "callengine_call_id": "x2", "callengine_tenant": "t1"},
                        {"callengine_call_id": "x3"}])
    assert n == 2 and ledger.usage("default") == {"A": 1} and ledger.usage("t1") == {"A": 1}


# ------------------------------------------------------------------------------ the node router

def test_router_plans_emergency_first_else_after_the_fallback_and_refuses_with_a_cause() -> None:
    from engine.messages import EnterFlow, RouteToExtension, RouteToQueue
    from engine.routing.router import outbound_router

    ledger = TrunkLedger()
    tight = OutboundConfig(trunks=(A, B), routes=CONFIG.routes[:1])

    def fallback(ev):
        return RouteToQueue(call_id=ev.call_id, at=ev.at, queue_id="q") if ev.destination.startswith("0044") else None

    router = outbound_router({"t1": tight}, ledger, fallback=fallback, timeout_s=25)

    def created(number, tenant="t1"):
        return ChannelCreated(call_id="c1", at=1.0, caller_id="2001", destination=number, tenant=tenant)

    assert isinstance(router(created("0044201234")), RouteToQueue)  # the fallback decides first
    msg = router(created("0033201234"))
    assert isinstance(msg, RouteToExtension) and [a.trunk_id for a in msg.trunks] == ["A", "B"]
    assert msg.timeout_s == 25
    assert router(created("5000")) is None  # no route: not an outside number
    assert router(created("0033201234", tenant="other")) is None
    for call_id in ("x1", "x2"):
        ledger.observe(CtiEvent(name="CALL_TRUNK_SEIZED", tenant="t1", at=0, call_id=call_id, data={"trunk": "A"}))
    ledger.observe(CtiEvent(name="CALL_TRUNK_SEIZED", tenant="t1", at=0, call_id="x3", data={"trunk": "B"}))
    refused = router(created("0033201234"))
    assert isinstance(refused, EnterFlow) and refused.flow is not None
    assert refused.flow.nodes["refuse"].cause == "NORMAL_CIRCUIT_CONGESTION"

    def greedy(ev):
        return RouteToQueue(call_id=ev.call_id, at=ev.at, queue_id="q")

    sos = outbound_router({"t1": tight}, ledger, fallback=greedy)(created("112"))
    assert isinstance(sos, RouteToExtension) and [a.trunk_id for a in sos.trunks] == ["A", "B"]


def test_config_from_stored_rows() -> None:
    from adapters.postgres import config as pg
    from engine.routing.outbound import config_from_entities

    trunks = [pg.Trunk(tenant="t", trunk_id="carrier1", host="sip.example.net", max_channels=3),
              pg.Trunk(tenant="t", trunk_id="carrier2", host="sip2.example.net", enabled=False)]
    routes = [pg.OutboundRoute(tenant="t", route_id="uk", pattern="0[1-9][0-9]{9}", priority=5,
                               trunks=("carrier1", "carrier2"), strip=1, prepend="+44"),
              pg.OutboundRoute(tenant="t", route_id="intl", pattern="^00[0-9]+", trunks=("carrier2",)),
              pg.OutboundRoute(tenant="t", route_id="short", pattern="^99", trunks=("carrier1",)),
              pg.OutboundRoute(tenant="t", route_id="dp", pattern="_1XX", trunks=("carrier1",))]
    cfg = config_from_entities(trunks, routes)
    assert cfg.trunk("carrier1") == Trunk(trunk_id="carrier1", gateway="carrier1", max_concurrent=3)
    assert not cfg.trunk("carrier2").enabled
    p = plan("01134960000", cfg, {"carrier1": 2})
    assert isinstance(p, DialPlan) and [(a.gateway, a.number) for a in p.attempts] == [("carrier1", "+441134960000")]
    assert plan("011349600001", cfg, {}) == NoRoute(number="011349600001")  # matched in full only
    assert plan("0049", cfg, {}) == AllTrunksFull(number="0049", trunks=("carrier2",))
    assert plan("991", cfg, {}) == NoRoute(number="991")  # "^99" means the whole number is 99
    assert isinstance(plan("99", cfg, {}), DialPlan)
    assert plan("0049", config_from_entities(trunks[:1], []), {}) == NoRoute(number="0049")
    assert isinstance(plan("123", cfg, {}), DialPlan)


def test_caller_id_rules_from_stored_rows() -> None:
    """The stored route's caller_id_mode/value (migration 0014) become its CallerIdRule; a rule that
    rewrites the number needs one."""
    import pytest

    from adapters.postgres import config as pg
    from adapters.postgres.errors import InvalidArgument
    from engine.routing.outbound import config_from_entities

    trunks = [pg.Trunk(tenant="t", trunk_id="c1", host="sip.example.net")]
    routes = [pg.OutboundRoute(tenant="t", route_id="main", pattern="^00[0-9]+", trunks=("c1",),
                               caller_id_mode="replace", caller_id_value="+33140000000"),
              pg.OutboundRoute(tenant="t", route_id="did", pattern="^0[1-9][0-9]+", trunks=("c1",),
                               caller_id_mode="prefix", caller_id_value="+3314000"),
              pg.OutboundRoute(tenant="t", route_id="own", pattern="^9[0-9]+", trunks=("c1",))]
    cfg = config_from_entities(trunks, routes)
    seen = [plan(n, cfg, {}, caller_id="1234") for n in ("0044201234", "0140000000", "912")]
    assert [p.attempts[0].caller_id for p in seen if isinstance(p, DialPlan)] == [
        "+33140000000", "+33140001234", "1234"]
    with pytest.raises(InvalidArgument, match="caller_id_value"):
        pg.validate(pg.OutboundRoute(tenant="t", route_id="bad", pattern="^1", trunks=("c1",),
                                     caller_id_mode="replace"))


def test_click_to_call_to_an_outside_number_dials_its_plan_after_the_users_phone_answers() -> None:
    from engine.messages import Originate

    p = plan("0044201234", CONFIG, {}, caller_id="2001")
    assert isinstance(p, DialPlan)
    call, fx = C.originate_call(Originate(call_id="c1", at=0.0, from_extension="2001", to="0044201234",
                                          trunks=p.attempts))
    (own,) = _media(fx, MediaOriginate)
    assert own.leg == "a" and own.destination == "2001" and not own.gateway
    call, fx = C.step(call, ChannelAnswered(call_id="c1", leg="a", at=1.0))
    (orig,) = _media(fx, MediaOriginate)
    assert orig.gateway == "gw_a" and orig.destination == "0044201234"
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig.leg, at=2.0, cause="NORMAL_CIRCUIT_CONGESTION"))
    (orig_b,) = _media(fx, MediaOriginate)
    assert orig_b.gateway == "gw_b" and _cti(fx, "CALL_TRUNK_FAILOVER")
    call, fx = C.step(call, ChannelAnswered(call_id="c1", leg=orig_b.leg, at=3.0))
    assert call.state is S.ACTIVE and call.trunk_plan == ()
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg="a", at=5.0))
    (cdr,) = [e.cdr for e in fx if isinstance(e, WriteCdr)]
    assert cdr.trunk == "B" and cdr.direction == "outbound"


def test_blind_transfer_to_an_outside_number_fails_over_across_trunks() -> None:
    from engine.messages import BlindTransfer

    call, fx = _outbound_call("0123456789")  # national: B first
    (orig,) = _media(fx, MediaOriginate)
    call, fx = C.step(call, ChannelAnswered(call_id="c1", leg=orig.leg, at=2.0))
    assert call.state is S.ACTIVE and call.trunk == "B"
    p = plan("0044201234", CONFIG, {"B": 1})
    assert isinstance(p, DialPlan)
    call, fx = C.step(call, BlindTransfer(call_id="c1", at=3.0, target="0044201234", trunks=p.attempts))
    (hang,) = _media(fx, MediaHangup)
    (orig_a,) = _media(fx, MediaOriginate)
    assert hang.leg == orig.leg and orig_a.gateway == "gw_a" and call.state is S.RINGING
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg=orig_a.leg, at=4.0, cause="GATEWAY_DOWN"))
    (orig_x,) = _media(fx, MediaOriginate)
    assert orig_x.gateway == "gw_x"  # B was full when the transfer was planned
    call, fx = C.step(call, ChannelAnswered(call_id="c1", leg=orig_x.leg, at=5.0))
    call, fx = C.step(call, ChannelHangup(call_id="c1", leg="a", at=9.0))
    (cdr,) = [e.cdr for e in fx if isinstance(e, WriteCdr)]
    assert cdr.trunk == "X" and cdr.transfers == 1


# ------------------------------------------------------------------------------ call machine: properties

_LEG_OUTCOMES = st.sampled_from(["USER_BUSY", "NORMAL_CIRCUIT_CONGESTION", "GATEWAY_DOWN", "NO_ROUTE_DESTINATION",
                                 "CALL_REJECTED", "timeout", "answer", "caller_hangup", "dup_hangup"])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.lists(_LEG_OUTCOMES, min_size=1, max_size=8))
def test_property_trunk_failover_in_the_call_machine(n_trunks, outcomes) -> None:
    """Whatever the trunks do: one trunk leg rings at a time, trunks are dialled in plan order
    (each once), failover only on a failover cause, nothing is dialled after the end, exactly
    one CDR naming the last trunk dialled."""
    from engine.messages import Hangup, RouteToExtension, TrunkDial
    from engine.routing.outbound import FAILOVER_CAUSES

    attempts = tuple(TrunkDial(trunk_id=f"T{i}", gateway=f"gw{i}", number="0044") for i in range(n_trunks))
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="2001", destination="0044", node="fs1"))
    call, fx = C.step(call, RouteToExtension(call_id="c1", at=1.0, target="0044", timeout_s=20, trunks=attempts))
    dialled = [o for o in _media(fx, MediaOriginate)]
    cdrs = []
    t = 1.0
    last_failed = None
    for outcome in outcomes:
        t += 1.0
        ringing = [leg for leg in call.legs if not leg.answered]
        assert len(ringing) <= 1
        if call.state is S.ENDED:
            break
        current = dialled[-1]
        before = len(dialled)
        if outcome == "answer":
            ev = ChannelAnswered(call_id="c1", leg=current.leg, at=t)
        elif outcome == "timeout":
            ev = TimerFired(key=f"ring:{current.leg}", at=t)
        elif outcome == "caller_hangup":
            ev = ChannelHangup(call_id="c1", leg="a", at=t)
        elif outcome == "dup_hangup" and last_failed is not None:
            ev = ChannelHangup(call_id="c1", leg=last_failed, at=t, cause="USER_BUSY")
        elif outcome == "dup_hangup":
            continue
        else:
            ev = ChannelHangup(call_id="c1", leg=current.leg, at=t, cause=outcome)
        was_ringing = call.state is S.RINGING and call.leg(current.leg) is not None and not call.leg(current.leg).answered
        call, fx = C.step(call, ev)
        new = _media(fx, MediaOriginate)
        dialled += new
        cdrs += [e.cdr for e in fx if isinstance(e, WriteCdr)]
        fails_over = (isinstance(ev, ChannelHangup) and ev.leg == current.leg and was_ringing
                      and ev.cause in FAILOVER_CAUSES and before < n_trunks)
        assert len(new) == (1 if fails_over else 0), (outcome, new)
        if isinstance(ev, ChannelHangup) and ev.leg == current.leg:
            last_failed = current.leg
    assert [o.gateway for o in dialled] == [a.gateway for a in attempts[:len(dialled)]]
    assert len({o.leg for o in dialled}) == len(dialled)
    if call.state is not S.ENDED:
        call, fx = C.step(call, Hangup(call_id="c1", at=t + 1))
        cdrs += [e.cdr for e in fx if isinstance(e, WriteCdr)]
        assert not _media(fx, MediaOriginate)
    assert len(cdrs) == 1 and cdrs[0].trunk == attempts[len(dialled) - 1].trunk_id
