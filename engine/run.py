"""``callengine run``: one engine node with everything around it, on real servers.

What ``open_engine`` assembles, in this order (and tears down in reverse, so nothing is lost):

1. PostgreSQL: ``open_database()`` (``CALLENGINE_PG_DSN``, or the embedded pgserver in
   ``<state>/pg``), migrations applied; the configuration snapshot (``PgConfigStore``).
2. ``CdrWriter`` (spool ``<state>/cdr.spool``) and ``EventSink``: opened OUTSIDE the node, so they
   flush after the node has shut down and written its last CDRs.
3. ``open_stack``: NATS (``CALLENGINE_NATS_URL`` or an embedded nats-server), the CTI publisher,
   the node, HTTP (Connect), WebSocket and NATS micro services. The ports are
   ``Ports(media=links, cti=TeeCti(publisher, event_sink), cdr=writer)``, wrapped by telemetry
   when it is configured (``engine.telemetry``; a no-op otherwise).
4. ESL: ``MediaLinks(nodes_from_env())`` as the media port, its links as a supervised task of the
   node, ``links.attach(node, engine_live_calls(node, links))``; an ``OutboundServer`` when
   ``CALLENGINE_ESL_OUTBOUND_PORT`` is set.
5. Configuration into the node: ``NodeConfig(snapshot).start(node)``, the router (DIDs -> queue
   or flow; flows are handed to the call as their graph so the IVR runs), ``ConfigWatcher``
   (LISTEN/NOTIFY) applying changes and resyncing after reconnects.
6. API login goes through ``PresenceBridge`` (the agent learns whether its phone is registered
   before any offer).

Time: the engine runs on ``EpochClock`` (trio's clock = epoch seconds, monotonic), so event
times, timer deadlines and CDR times are all epoch seconds, as PostgreSQL partitioning expects.

Not done: the node runs in-process (one trio runtime); Ray shard hosts (``engine/cluster``) are
not wired into ``run`` yet.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import secrets
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

log = logging.getLogger("callengine.run")

__all__ = ["Engine", "EpochClock", "RunOptions", "add_parser", "main", "open_engine"]


class EpochClock(trio.abc.Clock):
    """trio's clock reading epoch seconds: monotonic (never jumps), anchored to ``time.time()``
    when created. Everything timed by trio (timers, sleeps, ``current_time``) is then epoch time."""

    def __init__(self) -> None:
        self._offset = time.time() - time.perf_counter()

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter() + self._offset

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


@dataclass
class RunOptions:
    secret: str = ""
    state_dir: str = ""
    pg_dsn: str | None = None
    nats_url: str | None = None
    host: str = "127.0.0.1"
    esl_nodes: list[Any] | None = None
    esl_heartbeat_s: float = 20.0
    outbound_port: int | None = None
    flows: dict[str, Any] = field(default_factory=dict)
    tenant: str = "default"
    node_name: str = "node-1"
    telemetry: Any = None

    @classmethod
    def from_env(cls) -> RunOptions:
        env = os.environ
        port = env.get("CALLENGINE_ESL_OUTBOUND_PORT")
        return cls(secret=env.get("CALLENGINE_JWT_SECRET", ""),
                   state_dir=env.get("CALLENGINE_STATE_DIR", ""),
                   pg_dsn=env.get("CALLENGINE_PG_DSN") or None,
                   nats_url=env.get("CALLENGINE_NATS_URL") or None,
                   outbound_port=int(port) if port else None)


@dataclass
class Engine:
    node: Any
    stack: Any
    links: Any
    pg: Any
    store: Any
    config: Any
    cdr_writer: Any
    event_sink: Any
    telemetry: Any
    secret: str
    state_dir: pathlib.Path
    outbound_url: str = ""
    prometheus_url: str = ""


def _flow_router(config: Any, flows: dict[str, Any]) -> Any:
    """NodeConfig's DID router, with the flow graph attached to ``EnterFlow`` (from the explicit
    ``flows`` or the snapshot's ``Flow`` rows) so the call machine runs the IVR itself."""
    import msgspec

    from adapters.postgres.config import Flow as FlowRow
    from engine.flows.loader import parse_flows
    from engine.messages import EnterFlow

    base = config.router()
    cache: dict[tuple[str, int], Any] = {}

    def graph(tenant: str, flow_id: str) -> Any:
        if flow_id in flows:
            return flows[flow_id]
        row = config.snapshot.get(FlowRow, tenant, flow_id)
        if row is None:
            return None
        key = (flow_id, row.version)
        if key not in cache:
            cache[key] = parse_flows(row.document, f"flows[{tenant}/{flow_id}]")[0]
        return cache[key]

    def route(event: Any) -> Any:
        decision = base(event)
        if type(decision) is EnterFlow and decision.flow is None:
            g = graph(event.tenant, decision.flow_id)
            if g is not None:
                decision = msgspec.structs.replace(decision, flow=g)
        return decision

    return route


@asynccontextmanager
async def open_engine(options: RunOptions | None = None) -> AsyncIterator[Engine]:
    from adapters.freeswitch.config import nodes_from_env
    from adapters.freeswitch.nodes import MediaLinks, engine_live_calls
    from adapters.freeswitch.presence import DeviceRegistry, PresenceBridge
    from adapters.postgres import open_database
    from adapters.postgres.cdr import open_cdr_writer
    from adapters.postgres.config import NodeConfig, PgConfigStore, open_config_watcher
    from adapters.postgres.events import TeeCti, open_event_sink
    from api.admin_pg import ConfigAdminStore
    from api.app import open_stack
    from engine.actors import Ports, TaskSpec
    from engine.telemetry import Telemetry

    o = options or RunOptions.from_env()
    state = pathlib.Path(o.state_dir or os.environ.get("CALLENGINE_STATE_DIR") or ".state").resolve()
    state.mkdir(parents=True, exist_ok=True)
    secret = o.secret or secrets.token_urlsafe(32)
    telemetry = o.telemetry if o.telemetry is not None else Telemetry.from_env()
    links = MediaLinks(o.esl_nodes if o.esl_nodes is not None else nodes_from_env(),
                       registry=DeviceRegistry(), heartbeat_s=o.esl_heartbeat_s)
    async with AsyncExitStack() as stack:
        pg = await stack.enter_async_context(open_database(o.pg_dsn))
        store = PgConfigStore(pg)
        config = NodeConfig(await store.snapshot())
        writer = await stack.enter_async_context(open_cdr_writer(pg, state / "cdr.spool"))
        sink = await stack.enter_async_context(open_event_sink(pg))
        # telemetry spans/metrics export threads stop after everything else has flushed
        stack.callback(telemetry.shutdown)

        def wrap(ports: Ports) -> Ports:
            return telemetry.wrap_ports(Ports(ports.media, TeeCti(ports.cti, sink), writer, ports.replies))

        # the Admin API writes to PostgreSQL; NOTIFY brings each change back to every node
        admin = ConfigAdminStore(store)
        await admin.prime()
        api_stack = await stack.enter_async_context(open_stack(
            secret=secret, nats_url=o.nats_url, host=o.host, media=links, ports_wrap=wrap, store=admin,
            node_options={"name": o.node_name, "router": _flow_router(config, o.flows),
                          "media_links": [TaskSpec("esl", links.run)]}))
        node = api_stack.node
        links.attach(telemetry.wrap_sink(node), engine_live_calls(node, links))
        config.start(node)
        presence = PresenceBridge(links.registry, node)
        api_stack.api.on_login = presence.on_login
        telemetry.bind(node=node, links=links, cdr_writer=writer, publisher=api_stack.publisher)
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        watcher = await stack.enter_async_context(open_config_watcher(store))
        store.subscribe(config.apply)

        async def resync_loop() -> None:
            while True:
                await trio.sleep(1.0)
                if config.needs_resync:
                    try:
                        await config.resync(store)
                    except Exception as exc:  # noqa: BLE001 - the database may still be down
                        log.warning("configuration resync failed (%r); retrying", exc)

        nursery.start_soon(resync_loop)
        engine = Engine(node=node, stack=api_stack, links=links, pg=pg, store=store, config=config,
                        cdr_writer=writer, event_sink=sink, telemetry=telemetry, secret=secret,
                        state_dir=state)
        del watcher
        if o.outbound_port is not None:
            from adapters.freeswitch.outbound import OutboundServer

            server = OutboundServer.for_links(links, host=o.host, port=o.outbound_port)
            port = await nursery.start(server.run)
            engine.outbound_url = f"{o.host}:{port}"
        if telemetry.metrics is not None and telemetry.prometheus_port is not None:
            engine.prometheus_url = await nursery.start(telemetry.serve_prometheus)
        yield engine


# ------------------------------------------------------------------------------ CLI


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="run an engine node: ESL links, embedded/configured NATS and PostgreSQL, the API",
        description="Run one engine node until Ctrl-C (then shut down cleanly: CDRs and events flushed). "
                    "Configured by CALLENGINE_ESL_NODES/_PASSWORD, CALLENGINE_PG_DSN, CALLENGINE_NATS_URL, "
                    "CALLENGINE_JWT_SECRET, CALLENGINE_STATE_DIR, OTEL_* and CALLENGINE_PROMETHEUS_PORT.")
    p.add_argument("--host", default="127.0.0.1", help="address the API listens on (default 127.0.0.1)")
    p.add_argument("--state-dir", default="", help="CDR spool and embedded PostgreSQL (default .state)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0 = until Ctrl-C)")
    p.set_defaults(func=main)
    return p


async def _serve(options: RunOptions, seconds: float) -> None:
    async with open_engine(options) as engine:
        s = engine.stack
        print(f"callengine node {engine.node.name} running: http {s.http_url}  ws {s.ws_url}  nats {s.nats_url}"
              + (f"  metrics {engine.prometheus_url}" if engine.prometheus_url else ""), flush=True)
        if not options.secret:
            print("no CALLENGINE_JWT_SECRET set: a random one was generated for this run", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with trio.move_on_after(seconds if seconds > 0 else float("inf")):
                async for sig in signals:
                    print(f"signal {sig}: shutting down", flush=True)
                    break
    print(f"stopped; CDR spool {engine.state_dir / 'cdr.spool'}", flush=True)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("CALLENGINE_LOG", "WARNING"))
    options = RunOptions.from_env()
    options.host = args.host
    if args.state_dir:
        options.state_dir = args.state_dir
    trio.run(_serve, options, args.seconds, clock=EpochClock())
    return 0
