"""The gateway's pure parts (engine/cluster/gateway.py), without Ray: the channel mirror, the
orphan sweep (calls and queue waiters the switch no longer has), routing once per call, and the
ClusterNode facade's view and refusals."""

from __future__ import annotations

import pytest

from engine.actors.errors import ActorExists
from engine.actors.node import route_by_destination
from engine.actors.ports import Ports
from engine.cluster.gateway import ChannelMirror, Gateway, GatewayError
from engine.fsm import call as call_fsm
from engine.fsm import queue as queue_fsm
from engine.fsm.queue import QueueConfig, Waiter
from engine.messages import (
    CallerLeft,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    MediaBridge,
    MediaOriginate,
    RouteToQueue,
)


def gateway(tmp_path=None) -> Gateway:
    return Gateway(None, Ports.in_memory(), router=route_by_destination({"100": "q1"}),
                   channel_file=None if tmp_path is None else tmp_path / "channels")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(GatewayError):
        Gateway(None, None, busy_poll_s=0.01, idle_poll_s=0.001)
    with pytest.raises(GatewayError):
        Gateway(None, None, refresh_s=0)


def test_a_new_call_is_routed_once_right_after_its_creation() -> None:
    gw = gateway()
    ev = ChannelCreated(call_id="c1", at=1.0, node="fs1", destination="100")
    gw.put(ev)
    gw.put(ev)  # a reconcile re-announcing the channel must not route the call again
    assert [type(m) for m in gw._ops] == [ChannelCreated, RouteToQueue, ChannelCreated]
    assert gw.calls_created == 1


def test_entities_are_known_at_once_and_not_created_twice() -> None:
    gw = gateway()
    gw.node.add_queue(QueueConfig(queue_id="q1"))
    gw.node.add_agent("a1")
    with pytest.raises(ActorExists):
        gw.node.add_agent("a1")
    with pytest.raises(ActorExists):
        gw.node.add_queue(QueueConfig(queue_id="q1"))
    assert gw.node.state_of("agent", "a1").agent_id == "a1"
    assert gw.node.runtime.exists("queue", "q1")
    # a refresh that does not show them yet keeps them; one that does takes the shards' state
    gw._install({"call": [], "agent": [], "queue": []})
    assert gw.node.state_of("agent", "a1") is not None
    gw._install({"call": [], "agent": [], "queue": [queue_fsm.new_queue(QueueConfig(queue_id="q1"))]})
    assert gw._pending["queue"] == {} and "a1" in gw._pending["agent"]


def test_mirror_follows_channels_and_the_engine_originates(tmp_path) -> None:
    m = ChannelMirror(tmp_path / "ch")
    m.event(ChannelCreated(call_id="c1", at=1.0, node="fs1", destination="100"))
    m.command(MediaOriginate(call_id="c1", leg="c1-1", destination="7001",
                             variables={"callengine_agent_id": "a7", "callengine_queue_id": "q1"}))
    m.event(ChannelAnswered(call_id="c1", leg="c1-1", at=2.0, node="fs1"))  # no create seen for the leg
    m.command(MediaBridge(call_id="c1", leg="a", other_leg="c1-1"))
    leg = m.channels[("c1", "c1-1")]
    assert (leg.agent_id, leg.queue_id, leg.answered, leg.bridged_to) == ("a7", "q1", True, "a")
    m.write()
    from engine.cluster.fakeswitch import FileChannelSource

    assert {(c.call_id, c.leg) for c in FileChannelSource(str(tmp_path / "ch"))()} == {("c1", "a"), ("c1", "c1-1")}
    m.event(ChannelHangup(call_id="c1", leg="a", at=3.0, node="fs1"))
    assert ("c1", "a") not in m.channels and not m.leg_vars


def test_sweep_hangs_up_calls_and_drops_waiters_the_switch_no_longer_has(tmp_path) -> None:
    gw = gateway(tmp_path)
    live = ChannelCreated(call_id="live", at=1.0, node="fs1", destination="100")
    gw.put(live)
    state_live, _ = call_fsm.new_call(live)
    state_gone, _ = call_fsm.new_call(ChannelCreated(call_id="gone", at=1.0, node="fs1", destination="100"))
    q = queue_fsm.new_queue(QueueConfig(queue_id="q1"))
    import msgspec

    q = msgspec.structs.replace(q, waiting=(Waiter(call_id="live", priority=0, seq=1, enqueued_at=1.0),
                                            Waiter(call_id="ghost", priority=0, seq=2, enqueued_at=1.0)))
    gw._install({"call": [state_live, state_gone], "agent": [], "queue": [q]})
    gw._ops.clear()
    gw._sweep(100.0)
    assert gw._ops == []  # first sight: not yet
    gw._sweep(102.0)
    assert gw._ops == []  # still within orphan_after_s
    gw._sweep(103.5)
    assert gw._ops == [ChannelHangup(call_id="gone", leg="a", at=103.5, node="fs1", cause="NORMAL_CLEARING"),
                       CallerLeft(queue_id="q1", call_id="ghost", at=103.5)]
    assert gw.statistics()["orphans_hung_up"] == 1 and gw.statistics()["waiters_removed"] == 1


class _Directory:
    def owner(self, kind: str, actor_id: str) -> str:
        return "s0"


class _Cluster:
    directory = _Directory()


def test_a_restarted_host_calls_are_completed_from_the_ledger() -> None:
    from engine.messages import Cdr, CtiEvent

    ports = Ports.in_memory()
    gw = Gateway(_Cluster(), ports, router=route_by_destination({"100": "q1"}))
    done = ChannelCreated(call_id="done", at=1.0, node="fs1", destination="100")
    lost = ChannelCreated(call_id="lost", at=2.0, node="fs1", destination="100", caller_id="+1")
    for ev in (done, lost):
        gw.put(ev)
    # "done" reports everything itself: it leaves the ledger
    gw._ledger_output([CtiEvent(name="CALL_CREATED", tenant="default", at=1.0, call_id="done"),
                       CtiEvent(name="CALL_ENDED", tenant="default", at=3.0, call_id="done")],
                      [Cdr(call_id="done", tenant="default", direction="inbound", caller_id="", destination="100",
                           created_at=1.0, answered_at=None, ended_at=3.0, disposition="abandoned",
                           hangup_cause="NORMAL_CLEARING")])
    assert set(gw.ledger) == {"lost"}
    # "lost": its agent answered, then the caller hung up; its host died before handing anything over
    gw.mirror.command(MediaOriginate(call_id="lost", leg="lost-1", destination="7001",
                                     variables={"callengine_agent_id": "a7"}))
    gw.put(ChannelAnswered(call_id="lost", leg="lost-1", at=4.0, node="fs1"))
    gw.put(ChannelHangup(call_id="lost", leg="a", at=9.0, node="fs1", cause="NORMAL_CLEARING"))
    gw._note_restarts({"s0": {"pid": 10}}, 100.0)
    gw._repair(100.0)
    assert not ports.cti.items  # no restart seen yet: nothing to repair
    gw._note_restarts({"s0": {"pid": 11}}, 101.0)
    gw._repair(102.0)
    assert not ports.cti.items  # not before repair_after_s
    gw._repair(104.5)
    assert [(e.name, e.call_id, e.data.get("recovered")) for e in ports.cti.items] == [
        ("CALL_CREATED", "lost", True), ("CALL_ENDED", "lost", True)]
    (cdr,) = ports.cdr.items
    assert (cdr.call_id, cdr.disposition, cdr.agent_id, cdr.ended_at, cdr.node) == (
        "lost", "answered", "a7", 9.0, "recovered:fs1")
    assert gw.ledger == {} and gw.statistics()["recovered_cdrs"] == 1


def test_a_caller_a_restarted_host_rebuilt_unrouted_is_routed_again_from_the_ledger() -> None:
    """Rule 6: a host of ``callengine run`` has no router, so a caller it rebuilt with no agent leg
    stays in ROUTING (its queue, elsewhere, still holds it and the call refuses its offers). The
    gateway routes it again from the ledger's ChannelCreated; a rebuilt call that is routed, or
    whose caller is gone, is left alone."""
    gw = Gateway(_Cluster(), Ports.in_memory(), router=route_by_destination({"100": "q1"}))
    events = {cid: ChannelCreated(call_id=cid, at=1.0, node="fs1", destination="100", caller_id="+1")
              for cid in ("stuck", "queued", "gone")}
    for ev in events.values():
        gw.put(ev)
    gw.put(ChannelHangup(call_id="gone", leg="a", at=2.0, node="fs1", cause="NORMAL_CLEARING"))
    rebuilt = {cid: call_fsm.new_call(ev)[0] for cid, ev in events.items()}  # ROUTING, as rebuilt
    rebuilt["queued"], _ = call_fsm.step(rebuilt["queued"], RouteToQueue(call_id="queued", at=1.0, queue_id="q1"))
    gw._install({"call": list(rebuilt.values()), "agent": [], "queue": []})
    gw._ops.clear()
    gw._note_restarts({"s0": {"pid": 10}}, 100.0)
    gw._note_restarts({"s0": {"pid": 11}}, 101.0)
    gw._repair(102.0)
    assert gw._ops == []  # not before repair_after_s
    gw._repair(104.5)
    assert gw._ops == [RouteToQueue(call_id="stuck", at=1.0, queue_id="q1")]
    assert gw.statistics()["rerouted"] == 1


def test_a_call_is_the_answering_agents_before_the_view_knows_it() -> None:
    from engine.messages import CtiEvent

    gw = gateway()
    rt = gw.node.runtime
    assert rt.state_of("call", "c1") is None
    answered = CtiEvent(name="CALL_ANSWERED", tenant="default", at=2.0, call_id="c1", agent_id="a7")
    gw._dispatch([([], [], [answered], [])])
    hint = rt.state_of("call", "c1")
    assert (hint.call_id, hint.tenant, hint.agent_id) == ("c1", "default", "a7")
    # a view older than the answer: the agent is put on it
    old, _ = call_fsm.new_call(ChannelCreated(call_id="c1", at=1.0, node="fs1", destination="100"))
    gw._install({"call": [old], "agent": [], "queue": []})
    assert rt.state_of("call", "c1").agent_id == "a7" and rt.state_of("call", "c1").destination == "100"
    gw._dispatch([([], [], [CtiEvent(name="CALL_ENDED", tenant="default", at=3.0, call_id="c1")], [])])
    assert rt.state_of("call", "c1") is old


def test_one_cdr_and_one_call_ended_per_call_leave_the_gateway() -> None:
    """Rule 6: a host restarted after a call's CDR was drained can rebuild that call from a switch
    that still lists its channel; the phantom's second CDR and CALL_ENDED are dropped here (the
    PostgreSQL key includes the start time, which differs for the rebuilt call)."""
    from engine.messages import Cdr, CtiEvent

    gw = gateway()
    ports = gw.ports

    def cdr(started: float) -> Cdr:
        return Cdr(call_id="c1", tenant="default", direction="inbound", caller_id="+1", destination="100",
                   created_at=started, answered_at=started + 1, ended_at=started + 5, disposition="answered",
                   hangup_cause="NORMAL_CLEARING")

    ended = CtiEvent(name="CALL_ENDED", tenant="default", at=6.0, call_id="c1")
    other = CtiEvent(name="CALL_ANSWERED", tenant="default", at=2.0, call_id="c1")
    gw._dispatch([([], [cdr(1.0)], [other, ended], [])])
    gw._dispatch([([], [cdr(3.0)], [other, ended], [])])  # the phantom rebuilt from the switch
    assert [c.created_at for c in ports.cdr.items] == [1.0]
    assert [e.name for e in ports.cti.items] == ["CALL_ANSWERED", "CALL_ENDED", "CALL_ANSWERED"]
    assert gw.duplicates_dropped == {"cdrs": 1, "cti": 1}
    # the memory is bounded: the oldest call is forgotten first
    gw.finished_memory = 2
    for i in range(3):
        gw._dispatch([([], [msgspec_replace(cdr(1.0), call_id=f"x{i}")], [], [])])
    assert "c1" not in gw._cdr_done and len(gw._cdr_done) == 2


def msgspec_replace(struct, **changes):
    import msgspec

    return msgspec.structs.replace(struct, **changes)
