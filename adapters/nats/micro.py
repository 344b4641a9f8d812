"""API commands over NATS request-reply, with nats-py's micro-service framework.

Rules
1. One micro service per API service (``callengine-CallControl``, ...), one endpoint per unary
   method on ``api.*.<Service>.<Method>`` (the ``*`` is the tenant), queue group ``callengine`` so
   engine nodes share the load. The framework gives ``$SRV.PING|INFO|STATS`` discovery and
   per-endpoint stats for free.
2. The token travels in the ``Authorization: Bearer <jwt>`` header. The tenant in the subject must
   be the token's tenant (PERMISSION_DENIED otherwise, audited): a client cannot address another
   tenant even by publishing to its subject.
3. Success: the JSON response. Failure: a micro error reply (headers ``Nats-Service-Error`` =
   message, ``Nats-Service-Error-Code`` = gRPC status name) whose body is ``{"code","message"}``.
4. Each request crosses asyncio -> trio once (``trio_as_aio``): commands are rare next to events,
   whose hot path is the publisher's batched pump. Events.Watch is not a NATS method: NATS clients
   subscribe to ``cti.<tenant>.>`` or read the ``CTI`` JetStream stream directly.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio_asyncio
from nats.micro import add_service
from nats.micro.request import Request

from adapters.nats.bridge import NatsBridge
from adapters.nats.subjects import token as subject_token
from api.dispatch import Api
from api.errors import ApiError
from api.services import SERVICES

__all__ = ["start_micro_services", "QUEUE_GROUP"]

QUEUE_GROUP = "callengine"
_encoder = msgspec.json.Encoder()


async def _dispatch(api: Api, tenant: str, method: str, token: str | None, data: bytes) -> tuple[str, bytes, str]:
    try:
        principal = api.authenticate(token, method, "nats")
        if subject_token(principal.tenant) != tenant:
            error = ApiError("PERMISSION_DENIED", "the subject's tenant is not the token's")
            api._deny(principal, method, "nats", error)
            raise error
        body = await api.invoke_json(principal, method, data, "nats")
        return "OK", body, ""
    except ApiError as error:
        return error.code, _encoder.encode(error.to_dict()), error.message


async def start_micro_services(bridge: NatsBridge, api: Api, version: str = "1.0.0") -> list[Any]:
    """Register every unary method as a micro endpoint; returns the services (stop them on exit)."""
    dispatch = trio_asyncio.trio_as_aio(_dispatch)

    def endpoint(service: str, name: str) -> Any:
        full = f"{service}/{name}"

        async def handle(request: Request) -> None:
            parts = request.subject.split(".")
            tenant = parts[1] if len(parts) == 4 else ""
            auth = (request.headers or {}).get("Authorization", "")
            scheme, _, tok = auth.partition(" ")
            token = tok.strip() if scheme.lower() == "bearer" else None
            code, body, message = await dispatch(api, tenant, full, token, request.data)
            if code == "OK":
                await request.respond(body)
            else:
                await request.respond_error(code, message, data=body)

        return handle

    async def start() -> list[Any]:
        services = []
        for service, methods in SERVICES.items():
            unary = [m for m in methods if not m.streaming]
            if not unary:
                continue
            svc = await add_service(bridge.nc, name=f"callengine-{service}", version=version,
                                    description=f"callengine {service} API", queue_group=QUEUE_GROUP)
            for m in unary:
                await svc.add_endpoint(name=m.name, subject=f"api.*.{service}.{m.name}",
                                       handler=endpoint(service, m.name),
                                       metadata={"request": m.request.__name__, "response": m.response.__name__,
                                                 "roles": ",".join(sorted(m.roles))})
            services.append(svc)
        return services

    return await bridge.aio(start)


async def stop_micro_services(bridge: NatsBridge, services: list[Any]) -> None:
    async def stop() -> None:
        for svc in services:
            await svc.stop()

    await bridge.aio(stop)
