"""The dispatcher every transport shares: authenticate, rate-limit, authorise, decode, run, audit.

Rules
1. One path for every transport: ``Api.invoke(token, method, body, transport)`` for unary calls and
   ``Api.watch(principal, request)`` for the Events stream. Transports only frame bytes.
2. Order of checks: token (UNAUTHENTICATED) -> rate limit (RESOURCE_EXHAUSTED) -> role gate
   (PERMISSION_DENIED) -> body (INVALID_ARGUMENT) -> handler (its own typed errors). Only
   ``ApiError`` leaves; anything else is logged as INTERNAL without details.
3. Audit: every admin action and every denied request (UNAUTHENTICATED, PERMISSION_DENIED,
   RESOURCE_EXHAUSTED) leaves one ``AuditRecord``.
4. Commands reach the engine through ``Node.ask``; queries read actor states (frozen Structs, so
   reading them from another task is safe).
5. Request metadata a transport carries besides the body reaches the handler in its ``Context``:
   ``traceparent`` is the request's W3C trace context (the HTTP ``traceparent`` header), so a call
   the request originates resumes the caller's trace (``engine/tracecontext.py``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from api import types as t
from api.auth import AuditLog, AuditRecord, Authenticator, Principal, RateLimiter
from api.errors import ApiError
from api.events import CtiBase, decode_event
from api.hub import EventFilter, EventHub
from api.services import Method, method_named
from api.store import InMemoryAdminStore
from engine.actors import ActorCrashed, AskTimeout, MailboxFull, Node
from engine.actors.node import ActorBusy, ActorMissing
from engine.fsm.queue import QueueConfig

__all__ = ["Api", "Context", "DENIALS"]

log = logging.getLogger("callengine.api")

DENIALS = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"})
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Context:
    api: Api
    principal: Principal
    transport: str
    #: the request's W3C ``traceparent`` ("" when it carried none; Rule 5)
    traceparent: str = ""

    @property
    def node(self) -> Node:
        return self.api.node


def _audited_body(method: Method, body: bytes | msgspec.Raw) -> bytes | msgspec.Raw:
    """The request as the audit log keeps it: the method's secret fields masked."""
    if not method.redact or not body:
        return body
    try:
        obj = msgspec.json.decode(bytes(body))
    except msgspec.DecodeError:
        return b'"***"'
    if not isinstance(obj, dict):
        return b'"***"'
    return msgspec.json.encode({k: ("***" if k in method.redact else v) for k, v in obj.items()})


class Api:
    def __init__(self, node: Node, authenticator: Authenticator, *, store: Any | None = None,
                 hub: EventHub | None = None, bridge: Any | None = None,
                 limiter: RateLimiter | None = None, audit: AuditLog | None = None,
                 ask_timeout_s: float = 5.0, watch_capacity: int = 10_000,
                 presence: Any | None = None) -> None:
        self.node = node
        self.auth = authenticator
        self.store = store if store is not None else InMemoryAdminStore()
        self.hub = hub if hub is not None else EventHub()
        self.bridge = bridge
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.audit = audit if audit is not None else AuditLog()
        self.ask_timeout_s = ask_timeout_s
        self.watch_capacity = watch_capacity
        self._originators: OrderedDict[str, str] = OrderedDict()
        self.calls = 0
        self.errors: dict[str, int] = {}
        #: called as ``on_login(agent_id, extension, at)`` just before an ``AgentLogin`` is sent
        #: (``PresenceBridge.on_login``: the agent learns its phone's state before any offer)
        self.on_login: Any = None
        #: optional ``adapters.freeswitch.presence.PresenceBridge``: Agents.Login tells the agent
        #: whether its phone is registered BEFORE the AgentLogin (so no offer can reach an agent
        #: whose phone is not registered), Agents.Logout stops watching its extension
        self.presence = presence
        #: ``adapters.webhooks.node.NodeWebhooks`` (``callengine run``): the Webhooks service
        self.webhooks: Any = None
        #: ``engine.parking.ParkingViews`` fed from this node's CTI stream (``open_stack`` and
        #: ``callengine run`` wire it): Park claims its slot there, Pickup finds its call there;
        #: None = parking methods answer UNIMPLEMENTED
        self.parking: Any = None

    # ---------------------------------------------------------------- unary

    def authenticate(self, token: str | None, method: str = "", transport: str = "") -> Principal:
        try:
            return self.auth.authenticate(token)
        except ApiError as error:
            self._deny(None, method, transport, error)
            raise

    async def invoke(self, token: str | Principal | None, method_name: str, body: bytes | msgspec.Raw,
                     transport: str, *, traceparent: str = "") -> Any:
        """Run one unary method; returns the response Struct or raises ``ApiError``. ``traceparent``:
        the request's trace context, if its transport carried one (Rule 5)."""
        principal = token if isinstance(token, Principal) else self.authenticate(token, method_name, transport)
        method: Method | None = None
        try:
            method = method_named(method_name)
            self.limiter.check(principal)
            if not principal.has(*method.roles):
                raise ApiError("PERMISSION_DENIED",
                               f"{method.service}.{method.name} needs one of: {', '.join(sorted(method.roles))}")
            if method.streaming or method.handler is None:
                raise ApiError("UNIMPLEMENTED", f"{method.full_name} is server-streaming: use Watch on "
                                                "WebSocket or the Connect streaming form")
            try:
                request = method.decoder.decode(bytes(body) if isinstance(body, msgspec.Raw) else (body or b"{}"))
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                raise ApiError("INVALID_ARGUMENT", str(error)[:300]) from None
            self.calls += 1
            result = await method.handler(Context(self, principal, transport, traceparent), request)
        except ApiError as error:
            self.errors[error.code] = self.errors.get(error.code, 0) + 1
            if error.code in DENIALS or (method is not None and method.audited):
                self._deny(principal, method.full_name if method else method_name, transport, error,
                           _audited_body(method, body) if method is not None and method.audited else b"")
            raise
        except Exception:
            log.exception("internal error in %s", method_name)
            self.errors["INTERNAL"] = self.errors.get("INTERNAL", 0) + 1
            raise ApiError("INTERNAL", "internal error") from None
        if method.audited:
            self._audit(principal, method.full_name, transport, "OK", "", _audited_body(method, body))
        return result

    async def invoke_json(self, token: str | Principal | None, method_name: str, body: bytes,
                          transport: str, *, traceparent: str = "") -> bytes:
        return _encoder.encode(await self.invoke(token, method_name, body, transport, traceparent=traceparent))

    # ---------------------------------------------------------------- audit

    def _audit(self, principal: Principal | None, method: str, transport: str, outcome: str,
               message: str, body: bytes | msgspec.Raw = b"") -> None:
        raw = bytes(body)[:2000].decode("utf-8", "replace") if body else ""
        self.audit.record(AuditRecord(
            at=time.time(), tenant=principal.tenant if principal else "",
            subject=principal.subject if principal else "", roles=tuple(sorted(principal.roles)) if principal else (),
            method=method, transport=transport, outcome=outcome, message=message, request=raw))

    def _deny(self, principal: Principal | None, method: str, transport: str, error: ApiError,
              body: bytes | msgspec.Raw = b"") -> None:
        self._audit(principal, method, transport, error.code, error.message, body)

    # ---------------------------------------------------------------- engine access

    async def ask(self, command: Any, tenant: str | None = None) -> Any:
        if self.on_login is not None and type(command).__name__ == "AgentLogin":
            self.on_login(command.agent_id, command.extension, command.at)
        try:
            return await self.node.ask(command, timeout=self.ask_timeout_s, tenant=tenant)
        except AskTimeout:
            raise ApiError("UNAVAILABLE", "the engine did not answer in time") from None
        except ActorCrashed:
            raise ApiError("UNAVAILABLE", "the engine failed to process the command; it recovered, retry") from None
        except MailboxFull:
            raise ApiError("RESOURCE_EXHAUSTED", "the engine is overloaded") from None

    def remember_originator(self, call_id: str, agent_id: str) -> None:
        self._originators[call_id] = agent_id
        if len(self._originators) > 100_000:
            self._originators.popitem(last=False)

    def owns_call(self, agent_id: str, call: Any) -> bool:
        if not agent_id:
            return False
        if call.agent_id == agent_id or self._originators.get(call.call_id) == agent_id:
            return True
        return any(leg.agent_id == agent_id for leg in call.legs)

    def agent_extension(self, tenant: str, agent_id: str) -> str:
        state = self.node.state_of("agent", agent_id, tenant)
        if state is not None and state.tenant == tenant and state.extension:
            return str(state.extension)
        record = self.store_get_nowait(tenant, "agent", agent_id)
        return record.extension if record is not None else ""

    def store_get_nowait(self, tenant: str, kind: str, record_id: str) -> Any:
        getter = getattr(self.store, "get_nowait", None)
        return getter(tenant, kind, record_id) if getter is not None else None

    def hosts(self, tenant: str, kind: str, record_id: str) -> bool:
        """Does this node run the tenant's agent/queue ``record_id``? (ids are per tenant)"""
        return self.node.runtime.exists(kind, self.node.key(kind, record_id, tenant))

    def provision(self, tenant: str, kind: str, record: Any) -> None:
        """Admin created a queue or an agent: host its actor on this node."""
        if kind == "queue" and not self.hosts(tenant, "queue", record.id):
            self.provision_queue(tenant, record)
        elif kind == "agent" and not self.hosts(tenant, "agent", record.id):
            self.node.add_agent(record.id, tenant)

    def retire(self, tenant: str, kind: str, record_id: str) -> None:
        """Admin is deleting an agent or a queue: remove its actor first (refused with
        FAILED_PRECONDITION while an agent is RESERVED/ON_CALL or a queue has callers waiting)."""
        if kind not in ("agent", "queue") or not self.hosts(tenant, kind, record_id):
            return
        try:
            self.node.remove_actor(kind, record_id, tenant)
        except ActorBusy as error:
            raise ApiError(error.code, f"{kind} {record_id} is busy: {error.why}; retry when it is idle") from None
        except ActorMissing:
            pass

    def provision_queue(self, tenant: str, record: Any) -> None:
        self.node.add_queue(QueueConfig(
            queue_id=record.id, tenant=tenant, strategy=record.strategy, ring_timeout_s=record.ring_timeout_s,
            wrap_up_s=record.wrap_up_s, max_wait_s=record.max_wait_s, max_length=record.max_length,
            overflow_target=record.overflow_target, sl_threshold_s=record.sl_threshold_s,
            record=record.record, record_consent=record.record_consent))

    # ---------------------------------------------------------------- Events.Watch

    def authorize_watch(self, principal: Principal, body: bytes | msgspec.Raw, transport: str) -> t.WatchRequest:
        method = method_named("Events/Watch")
        try:
            self.limiter.check(principal)
            if not principal.has(*method.roles):
                raise ApiError("PERMISSION_DENIED", "Events.Watch is not allowed")
            try:
                request: t.WatchRequest = method.decoder.decode(
                    bytes(body) if isinstance(body, msgspec.Raw) else (body or b"{}"))
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                raise ApiError("INVALID_ARGUMENT", str(error)[:300]) from None
            if not principal.sees_tenant and request.agent_id not in ("", principal.agent_id):
                raise ApiError("PERMISSION_DENIED", "an agent watches only its own events")
        except ApiError as error:
            if error.code in DENIALS:
                self._deny(principal, method.full_name, transport, error)
            raise
        return request

    def event_filter(self, principal: Principal, req: t.WatchRequest) -> EventFilter:
        agent_id = req.agent_id if principal.sees_tenant else principal.agent_id
        return EventFilter(types=req.types, call_id=req.call_id, agent_id=agent_id, queue_id=req.queue_id)

    async def watch(self, principal: Principal, req: t.WatchRequest, *, capacity: int | None = None,
                    on_ready: Callable[[], None] | None = None) -> AsyncIterator[list[tuple[int, str]]]:
        """Batches of (seq, event JSON) for the caller's tenant: replayed first (from JetStream),
        then live. Raises ``ApiError(RESOURCE_EXHAUSTED)`` when the consumer fell too far behind.
        ``on_ready()`` is called once the watch is in place (every event published from then on,
        on this node or, with a NATS feed, on another, will be delivered): the moment to tell
        the client "watching"."""
        accept = self.event_filter(principal, req)
        replaying = req.from_seq > 0 or req.since > 0
        # while replaying, take everything and filter here: gaps are detected on the raw seq
        sub = self.hub.subscribe(principal.tenant, None if replaying else accept,
                                 capacity or self.watch_capacity)
        try:
            # several nodes: events of this tenant published elsewhere flow in from NATS from here on
            await self.hub.feed_ready(principal.tenant)
            if on_ready is not None:
                on_ready()
            last = 0
            if replaying:
                if self.bridge is None:
                    raise ApiError("FAILED_PRECONDITION", "replay needs JetStream (no NATS configured)")
                # what the hub published before we subscribed reaches JetStream up to the publisher's
                # linger later: replay once it is stored, or it is in neither the replay nor the
                # live feed (bounded wait; a later live event still triggers the gap fill below)
                await self.hub.wait_durable(principal.tenant, self.hub.last_seq.get(principal.tenant, 0))
                # aclosing: a consumer that stops early (max_events) closes the JetStream consumer
                # here and now, not in a garbage-collector finalizer outside the bridge's loop
                async with aclosing(self._replay(principal.tenant, req.from_seq, req.since,
                                                 accept)) as replayed:
                    async for batch in replayed:
                        if batch:
                            last = batch[-1][0]
                            yield [(s, j) for s, j, ok in batch if ok]
                if last == 0 and req.from_seq:
                    last = req.from_seq - 1
            while True:
                items = await sub.next_batch()
                if not items:
                    if sub.overflowed:
                        raise ApiError("RESOURCE_EXHAUSTED",
                                       f"slow consumer dropped: resume with from_seq={last + 1}")
                    return
                if replaying:
                    first = items[0][0].seq
                    if last and first > last + 1:
                        # published to the hub before we subscribed but not yet in JetStream when we
                        # replayed: wait until the publisher's acks cover it, then fetch it (bounded)
                        await self.hub.wait_durable(principal.tenant, first - 1)
                        async with aclosing(self._replay(principal.tenant, last + 1, 0.0, accept,
                                                         until=first - 1)) as replayed:
                            async for batch in replayed:
                                if batch:
                                    last = batch[-1][0]
                                    yield [(s, j) for s, j, ok in batch if ok]
                    out = [(e.seq, j) for e, j in items if e.seq > last and accept(e)]
                    last = max(last, items[-1][0].seq)
                else:
                    out = [(e.seq, j) for e, j in items]
                    last = items[-1][0].seq
                if out:
                    yield out
        finally:
            sub.close()

    async def _replay(self, tenant: str, from_seq: int, since: float, accept: EventFilter,
                      until: int = 0) -> AsyncIterator[list[tuple[int, str, bool]]]:
        bridge = self.bridge
        if bridge is None:  # watch() checks first; kept for direct callers
            raise ApiError("FAILED_PRECONDITION", "replay needs JetStream (no NATS configured)")
        async with aclosing(bridge.replay(tenant, from_seq=from_seq, since=since)) as stored:
            async for msgs in stored:
                out = []
                for msg in msgs:
                    if until and msg.seq > until:
                        break
                    if from_seq and msg.seq < from_seq:
                        continue
                    try:
                        event: CtiBase = decode_event(msg.data)
                    except (msgspec.ValidationError, msgspec.DecodeError):
                        continue
                    if event.tenant != tenant:  # defence in depth: the filter subject is per tenant
                        continue
                    out.append((msg.seq, msg.data.decode(), accept(event)))
                yield out
                if until and out and out[-1][0] >= until:
                    return


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
