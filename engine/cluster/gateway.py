"""The gateway process: FreeSWITCH links, NATS/CTI, PostgreSQL and the API in one trio process;
the actors (calls, agents, queues) in Ray shard hosts (``engine.cluster.Cluster``).

Rules
1. Ingress: every media event from the ESL links, every API command and every configuration
   change goes into ONE ordered buffer; one task (``_ingress``) hands it to the cluster in batches
   (``Cluster.send``: per shard, one Ray call per batch), so what the links saw in order reaches the
   call's shard in order. Adding queues/agents (``Cluster.add_entities``) goes through the same
   task, so an ``AgentLogin`` never overtakes the creation of its agent.
2. Routing a new call is done here, not in the shards: the gateway holds the configuration
   (PostgreSQL snapshot + LISTEN/NOTIFY), so for the first ``ChannelCreated`` of leg "a" of a call it
   appends the router's decision (``RouteToQueue`` / ``EnterFlow`` with its graph) right after it,
   in the same batch to the same shard. The shard creates the call and delivers the decision next,
   exactly as ``Node._create_call`` does in one process.
3. Egress: ``_egress`` drains every host (``drain_outputs`` with ``collect_events``): media
   commands go to the links, CTI events to the publisher (and the PostgreSQL event sink), CDRs to
   the CDR writer, replies to the API's waiting ``ask``s. It polls fast while there is traffic and
   backs off to ``idle_poll_s`` when there is none.
4. The API sees a ``Node`` (``ClusterNode``): the subset ``api/``, ``adapters/postgres``
   (``NodeConfig``), ``adapters/freeswitch`` and ``engine.telemetry`` use. Reads (``state_of``,
   ``runtime.states``...) are answered from a view of the shards' states refreshed every
   ``refresh_s`` (plus what this process just created), so they never block on Ray; ``ask`` sends
   the command with a request id of this gateway and waits for the reply to come back in a drain.
5. Recovery of a killed shard host needs the switch's channels. Each host gets one
   ``SwitchChannelSource`` per media node: it asks that FreeSWITCH node itself over ESL
   (``adapters.freeswitch.channels.EslChannelSource``: ``show channels as json`` + the
   ``callengine_*`` variables), so a host rebuilds its calls on any machine of a Ray cluster. Only
   when a node cannot answer (unreachable, password, timeout) does the source fall back to that
   node's channels in the gateway's mirror: the channels it has seen (created, answered, bridged,
   agent legs it originated, hung up), written to a file (``FileChannelSource``), which only a host
   sharing the gateway's filesystem can read (local Ray). The host records the failure in its
   ``recovery`` statistics (``channel_source_errors``).
   The switch's list (and more so the mirror) can be behind the events in flight, so a restarted
   host can rebuild a call whose caller hung up meanwhile; the gateway sweeps for those
   (``_sweep``, from the channels it saw, file or not): a call the shards hold whose caller
   channel the gateway has not had for ``orphan_after_s`` (and no originate of it in
   flight) gets a ``ChannelHangup``, as the ESL link's reconcile does after a reconnect.
   Likewise a queue restored from a snapshot can hold waiters whose ``CallerLeft`` reached the
   dead host after that snapshot (a batch applied and lost with the process is not retried by
   Ray): a waiter whose call neither the shards nor the switch have had for ``orphan_after_s``
   gets the ``CallerLeft`` the call would have sent.
6. A killed host loses what it produced and had not yet handed over (at most one drain interval
   of media commands, CTI events and CDRs). The gateway keeps a ledger of the calls it routed
   (what it saw of them on the switch, and which of CALL_CREATED / CALL_ENDED / the CDR came back).
   When a host's process changes (``statistics`` pid), after ``repair_after_s`` it completes the
   calls that host owned: a missing CALL_CREATED is published, and a call that is gone from the
   shards and the switch without its CALL_ENDED / CDR gets them, built from the ledger and marked
   ``recovered`` (CTI ``data.recovered``; the CDR's ``node`` says ``recovered:<media node>``).
   A caller the host rebuilt with no live agent leg is routed by the host's router, and a host of
   ``callengine run`` has none (the DID router and its configuration live in the gateway's
   process): such a call, still in ROUTING at that point, is routed again here from its ledger
   ``ChannelCreated`` (a caller still in its queue rejoins it and keeps its place; the queue
   holds it back from offers meanwhile, as the call refuses them: fsm/queue.py).
   The other way round, a restarted host can rebuild a call that had already ended: its CDR was
   drained before the kill, but the switch still listed the channel (its hangup in flight). That
   phantom ends again, so the gateway lets one CDR and one CALL_ENDED per call through (a bounded
   memory of the last ``finished_memory`` calls) and counts the rest (``duplicates_dropped``).
   PostgreSQL's key (call id, start time) cannot catch it: the switch gives the rebuilt call's
   start to the second only.
7. Stop: ``drain`` flushes the ingress, then drains the hosts until two passes in a row bring
   nothing back, so every CDR and CTI event produced before the stop reaches its writer.
8. Tenants: the shards key agents and queues per tenant as ``engine.actors.Node`` does
   (``"<tenant>/<id>"``, the plain id for the ``default`` tenant; shard.py Rule 5), so two tenants
   can both have agent ``a1`` and queue ``sales``. A command the API sends for a tenant
   (``ClusterNode.deliver/ask(..., tenant=)``) is addressed to that key, and entities of a
   non-default tenant are placed and recorded in the directory under it (``Cluster.send`` of an
   ``Envelope`` addressed to that key, ``Cluster.add_entities``: the default tenant's keys are the
   plain ids, so its path is unchanged).
   Inside the shards, calls reach their own tenant's queues and agents (the runtime addresses a
   ``Send`` in the sender's tenant); CTI events carry the tenant of the machine that emits them.

Limits (said plainly): the state view lags the shards by up to ``refresh_s``; media commands lost with a killed host are not
re-issued (the restarted host's rebuild and the calls' own timers take over); a recovered CDR
carries only what the switch showed (times, answered by which agent, cause), not queue wait or
hold times; other CTI events a dead host produced (queue, agent state) are not recovered.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import trio

from engine.actors.errors import ActorExists, AskTimeout
from engine.actors.node import TENANT_SCOPED, route
from engine.cluster.cluster import runtime_key
from engine.cluster.recovery import LiveChannel
from engine.cluster.wire import Envelope
from engine.fsm import agent as agent_fsm
from engine.fsm import queue as queue_fsm
from engine.messages import (
    CallerLeft,
    ChannelAnswered,
    ChannelBridged,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelHangupComplete,
    ChannelUnbridged,
    MediaAnswer,
    MediaBridge,
    MediaOriginate,
    Originate,
    Reply,
)

log = logging.getLogger("callengine.gateway")

__all__ = ["ChannelMirror", "ClusterNode", "ClusterRuntimeView", "Gateway", "GatewayError", "SourceFellBack",
           "SwitchChannelSource"]


class GatewayError(RuntimeError):
    """The gateway cannot do what was asked (not running, bad argument)."""


#: the runtime key of an actor on the shards (the same rule as ``Runtime.key``, Rule 8)
_key = runtime_key


# ------------------------------------------------------------------------------ channel mirror

_MIRRORED = frozenset({ChannelCreated, ChannelAnswered, ChannelBridged, ChannelUnbridged, ChannelHangup,
                       ChannelHangupComplete, ChannelDestroyed})


class ChannelMirror:
    """The switch's channels as the gateway saw them (Rule 5), written to ``path`` for the hosts."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = str(path) if path else ""
        self.channels: dict[tuple[str, str], LiveChannel] = {}
        #: (call id, leg) -> (agent_id, queue_id, offer_id) of the originates the engine sent, until the
        #: leg is gone
        self.leg_vars: OrderedDict[tuple[str, str], tuple[str, str, str]] = OrderedDict()
        self.dirty = False
        self.writes = 0
        self._encoder = msgspec.msgpack.Encoder()

    def event(self, ev: Any) -> None:
        tp = type(ev)
        if tp not in _MIRRORED:
            return
        key = (ev.call_id, ev.leg)
        if tp is ChannelCreated:
            agent_id, queue_id, offer_id = self.leg_vars.get(key, ("", "", ""))
            self.channels[key] = LiveChannel(
                call_id=ev.call_id, leg=ev.leg, node=ev.node, direction=ev.direction, caller_id=ev.caller_id,
                destination=ev.destination, tenant=ev.tenant, created_at=ev.at,
                agent_id=agent_id or ev.variables.get("callengine_agent_id", ""),
                queue_id=queue_id or ev.variables.get("callengine_queue_id", ""),
                offer_id=offer_id or ev.variables.get("callengine_offer_id", ""))
        elif tp is ChannelAnswered:
            ch = self.channels.get(key) or self._originated(ev.call_id, ev.leg, ev.node, ev.at)
            if ch is None:
                return
            self.channels[key] = msgspec.structs.replace(ch, answered=True)
        elif tp is ChannelBridged or tp is ChannelUnbridged:
            ch = self.channels.get(key)
            if ch is None:
                return
            self.channels[key] = msgspec.structs.replace(ch, bridged_to=ev.other_leg if tp is ChannelBridged else "")
        elif tp is ChannelHangup or tp is ChannelHangupComplete or tp is ChannelDestroyed:
            self.leg_vars.pop(key, None)
            if ev.leg == "a":  # the caller is gone: so is every originate of this call
                for k in [k for k in self.leg_vars if k[0] == ev.call_id]:
                    del self.leg_vars[k]
            if self.channels.pop(key, None) is None:
                return
        else:
            return
        self.dirty = True

    def _originated(self, call_id: str, leg: str, node: str, at: float) -> LiveChannel | None:
        """A leg the engine originated whose creation event we did not see (a switch that only
        reports the answer)."""
        if (call_id, leg) not in self.leg_vars:
            return None
        agent_id, queue_id, offer_id = self.leg_vars[(call_id, leg)]
        return LiveChannel(call_id=call_id, leg=leg, node=node, direction="outbound", created_at=at,
                           agent_id=agent_id, queue_id=queue_id, offer_id=offer_id)

    def command(self, cmd: Any) -> None:
        """What the engine told the switch to do (the switch confirms with events; a switch
        that does not still leaves the mirror right for answer and bridge)."""
        tp = type(cmd)
        if tp is MediaOriginate:
            v = cmd.variables
            self.leg_vars[(cmd.call_id, cmd.leg)] = (v.get("callengine_agent_id", ""),
                                                     v.get("callengine_queue_id", ""),
                                                     v.get("callengine_offer_id", ""))
            if len(self.leg_vars) > 100_000:
                self.leg_vars.popitem(last=False)
        elif tp is MediaAnswer:
            ch = self.channels.get((cmd.call_id, cmd.leg))
            if ch is not None and not ch.answered:
                self.channels[(cmd.call_id, cmd.leg)] = msgspec.structs.replace(ch, answered=True)
                self.dirty = True
        elif tp is MediaBridge:
            a, b = self.channels.get((cmd.call_id, cmd.leg)), self.channels.get((cmd.call_id, cmd.other_leg))
            if a is not None and b is not None:
                self.channels[(cmd.call_id, cmd.leg)] = msgspec.structs.replace(a, bridged_to=cmd.other_leg)
                self.channels[(cmd.call_id, cmd.other_leg)] = msgspec.structs.replace(b, bridged_to=cmd.leg)
                self.dirty = True

    def write(self) -> None:
        if not self.path or not self.dirty:
            return
        self.dirty = False
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(self._encoder.encode(list(self.channels.values())))
        os.replace(tmp, self.path)
        self.writes += 1


class SourceFellBack(Exception):
    """A media node could not say which channels it has; ``channels`` are its channels from the
    mirror file instead (maybe none). Raised so the host records why (Rule 5); picklable."""

    def __init__(self, message: str, channels: list[LiveChannel] | None = None) -> None:
        super().__init__(message, channels or [])
        self.message = message
        self.channels: list[LiveChannel] = channels or []

    def __str__(self) -> str:
        return self.message


class SwitchChannelSource:
    """Rule 5: the ``ChannelSource`` of one media node for the shard hosts (picklable): ``ask``
    (the node over ESL); when that raises, :class:`SourceFellBack` with this node's channels from
    the mirror file at ``mirror_path`` ("" or no such file: none)."""

    def __init__(self, ask: Callable[[], list[LiveChannel]], node: str, mirror_path: str = "") -> None:
        self.ask = ask
        self.node = node
        self.mirror_path = mirror_path

    def __repr__(self) -> str:
        return f"SwitchChannelSource({self.ask!r}, node={self.node!r}, mirror_path={self.mirror_path!r})"

    def __call__(self) -> list[LiveChannel]:
        try:
            return self.ask()
        except Exception as exc:  # noqa: BLE001 - any failure of the node: the mirror stands in
            from engine.cluster.fakeswitch import FileChannelSource

            try:
                mirrored = FileChannelSource(self.mirror_path)() if self.mirror_path else []
            except (OSError, msgspec.DecodeError) as read_error:
                raise SourceFellBack(f"node {self.node!r}: {exc}; mirror file unreadable: {read_error!r}"
                                     ) from exc
            mine = [c for c in mirrored if c.node == self.node]
            where = f"{len(mine)} channel(s) from the mirror file" if self.mirror_path else "no mirror file"
            raise SourceFellBack(f"node {self.node!r}: {exc}; {where}", mine) from exc


# ------------------------------------------------------------------------------ the Node facade


class _CallHint(msgspec.Struct, frozen=True, kw_only=True):
    """A call the view does not show yet, as far as the API needs it (tenant, who talks on it)."""

    call_id: str
    tenant: str
    agent_id: str = ""
    legs: tuple[Any, ...] = ()


class ClusterRuntimeView:
    """``node.runtime`` for the API and telemetry: reads from the gateway's state view."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.name = gateway.name
        self.tenant_scoped = frozenset({"agent", "queue"})

    def clock(self) -> float:
        return time.time()

    def key(self, kind: str, tenant: str | None, actor_id: str) -> str:
        return _key(kind, tenant, actor_id)

    def _table(self, kind: str) -> dict[str, Any]:
        return self._gw.view.get(kind, {})

    def state_of(self, kind: str, actor_id: str) -> Any:
        state = self._table(kind).get(actor_id)
        if kind != "call":
            return state
        hint = self._gw.call_agents.get(actor_id)
        if hint is None:
            return state
        # the view may be older than the CALL_ANSWERED the agent's desktop just saw: the call is
        # the agent's from that moment (the API checks who may act on a call with this)
        tenant, agent_id = hint
        if state is None:
            return _CallHint(call_id=actor_id, tenant=tenant, agent_id=agent_id)
        if state.agent_id != agent_id and not any(leg.agent_id == agent_id for leg in state.legs):
            return msgspec.structs.replace(state, agent_id=agent_id)
        return state

    def states(self, kind: str) -> list[Any]:
        return list(self._table(kind).values())

    def ids(self, kind: str) -> list[str]:
        return list(self._table(kind))

    def exists(self, kind: str, actor_id: str) -> bool:
        return actor_id in self._table(kind)

    def recently_stopped(self, kind: str, actor_id: str) -> bool:
        return False

    def statistics(self) -> Any:
        """Totals over the shards (as of the last refresh), with the fields telemetry reads."""
        stats = self._gw.shard_statistics
        total = SimpleNamespace(actors=0, processed=0, dead_letters=0, timers=0, restarts=0, crashes=0,
                                queued=0, mailbox_max=0)
        for st in stats.values():
            for name in ("actors", "processed", "dead_letters", "timers"):
                value = st.get(name, 0)
                if isinstance(value, (int, float)):
                    setattr(total, name, getattr(total, name) + value)
        return total


class ClusterNode:
    """What ``api/``, ``NodeConfig``, the ESL links and telemetry call on a ``Node`` (Rule 4)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.name = gateway.name
        self.runtime = ClusterRuntimeView(gateway)
        self.sink: Any = None

    @property
    def calls_created(self) -> int:
        return self._gw.calls_created

    def key(self, kind: str, actor_id: str, tenant: str | None = None) -> str:
        if tenant is not None:
            return _key(kind, tenant, actor_id)
        return actor_id

    def state_of(self, kind: str, actor_id: str, tenant: str | None = None) -> Any:
        return self.runtime.state_of(kind, self.key(kind, actor_id, tenant))

    def add_queue(self, config: queue_fsm.QueueConfig) -> None:
        self._gw.add_entities(queues=[config])

    def add_agent(self, agent_id: str, tenant: str = "default") -> None:
        self._gw.add_entities(agents=[(agent_id, tenant)])

    def remove_actor(self, kind: str, actor_id: str, tenant: str | None = None) -> None:
        from engine.actors.node import ActorBusy, ActorMissing

        state = self.state_of(kind, actor_id, tenant)
        if state is None:
            raise ActorMissing(kind, actor_id)
        if kind == "agent" and state.state.name in ("RESERVED", "ON_CALL"):
            raise ActorBusy(kind, actor_id, f"the agent is {state.state.name}")
        if kind == "queue" and state.waiting:
            raise ActorBusy(kind, actor_id, f"{len(state.waiting)} callers are waiting")
        if kind == "call":
            raise ActorBusy(kind, actor_id, "calls end by hanging up")
        # the cluster has no removal yet: the actor stays on its shard, idle (logged out)
        if kind == "agent" and state.state.name != "LOGGED_OUT":
            from engine.messages import AgentLogout

            self.deliver_nowait(AgentLogout(agent_id=state.agent_id, at=time.time()), tenant)

    def deliver_nowait(self, message: Any, tenant: str | None = None) -> None:
        self._gw.put(message, tenant)

    async def deliver(self, message: Any, tenant: str | None = None) -> None:
        self._gw.put(message, tenant)
        await trio.lowlevel.checkpoint()

    async def ask(self, command: Any, timeout: float = 5.0, tenant: str | None = None) -> Reply:
        return await self._gw.ask(command, timeout, tenant)

    def statistics(self) -> Any:
        return SimpleNamespace(name=self.name, calls_created=self._gw.calls_created, media_dropped=0,
                               not_found=0, runtime=self.runtime.statistics())


# ------------------------------------------------------------------------------ the gateway


@dataclass
class _Ledger:
    """What the gateway knows of one call it routed (Rule 6)."""

    created: ChannelCreated
    shard: str
    cti: set[str] = field(default_factory=set)
    cdr: bool = False
    answered_at: float | None = None
    agent_id: str = ""
    ended_at: float | None = None
    cause: str = ""


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    reply: Reply | None = None


class Gateway:
    """Pumps between the gateway's ports and a started ``Cluster`` (module rules)."""

    def __init__(self, cluster: Any, ports: Any, *, name: str = "gateway",
                 router: Callable[[ChannelCreated], Any] | None = None,
                 channel_file: str | os.PathLike[str] | None = None, sweep: bool | None = None,
                 busy_poll_s: float = 0.002, idle_poll_s: float = 0.02, refresh_s: float = 0.2,
                 max_batch: int = 4096) -> None:
        if busy_poll_s <= 0 or idle_poll_s < busy_poll_s or refresh_s <= 0:
            raise GatewayError("need 0 < busy_poll_s <= idle_poll_s and refresh_s > 0")
        self.cluster = cluster
        self.ports = ports
        self.name = name
        self.router = router
        self.mirror = ChannelMirror(channel_file)
        #: Rule 5's sweep (default: only with a mirror file, i.e. a switch feeding this gateway)
        self.sweep_orphans = bool(channel_file) if sweep is None else sweep
        self.busy_poll_s, self.idle_poll_s, self.refresh_s = busy_poll_s, idle_poll_s, refresh_s
        self.max_batch = max_batch
        self.node = ClusterNode(self)
        #: kind -> runtime key -> state (Rule 4)
        self.view: dict[str, dict[str, Any]] = {"call": {}, "agent": {}, "queue": {}}
        self.shard_statistics: dict[str, dict[str, Any]] = {}
        self.calls_created = 0
        self.sent = 0
        self.batches = 0
        self.drains = 0
        self.counts = {"media": 0, "cdrs": 0, "cti": 0, "replies": 0, "unasked_replies": 0}
        self._ops: list[Any] = []
        self._wake: trio.Event | None = None
        self._known: dict[str, set[tuple[str, str]]] = {"queue": set(), "agent": set()}
        self._pending: dict[str, dict[str, Any]] = {"queue": {}, "agent": {}}
        self._routed: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, _Waiter] = {}
        self._ask_seq = 0
        self._prefix = f"gw{os.getpid()}x{id(self) & 0xFFFFFF:x}"
        self._idle_sends = trio.Event()
        self._idle_sends.set()
        self._inflight = 0
        self._running = False
        self._egress_wake = trio.Event()
        self._hot_until = 0.0
        #: after a send, poll at the busy rate this long
        self.hot_s = 0.05
        #: call id -> when the sweep first saw it without a caller channel
        self._orphans: dict[str, float] = {}
        self.orphan_after_s = 3.0
        self.orphans_hung_up = 0
        self._gone_waiters: dict[tuple[str, str], float] = {}
        self.waiters_removed = 0
        #: calls a restarted host rebuilt in ROUTING that were routed again here (Rule 6)
        self.rerouted = 0
        #: call id -> (tenant, agent id) of the agent talking on it (ClusterRuntimeView.state_of)
        self.call_agents: OrderedDict[str, tuple[str, str]] = OrderedDict()
        #: CTI events handed to the publisher, by name
        self.cti_names: dict[str, int] = {}
        #: Rule 6
        self.ledger: dict[str, _Ledger] = {}
        self._pids: dict[str, Any] = {}
        self._repairs: dict[str, float] = {}
        self.repair_after_s = 3.0
        self.recovered = {"cti": 0, "cdrs": 0}
        #: calls whose CDR / CALL_ENDED went out (Rule 6: a rebuilt phantom's second ones are dropped)
        self._cdr_done: OrderedDict[str, None] = OrderedDict()
        self._ended_done: OrderedDict[str, None] = OrderedDict()
        self.finished_memory = 200_000
        self.duplicates_dropped = {"cdrs": 0, "cti": 0}

    # ---------------------------------------------------------------- ingress (Rule 1, 2)

    def put(self, message: Any, tenant: str | None = None) -> None:
        """Queue a message for its shard (never blocks; the ingress task sends it in order);
        an agent's or queue's in ``tenant`` (Rule 8)."""
        if tenant is not None and tenant != "default":
            kind, actor_id = route(message)
            if kind in TENANT_SCOPED:
                self._ops.append(Envelope(kind, _key(kind, tenant, actor_id), message))
                self._kick()
                return
        tp = type(message)
        if tp is ChannelCreated and message.leg == "a":
            self.mirror.event(message)
            if message.call_id not in self._routed:
                self._routed[message.call_id] = None
                if len(self._routed) > 200_000:
                    self._routed.popitem(last=False)
                self._ledger_add(message)
                self.calls_created += 1
                self._ops.append(message)
                decision = self.router(message) if self.router is not None else None
                if decision is not None:
                    self._ops.append(decision)
                self._kick()
                return
        elif tp is Originate:
            self.calls_created += 1
        else:
            self.mirror.event(message)
            if tp is ChannelAnswered or tp is ChannelHangup:
                self._ledger_event(message)
        self._ops.append(message)
        self._kick()

    def _ledger_add(self, ev: ChannelCreated) -> None:
        try:
            shard = self.cluster.directory.owner("call", ev.call_id)
        except Exception:  # noqa: BLE001 - no cluster (unit tests): nothing to repair
            return
        self.ledger[ev.call_id] = _Ledger(ev, shard)
        if len(self.ledger) > 200_000:
            del self.ledger[next(iter(self.ledger))]

    def _ledger_event(self, ev: Any) -> None:
        entry = self.ledger.get(ev.call_id)
        if entry is None:
            return
        if type(ev) is ChannelAnswered:
            if ev.leg == "a":
                entry.answered_at = entry.answered_at or ev.at
            else:
                agent = self.mirror.channels.get((ev.call_id, ev.leg))
                if agent is not None and agent.agent_id:
                    entry.agent_id = agent.agent_id
        elif ev.leg == "a":
            entry.ended_at, entry.cause = ev.at, ev.cause

    def _ledger_output(self, cti: list[Any], cdrs: list[Any]) -> None:
        ledger = self.ledger
        for ev in cti:
            if ev.call_id and ev.name in ("CALL_CREATED", "CALL_ENDED"):
                entry = ledger.get(ev.call_id)
                if entry is not None:
                    entry.cti.add(ev.name)
                    if entry.cdr and "CALL_ENDED" in entry.cti:
                        del ledger[ev.call_id]
        for cdr in cdrs:
            entry = ledger.get(cdr.call_id)
            if entry is not None:
                entry.cdr = True
                if "CALL_ENDED" in entry.cti:
                    del ledger[cdr.call_id]

    def _first(self, seen: OrderedDict[str, None], call_id: str) -> bool:
        """True the first time ``call_id`` is seen here (bounded memory, oldest forgotten first)."""
        if call_id in seen:
            return False
        seen[call_id] = None
        if len(seen) > self.finished_memory:
            seen.popitem(last=False)
        return True

    def _track_agents(self, cti: list[Any]) -> None:
        """call id -> (tenant, agent) from CALL_ANSWERED / CALL_PICKED_UP until CALL_ENDED."""
        hints = self.call_agents
        for ev in cti:
            name = ev.name
            if name == "CALL_ENDED":
                hints.pop(ev.call_id, None)
            elif (name == "CALL_ANSWERED" or name == "CALL_PICKED_UP") and ev.call_id and ev.agent_id:
                hints[ev.call_id] = (ev.tenant, ev.agent_id)
                if len(hints) > 100_000:
                    hints.popitem(last=False)

    def _note_restarts(self, stats: dict[str, dict[str, Any]], now: float) -> None:
        for shard, st in stats.items():
            pid = st.get("pid")
            old = self._pids.get(shard)
            self._pids[shard] = pid
            if old is not None and pid != old:
                log.warning("shard host %s restarted (pid %s -> %s): repairing its calls in %.1f s",
                            shard, old, pid, self.repair_after_s)
                self._repairs[shard] = now + self.repair_after_s

    def _repair(self, now: float) -> None:
        """Rule 6, for the hosts whose restart is ``repair_after_s`` old."""
        due = [s for s, at in self._repairs.items() if at <= now]
        for shard in due:
            del self._repairs[shard]
            for call_id, entry in list(self.ledger.items()):
                if entry.shard != shard:
                    continue
                self._repair_call(call_id, entry, now)

    def _repair_call(self, call_id: str, entry: _Ledger, now: float) -> None:
        from engine.messages import Cdr, CtiEvent

        ev = entry.created
        base = {"recovered": True}
        if "CALL_CREATED" not in entry.cti:
            self.recovered["cti"] += 1
            self._guard(self.ports.cti.publish, CtiEvent(
                name="CALL_CREATED", tenant=ev.tenant, at=ev.at, call_id=call_id,
                data={"caller_id": ev.caller_id, "destination": ev.destination, "direction": ev.direction, **base}))
            entry.cti.add("CALL_CREATED")
        call = self.view["call"].get(call_id)
        caller_up = (call_id, "a") in self.mirror.channels
        if call is not None and caller_up:
            self._route_rebuilt(call, ev)
        if call is not None or caller_up or entry.ended_at is None:
            return  # the rebuilt call will report its own end
        if "CALL_ENDED" not in entry.cti and self._first(self._ended_done, call_id):
            self.recovered["cti"] += 1
            self._guard(self.ports.cti.publish, CtiEvent(
                name="CALL_ENDED", tenant=ev.tenant, at=entry.ended_at, call_id=call_id,
                data={"cause": entry.cause, **base}))
        if not entry.cdr and self._first(self._cdr_done, call_id):
            self.recovered["cdrs"] += 1
            answered = entry.agent_id != ""
            self._guard(self.ports.cdr.write, Cdr(
                call_id=call_id, tenant=ev.tenant, direction=ev.direction, caller_id=ev.caller_id,
                destination=ev.destination, created_at=ev.at,
                answered_at=entry.answered_at if answered else None, ended_at=entry.ended_at,
                disposition="answered" if answered else "abandoned", hangup_cause=entry.cause or "NORMAL_CLEARING",
                agent_id=entry.agent_id, node=f"recovered:{ev.node}"))
        self.ledger.pop(call_id, None)

    def _route_rebuilt(self, call: Any, created: ChannelCreated) -> None:
        """Rule 6: a host rebuilds a caller with no live agent leg in ROUTING and routes it with
        its own router, which a host of ``callengine run`` does not have (the DID router and its
        configuration live here). Such a call is routed again from its ``ChannelCreated``: a
        caller still waiting in its queue rejoins it and keeps its place (``QueueCall`` from a
        caller the queue holds); one that was in an IVR flow starts it again."""
        from engine.fsm.call import CallState

        if call.state is not CallState.ROUTING or self.router is None:
            return
        decision = self.router(created)
        if decision is None:
            return
        log.warning("call %s: rebuilt by a restarted shard host and not routed; routing it again", call.call_id)
        self.rerouted += 1
        self.put(decision)

    def deliver_nowait(self, message: Any) -> None:
        """The ESL links' sink interface."""
        self.put(message)

    async def deliver(self, message: Any) -> None:
        self.put(message)
        await trio.lowlevel.checkpoint()

    def add_entities(self, queues: Iterable[queue_fsm.QueueConfig] = (),
                     agents: Iterable[tuple[str, str]] = ()) -> None:
        """Create queues and agents on their shards (in order with the messages). ``ActorExists``
        when one of them is known already (``NodeConfig`` relies on it)."""
        queues, agents = list(queues), list(agents)
        for q in queues:
            if (q.tenant, q.queue_id) in self._known["queue"]:
                raise ActorExists("queue", q.queue_id)
        for agent_id, tenant in agents:
            if (tenant, agent_id) in self._known["agent"]:
                raise ActorExists("agent", agent_id)
        for q in queues:
            self._known["queue"].add((q.tenant, q.queue_id))
            key = _key("queue", q.tenant, q.queue_id)
            self._pending["queue"][key] = self.view["queue"][key] = queue_fsm.new_queue(q)
        for agent_id, tenant in agents:
            self._known["agent"].add((tenant, agent_id))
            key = _key("agent", tenant, agent_id)
            self._pending["agent"][key] = self.view["agent"][key] = agent_fsm.new_agent(agent_id, tenant)
        self._ops.append(_AddEntities(queues, agents))
        self._kick()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _send_ops(self, ops: list[Any]) -> int:
        """In a worker thread: messages in batches, entity creations where they stand."""
        cluster = self.cluster
        run: list[Any] = []
        batches = 0
        for op in ops:
            if type(op) is _AddEntities:
                if run:
                    self._send(run)
                    batches += 1
                    run = []
                cluster.add_entities(op.queues, op.agents)
            else:
                run.append(op)
                if len(run) >= self.max_batch:
                    self._send(run)
                    batches += 1
                    run = []
        if run:
            self._send(run)
            batches += 1
        return batches

    def _send(self, run: list[Any]) -> None:
        self.cluster.send(run)

    async def _ingress(self) -> None:
        while True:
            if not self._ops:
                self._wake = trio.Event()
                await self._wake.wait()
            ops, self._ops = self._ops, []
            self._idle_sends = trio.Event()
            try:
                self.batches += await trio.to_thread.run_sync(self._send_ops, ops)
                self.sent += len(ops)
                # the shards are working on it: poll for the effects at the busy rate now
                self._hot_until = time.monotonic() + self.hot_s
                self._egress_wake.set()
            except Exception as exc:  # noqa: BLE001 - Ray unavailable: keep the ops, retry
                log.warning("sending %d messages to the shards failed (%r); retrying", len(ops), exc)
                self._ops[:0] = ops
                await trio.sleep(0.5)
            finally:
                if not self._ops:
                    self._idle_sends.set()

    # ---------------------------------------------------------------- asks (Rule 4)

    async def ask(self, command: Any, timeout: float = 5.0, tenant: str | None = None) -> Reply:
        if not hasattr(command, "request_id"):
            raise TypeError(f"ask needs a command with a request_id, not {type(command).__name__}")
        original = command.request_id
        self._ask_seq += 1
        rid = f"{self._prefix}-{self._ask_seq}"
        waiter = self._waiters[rid] = _Waiter()
        try:
            self.put(msgspec.structs.replace(command, request_id=rid), tenant)
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            self._waiters.pop(rid, None)
        if waiter.reply is None:
            kind, actor_id = route(command)
            raise AskTimeout(kind, actor_id, rid, timeout)
        return msgspec.structs.replace(waiter.reply, request_id=original or rid)

    # ---------------------------------------------------------------- egress (Rule 3)

    def _drain_hosts(self) -> list[tuple[list[Any], list[Any], list[Any], list[Any]]]:
        import ray

        from engine.cluster.host import decode_all_outputs

        hosts = list(self.cluster.hosts.values())
        return [decode_all_outputs(d) for d in ray.get([h.drain_outputs.remote() for h in hosts], timeout=60)]

    def _dispatch(self, parts: list[tuple[list[Any], list[Any], list[Any], list[Any]]]) -> int:
        ports = self.ports
        n = 0
        for media, cdrs, cti, replies in parts:
            self._ledger_output(cti, cdrs)
            self._track_agents(cti)
            # what the hosts handed over is gone from them: a port that raises must not lose the rest
            names = self.cti_names
            for ev in cti:
                if ev.name == "CALL_ENDED" and ev.call_id and not self._first(self._ended_done, ev.call_id):
                    self.duplicates_dropped["cti"] += 1
                    continue
                names[ev.name] = names.get(ev.name, 0) + 1
                self._guard(ports.cti.publish, ev)
            for cmd in media:
                self.mirror.command(cmd)
                self._guard(ports.media.send, cmd)
            for cdr in cdrs:
                if not self._first(self._cdr_done, cdr.call_id):
                    self.duplicates_dropped["cdrs"] += 1
                    log.warning("dropped a second CDR of call %s (a call rebuilt after it ended)", cdr.call_id)
                    continue
                self._guard(ports.cdr.write, cdr)
            for reply in replies:
                waiter = self._waiters.get(reply.request_id)
                if waiter is not None:
                    waiter.reply = reply
                    waiter.event.set()
                else:
                    self.counts["unasked_replies"] += 1
                    self._guard(ports.replies.reply, reply)
            self.counts["media"] += len(media)
            self.counts["cdrs"] += len(cdrs)
            self.counts["cti"] += len(cti)
            self.counts["replies"] += len(replies)
            n += len(media) + len(cdrs) + len(cti) + len(replies)
        return n

    def _guard(self, fn: Callable[[Any], Any], item: Any) -> None:
        try:
            fn(item)
        except Exception:  # noqa: BLE001 - counted and logged; the other outputs still go out
            self.counts["port_errors"] = self.counts.get("port_errors", 0) + 1
            log.exception("gateway: %s failed for %s", getattr(fn, "__qualname__", fn), type(item).__name__)

    async def drain_once(self) -> int:
        parts = await trio.to_thread.run_sync(self._drain_hosts)
        self.drains += 1
        return self._dispatch(parts)

    async def _egress(self) -> None:
        """Poll at ``busy_poll_s`` while outputs come or for ``hot_s`` after a send, else back off
        to ``idle_poll_s``; a send wakes it at once."""
        delay = self.busy_poll_s
        while True:
            self._egress_wake = trio.Event()
            try:
                n = await self.drain_once()
            except Exception as exc:  # noqa: BLE001 - a host restarting: Ray retries, we poll again
                log.warning("draining the shards failed (%r); retrying", exc)
                n = 0
                await trio.sleep(0.2)
            hot = n or self._ops or time.monotonic() < self._hot_until
            delay = self.busy_poll_s if hot else min(self.idle_poll_s, delay * 2)
            with trio.move_on_after(delay):
                await self._egress_wake.wait()
                await trio.sleep(self.busy_poll_s / 4)  # let the shards apply the batch

    # ---------------------------------------------------------------- state view (Rule 4)

    def _fetch_states(self) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:
        import ray

        hosts = list(self.cluster.hosts.items())
        kinds = ("call", "agent", "queue")
        refs = [h.states.remote(kind) for kind in kinds for _, h in hosts]
        stat_refs = [h.statistics.remote() for _, h in hosts]
        results = ray.get(refs + stat_refs, timeout=30)
        out: dict[str, list[Any]] = {k: [] for k in kinds}
        for i, kind in enumerate(kinds):
            for part in results[i * len(hosts):(i + 1) * len(hosts)]:
                out[kind] += part
        stats = {name: st for (name, _), st in zip(hosts, results[len(refs):], strict=True)}
        return out, stats

    def _sweep(self, now: float) -> None:
        """Rule 5: hang up calls whose caller channel is gone (rebuilt from a stale channel list)."""
        from engine.fsm.call import CallState

        channels = self.mirror.channels
        pending = {k[0] for k in self.mirror.leg_vars} | {k[0] for k in channels}
        seen: dict[str, float] = {}
        for call in self.view["call"].values():
            cid = call.call_id
            if call.state is CallState.ENDED or not call.node or (cid, "a") in channels:
                continue
            if cid in pending:
                continue  # an originate of it in flight, or some leg of it still up
            first = seen[cid] = self._orphans.get(cid, now)
            if now - first >= self.orphan_after_s:
                log.warning("call %s: the shards hold it but its caller channel is gone; hanging it up", cid)
                self.orphans_hung_up += 1
                self.put(ChannelHangup(call_id=cid, leg="a", at=now, node=call.node, cause="NORMAL_CLEARING"))
                del seen[cid]
        self._orphans = seen
        calls = self.view["call"]
        gone: dict[tuple[str, str], float] = {}
        for q in self.view["queue"].values():
            for w in q.waiting:
                cid = w.call_id
                if cid in calls or cid in pending:
                    continue
                key = (q.queue_id, cid)
                first = gone[key] = self._gone_waiters.get(key, now)
                if now - first >= self.orphan_after_s:
                    log.warning("queue %s: caller %s is gone (no call, no channel); removing it", q.queue_id, cid)
                    self.waiters_removed += 1
                    self.put(CallerLeft(queue_id=q.queue_id, call_id=cid, at=now), q.config.tenant)
                    del gone[key]
        self._gone_waiters = gone

    def _install(self, states: dict[str, list[Any]]) -> None:
        calls = {c.call_id: c for c in states["call"]}
        agents = {_key("agent", a.tenant, a.agent_id): a for a in states["agent"]}
        queues = {_key("queue", q.config.tenant, q.queue_id): q for q in states["queue"]}
        for kind, table in (("agent", agents), ("queue", queues)):
            pending = self._pending[kind]
            for key in [k for k in pending if k in table]:
                del pending[key]
            for key, state in pending.items():
                table.setdefault(key, state)
        self.view = {"call": calls, "agent": agents, "queue": queues}

    async def refresh(self) -> None:
        states, stats = await trio.to_thread.run_sync(self._fetch_states)
        self._install(states)
        self.shard_statistics = stats
        now = time.time()
        self._note_restarts(stats, now)
        if self.sweep_orphans:
            self._sweep(now)
        self._repair(now)

    async def _refresher(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a host restarting
                log.warning("refreshing the state view failed (%r)", exc)
            if self.mirror.path:
                try:
                    await trio.to_thread.run_sync(self.mirror.write)
                except OSError as exc:
                    log.warning("writing the channel mirror failed (%r)", exc)
            await trio.sleep(self.refresh_s)

    async def _mirror_writer(self) -> None:
        while True:
            await trio.sleep(0.05)
            if self.mirror.dirty:
                await trio.to_thread.run_sync(self.mirror.write)

    # ---------------------------------------------------------------- running

    async def run(self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ingress)
                nursery.start_soon(self._egress)
                if self.mirror.path:
                    self.mirror.dirty = True
                    self.mirror.write()
                    nursery.start_soon(self._mirror_writer)
                await self.refresh()
                nursery.start_soon(self._refresher)
                task_status.started(self)
        finally:
            self._running = False

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put so far was handed to the cluster."""
        with trio.move_on_after(timeout):
            while self._ops or not self._idle_sends.is_set():
                await self._idle_sends.wait()
                await trio.lowlevel.checkpoint()
            return True
        return False

    async def drain(self, timeout: float = 10.0, quiet_passes: int = 2) -> int:
        """Rule 7: flush the ingress, then drain until ``quiet_passes`` passes bring nothing."""
        await self.flush(timeout)
        total = 0
        quiet = 0
        with trio.move_on_after(timeout):
            while quiet < quiet_passes:
                n = await self.drain_once()
                total += n
                quiet = 0 if n else quiet + 1
                await trio.sleep(0.02)
        return total

    def statistics(self) -> dict[str, Any]:
        return {"sent": self.sent, "batches": self.batches, "drains": self.drains, **self.counts,
                "calls_created": self.calls_created, "asks_waiting": len(self._waiters),
                "channels": len(self.mirror.channels), "mirror_writes": self.mirror.writes,
                "orphans_hung_up": self.orphans_hung_up, "waiters_removed": self.waiters_removed,
                "rerouted": self.rerouted,
                "ledger": len(self.ledger), "recovered_cti": self.recovered["cti"],
                "recovered_cdrs": self.recovered["cdrs"], "duplicate_cdrs_dropped": self.duplicates_dropped["cdrs"],
                "duplicate_call_ended_dropped": self.duplicates_dropped["cti"],
                "cti_names": dict(sorted(self.cti_names.items()))}


@dataclass
class _AddEntities:
    queues: list[queue_fsm.QueueConfig]
    agents: list[tuple[str, str]]


def channel_file_for(state_dir: pathlib.Path) -> pathlib.Path:
    return state_dir / "channels.msgpack"
