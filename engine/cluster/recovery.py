"""Rebuilding a shard after a restart: calls from the switch, agents repaired against it.

Rules
1. Pure functions: channels in, (state, effects) out. The host performs the effects.
2. FreeSWITCH is the source of truth for calls (kazoo's ``sync_channels``). A restarted shard asks
   every media node (``ChannelSource``) which channels exist and rebuilds the calls it owns:
   - caller + an answered engine leg: the call is ACTIVE with that party (bridged again if needed);
   - caller + ringing legs: the legs are hung up and the caller is routed again (back in its
     queue: a ``QueueCall`` for a caller the queue still has is a no-op, so it keeps its place).
     A host without a router (``callengine run``: the DID router lives in the gateway) leaves
     the call in ROUTING and the gateway routes it (gateway.py Rule 6);
   - legs whose caller is gone: hung up.
3. Agents restored from a snapshot may be up to one snapshot interval old. The switch says which
   agent is talking to whom, and which agent's phone is ringing for which offer (the
   ``callengine_*`` variables of the legs the engine originated), so ``reconcile_agent``:
   - puts an agent that has a live answered leg ON_CALL for that call;
   - puts an agent whose phone rings for an offer the image does not hold RESERVED for that offer
     again (offer timer armed ``RECOVERED_OFFER_S`` ahead). Without this, an image older than the
     offer restores the agent AVAILABLE while its phone rings, and a queue rings it a second time.
     The call's ``OfferAnswered`` / ``OfferFailed`` carry that offer id and resolve it as usual;
   - frees an agent that the image has ON_CALL for a call that no longer exists.
   RESERVED agents otherwise keep their offer safety timer (re-armed at its deadline), so a
   reservation whose messages died with the shard times out.
4. A call rebuilt here whose agent leg was still ringing hangs that leg up and routes the caller
   again; it tells the leg's queue and agent with ``OfferFailed(reason="failed")``, as the call
   would have, so the agent (wherever it lives) and the queue let go of that offer at once.
5. The host calls these with no ``await`` between adopting images, rebuilding calls and
   reconciling agents: no restored actor runs on a stale image before it is repaired.
6. The switch's list can lag the calls: a live shard's call may have rung one of the restarted
   shard's agents by a media command the switch has not run yet (still in that shard's output, or
   on its way). So the restarted host also asks each live peer for ``agent_claims``: the agent legs
   of the calls the peer holds, for agents the restarted shard owns. A claim counts as the switch's
   word for that leg (answered: talking; not answered: ringing for its offer). Peers also claim the
   agent legs rung for the restarted shard's queues (Rule 7).
7. A queue restored from an image can hold an offer still "reserving" whose ``ReservationAccepted``
   was applied after the image and died with the shard, while the call it caused already rings the
   agent. Left alone, the offer's timer would send the agent ``ReleaseReservation`` and free it with
   its phone ringing (a queue then rings it a second time). ``reconcile_queue`` moves every such
   offer whose leg the switch or a peer shows to "ringing" and cancels its timer, as the accepted
   reservation would have: from there the call's ``OfferAnswered`` / ``OfferFailed`` settle it.
8. An image is older than the actor it restores, so the counters it carries went back in time. A
   queue would issue again the offer ids it issued after the image (and a late message about the
   old offer would then settle the new one); an agent would number its statuses below what its
   queues have seen, and they would ignore them as stale. ``restored_agent`` / ``restored_queue`` move the counters
   ``RESTORE_SEQ_JUMP`` ahead, past anything one incarnation issues between two snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec

from engine.fsm import call as call_fsm
from engine.fsm.agent import Agent, AgentState
from engine.fsm.call import Call, CallState, Leg
from engine.fsm.queue import Queue
from engine.messages import (
    AgentStatus,
    CancelTimer,
    ChannelCreated,
    Effect,
    HangupCause,
    MediaBridge,
    MediaHangup,
    OfferFailed,
    QueueCall,
    RoutingMessage,
    Send,
    SendMedia,
    StartTimer,
)

__all__ = ["RECOVERED_OFFER_S", "RESTORE_SEQ_JUMP", "ChannelSource", "LiveChannel", "agent_claims", "agent_status", "rebuild_calls",
           "reconcile_agent", "reconcile_queue", "requeue_message", "restored_agent",
           "restored_queue"]

#: how far a restored agent's status numbers and a restored queue's offer numbers jump (Rule 8)
RESTORE_SEQ_JUMP = 1_000_000

#: the offer timer of an agent found ringing after a restart (Rule 3): longer than any ring timeout
#: plus grace the queues use by default, so the call's own answer or failure normally comes first
RECOVERED_OFFER_S = 45.0

replace = msgspec.structs.replace


class LiveChannel(msgspec.Struct, frozen=True, kw_only=True):
    """One channel as a media node reports it (``show channels as json`` over ESL)."""

    call_id: str
    #: "a" for the caller, else the engine's leg id (``<call_id>-<n>``)
    leg: str = "a"
    node: str = ""
    answered: bool = False
    #: the leg this one is bridged with ("" when none)
    bridged_to: str = ""
    direction: str = "inbound"
    caller_id: str = ""
    destination: str = ""
    tenant: str = "default"
    created_at: float = 0.0
    #: channel variables the engine set on the legs it originated
    agent_id: str = ""
    queue_id: str = ""
    #: the queue's offer that rings this leg (``callengine_offer_id``)
    offer_id: str = ""


class ChannelSource(Protocol):
    """Returns the live channels of one media node (a picklable callable: Ray restarts the shard
    host in a fresh process and calls it there)."""

    def __call__(self) -> list[LiveChannel]: ...


Router = Callable[[ChannelCreated], RoutingMessage | None]


def rebuild_calls(channels: Iterable[LiveChannel], owns: Callable[[str], bool], router: Router | None,
                  now: float) -> tuple[list[tuple[Call, list[Effect]]], list[Effect]]:
    """Calls this shard owns, rebuilt from the switch, and effects for orphan legs."""
    by_call: dict[str, list[LiveChannel]] = {}
    for ch in channels:
        if owns(ch.call_id):
            by_call.setdefault(ch.call_id, []).append(ch)
    calls: list[tuple[Call, list[Effect]]] = []
    orphans: list[Effect] = []
    for call_id, chans in sorted(by_call.items()):
        a = next((c for c in chans if c.leg == "a"), None)
        others = [c for c in chans if c.leg != "a"]
        if a is None:
            orphans += [SendMedia(command=MediaHangup(call_id=call_id, leg=c.leg, node=c.node,
                                                      cause=HangupCause.NORMAL_CLEARING)) for c in others]
            continue
        calls.append(_rebuild(a, others, router, now))
    return calls, orphans


def _rebuild(a: LiveChannel, others: list[LiveChannel], router: Router | None,
             now: float) -> tuple[Call, list[Effect]]:
    created = ChannelCreated(call_id=a.call_id, at=a.created_at or now, node=a.node, direction=a.direction,  # type: ignore[arg-type]
                             caller_id=a.caller_id, destination=a.destination, tenant=a.tenant)
    call, _ = call_fsm.new_call(created)
    seq = max((_leg_seq(c.leg) for c in others), default=0)
    call = replace(call, a_answered=a.answered, leg_seq=seq, now=now, state_since=now)
    effects: list[Effect] = []
    talking = next((c for c in others if c.answered), None)
    for c in others:
        if c is not talking:
            effects.append(SendMedia(command=MediaHangup(call_id=a.call_id, leg=c.leg, node=c.node,
                                                         cause=HangupCause.LOSE_RACE)))
            if c.agent_id and c.queue_id and c.offer_id:  # Rule 4
                failed = OfferFailed(at=now, offer_id=c.offer_id, call_id=a.call_id, agent_id=c.agent_id,
                                     queue_id=c.queue_id, reason="failed")
                effects += [Send(to="queue", to_id=c.queue_id, message=failed),
                            Send(to="agent", to_id=c.agent_id, message=failed)]
    if talking is not None:
        leg = Leg(id=talking.leg, destination=talking.destination,
                  role="agent" if talking.agent_id else "extension", agent_id=talking.agent_id,
                  queue_id=talking.queue_id, answered=True)
        call = replace(call, state=CallState.ACTIVE, legs=(leg,), connected=leg.id, agent_id=leg.agent_id,
                       queue_id=talking.queue_id, answered_at=now, a_answered=True)
        if a.bridged_to != talking.leg:
            effects.append(SendMedia(command=MediaBridge(call_id=a.call_id, leg="a", node=a.node,
                                                         other_leg=talking.leg)))
        return call, effects
    decision = router(created) if router is not None else None
    if decision is not None:
        call, more = call_fsm.step(call, decision)
        effects += more
    return call, effects


def agent_claims(calls: Iterable[Call], owns: Callable[[str, str, str], bool]) -> list[LiveChannel]:
    """Rule 6: the agent legs of ``calls`` (live, not ENDED) for which ``owns(tenant, agent id,
    queue id)``: the restarted shard owns the leg's agent or its queue."""
    out = []
    for call in calls:
        if call.state is CallState.ENDED:
            continue
        for leg in call.legs:
            if leg.role == "agent" and leg.agent_id and owns(call.tenant, leg.agent_id, leg.queue_id):
                out.append(LiveChannel(call_id=call.call_id, leg=leg.id, node=call.node, answered=leg.answered,
                                       direction="outbound", destination=leg.destination, tenant=call.tenant,
                                       agent_id=leg.agent_id, queue_id=leg.queue_id, offer_id=leg.offer_id))
    return out


def _leg_seq(leg: str) -> int:
    tail = leg.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def reconcile_agent(agent: Agent, talking_on: str | None, live_calls: set[str], now: float,
                    ringing: LiveChannel | None = None) -> tuple[Agent, list[Effect]]:
    """Repair a snapshot-restored agent against the switch (Rule 3): the agent and the timer
    effects that go with it (the host adds ``agent_status``). ``talking_on``: the call of the
    agent's live answered leg; ``ringing``: its live unanswered leg (with the offer it rings for)."""
    t = max(agent.now, now)
    if talking_on:
        if agent.state is AgentState.ON_CALL and agent.call_id == talking_on:
            return agent, []
        effects = _cancel(agent, {"offer", "wrap", "probe", "probe_timeout"})
        effects.append(StartTimer(key="probe", deadline=t + agent.probe_interval_s))
        timers = agent.timers - {"offer", "wrap", "probe_timeout"} | {"probe"}
        return replace(agent, state=AgentState.ON_CALL, call_id=talking_on, offer_id="", offer_queue="",
                       state_since=now, now=t, timers=timers), effects
    if ringing is not None and ringing.offer_id and agent.state is not AgentState.LOGGED_OUT:
        if agent.state is AgentState.RESERVED and agent.offer_id == ringing.offer_id:
            return agent, []
        effects = _cancel(agent, {"offer", "wrap", "probe", "probe_timeout"})
        effects.append(StartTimer(key="offer", deadline=t + RECOVERED_OFFER_S))
        timers = agent.timers - {"wrap", "probe", "probe_timeout"} | {"offer"}
        return replace(agent, state=AgentState.RESERVED, offer_id=ringing.offer_id,
                       offer_queue=ringing.queue_id, call_id=ringing.call_id, expired_offer="",
                       state_since=now, now=t, timers=timers), effects
    if agent.state is AgentState.ON_CALL and agent.call_id not in live_calls:
        # the call ended while the shard was down and its AgentCallEnded died with it
        effects = _cancel(agent, {"probe", "probe_timeout"})
        return replace(agent, state=AgentState.AVAILABLE, call_id="", state_since=now, idle_since=now, now=t,
                       timers=agent.timers - {"probe", "probe_timeout"}), effects
    return agent, []


def restored_agent(agent: Agent) -> Agent:
    """Rule 8: an agent just adopted from an image, its status numbers moved past the gap."""
    return replace(agent, status_seq=agent.status_seq + RESTORE_SEQ_JUMP)


def restored_queue(queue: Queue) -> Queue:
    """Rule 8: a queue just adopted from an image, its offer numbers moved past the gap."""
    return replace(queue, offer_seq=queue.offer_seq + RESTORE_SEQ_JUMP)


def reconcile_queue(queue: Queue, rung_offers: set[str]) -> tuple[Queue, list[Effect]]:
    """Rule 7: offers still "reserving" in a restored image whose agent leg exists (``rung_offers``:
    the offer ids of the live agent legs) become "ringing", their timers cancelled."""
    stale = [o for o in queue.offers.values() if o.phase == "reserving" and o.offer_id in rung_offers]
    if not stale:
        return queue, []
    offers = dict(queue.offers)
    timers = queue.timers
    effects: list[Effect] = []
    for offer in stale:
        offers[offer.offer_id] = replace(offer, phase="ringing")
        key = f"offer:{offer.offer_id}"
        if key in timers:
            effects.append(CancelTimer(key=key))
            timers = timers - {key}
    return replace(queue, offers=offers, timers=timers), effects


def _cancel(agent: Agent, keys: set[str]) -> list[Effect]:
    return [CancelTimer(key=k) for k in sorted(keys & agent.timers)]


def agent_status(agent: Agent, at: float) -> list[Send]:
    """What ``fsm.agent`` sends its queues on every change (re-announced after a restart)."""
    return [Send(to="queue", to_id=q, message=AgentStatus(
        queue_id=q, agent_id=agent.agent_id, at=at, logged_in=agent.state is not AgentState.LOGGED_OUT,
        available=agent.offerable, extension=agent.extension, skills=agent.skills,
        idle_since=agent.idle_since, talk_time=agent.talk_time, calls_handled=agent.calls_handled))
        for q in agent.queues]


def requeue_message(call: Call, at: float) -> Send | None:
    """A waiting caller re-announces itself to its queue (the queue may have lost it)."""
    if not call.in_queue or call.state is not CallState.QUEUED:
        return None
    return Send(to="queue", to_id=call.queue_id, message=QueueCall(
        queue_id=call.queue_id, call_id=call.call_id, at=at, priority=call.priority, skills=call.skills,
        caller_id=call.caller_id, tenant=call.tenant))


