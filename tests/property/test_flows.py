"""Property tests for flows: any document either loads or fails with one FlowError; any valid flow
driven by any event sequence keeps the interpreter's own rules."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.flows import FlowError, parse_flows
from engine.flows import interpreter as fi
from engine.flows.model import MenuNode, PlayNode, VoicemailNode
from engine.messages import (
    CancelTimer,
    DtmfReceived,
    MediaAnswer,
    MediaPlay,
    MediaRecordStart,
    MediaRecordStop,
    MediaStopPlayback,
    PlaybackFinished,
    SendMedia,
    StartTimer,
    TimerFired,
)

IDS = [f"n{i}" for i in range(6)]
NON_TERMINAL = ["answer", "play", "menu", "time_condition", "route", "set"]
TERMINAL = ["queue", "transfer", "voicemail", "hangup"]


@st.composite
def raw_node(draw, kind, first, ids, broken):
    """A node whose first edge is ``first`` (so the chain n0 -> n1 -> ... is reachable) and whose
    other edges go anywhere; ``broken`` lets it carry one mistake the loader must catch."""

    def target():
        if broken and draw(st.integers(0, 6)) == 0:
            return "missing"
        return draw(st.sampled_from(ids))

    node = {"type": kind}
    if kind in ("answer", "play", "set"):
        node["next"] = first
    if kind == "play":
        node["prompt"] = draw(st.sampled_from(["a.wav", "b.wav"]))
    if kind == "set":
        node.update(name="v", value=draw(st.sampled_from(["x", "y"])))
    if kind == "menu":
        node["prompt"] = "m.wav"
        options = {"1": first}
        options.update(draw(st.dictionaries(st.sampled_from(["2", "9", "12"]), st.builds(target), max_size=2)))
        node["options"] = options
        node["max_digits"] = draw(st.integers(1, 2))
        node["retries"] = draw(st.integers(0, 2))
        if draw(st.booleans()):
            node["on_timeout"] = target()
        if draw(st.booleans()):
            node["on_invalid"] = target()
        if draw(st.booleans()):
            node["invalid_prompt"] = "inv.wav"
    if kind == "time_condition":
        zones = ["UTC", "Asia/Tokyo"] + (["Nowhere/X"] if broken else [])
        node.update(open=first, closed=target(), timezone=draw(st.sampled_from(zones)))
    if kind == "route":
        node.update(by=draw(st.sampled_from(["did", "caller_id", "var:v"] + (["bad"] if broken else []))),
                    default=first, rules=[{"match": draw(st.sampled_from(["x", "1.*"] + (["("] if broken else []))),
                                           "next": target()}])
    if kind == "queue":
        node["queue"] = "q"
    if kind == "transfer":
        node["target"] = "1000"
    if kind == "voicemail":
        node["box"] = "b"
        if draw(st.booleans()):
            node["greeting"] = "g.wav"
    if broken and draw(st.integers(0, 10)) == 0:
        node["unexpected"] = 1
    return node


@st.composite
def raw_flow(draw):
    n = draw(st.integers(1, len(IDS)))
    ids = IDS[:n]
    broken = draw(st.integers(0, 3)) == 0
    nodes = {}
    for i, ident in enumerate(ids):
        last = i == n - 1
        kinds = TERMINAL if last else NON_TERMINAL + (TERMINAL if broken else [])
        if broken:
            kinds = kinds + ["bogus"]
        kind = draw(st.sampled_from(kinds))
        nodes[ident] = draw(raw_node(kind, ids[min(i + 1, n - 1)], ids, broken))
    start = "missing" if broken and draw(st.integers(0, 8)) == 0 else "n0"
    return {"id": "f", "start": start, "nodes": nodes}


event = st.one_of(
    st.tuples(st.just("play"), st.sampled_from(["a.wav", "b.wav", "m.wav", "inv.wav", "g.wav", ""])),
    st.tuples(st.just("dtmf"), st.sampled_from(list("129#*"))),
    st.tuples(st.just("timer"), st.just("")),
)

ALLOWED_MEDIA = (MediaAnswer, MediaPlay, MediaStopPlayback, MediaRecordStart, MediaRecordStop)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_flow(), st.lists(st.tuples(event, st.floats(0.0, 10.0)), max_size=30), st.floats(0, 2e9))
def test_any_document_loads_or_fails_cleanly_and_valid_flows_keep_their_rules(doc, events, epoch):
    try:
        flow = parse_flows(doc, "p.yaml")[0]
    except FlowError as err:
        assert err.file == "p.yaml" and err.path.startswith("$")
        return
    step = fi.start(flow, call_id="c1", at=0.0, did="100", caller_id="200", clock_offset=epoch)
    t = 0.0
    timer = False
    answers = 0
    outcome = step.outcome
    while True:
        for eff in step.effects:
            if isinstance(eff, StartTimer):
                assert eff.key == fi.FLOW_TIMER and eff.deadline >= t
                timer = True
            elif isinstance(eff, CancelTimer):
                assert timer, "cancelled a timer that was not running"
                timer = False
            else:
                assert isinstance(eff, SendMedia) and isinstance(eff.command, ALLOWED_MEDIA)
                answers += isinstance(eff.command, MediaAnswer)
        assert step.run.timer == timer
        assert answers <= 1, "answered twice"
        if step.outcome is not None:
            outcome = step.outcome
        if outcome is not None:
            assert not timer and step.run.waiting == "done"
            break
        # a flow that did not end waits at a node that can wait
        assert isinstance(flow.nodes[step.run.node], PlayNode | MenuNode | VoicemailNode)
        if not events:
            break
        ev = None
        while ev is None and events:
            (kind, arg), dt = events.pop(0)
            t += dt
            if kind == "play":
                ev = PlaybackFinished(call_id="c1", at=t, file=arg)
            elif kind == "dtmf":
                ev = DtmfReceived(call_id="c1", at=t, digit=arg)
            elif timer:
                ev = TimerFired(key=fi.FLOW_TIMER, at=t)
                timer = False  # the host delivered it: it is no longer running
        if ev is None:
            break
        step = fi.handle(flow, step.run, ev)
    if outcome is not None:
        # a finished flow ignores everything
        after = fi.handle(flow, step.run, DtmfReceived(call_id="c1", at=t + 1, digit="1"))
        assert after.effects == [] and after.outcome is None
