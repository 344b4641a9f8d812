"""Assemble the API around a node: embedded or configured NATS, publisher, HTTP, WebSocket, micro.

``open_stack`` is what ``callengine serve``-style entry points, the tests and the bench use:

    async with open_stack(secret="...", node_options={...}) as stack:
        stack.http_url, stack.ws_url, stack.nats_url, stack.node, stack.api

With ``nats_url=None`` and ``nats=True`` it starts nats-server (JetStream, loopback, free port,
temporary directory) and stops it on exit (ARCHITECTURE.md §6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from adapters.nats.bridge import NatsBridge, NatsSettings, StreamSettings, open_bridge
from adapters.nats.publisher import CtiPublisher
from adapters.nats.server import open_embedded_nats
from api.auth import AuditLog, Authenticator, RateLimiter
from api.dispatch import Api
from api.http import serve_http
from api.hub import EventHub
from api.ws import WsServer
from engine.actors import InMemoryCdrs, InMemoryMedia, InMemoryReplies, Node, Ports, open_node
from engine.parking import ParkingCti, ParkingViews

__all__ = ["Stack", "open_stack"]


@dataclass
class Stack:
    node: Node
    api: Api
    publisher: CtiPublisher
    hub: EventHub
    media: Any
    bridge: NatsBridge | None = None
    nats_url: str = ""
    http_url: str = ""
    ws_url: str = ""
    ws: WsServer | None = None
    services: list[Any] = field(default_factory=list)
    #: NATS Events.Watch relays (adapters.nats.micro.WatchRelays), when micro services run
    relays: Any = None
    #: the multi-node feed (adapters.nats.fanout.NatsFanout) with ``fanout="nats"``
    fanout: Any = None


@asynccontextmanager
async def open_stack(*, secret: str | bytes, nats: bool = True, nats_url: str | None = None,
                     nats_settings: dict[str, Any] | None = None, stream: StreamSettings | None = None,
                     http: bool = True, ws: bool = True, micro: bool = True, host: str = "127.0.0.1",
                     rate: float = 200.0, burst: float = 400.0, store: Any | None = None,
                     media: Any | None = None, ws_options: dict[str, Any] | None = None,
                     node_options: dict[str, Any] | None = None,
                     publisher_options: dict[str, Any] | None = None,
                     ports_wrap: Any | None = None,
                     watch_options: dict[str, Any] | None = None,
                     presence: Any | None = None, fanout: str = "local",
                     jwt_algorithms: tuple[str, ...] = ("HS256",)) -> AsyncIterator[Stack]:
    """``ports_wrap(ports) -> ports`` lets the caller put its own CDR store / CTI tee / tracing
    around the ports before the node starts (``engine/run.py``).

    ``fanout="nats"`` (several engine nodes on one NATS): watchers on this node also get the
    events other nodes publish for their tenant (``adapters.nats.fanout.NatsFanout``);
    ``"local"`` (one node, the default) feeds watchers from this node's publisher only.

    ``secret`` verifies bearer tokens: the HMAC secret (HS256, the default) or, with
    ``jwt_algorithms=("RS256",)`` / ``("ES256",)``, the issuer's public key (PEM)."""
    if fanout not in ("local", "nats"):
        raise ValueError(f"fanout must be 'local' or 'nats', not {fanout!r}")
    if fanout == "nats" and not nats:
        raise ValueError("fanout='nats' needs NATS")
    async with AsyncExitStack() as stack:
        bridge: NatsBridge | None = None
        url = ""
        if nats:
            if nats_url is None:
                server = await stack.enter_async_context(open_embedded_nats())
                url = server.url
            else:
                url = nats_url
            bridge = await stack.enter_async_context(
                open_bridge(NatsSettings(url=url, **(nats_settings or {})), stream))
        hub = EventHub()
        publisher = CtiPublisher(bridge, hub, **(publisher_options or {}))
        media = media if media is not None else InMemoryMedia()
        # parking's lot and ringing view follow the machines' CTI events (docs/parking.md)
        parking = ParkingViews()
        ports = Ports(media, ParkingCti(parking, publisher), InMemoryCdrs(), InMemoryReplies())
        if ports_wrap is not None:
            ports = ports_wrap(ports)
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            feed = None
            if fanout == "nats" and bridge is not None:
                from adapters.nats.fanout import NatsFanout

                feed = NatsFanout(bridge, hub)
                await nursery.start(feed.run)
            async with open_node(ports=ports, **(node_options or {})) as node:
                api = Api(node, Authenticator(secret, algorithms=jwt_algorithms), store=store, hub=hub, bridge=bridge,
                          limiter=RateLimiter(rate, burst), audit=AuditLog(), presence=presence)
                api.parking = parking
                result = Stack(node=node, api=api, publisher=publisher, hub=hub, media=media,
                               bridge=bridge, nats_url=url, fanout=feed)
                if http:
                    result.http_url = await nursery.start(serve_http, api, host, 0)
                if ws:
                    result.ws = WsServer(api, **(ws_options or {}))
                    port = await nursery.start(result.ws.serve, host, 0)
                    result.ws_url = f"ws://{host}:{port}"
                if micro and bridge is not None:
                    from adapters.nats.micro import WatchRelays, start_micro_services

                    result.relays = WatchRelays(nursery, bridge, **(watch_options or {}))
                    result.services = await start_micro_services(bridge, api, relays=result.relays)
                try:
                    yield result
                finally:
                    if result.services and bridge is not None:
                        from adapters.nats.micro import stop_micro_services

                        with trio.CancelScope(shield=True), trio.move_on_after(2):
                            await stop_micro_services(bridge, result.services)
            # reached only when the block ended normally: stop the servers and the pump
            nursery.cancel_scope.cancel()
