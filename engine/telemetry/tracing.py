"""One trace per call, built from the effects the actors already perform (see the package rules).

Span tree of a call (names are stable; attributes are prefixed ``callengine.``)::

    call                       CALL_CREATED .. CDR written (kind SERVER)
     |- flow <flow id>         CALL_IN_FLOW .. CALL_FLOW_ENDED (outcome)
     |   `- media.<Command>    each media command sent while in the flow
     |- queue.wait <queue>     QUEUE_ENTERED .. QUEUE_LEFT (outcome, wait_s)
     |   `- agent.offer        the agent leg's originate .. answered / missed / lost / superseded
     |        |                routing: strategy, required skills, candidates with their scores,
     |        |                the chosen agent, why every other member was skipped
     |        `- media.<Command>
     `- media.<Command>        the other media commands (answer, bridge, hangup, ...)

Rules
1. Wrappers never raise into the actor runtime: a tracing error is counted (``errors``) and dropped.
2. Per-call state is removed when the CDR is written, and bounded (``max_calls``; the oldest call's
   spans are ended and dropped beyond it).
3. Timestamps: event times are epoch seconds when the node runs on ``EpochClock`` (``engine.run``);
   a smaller value is taken as trio time and shifted to epoch.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.actors.ports import Ports
from engine.fsm import queue as queue_fsm
from engine.messages import Cdr, CtiEvent, MediaCommand, MediaOriginate
from engine.tracecontext import derived_trace_id, parse_traceparent

__all__ = ["CallIdGenerator", "CallTracer", "explain_routing"]

_PROP = TraceContextTextMapPropagator()


class CallIdGenerator(IdGenerator):
    """Random ids, except that the next root span may be given its trace id (the call's)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.next_trace_id = 0

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        tid, self.next_trace_id = self.next_trace_id, 0
        return tid or self._random.generate_trace_id()


def call_trace_id(tenant: str, call_id: str) -> int:
    """The trace id the NATS publisher puts in this call's ``traceparent`` headers."""
    return int(derived_trace_id(tenant, call_id), 16)


# ------------------------------------------------------------------------------ routing decision


def explain_routing(queue: Any, call_id: str, chosen: str, now: float, limit: int = 40) -> dict[str, Any]:
    """Why ``chosen`` was offered ``call_id``: reconstructed from the queue actor's state with the
    queue machine's own functions (``required_skills``, ``_qualifies``, ``_rank_key``).

    Returns span attributes: strategy, required skills, candidates (``agent=score``, best first,
    the chosen one included), skipped (``agent: reason``) and the reason the chosen one won.
    """
    cfg = queue.config
    waiter = next((w for w in queue.waiting if w.call_id == call_id), None)
    required = queue_fsm.required_skills(cfg, waiter, now) if waiter is not None else {}
    busy = {o.agent_id: o.call_id for o in queue.offers.values()}
    key = queue_fsm._rank_key(cfg.strategy, required, getattr(queue, "rr_cursor", ""))
    candidates: list[Any] = []
    skipped: list[str] = []
    for member in sorted(queue.members.values(), key=lambda m: m.agent_id):
        if member.agent_id == chosen:
            candidates.append(member)
            continue
        if not member.available:
            skipped.append(f"{member.agent_id}: not available")
        elif member.agent_id in busy:
            skipped.append(f"{member.agent_id}: reserved for call {busy[member.agent_id]}")
        elif required and not queue_fsm._qualifies(member, required):
            lacking = [f"{s}<{lvl}" for s, lvl in sorted(required.items())
                       if member.skills.get(s, -1) < lvl]
            skipped.append(f"{member.agent_id}: lacks skills {','.join(lacking)}")
        else:
            candidates.append(member)
    candidates.sort(key=key)
    scored = [f"{m.agent_id}={_score(cfg.strategy, m, required)}" for m in candidates]
    for m in candidates:
        if m.agent_id != chosen:
            skipped.append(f"{m.agent_id}: ranked below {chosen} ({_score(cfg.strategy, m, required)})")
    best = candidates[0].agent_id if candidates else ""
    if cfg.strategy == "ring-all":
        why = "ring-all: every free qualified agent is rung"
    elif best == chosen:
        why = f"best {_score_name(cfg.strategy)} among {len(candidates)} free qualified agents"
    else:
        why = "chosen before this snapshot of the queue (state moved on since the offer)"
    return {
        "callengine.routing.strategy": cfg.strategy,
        "callengine.routing.required_skills": json.dumps(required, sort_keys=True),
        "callengine.routing.members": len(queue.members),
        "callengine.routing.candidates": scored[:limit],
        "callengine.routing.chosen": chosen,
        "callengine.routing.reason": why,
        "callengine.routing.skipped": skipped[:limit],
    }


def _score_name(strategy: str) -> str:
    return {"skills-based": "skill sum (then longest idle)", "least-talk-time": "least talk time",
            "fewest-calls": "fewest calls", "round-robin": "round-robin position"}.get(strategy, "longest idle")


def _score(strategy: str, m: Any, required: dict[str, int]) -> str:
    if strategy == "skills-based":
        return f"skills:{sum(m.skills.get(s, 0) for s in required)},idle_since:{m.idle_since:.3f}"
    if strategy == "least-talk-time":
        return f"talk_s:{m.talk_time:.1f}"
    if strategy == "fewest-calls":
        return f"calls:{m.calls_handled}"
    if strategy == "round-robin":
        return "rr"
    return f"idle_since:{m.idle_since:.3f}"


# ------------------------------------------------------------------------------ tracer


class _Call:
    __slots__ = ("root", "ctx", "flow", "queue", "offer", "offer_agent", "tenant")

    def __init__(self, root: Any, tenant: str) -> None:
        self.root = root
        self.ctx = trace.set_span_in_context(root)
        self.tenant = tenant
        self.flow: Any = None
        self.queue: Any = None
        self.offer: Any = None
        self.offer_agent = ""

    def parent_ctx(self) -> Any:
        for span in (self.offer, self.flow, self.queue):
            if span is not None:
                return trace.set_span_in_context(span)
        return self.ctx


class CallTracer:
    """Builds call traces from CTI events, media commands and CDRs (wrap with ``wrap_ports``)."""

    def __init__(self, tracer: Any, ids: CallIdGenerator | None = None, *,
                 queue_state: Callable[[str], Any] | None = None, max_calls: int = 200_000,
                 metrics: Any = None) -> None:
        self.tracer = tracer
        self.ids = ids
        self.queue_state = queue_state
        self.max_calls = max_calls
        self.metrics = metrics
        self.calls: OrderedDict[str, _Call] = OrderedDict()
        self.errors = 0
        self.traced = 0
        self._offset: float | None = None

    # ---------------------------------------------------------------- time

    def _ns(self, at: float) -> int:
        if at < 1e9:  # trio time, not epoch
            if self._offset is None:
                import trio

                try:
                    self._offset = time.time() - trio.current_time()
                except RuntimeError:
                    self._offset = 0.0
            at += self._offset
        return int(at * 1e9)

    # ---------------------------------------------------------------- ports

    def wrap_ports(self, ports: Ports) -> Ports:
        return Ports(_TracedMedia(self, ports.media), _TracedCti(self, ports.cti),
                     _TracedCdr(self, ports.cdr), ports.replies)

    def wrap_sink(self, sink: Any) -> Any:
        """The media adapter's sink, unchanged: an incoming ``traceparent`` channel variable rides
        on the call's CALL_CREATED event (engine.tracecontext), which ``on_cti`` sees."""
        return sink

    # ---------------------------------------------------------------- handlers

    def _start_root(self, ev: CtiEvent) -> _Call:
        attrs: dict[str, Any] = {"callengine.call_id": ev.call_id, "callengine.tenant": ev.tenant}
        for k, v in ev.data.items():
            attrs[f"callengine.{k}"] = v
        incoming = str(ev.data.get("traceparent", ""))
        parent = Context()
        if incoming and parse_traceparent(incoming) is not None:
            # resume the caller's trace: same trace id, the incoming span is the root's parent
            parent = _PROP.extract({"traceparent": incoming})
            attrs["callengine.parent_traceparent"] = incoming
        elif self.ids is not None:
            self.ids.next_trace_id = call_trace_id(ev.tenant, ev.call_id)
        root = self.tracer.start_span("call", context=parent,
                                      kind=SpanKind.SERVER, start_time=self._ns(ev.at),
                                      attributes=attrs)
        if self.ids is not None:
            self.ids.next_trace_id = 0
        call = _Call(root, ev.tenant)
        self.calls[ev.call_id] = call
        self.traced += 1
        while len(self.calls) > self.max_calls:
            _, old = self.calls.popitem(last=False)
            self._close(old, time.time_ns(), "evicted")
        return call

    def on_cti(self, ev: CtiEvent) -> None:
        name = ev.name
        if not ev.call_id:
            return
        call = self.calls.get(ev.call_id)
        if name == "CALL_CREATED":
            if call is None:
                self._start_root(ev)
            return
        if call is None:
            return
        ns = self._ns(ev.at)
        data = ev.data
        if name == "CALL_IN_FLOW":
            call.flow = self.tracer.start_span(f"flow {data.get('flow_id', '')}", context=call.ctx,
                                               start_time=ns, attributes={"callengine.flow_id": str(data.get("flow_id", ""))})
        elif name == "CALL_FLOW_ENDED":
            if call.flow is not None:
                _attrs(call.flow, data)
                call.flow.end(end_time=ns)
                call.flow = None
        elif name == "QUEUE_ENTERED":
            if call.queue is not None:
                call.queue.end(end_time=ns)
            call.queue = self.tracer.start_span(f"queue.wait {ev.queue_id}", context=call.ctx, start_time=ns,
                                                attributes={"callengine.queue_id": ev.queue_id})
            _attrs(call.queue, data)
        elif name == "QUEUE_LEFT":
            self._end_offer(call, ns, str(data.get("outcome", "left")))
            if call.queue is not None:
                _attrs(call.queue, data)
                call.queue.end(end_time=ns)
                call.queue = None
            if self.metrics is not None:
                self.metrics.queue_left(ev.queue_id, str(data.get("outcome", "")), float(data.get("wait_s", 0.0) or 0.0))
        elif name == "CALL_RINGING":
            if ev.agent_id:
                if call.offer is None or call.offer_agent != ev.agent_id:
                    self._start_offer(call, ev.call_id, ev.agent_id, ev.queue_id, ev.at, ns)
                call.offer.add_event("ringing", {"callengine.target": str(data.get("target", ""))}, timestamp=ns)
            else:
                call.root.add_event("ringing", {"callengine.target": str(data.get("target", ""))}, timestamp=ns)
        elif name == "CALL_ANSWERED":
            if call.offer is not None and call.offer_agent == ev.agent_id:
                self._end_offer(call, ns, "answered")
            if ev.agent_id:
                call.root.set_attribute("callengine.agent_id", ev.agent_id)
            call.root.add_event("answered", {"callengine.agent_id": ev.agent_id}, timestamp=ns)
        elif name in ("AGENT_OFFER_MISSED", "QUEUE_OFFER_LOST", "AGENT_CALL_LOST"):
            if call.offer is not None and (not ev.agent_id or call.offer_agent == ev.agent_id):
                self._end_offer(call, ns, name.lower(), data.get("reason"))
        elif name == "CALL_ENDED":
            _attrs(call.root, data)
            call.root.add_event("ended", timestamp=ns)
            for span in (call.offer, call.flow, call.queue):
                if span is not None:
                    span.end(end_time=ns)
            call.offer = call.flow = call.queue = None
        else:
            call.root.add_event(name.lower(), _clean(data), timestamp=ns)

    def _start_offer(self, call: _Call, call_id: str, agent_id: str, queue_id: str, at: float, ns: int) -> None:
        self._end_offer(call, ns, "superseded")
        attrs: dict[str, Any] = {"callengine.agent_id": agent_id, "callengine.queue_id": queue_id}
        if self.queue_state is not None and queue_id:
            try:
                q = self.queue_state(queue_id)
                if q is not None:
                    attrs.update(explain_routing(q, call_id, agent_id, at))
            except Exception:  # noqa: BLE001 - never break a call for a span attribute
                self.errors += 1
        parent = trace.set_span_in_context(call.queue) if call.queue is not None else call.ctx
        call.offer = self.tracer.start_span("agent.offer", context=parent, start_time=ns, attributes=attrs)
        call.offer_agent = agent_id

    def _end_offer(self, call: _Call, ns: int, outcome: str, reason: Any = None) -> None:
        if call.offer is None:
            return
        call.offer.set_attribute("callengine.offer.outcome", outcome)
        if reason:
            call.offer.set_attribute("callengine.offer.reason", str(reason))
        call.offer.end(end_time=ns)
        call.offer = None
        call.offer_agent = ""

    def on_media(self, cmd: MediaCommand) -> MediaCommand:
        call = self.calls.get(cmd.call_id)
        if call is None:
            return cmd
        now = time.time_ns()
        if type(cmd) is MediaOriginate:
            agent = cmd.variables.get("callengine_agent", "")
            if agent and cmd.variables.get("callengine_role") == "agent" and call.offer_agent != agent:
                self._start_offer(call, cmd.call_id, agent, cmd.variables.get("callengine_queue", ""),
                                  now / 1e9, now)
        name = type(cmd).__name__
        span = self.tracer.start_span(f"media.{name}", context=call.parent_ctx(), kind=SpanKind.CLIENT,
                                      start_time=now, attributes={"callengine.leg": cmd.leg})
        if type(cmd) is MediaOriginate:
            carrier: dict[str, str] = {}
            _PROP.inject(carrier, trace.set_span_in_context(span))
            span.set_attribute("callengine.destination", cmd.destination)
            cmd = msgspec.structs.replace(cmd, variables={**cmd.variables, **carrier})
        span.end(end_time=now)
        return cmd

    def on_cdr(self, cdr: Cdr) -> None:
        if self.metrics is not None:
            self.metrics.call_ended(cdr)
        call = self.calls.pop(cdr.call_id, None)
        if call is None:
            return
        root = call.root
        root.set_attributes({"callengine.disposition": cdr.disposition, "callengine.hangup_cause": cdr.hangup_cause,
                             "callengine.queue_id": cdr.queue_id, "callengine.agent_id": cdr.agent_id,
                             "callengine.wait_s": cdr.wait_s, "callengine.talk_s": cdr.talk_s})
        if cdr.disposition == "failed":
            root.set_status(Status(StatusCode.ERROR, cdr.hangup_cause))
        root.add_event("cdr", timestamp=time.time_ns())
        self._close(call, max(self._ns(cdr.ended_at), time.time_ns()), "")

    def _close(self, call: _Call, ns: int, why: str) -> None:
        for span in (call.offer, call.flow, call.queue):
            if span is not None:
                span.end(end_time=ns)
        if why:
            call.root.set_attribute("callengine.trace_incomplete", why)
        call.root.end(end_time=ns)

    def end_all(self) -> None:
        """Shutdown: end the spans of calls still open (marked incomplete)."""
        now = time.time_ns()
        while self.calls:
            _, call = self.calls.popitem(last=False)
            self._close(call, now, "shutdown")


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {f"callengine.{k}": v for k, v in data.items() if v is not None and isinstance(v, (str, int, float, bool))}


def _attrs(span: Any, data: dict[str, Any]) -> None:
    span.set_attributes(_clean(data))


class _TracedMedia:
    __slots__ = ("tracer", "port")

    def __init__(self, tracer: CallTracer, port: Any) -> None:
        self.tracer, self.port = tracer, port

    def send(self, command: MediaCommand) -> None:
        try:
            command = self.tracer.on_media(command)
        except Exception:  # noqa: BLE001
            self.tracer.errors += 1
        self.port.send(command)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.port, name)


class _TracedCti:
    __slots__ = ("tracer", "port")

    def __init__(self, tracer: CallTracer, port: Any) -> None:
        self.tracer, self.port = tracer, port

    def publish(self, event: CtiEvent) -> None:
        self.port.publish(event)
        try:
            self.tracer.on_cti(event)
        except Exception:  # noqa: BLE001
            self.tracer.errors += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.port, name)


class _TracedCdr:
    __slots__ = ("tracer", "port")

    def __init__(self, tracer: CallTracer, port: Any) -> None:
        self.tracer, self.port = tracer, port

    def write(self, cdr: Cdr) -> None:
        self.port.write(cdr)
        try:
            self.tracer.on_cdr(cdr)
        except Exception:  # noqa: BLE001
            self.tracer.errors += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.port, name)
