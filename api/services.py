"""The services, defined once: one table of methods -> (request type, response type, handler, roles).

Rules
1. ``METHODS`` is the only place that says which methods exist, what they take and return, and
   which roles may call them. Transports look methods up here (``callengine.v1.<Service>/<Method>``).
2. RBAC has two layers: the role gate in the table (checked by the dispatcher before the body is
   decoded), then object checks in the handler: an *agent* controls only its own calls (calls it
   is connected to or originated) and its own state; a *supervisor* sees and controls its tenant;
   an *admin* also manages configuration.
3. Tenant isolation: every entity (call, agent, queue, config record) is looked up and its tenant
   compared with the caller's; an entity of another tenant is NOT_FOUND (its existence is not
   revealed). Events are delivered per tenant (``EventHub``) and replayed with a tenant filter.
4. Commands go to the engine through ``Node.ask`` and come back as the machine's ``Reply``: its
   gRPC status is the API's (FAILED_PRECONDITION for holding a call that is not active, ...).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from api import types as t
from api.errors import ApiError
from api.store import RECORD_TYPES, AgentRecord, Extension, Flow, QueueRecord
from engine import messages as m
from engine.tracecontext import parse_traceparent

if TYPE_CHECKING:
    from api.dispatch import Context

__all__ = ["Method", "METHODS", "SERVICES", "PACKAGE", "method_named"]

PACKAGE = "callengine.v1"
ALL = frozenset({"admin", "supervisor", "agent"})
STAFF = frozenset({"admin", "supervisor"})
ADMIN = frozenset({"admin"})

Handler = Callable[["Context", Any], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    request: type
    response: type
    handler: Handler | None
    roles: frozenset[str]
    #: every call is audited (admin actions)
    audited: bool = False
    #: server-streaming (Events.Watch): handled by the transports' streaming path
    streaming: bool = False
    doc: str = ""
    #: top-level request fields masked in the audit log (secrets)
    redact: tuple[str, ...] = ()
    decoder: msgspec.json.Decoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.request))

    @property
    def full_name(self) -> str:
        return f"{PACKAGE}.{self.service}/{self.name}"


# --------------------------------------------------------------------------------------------
# helpers: look entities up with tenant and ownership checks
# --------------------------------------------------------------------------------------------


def _call(ctx: Context, call_id: str) -> Any:
    call = ctx.node.runtime.state_of("call", call_id)
    p = ctx.principal
    if call is None or call.tenant != p.tenant:
        raise ApiError("NOT_FOUND", f"call {call_id} not found")
    if not p.sees_tenant and not ctx.api.owns_call(p.agent_id, call):
        raise ApiError("PERMISSION_DENIED", f"call {call_id} is not yours")
    return call


def _agent_id(ctx: Context, requested: str) -> str:
    p = ctx.principal
    agent_id = requested or p.agent_id
    if not p.sees_tenant and agent_id != p.agent_id:
        raise ApiError("PERMISSION_DENIED", "an agent may act only on itself")
    return agent_id


def _agent(ctx: Context, agent_id: str) -> Any:
    tenant = ctx.principal.tenant
    state = ctx.node.state_of("agent", agent_id, tenant)
    if state is None:
        record = ctx.api.store_get_nowait(tenant, "agent", agent_id)
        if record is not None and not ctx.api.hosts(tenant, "agent", agent_id):
            ctx.node.add_agent(agent_id, tenant)
            state = ctx.node.state_of("agent", agent_id, tenant)
    if state is None or state.tenant != tenant:
        raise ApiError("NOT_FOUND", f"agent {agent_id} not found")
    return state


def _queue(ctx: Context, queue_id: str) -> Any:
    tenant = ctx.principal.tenant
    state = ctx.node.state_of("queue", queue_id, tenant)
    if state is None:
        record = ctx.api.store_get_nowait(tenant, "queue", queue_id)
        if record is not None and not ctx.api.hosts(tenant, "queue", queue_id):
            ctx.api.provision_queue(tenant, record)
            state = ctx.node.state_of("queue", queue_id, tenant)
    if state is None or state.config.tenant != tenant:
        raise ApiError("NOT_FOUND", f"queue {queue_id} not found")
    return state


async def _ask(ctx: Context, command: Any) -> m.Reply:
    # agents and queues are addressed in the caller's tenant (calls are unique by UUID)
    reply = await ctx.api.ask(command, ctx.principal.tenant)
    if not reply.ok:
        raise ApiError(reply.code, reply.message or f"{type(command).__name__} refused")
    return reply


def _now(ctx: Context) -> float:
    return ctx.node.runtime.clock()


# --------------------------------------------------------------------------------------------
# CallControl
# --------------------------------------------------------------------------------------------


class OutboundRefused(ApiError):
    """A click-to-call or blind transfer to an outside number the tenant's outbound routing refuses
    (``engine.routing.outbound.plan``); ``reason`` is the plan's (``no_route``, ``blocked``,
    ``all_trunks_full``), and the message starts with it."""

    CODE = "UNKNOWN"
    reason = ""

    def __init__(self, number: str, detail: str) -> None:
        super().__init__(self.CODE, f"{self.reason}: {detail} (number {number!r})")
        self.number = number


class NoOutboundRoute(OutboundRefused):
    """No outbound route takes the number (and it is no internal extension)."""

    CODE, reason = "FAILED_PRECONDITION", "no_route"


class OutboundBlocked(OutboundRefused):
    """Routes take the number, but the caller's class of service allows none of them."""

    CODE, reason = "PERMISSION_DENIED", "blocked"


class AllTrunksBusy(OutboundRefused):
    """Routes take the number, but each of their trunks is disabled or at its limit."""

    CODE, reason = "RESOURCE_EXHAUSTED", "all_trunks_full"


class OutboundPlanner:
    """How the API dials an outside number (click-to-call's ``to``, a blind transfer's ``target``):
    the tenant's outbound routing (``configs``: tenant -> ``OutboundConfig``, read at each request,
    so a live change applies) and trunk usage (``ledger``: ``TrunkLedger``), as the node router
    plans an outside number a phone dials. ``callengine run`` sets one as ``Api.outbound``.

    Order (as the node router): an emergency number is always planned; a number ``is_internal``
    says is an extension of the tenant is dialled as before (``user/<n>``); otherwise the plan
    decides: its trunks, or a typed refusal (:class:`NoOutboundRoute`, :class:`OutboundBlocked`,
    :class:`AllTrunksBusy`). A tenant without outbound routing, and a target that is not a phone
    number at all (``InvalidNumber``), are dialled as before."""

    def __init__(self, configs: Any, ledger: Any,
                 is_internal: Callable[[str, str], bool] = lambda tenant, number: False) -> None:
        self.configs = configs
        self.ledger = ledger
        self.is_internal = is_internal

    def trunks(self, tenant: str, number: str, caller_id: str) -> tuple[m.TrunkDial, ...]:
        from engine.routing.outbound import AllTrunksFull, Blocked, DialPlan, NoRoute, plan

        config = self.configs.get(tenant)
        if config is None:
            return ()
        if number not in config.emergency and self.is_internal(tenant, number):
            return ()
        result = plan(number, config, self.ledger.usage(tenant), caller_id=caller_id)
        if isinstance(result, DialPlan):
            return result.attempts
        if isinstance(result, NoRoute):
            raise NoOutboundRoute(number, "no outbound route takes this number")
        if isinstance(result, Blocked):
            raise OutboundBlocked(number, f"the caller may not use route(s) {', '.join(result.routes)}")
        if isinstance(result, AllTrunksFull):
            raise AllTrunksBusy(number, f"every trunk is full or disabled: {', '.join(result.trunks)}")
        return ()  # InvalidNumber: not a phone number, dialled as before


def _outbound_trunks(ctx: Context, number: str, caller_id: str) -> tuple[m.TrunkDial, ...]:
    planner = getattr(ctx.api, "outbound", None)
    if planner is None:
        return ()
    trunks: tuple[m.TrunkDial, ...] = planner.trunks(ctx.principal.tenant, number, caller_id)
    return trunks


async def originate(ctx: Context, req: t.OriginateRequest) -> t.OriginateResponse:
    p = ctx.principal
    own = ctx.api.agent_extension(p.tenant, p.agent_id)
    from_extension = req.from_extension or own
    if not from_extension:
        raise ApiError("INVALID_ARGUMENT", "from_extension is required (the caller has no extension)")
    if not p.sees_tenant and from_extension != own:
        raise ApiError("PERMISSION_DENIED", "an agent may click-to-call only from its own extension")
    # an outside number: through the tenant's trunks (typed refusal before anything rings)
    trunks = _outbound_trunks(ctx, req.to, req.caller_id or from_extension)
    call_id = uuid.uuid4().hex
    ctx.api.remember_originator(call_id, p.agent_id)
    await _ask(ctx, m.Originate(call_id=call_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                from_extension=from_extension, to=req.to, tenant=p.tenant,
                                caller_id=req.caller_id, timeout_s=req.timeout_s, trunks=trunks,
                                # the request's trace context: the call's spans and CTI resume it
                                traceparent=ctx.traceparent if parse_traceparent(ctx.traceparent) else ""))
    return t.OriginateResponse(call_id=call_id)


def _call_command(build: Callable[[Any, float, str], Any]) -> Handler:
    async def handler(ctx: Context, req: Any) -> t.CallResponse:
        _call(ctx, req.call_id)
        reply = await _ask(ctx, build(req, _now(ctx), uuid.uuid4().hex))
        return t.CallResponse(call_id=req.call_id, message=reply.message, data=dict(reply.data))

    return handler


def _simple(cls: type) -> Callable[[Any, float, str], Any]:
    return lambda req, at, rid: cls(call_id=req.call_id, at=at, request_id=rid)


_CALL_METHODS: list[tuple[str, type, Callable[[Any, float, str], Any], str]] = [
    ("Answer", t.CallRequest, _simple(m.Answer), "answer a ringing call"),
    ("Hangup", t.HangupRequest,
     lambda r, at, rid: m.Hangup(call_id=r.call_id, at=at, request_id=rid, cause=r.cause), "hang up"),
    ("Hold", t.CallRequest, _simple(m.Hold), "hold an active call (FAILED_PRECONDITION otherwise)"),
    ("Retrieve", t.CallRequest, _simple(m.Retrieve), "retrieve a held call"),
    # BlindTransfer: registered below with its own handler (blind_transfer), same place
    ("BlindTransfer", t.TransferRequest,
     lambda r, at, rid: m.BlindTransfer(call_id=r.call_id, at=at, request_id=rid, target=r.target),
     "transfer the caller to target"),
    ("AttendedTransferStart", t.AttendedTransferStartRequest,
     lambda r, at, rid: m.AttendedTransferStart(call_id=r.call_id, at=at, request_id=rid,
                                                target=r.target, timeout_s=r.timeout_s),
     "hold the caller and consult target"),
    ("AttendedTransferComplete", t.CallRequest, _simple(m.AttendedTransferComplete),
     "connect the caller to the consulted party"),
    ("AttendedTransferCancel", t.CallRequest, _simple(m.AttendedTransferCancel),
     "drop the consultation, back to the caller"),
    # Park and Pickup: registered below with their own handlers (park, pickup), same place
    # JoinConference: registered below from api/conferences.py (the tenant's rooms and PINs decide)
    ("SendDtmf", t.SendDtmfRequest,
     lambda r, at, rid: m.SendDtmf(call_id=r.call_id, at=at, request_id=rid, digits=r.digits),
     "send DTMF digits"),
    # Start/Stop/Pause/ResumeRecording: registered below from api/recordings.py (the tenant's
    # recording policy decides; the recording path is the engine's choice, never a client's)
]


# --------------------------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------------------------


def _agent_info(a: Any) -> t.AgentInfo:
    return t.AgentInfo(agent_id=a.agent_id, state=a.state.name, reason=a.reason, extension=a.extension,
                       queues=list(a.queues), skills=dict(a.skills), call_id=a.call_id,
                       state_since=a.state_since, calls_handled=a.calls_handled,
                       talk_time_s=round(a.talk_time, 3), phone_registered=a.phone_registered)


async def login(ctx: Context, req: t.LoginRequest) -> t.AgentResponse:
    agent_id = _agent_id(ctx, req.agent_id)
    _agent(ctx, agent_id)
    record = ctx.api.store_get_nowait(ctx.principal.tenant, "agent", agent_id)
    extension = req.extension or (record.extension if record else "")
    if not extension:
        raise ApiError("INVALID_ARGUMENT", "extension is required (none configured for this agent)")
    if (not ctx.principal.sees_tenant and record is not None and record.extension
            and extension != record.extension):
        raise ApiError("PERMISSION_DENIED", "an agent logs in at its configured extension")
    queues = list(req.queues) or (list(record.queues) if record else [])
    for queue_id in queues:
        _queue(ctx, queue_id)
    skills = dict(req.skills) or (dict(record.skills) if record else {})
    presence = ctx.api.presence
    if presence is not None:
        # the phone's state first, in the caller's tenant: the agent machine assumes
        # "registered" until told, so an AgentLogin before this could let an offer through
        presence.watch(agent_id, extension)
        ctx.node.deliver_nowait(presence.registry.device_state(agent_id, extension, _now(ctx)),
                                ctx.principal.tenant)
    reply = await _ask(ctx, m.AgentLogin(agent_id=agent_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                         extension=extension, queues=tuple(queues), skills=skills,
                                         tenant=ctx.principal.tenant, ready=req.ready))
    return t.AgentResponse(agent_id=agent_id, message=reply.message)


def _agent_command(cls: type, **fixed: Any) -> Handler:
    async def handler(ctx: Context, req: Any) -> t.AgentResponse:
        agent_id = _agent_id(ctx, req.agent_id)
        _agent(ctx, agent_id)
        extra = {"reason": req.reason} if isinstance(req, t.NotReadyRequest) else {}
        reply = await _ask(ctx, cls(agent_id=agent_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                    **extra, **fixed))
        if cls is m.AgentLogout and ctx.api.presence is not None:
            ctx.api.presence.on_logout(agent_id)
        return t.AgentResponse(agent_id=agent_id, message=reply.message)

    return handler


async def get_agent(ctx: Context, req: t.AgentRequest) -> t.AgentInfo:
    agent_id = _agent_id(ctx, req.agent_id)
    return _agent_info(_agent(ctx, agent_id))


async def list_agents(ctx: Context, req: t.ListAgentsRequest) -> t.AgentList:
    p = ctx.principal
    agents = [a for a in ctx.node.runtime.states("agent") if a.tenant == p.tenant
              and (p.sees_tenant or a.agent_id == p.agent_id)
              and (not req.state or a.state.name == req.state.upper())]
    return t.AgentList(agents=[_agent_info(a) for a in sorted(agents, key=lambda a: a.agent_id)])


# --------------------------------------------------------------------------------------------
# Queues
# --------------------------------------------------------------------------------------------


def _queue_info(q: Any) -> t.QueueInfo:
    c = q.config
    return t.QueueInfo(queue_id=q.queue_id, strategy=c.strategy, waiting=len(q.waiting),
                       members=sorted(q.members), available=sum(1 for x in q.members.values() if x.available),
                       ring_timeout_s=c.ring_timeout_s, max_wait_s=c.max_wait_s, max_length=c.max_length)


async def get_queue(ctx: Context, req: t.QueueRequest) -> t.QueueInfo:
    return _queue_info(_queue(ctx, req.queue_id))


async def list_queues(ctx: Context, req: t.ListQueuesRequest) -> t.QueueList:
    tenant = ctx.principal.tenant
    queues = [q for q in ctx.node.runtime.states("queue")
              if q.config.tenant == tenant]
    return t.QueueList(queues=[_queue_info(q) for q in sorted(queues, key=lambda q: q.queue_id)])


async def queue_stats(ctx: Context, req: t.QueueRequest) -> t.QueueStatsResponse:
    q = _queue(ctx, req.queue_id)
    s = q.stats
    now = _now(ctx)
    longest = max((now - w.enqueued_at for w in q.waiting), default=0.0)
    handled = s.answered + s.abandoned
    return t.QueueStatsResponse(
        queue_id=q.queue_id, waiting=len(q.waiting), longest_wait_s=round(max(longest, 0.0), 3),
        agents_logged_in=len(q.members), agents_available=sum(1 for x in q.members.values() if x.available),
        offered=s.offered, answered=s.answered, answered_within_sl=s.answered_within_sl,
        abandoned=s.abandoned, overflowed=s.overflowed,
        average_wait_s=round(s.total_wait_answered / s.answered, 3) if s.answered else 0.0,
        service_level=round(s.answered_within_sl / handled, 4) if handled else 1.0)


def _membership(join: bool) -> Handler:
    async def handler(ctx: Context, req: t.QueueMembershipRequest) -> t.MembershipResponse:
        agent_id = _agent_id(ctx, req.agent_id)
        agent = _agent(ctx, agent_id)
        _queue(ctx, req.queue_id)
        tenant = ctx.principal.tenant
        # the agent machine changes memberships at once, whatever its state (AgentJoinQueue /
        # AgentLeaveQueue); while logged out they are kept for the next login
        if join or req.queue_id in agent.queues:
            command = m.AgentJoinQueue if join else m.AgentLeaveQueue
            await _ask(ctx, command(agent_id=agent_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                    queue_id=req.queue_id))
        state = ctx.node.state_of("agent", agent_id, tenant)
        queues = list(state.queues) if state is not None else []
        record = ctx.api.store_get_nowait(tenant, "agent", agent_id)
        if record is not None:
            await ctx.api.store.update(tenant, "agent", msgspec.structs.replace(record, queues=queues))
        effect = "at_next_login" if agent.state.name == "LOGGED_OUT" else "applied"
        return t.MembershipResponse(queue_id=req.queue_id, agent_id=agent_id, queues=queues, effect=effect)

    return handler


# --------------------------------------------------------------------------------------------
# Admin (configuration; every call audited)
# --------------------------------------------------------------------------------------------

_LISTS = {"extension": t.ExtensionList, "queue": t.QueueRecordList, "agent": t.AgentRecordList,
          "flow": t.FlowList}
_ADMIN_NAMES = {"extension": "Extension", "queue": "Queue", "agent": "Agent", "flow": "Flow"}


def _admin_methods() -> list[Method]:
    out: list[Method] = []
    for kind, record_type in RECORD_TYPES.items():
        noun = _ADMIN_NAMES[kind]

        def make(kind: str = kind) -> dict[str, Handler]:
            async def create(ctx: Context, rec: Any) -> Any:
                created = await ctx.api.store.create(ctx.principal.tenant, kind, rec)
                ctx.api.provision(ctx.principal.tenant, kind, created)
                return created

            async def get(ctx: Context, req: t.GetRecordRequest) -> Any:
                return await ctx.api.store.get(ctx.principal.tenant, kind, req.id)

            async def update(ctx: Context, rec: Any) -> Any:
                return await ctx.api.store.update(ctx.principal.tenant, kind, rec)

            async def delete(ctx: Context, req: t.GetRecordRequest) -> t.Deleted:
                tenant = ctx.principal.tenant
                await ctx.api.store.get(tenant, kind, req.id)  # NOT_FOUND before touching the actor
                ctx.api.retire(tenant, kind, req.id)  # FAILED_PRECONDITION while busy
                await ctx.api.store.delete(tenant, kind, req.id)
                return t.Deleted(id=req.id)

            async def list_(ctx: Context, req: t.ListRecordsRequest) -> Any:
                return _LISTS[kind](items=await ctx.api.store.list(ctx.principal.tenant, kind))

            return {"create": create, "get": get, "update": update, "delete": delete, "list": list_}

        h = make()
        out += [
            Method("Admin", f"Create{noun}", record_type, record_type, h["create"], ADMIN, audited=True,
                   doc=f"create a {kind}"),
            Method("Admin", f"Get{noun}", t.GetRecordRequest, record_type, h["get"], ADMIN, audited=True,
                   doc=f"read a {kind}"),
            Method("Admin", f"Update{noun}", record_type, record_type, h["update"], ADMIN, audited=True,
                   doc=f"replace a {kind}"),
            Method("Admin", f"Delete{noun}", t.GetRecordRequest, t.Deleted, h["delete"], ADMIN, audited=True,
                   doc=f"delete a {kind}"),
            Method("Admin", f"List{noun}s", t.ListRecordsRequest, _LISTS[kind], h["list"], ADMIN, audited=True,
                   doc=f"list the tenant's {kind}s"),
        ]
    return out


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

METHODS: dict[str, Method] = {}


def _add(method: Method) -> None:
    METHODS[method.full_name] = method


_add(Method("CallControl", "Originate", t.OriginateRequest, t.OriginateResponse, originate, ALL,
            doc="click-to-call: ring from_extension, then dial to"))
for _name, _req, _build, _doc in _CALL_METHODS:
    _add(Method("CallControl", _name, _req, t.CallResponse, _call_command(_build), ALL, doc=_doc))


async def blind_transfer(ctx: Context, req: t.TransferRequest) -> t.CallResponse:
    """An outside ``target`` goes through the tenant's trunks (``OutboundPlanner``), with the
    transferred caller's number as the caller id the plan starts from."""
    call = _call(ctx, req.call_id)
    from api.conferences import transfer_into_room

    moved = await transfer_into_room(ctx, req)  # a room number of the tenant: into the conference
    if moved is not None:
        return moved
    trunks = _outbound_trunks(ctx, req.target, getattr(call, "caller_id", "") or "")
    # an extension that records every call (always-on, docs/recordings.md) records this one too
    ext = None if trunks else ctx.api.store_get_nowait(ctx.principal.tenant, "extension", req.target)
    record = bool(getattr(ext, "record", False))
    reply = await _ask(ctx, m.BlindTransfer(call_id=req.call_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                            target=req.target, trunks=trunks, record=record,
                                            record_consent=getattr(ext, "record_consent", "") if record else ""))
    return t.CallResponse(call_id=req.call_id, message=reply.message, data=dict(reply.data))


# same place in METHODS, planned through the trunks
_add(Method("CallControl", "BlindTransfer", t.TransferRequest, t.CallResponse, blind_transfer, ALL,
            doc="transfer the caller to target (an outside number through the tenant's trunks)"))


# ---- parking and pickup (docs/parking.md): the node's lot and ringing view (``Api.parking``) -----


def _parking(ctx: Context) -> Any:
    views = getattr(ctx.api, "parking", None)
    if views is None:
        raise ApiError("UNIMPLEMENTED", "parking is not enabled on this node")
    return views


async def park(ctx: Context, req: t.ParkRequest) -> t.CallResponse:
    """Claim the slot first (typed refusals: ALREADY_EXISTS taken, INVALID_ARGUMENT outside the
    range, RESOURCE_EXHAUSTED full), then tell the call; a refused Park frees the claim."""
    from engine.parking import ParkingError

    _call(ctx, req.call_id)
    views, tenant = _parking(ctx), ctx.principal.tenant
    try:
        slot = views.lot.claim(tenant, req.call_id, req.slot)
    except ParkingError as exc:
        raise ApiError(exc.code, str(exc)) from None
    try:
        reply = await _ask(ctx, m.Park(call_id=req.call_id, at=_now(ctx), request_id=uuid.uuid4().hex, slot=slot,
                                       timeout_s=req.timeout_s, return_to=req.return_to, fallback=req.fallback))
    except BaseException:
        views.lot.release(tenant, req.call_id)
        raise
    return t.CallResponse(call_id=req.call_id, message=reply.message, data=dict(reply.data))


async def pickup(ctx: Context, req: t.PickupRequest) -> t.CallResponse:
    """Find the call (slot -> the lot; directed/group -> the ringing view), then send it Pickup.
    An agent picks up only at its own extension; the call need not be its own (that is the point)."""
    views, p = _parking(ctx), ctx.principal
    extension = req.extension
    if not p.sees_tenant:
        own = ctx.api.agent_extension(p.tenant, p.agent_id)
        if not own:
            raise ApiError("FAILED_PRECONDITION", "this agent has no extension to pick up at")
        if extension and extension != own:
            raise ApiError("PERMISSION_DENIED", "an agent picks up at its own extension")
        extension = own
    if not extension:
        raise ApiError("INVALID_ARGUMENT", "extension is required")
    call_id, target = req.call_id, req.target
    if req.kind == "slot":
        if not call_id:
            if not req.slot:
                raise ApiError("INVALID_ARGUMENT", "slot (or call_id) is required for a pickup by slot")
            call_id = views.lot.call_in(p.tenant, req.slot)
            if not call_id:
                raise ApiError("NOT_FOUND", f"no call is parked in slot {req.slot}")
    elif req.kind == "directed":
        if not target:
            raise ApiError("INVALID_ARGUMENT", "target (the ringing extension) is required for a directed pickup")
        call_id = call_id or views.ringing.directed(p.tenant, target)
        if not call_id:
            raise ApiError("NOT_FOUND", f"no call is ringing extension {target}")
    else:
        if not call_id:
            call_id, target = views.group(p.tenant, extension)
            if not call_id:
                raise ApiError("NOT_FOUND", f"no call is ringing a member of {extension}'s pickup groups")
    call = ctx.node.runtime.state_of("call", call_id)
    if call is None or call.tenant != p.tenant:
        raise ApiError("NOT_FOUND", f"call {call_id} not found")
    reply = await _ask(ctx, m.Pickup(call_id=call_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                     extension=extension, kind=req.kind, target=target))
    return t.CallResponse(call_id=call_id, message=reply.message, data=dict(reply.data))


async def list_parked(ctx: Context, req: t.ParkedRequest) -> t.ParkedList:
    slots = _parking(ctx).lot.slots(ctx.principal.tenant)
    return t.ParkedList(items=[t.ParkedCall(slot=s, call_id=c) for s, c in slots.items()])


_add(Method("CallControl", "Park", t.ParkRequest, t.CallResponse, park, ALL,
            doc="park the caller in a slot (or the lowest free one); rings back after timeout_s"))
_add(Method("CallControl", "Pickup", t.PickupRequest, t.CallResponse, pickup, ALL,
            doc="take a call at extension: parked in slot, ringing target (directed), or the group's"))
_add(Method("Parking", "List", t.ParkedRequest, t.ParkedList, list_parked, ALL,
            doc="the tenant's parked calls by slot"))

_add(Method("Agents", "Login", t.LoginRequest, t.AgentResponse, login, ALL, doc="log an agent in"))
_add(Method("Agents", "Logout", t.AgentRequest, t.AgentResponse, _agent_command(m.AgentLogout), ALL,
            doc="log out (after the current call)"))
_add(Method("Agents", "SetReady", t.AgentRequest, t.AgentResponse, _agent_command(m.AgentReady), ALL,
            doc="become available"))
_add(Method("Agents", "SetNotReady", t.NotReadyRequest, t.AgentResponse, _agent_command(m.AgentNotReady),
            ALL, doc="become not ready, with a reason"))
_add(Method("Agents", "EndWrapUp", t.AgentRequest, t.AgentResponse, _agent_command(m.AgentEndWrapUp), ALL,
            doc="end after-call work now"))
_add(Method("Agents", "Get", t.AgentRequest, t.AgentInfo, get_agent, ALL, doc="an agent's state"))
_add(Method("Agents", "List", t.ListAgentsRequest, t.AgentList, list_agents, ALL,
            doc="the tenant's agents (an agent sees itself)"))

_add(Method("Queues", "Get", t.QueueRequest, t.QueueInfo, get_queue, ALL, doc="a queue"))
_add(Method("Queues", "List", t.ListQueuesRequest, t.QueueList, list_queues, ALL, doc="the tenant's queues"))
_add(Method("Queues", "Stats", t.QueueRequest, t.QueueStatsResponse, queue_stats, ALL,
            doc="live queue statistics"))
_add(Method("Queues", "Join", t.QueueMembershipRequest, t.MembershipResponse, _membership(True), ALL,
            doc="add an agent to a queue"))
_add(Method("Queues", "Leave", t.QueueMembershipRequest, t.MembershipResponse, _membership(False), ALL,
            doc="remove an agent from a queue"))

_add(Method("Events", "Watch", t.WatchRequest, t.WatchEvent, None, ALL, streaming=True,
            doc="stream CTI events (server-streaming), filtered, optionally from a seq or a time"))

# recordings (docs/recordings.md): the call commands and the Recordings service, gated by the policy
from api.recordings import recording_methods  # noqa: E402  (it imports the helpers above)

for _m in recording_methods():
    _add(_m)

for _m in _admin_methods():
    _add(_m)

# conferences (docs/conferences.md): JoinConference with the room's checks, the Conferences service
from api.conferences import conference_methods  # noqa: E402  (it imports the helpers above lazily)

for _m in conference_methods():
    _add(_m)

# webhooks (docs/webhooks.md): configuration, dead letters and their redrive, per-webhook counters
from api.webhooks import webhook_methods  # noqa: E402  (it imports the helpers above lazily)

for _m in webhook_methods():
    _add(_m)

# voicemail (docs/voicemail.md): mailboxes, PINs, messages and GDPR erasure over the node's service
from api.voicemail import voicemail_methods  # noqa: E402  (it imports the helpers above lazily)

for _m in voicemail_methods():
    _add(_m)

#: service name -> its methods
SERVICES: dict[str, list[Method]] = {}
for _m in METHODS.values():
    SERVICES.setdefault(_m.service, []).append(_m)


def method_named(name: str) -> Method:
    """Accepts ``callengine.v1.Svc/Method``, ``Svc/Method`` and ``Svc.Method``."""
    method = METHODS.get(name)
    if method is None:
        short = name.removeprefix(PACKAGE + ".").replace(".", "/")
        method = METHODS.get(f"{PACKAGE}.{short}")
    if method is None:
        raise ApiError("UNIMPLEMENTED", f"no method {name[:100]!r}")
    return method


# keep the record types importable from here for the schema
RECORDS = (Extension, QueueRecord, AgentRecord, Flow)
