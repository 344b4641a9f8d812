"""API commands over NATS request-reply, with nats-py's micro-service framework.

Rules
1. One micro service per API service (``callengine-CallControl``, ...), one endpoint per unary
   method on ``api.*.<Service>.<Method>`` (the ``*`` is the tenant), queue group ``callengine`` so
   engine nodes share the load. The framework gives ``$SRV.PING|INFO|STATS`` discovery and
   per-endpoint stats for free.
2. The token travels in the ``Authorization: Bearer <jwt>`` header. The tenant in the subject must
   be the token's tenant (PERMISSION_DENIED otherwise, audited): a client cannot address another
   tenant even by publishing to its subject.
   A ``traceparent`` header (W3C trace context) is handed to the method as over HTTP, so a
   click-to-call ``Originate`` continues the caller's trace.
3. Success: the JSON response. Failure: a micro error reply (headers ``Nats-Service-Error`` =
   message, ``Nats-Service-Error-Code`` = gRPC status name) whose body is ``{"code","message"}``.
4. Each request crosses asyncio -> trio once (``trio_as_aio``): commands are rare next to events,
   whose hot path is the publisher's batched pump.
5. Events.Watch (``api.<tenant>.Events.Watch``, needs a nursery): the client subscribes to an inbox
   first, then asks with ``{"deliver_subject": "<inbox>", "from_seq": N, "types": [...], ...}``.
   The reply is ``WatchStarted``; a relay task then runs the SAME ``Api.watch`` as WebSocket and
   Connect (replay from JetStream by per-tenant seq or time, then live; the same filter, RBAC and
   tenant isolation) and publishes one message per event to the inbox (body: the event JSON;
   headers ``Cti-Seq``, ``Cti-Watch``). It ends with a control message (header ``Cti-Control:
   end``, body ``{}`` or ``{"error": {"code", "message"}}``) after ``max_events``, ``timeout_s``
   (default ``WATCH_DEFAULT_TIMEOUT_S``), a slow-consumer drop (RESOURCE_EXHAUSTED with the
   ``from_seq`` to resume from) or when nobody listens on the inbox any more: every
   ``probe_s`` the relay sends a ``Cti-Control: ping`` request there, and "no responders" stops
   it. Clients ignore messages that carry ``Cti-Control`` except ``end``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
import trio_asyncio
from nats.micro import add_service
from nats.micro.request import Request

from adapters.nats.bridge import NatsBridge
from adapters.nats.subjects import SEQ_HEADER
from adapters.nats.subjects import token as subject_token
from api import types as t
from api.auth import Principal
from api.dispatch import Api
from api.errors import ApiError
from api.services import SERVICES

__all__ = ["start_micro_services", "stop_micro_services", "QUEUE_GROUP", "WatchRelays",
           "CONTROL_HEADER", "WATCH_HEADER", "WATCH_DEFAULT_TIMEOUT_S"]

QUEUE_GROUP = "callengine"
CONTROL_HEADER = "Cti-Control"
WATCH_HEADER = "Cti-Watch"
#: a NATS watch that names no ``timeout_s`` ends after this long (the client asks again)
WATCH_DEFAULT_TIMEOUT_S = 3600.0
_encoder = msgspec.json.Encoder()


@dataclass
class WatchRelays:
    """The running Events.Watch relays of this node (bounded in number, overall and per tenant)."""

    nursery: trio.Nursery
    bridge: NatsBridge
    max_total: int = 1000
    max_per_tenant: int = 200
    #: how often a relay checks that someone still listens on its inbox
    probe_s: float = 10.0
    by_tenant: dict[str, int] = field(default_factory=dict)
    started: int = 0
    ended: int = 0

    @property
    def running(self) -> int:
        return sum(self.by_tenant.values())

    async def start(self, api: Api, principal: Principal, req: t.WatchRequest) -> t.WatchStarted:
        """Start a relay; returns once its watch is in place (``Api.watch``'s ``on_ready``), so
        every event published after the reply reaches the inbox."""
        if not req.deliver_subject:
            raise ApiError("INVALID_ARGUMENT", "deliver_subject is required on NATS: subscribe to an "
                                               "inbox (_INBOX....) first, then ask")
        tenant = principal.tenant
        if self.running >= self.max_total or self.by_tenant.get(tenant, 0) >= self.max_per_tenant:
            raise ApiError("RESOURCE_EXHAUSTED", "too many Events.Watch streams; retry later")
        watch_id = uuid.uuid4().hex
        self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1
        self.started += 1
        await self.nursery.start(self._run, api, principal, req, watch_id)
        return t.WatchStarted(watch_id=watch_id, deliver_subject=req.deliver_subject)

    async def _run(self, api: Api, principal: Principal, req: t.WatchRequest, watch_id: str, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        subject = req.deliver_subject
        bridge = self.bridge
        end: dict[str, Any] = {}
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe, subject, watch_id, nursery.cancel_scope)
                with trio.move_on_after(req.timeout_s or WATCH_DEFAULT_TIMEOUT_S):
                    end = await self._pump(api, principal, req, watch_id, ready)
                nursery.cancel_scope.cancel()
        except Exception as error:  # noqa: BLE001 - the bus failed: the client's stream just ends
            end = {"error": {"code": "UNAVAILABLE", "message": type(error).__name__}}
        finally:
            ready()  # failed before it was in place: the reply goes, the end message says why
            self.by_tenant[principal.tenant] -= 1
            if not self.by_tenant[principal.tenant]:
                del self.by_tenant[principal.tenant]
            self.ended += 1
            with trio.move_on_after(2, shield=True):
                try:
                    await bridge.publish_core([(subject, _encoder.encode(end),
                                                {CONTROL_HEADER: "end", WATCH_HEADER: watch_id})])
                except Exception:  # noqa: BLE001
                    pass

    async def _pump(self, api: Api, principal: Principal, req: t.WatchRequest, watch_id: str,
                    on_ready: Any = None) -> dict[str, Any]:
        subject = req.deliver_subject
        left = req.max_events or -1
        stream = api.watch(principal, req, on_ready=on_ready)
        try:
            async for batch in stream:
                if left >= 0:
                    batch = batch[:left]
                    left -= len(batch)
                await self.bridge.publish_core([
                    (subject, json.encode(), {SEQ_HEADER: str(seq), WATCH_HEADER: watch_id})
                    for seq, json in batch])
                if left == 0:
                    break
        except ApiError as error:
            return {"error": error.to_dict()}
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        return {}

    async def _probe(self, subject: str, watch_id: str, scope: trio.CancelScope) -> None:
        headers = {CONTROL_HEADER: "ping", WATCH_HEADER: watch_id}
        while True:
            await trio.sleep(self.probe_s)
            if not await self.bridge.has_interest(subject, headers):
                scope.cancel()
                return


async def _dispatch(api: Api, tenant: str, method: str, token: str | None, data: bytes,
                    traceparent: str = "") -> tuple[str, bytes, str]:
    try:
        principal = api.authenticate(token, method, "nats")
        if subject_token(principal.tenant) != tenant:
            error = ApiError("PERMISSION_DENIED", "the subject's tenant is not the token's")
            api._deny(principal, method, "nats", error)
            raise error
        body = await api.invoke_json(principal, method, data, "nats", traceparent=traceparent)
        return "OK", body, ""
    except ApiError as error:
        return error.code, _encoder.encode(error.to_dict()), error.message


async def _start_watch(api: Api, relays: WatchRelays, tenant: str, token: str | None,
                       data: bytes) -> tuple[str, bytes, str]:
    method = "callengine.v1.Events/Watch"
    try:
        principal = api.authenticate(token, method, "nats")
        if subject_token(principal.tenant) != tenant:
            error = ApiError("PERMISSION_DENIED", "the subject's tenant is not the token's")
            api._deny(principal, method, "nats", error)
            raise error
        req = api.authorize_watch(principal, data, "nats")
        return "OK", _encoder.encode(await relays.start(api, principal, req)), ""
    except ApiError as error:
        return error.code, _encoder.encode(error.to_dict()), error.message


async def start_micro_services(bridge: NatsBridge, api: Api, version: str = "1.0.0",
                               relays: WatchRelays | None = None) -> list[Any]:
    """Register every unary method as a micro endpoint, and Events.Watch when ``relays`` is given;
    returns the services (stop them on exit)."""
    dispatch = trio_asyncio.trio_as_aio(_dispatch)
    start_watch = trio_asyncio.trio_as_aio(_start_watch)

    def credentials(request: Request) -> tuple[str, str | None]:
        parts = request.subject.split(".")
        tenant = parts[1] if len(parts) == 4 else ""
        auth = (request.headers or {}).get("Authorization", "")
        scheme, _, tok = auth.partition(" ")
        return tenant, (tok.strip() if scheme.lower() == "bearer" else None)

    async def watch(request: Request) -> None:
        tenant, token = credentials(request)
        code, body, message = await start_watch(api, relays, tenant, token, request.data)
        if code == "OK":
            await request.respond(body)
        else:
            await request.respond_error(code, message, data=body)

    def endpoint(service: str, name: str) -> Any:
        full = f"{service}/{name}"

        async def handle(request: Request) -> None:
            tenant, token = credentials(request)
            traceparent = (request.headers or {}).get("traceparent", "")
            code, body, message = await dispatch(api, tenant, full, token, request.data, traceparent)
            if code == "OK":
                await request.respond(body)
            else:
                await request.respond_error(code, message, data=body)

        return handle

    async def start() -> list[Any]:
        services = []
        for service, methods in SERVICES.items():
            unary = [m for m in methods if not m.streaming]
            streaming = [m for m in methods if m.streaming and m.full_name.endswith("Events/Watch")]
            if not unary and not (streaming and relays is not None):
                continue
            svc = await add_service(bridge.nc, name=f"callengine-{service}", version=version,
                                    description=f"callengine {service} API", queue_group=QUEUE_GROUP)
            if streaming and relays is not None:
                await svc.add_endpoint(name="Watch", subject=f"api.*.{service}.Watch", handler=watch,
                                       metadata={"request": "WatchRequest", "response": "WatchStarted",
                                                 "roles": ",".join(sorted(streaming[0].roles))})
            for m in unary:
                await svc.add_endpoint(name=m.name, subject=f"api.*.{service}.{m.name}",
                                       handler=endpoint(service, m.name),
                                       metadata={"request": m.request.__name__, "response": m.response.__name__,
                                                 "roles": ",".join(sorted(m.roles))})
            services.append(svc)
        # the endpoints' SUBs are buffered by the client: a PING/PONG round trip makes sure the
        # server has them all before we say the services are up (else an early request from
        # another connection gets "no responders")
        await bridge.nc.flush()
        return services

    return await bridge.aio(start)


async def stop_micro_services(bridge: NatsBridge, services: list[Any]) -> None:
    async def stop() -> None:
        for svc in services:
            await svc.stop()

    await bridge.aio(stop)
