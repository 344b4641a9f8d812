"""``callengine run``: one engine node with everything around it, on real servers.

What ``open_engine`` assembles, in this order (and tears down in reverse, so nothing is lost):

1. PostgreSQL: ``open_database()`` (``CALLENGINE_PG_DSN``, or the embedded pgserver in
   ``<state>/pg``), migrations applied; the configuration snapshot (``PgConfigStore``).
2. ``CdrWriter`` (spool ``<state>/cdr.spool``), ``EventSink`` and the ``RecordingWriter``
   (recording metadata from the recording CTI events, docs/recordings.md): opened first, so they
   flush after everything else has stopped and written its last CDRs and events. The API reads
   recordings through ``PgRecordings``; the retention job runs every ``recording_retention_s``.
   The ``VoicemailService`` (docs/voicemail.md) rides the same CTI tee: it stores VOICEMAIL_NEW,
   sends MWI through the ESL links, serves the Voicemail API and expires messages every
   ``voicemail_retention_s``.
3. NATS: ``--nats-url`` / ``CALLENGINE_NATS_URL`` with its credentials (``--nats-creds``,
   ``--nats-user``/``--nats-password``, ``--nats-token``, ``--nats-nkey-seed`` or the ``NATS_*``
   variables, see ``add_parser``), or our own nats-server (``NatsProcess``: fixed port and store
   ``<state>/nats``, so the fault test can restart it under the same URL). ONE bridge (one
   connection, one asyncio loop) carries everything NATS in this process: the CTI publisher, the
   API's micro services and Watch relays, and with ``--fanout nats`` the multi-node feed
   (``adapters.nats.fanout``). It is opened before PostgreSQL, so wrong credentials fail in a
   second (``NatsAuthError``), and PostgreSQL then runs on the same asyncio loop (``open_postgres``
   reuses a running one): no "attached to a different loop" between tasks that use both (an Admin
   API write is such a task).
4. The actors. Default: Ray shard hosts behind a gateway (``engine/cluster/gateway.py``): a local
   ``ray.init(address="local")`` with one host per core (``--shards N``), or ``--ray-address`` /
   ``CALLENGINE_RAY_ADDRESS`` to join a cluster; this process keeps the ESL links, the CTI
   publisher, PostgreSQL and the API (over the gateway's ``ClusterNode`` facade). ``--in-process``:
   the node runs here (one trio runtime), with the same API servers around it as ``open_stack``
   builds, on the bridge of 3.
   The ports are ``Ports(media=links, cti=TeeCti(publisher, event_sink), cdr=writer)``, with the
   webhooks beside them (``adapters.webhooks.node``: this node's CTI events and CDRs to the
   tenants' webhooks, the contact lookup on inbound calls; configuration from PostgreSQL, live),
   wrapped by telemetry when it is configured (``engine.telemetry``; a no-op otherwise).
5. ESL: ``MediaLinks(nodes_from_env())`` as the media port (in process: a supervised task of the
   node; Ray path: a task of the gateway), ``links.attach(node, engine_live_calls(node, links))``;
   an ``OutboundServer`` when ``CALLENGINE_ESL_OUTBOUND_PORT`` is set.
6. Configuration into the node: ``NodeConfig(snapshot).start(node)``, the router (DIDs -> queue
   or flow; flows are handed to the call as their graph so the IVR runs; on the Ray path the
   gateway routes each new call), ``ConfigWatcher`` (LISTEN/NOTIFY) applying changes and resyncing
   after reconnects. Outbound calls: ``engine.routing.router.outbound_router`` in front of that
   router (emergency numbers first, then DIDs, then the tenant's ``outbound_routes``/``trunks`` rows
   via ``OutboundConfigs``, live), with a ``TrunkLedger`` fed by ``LedgerCti`` in the CTI ports.
7. API login goes through ``PresenceBridge`` (the agent learns whether its phone is registered
   before any offer).

Stop: on the Ray path the gateway first hands every event it has to the shards and drains them
(CDRs, CTI events) until they are quiet, then the shard hosts stop, then the publisher empties,
then NATS, the event sink, the CDR writer and PostgreSQL.

Time: the engine runs on ``EpochClock`` (trio's clock = epoch seconds, monotonic), so event
times, timer deadlines and CDR times are all epoch seconds, as PostgreSQL partitioning expects.

Not done: the channel mirror that a restarted shard host rebuilds its calls from is a file, so it
works only where the hosts share this machine's filesystem (the local default), not on a remote
``--ray-address`` cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
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
    #: False: the actors run in Ray shard hosts (``engine.cluster.gateway``); True: in this process
    in_process: bool = False
    #: join this Ray cluster instead of starting a local one
    ray_address: str | None = None
    #: shard hosts (default: one per core, ``engine.cluster.cluster.default_shards``)
    shards: int | None = None
    #: how often the gateway refreshes its view of the shards' states (seconds)
    view_refresh_s: float = 0.2
    #: how often each shard host writes its changed agents/queues to the snapshot store
    snapshot_interval_s: float = 0.2
    #: NATS credentials (``adapters.nats.bridge.NatsSettings``) for the server at ``nats_url``
    nats_creds: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_nkey_seed: str | None = None
    #: "local": watchers get this node's events; "nats": also the events other nodes publish for
    #: their tenant (several nodes on one NATS, ``adapters.nats.fanout``)
    fanout: str = "local"
    #: Ray path: the gateway also mirrors the switch's channels into ``<state>/channels.msgpack``,
    #: the fallback of a restarted shard host whose ESL question to a node fails (hosts on the
    #: gateway's machine only; gateway.py Rule 5). False: the hosts only ask FreeSWITCH
    channel_mirror: bool = True
    #: serve FreeSWITCH's directory and dialplan (mod_xml_curl) on this port of ``host``; None: off.
    #: ``xml_curl_credentials`` "user:password": Basic auth (adapters/freeswitch/xml_curl.py)
    xml_curl_port: int | None = None
    xml_curl_credentials: str = ""
    #: at stop, how long webhook deliveries may drain before the rest become dead letters
    webhook_drain_s: float = 5.0
    #: how often the recordings' retention job runs (docs/recordings.md)
    recording_retention_s: float = 3600.0
    #: how often expired voicemail messages are deleted (docs/voicemail.md)
    voicemail_retention_s: float = 3600.0

    def nats_credentials(self) -> dict[str, str]:
        """The credentials that are set, by ``NatsSettings`` field."""
        values = {"creds": self.nats_creds, "user": self.nats_user, "password": self.nats_password,
                  "token": self.nats_token, "nkey_seed": self.nats_nkey_seed}
        return {k: v for k, v in values.items() if v}

    def nats_settings(self, url: str) -> Any:
        """``NatsSettings`` for ``url`` with these credentials (every NATS connection of the node)."""
        from adapters.nats.bridge import NatsSettings

        c = self.nats_credentials()
        return NatsSettings(url=url, creds=c.get("creds"), user=c.get("user"), password=c.get("password"),
                            token=c.get("token"), nkey_seed=c.get("nkey_seed"))

    def check(self) -> None:
        """Refuse contradictory options (``ValueError`` with the reason)."""
        if self.fanout not in ("local", "nats"):
            raise ValueError(f"fanout must be 'local' or 'nats', not {self.fanout!r}")
        if bool(self.nats_user) != bool(self.nats_password):
            raise ValueError("NATS user and password go together (--nats-user/--nats-password, "
                             "NATS_USER/NATS_PASSWORD)")
        if self.nats_credentials() and not self.nats_url:
            raise ValueError("NATS credentials are for a server given by --nats-url or CALLENGINE_NATS_URL; "
                             "the embedded nats-server takes none")

    @classmethod
    def from_env(cls) -> RunOptions:
        env = os.environ
        port = env.get("CALLENGINE_ESL_OUTBOUND_PORT")
        return cls(secret=env.get("CALLENGINE_JWT_SECRET", ""),
                   state_dir=env.get("CALLENGINE_STATE_DIR", ""),
                   pg_dsn=env.get("CALLENGINE_PG_DSN") or None,
                   nats_url=env.get("CALLENGINE_NATS_URL") or None,
                   outbound_port=int(port) if port else None,
                   ray_address=env.get("CALLENGINE_RAY_ADDRESS") or None,
                   nats_creds=_env("CALLENGINE_NATS_CREDS", "NATS_CREDS"),
                   nats_user=_env("CALLENGINE_NATS_USER", "NATS_USER"),
                   nats_password=_env("CALLENGINE_NATS_PASSWORD", "NATS_PASSWORD"),
                   nats_token=_env("CALLENGINE_NATS_TOKEN", "NATS_TOKEN"),
                   nats_nkey_seed=_env("CALLENGINE_NATS_NKEY_SEED", "NATS_NKEY"),
                   fanout=env.get("CALLENGINE_FANOUT") or "local",
                   xml_curl_port=int(env["CALLENGINE_XML_CURL_PORT"]) if env.get("CALLENGINE_XML_CURL_PORT") else None,
                   xml_curl_credentials=env.get("CALLENGINE_XML_CURL_CREDENTIALS", ""))


def _env(*names: str) -> str | None:
    """The first of ``names`` that is set and not empty."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


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
    #: mod_xml_curl's gateway-url (``--xml-curl-port``), "" when off
    xml_curl_url: str = ""
    #: the Ray cluster and its gateway (None in process)
    cluster: Any = None
    gateway: Any = None
    #: the embedded nats-server (``NatsProcess``), None when ``CALLENGINE_NATS_URL`` is used
    nats_server: Any = None
    #: webhooks, contact lookup and CDR journaling (``adapters.webhooks.node.NodeWebhooks``)
    webhooks: Any = None
    #: per-trunk concurrent calls (``engine.routing.usage.TrunkLedger``), fed by the node's CTI events
    trunk_ledger: Any = None
    #: the tenants' outbound routing, read from the live configuration (``OutboundConfigs``)
    outbound: Any = None


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

    def room_of(tenant: str) -> Any:
        # a conference node takes its room's PIN hashes and flags (docs/conferences.md)
        from adapters.postgres.config import ConferenceRoom as RoomRow
        from engine.conference import rooms_from_rows

        def lookup(number: str) -> Any:
            row = config.snapshot.get(RoomRow, tenant, number)
            return rooms_from_rows([row])[0] if row is not None else None

        return lookup

    def targets_of(tenant: str) -> Any:
        # a transfer node to an extension takes its always-on recording and voicemail (the DID
        # router gives them to a direct call; docs/recordings.md)
        from adapters.postgres.config import Extension as ExtensionRow

        def lookup(number: str) -> Any:
            row = config.snapshot.get(ExtensionRow, tenant, number)
            return row.target_flags() if row is not None else None

        return lookup

    def route(event: Any) -> Any:
        decision = base(event)
        if type(decision) is EnterFlow and decision.flow is None:
            g = graph(event.tenant, decision.flow_id)
            if g is not None:
                from engine.conference import fill_flow_rooms
                from engine.flows.model import fill_flow_targets

                g = fill_flow_targets(fill_flow_rooms(g, room_of(event.tenant)), targets_of(event.tenant))
                decision = msgspec.structs.replace(decision, flow=g)
        return decision

    return route


def pickup_groups(snapshot: Any, tenant: str) -> dict[str, list[str]]:
    """group -> member extensions of ``tenant``, from the live ``extensions`` rows' ``pickup_groups``
    (disabled extensions are in no group)."""
    from adapters.postgres.config import Extension as ExtensionRow

    groups: dict[str, list[str]] = {}
    for row in snapshot.of(ExtensionRow):
        if row.tenant == tenant and row.enabled:
            for group in row.pickup_groups:
                groups.setdefault(group, []).append(row.extension)
    return groups


class OutboundConfigs(Mapping[str, Any]):
    """tenant -> ``engine.routing.outbound.OutboundConfig``, built by ``config_from_entities``
    from the live snapshot's ``trunks``/``outbound_routes`` rows (``NodeConfig.snapshot``, which
    LISTEN/NOTIFY keeps current): rebuilt when the snapshot changes, so a route or trunk written
    while the node runs applies to the next call. A tenant whose rows do not build (an
    ``OutboundConfigError``) has no outbound routing; the error is logged and kept in ``errors``."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.errors: dict[str, str] = {}
        self._version: Any = None
        self._configs: dict[str, Any] = {}

    def _current(self) -> dict[str, Any]:
        version = (id(self.config.snapshot), self.config.applied)
        if version != self._version:
            from adapters.postgres.config import OutboundRoute as RouteRow
            from adapters.postgres.config import Trunk as TrunkRow
            from engine.routing.outbound import OutboundConfigError, config_from_entities

            snapshot = self.config.snapshot
            trunks: dict[str, list[Any]] = {}
            routes: dict[str, list[Any]] = {}
            for t in snapshot.of(TrunkRow):
                trunks.setdefault(t.tenant, []).append(t)
            for r in snapshot.of(RouteRow):
                routes.setdefault(r.tenant, []).append(r)
            configs: dict[str, Any] = {}
            errors: dict[str, str] = {}
            for tenant in sorted(set(trunks) | set(routes)):
                try:
                    configs[tenant] = config_from_entities(trunks.get(tenant, ()), routes.get(tenant, ()))
                except OutboundConfigError as exc:
                    errors[tenant] = str(exc)
                    if self.errors.get(tenant) != errors[tenant]:
                        log.error("tenant %s: outbound routing refused: %s", tenant, exc)
            self._configs, self.errors, self._version = configs, errors, version
        return self._configs

    def __getitem__(self, tenant: str) -> Any:
        return self._current()[tenant]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def _is_internal(config: Any, registry: Any) -> Callable[[str, str], bool]:
    """A number is one of the tenant's own when it has that ``extensions`` row or a phone is
    registered under it."""
    from adapters.postgres.config import Extension as ExtensionRow

    def is_internal(tenant: str, number: str) -> bool:
        return config.snapshot.get(ExtensionRow, tenant, number) is not None or registry.registered(number)

    return is_internal


def _api_outbound(config: Any, outbound: Any, ledger: Any, registry: Any) -> Any:
    """``api.services.OutboundPlanner`` over the live routes: an internal number (``_is_internal``)
    is dialled as an extension, not planned."""
    from api.services import OutboundPlanner

    return OutboundPlanner(outbound, ledger, _is_internal(config, registry))


class NatsProcess:
    """An embedded JetStream nats-server on a fixed port and store directory that can be stopped
    and started again (``restart``): clients reconnect to the same URL and find their stream."""

    def __init__(self, store_dir: pathlib.Path, port: int | None = None) -> None:
        from adapters.nats.server import free_port

        self.store_dir = store_dir
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: Any = None
        self.restarts = 0

    async def start(self, timeout_s: float = 10.0) -> None:
        import subprocess

        from adapters.nats.server import find_binary

        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        self.process = await trio.lowlevel.open_process(args, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL)
        with trio.move_on_after(timeout_s):
            while self.process.returncode is None:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return
        self.process.kill()
        raise RuntimeError(f"nats-server did not listen on port {self.port} (exit {self.process.returncode})")

    async def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        from adapters.nats.server import stop_process

        await stop_process(proc)

    async def restart(self, down_s: float = 1.0) -> None:
        await self.stop()
        await trio.sleep(down_s)
        await self.start()
        self.restarts += 1


@asynccontextmanager
async def open_nats_process(store_dir: pathlib.Path) -> AsyncIterator[NatsProcess]:
    server = NatsProcess(store_dir)
    for _attempt in range(3):
        try:
            await server.start()
            break
        except RuntimeError:
            server = NatsProcess(store_dir)  # lost the port race: another port
    else:
        raise RuntimeError("nats-server did not start after 3 attempts")
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


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
    from engine.actors import Ports, TaskSpec
    from engine.telemetry import Telemetry

    o = options or RunOptions.from_env()
    o.check()
    state = pathlib.Path(o.state_dir or os.environ.get("CALLENGINE_STATE_DIR") or ".state").resolve()
    state.mkdir(parents=True, exist_ok=True)
    secret = o.secret or secrets.token_urlsafe(32)
    telemetry = o.telemetry if o.telemetry is not None else Telemetry.from_env()
    links = MediaLinks(o.esl_nodes if o.esl_nodes is not None else nodes_from_env(),
                       registry=DeviceRegistry(), heartbeat_s=o.esl_heartbeat_s)
    async with AsyncExitStack() as stack:
        nats_server = None
        nats_url = o.nats_url
        if nats_url is None:
            # our own nats-server (not open_stack's): a fixed port and store, so it can restart
            nats_server = await stack.enter_async_context(open_nats_process(state / "nats"))
            nats_url = nats_server.url
        # the NATS bridge opens its own asyncio loop; opened first (wrong credentials fail before
        # PostgreSQL starts), PostgreSQL then runs on the same loop (open_postgres reuses a running
        # one): one loop, no "attached to a different loop" between tasks that use both (module doc)
        from adapters.nats.bridge import open_bridge

        bridge = await stack.enter_async_context(open_bridge(o.nats_settings(nats_url)))
        pg = await stack.enter_async_context(open_database(o.pg_dsn))
        store = PgConfigStore(pg)
        config = NodeConfig(await store.snapshot())
        writer = await stack.enter_async_context(open_cdr_writer(pg, state / "cdr.spool"))
        sink = await stack.enter_async_context(open_event_sink(pg))
        # recordings' metadata from the recording CTI events (docs/recordings.md), flushed after the node
        from adapters.postgres.recordings import PgRecordings, open_recording_writer, run_retention

        recordings = await stack.enter_async_context(open_recording_writer(pg))
        # voicemail (docs/voicemail.md): VOICEMAIL_NEW from the CTI tee is stored, MWI goes to the switch
        from adapters.freeswitch.voicemail import esl_mwi
        from adapters.postgres.voicemail import VoicemailService, VoicemailStore

        voicemail = VoicemailService(VoicemailStore(pg), esl_mwi(links))
        # webhooks, contact lookup, CDR journaling (adapters/webhooks/node.py): config from
        # PostgreSQL (live), stopped after the node (drain, then dead letters to PostgreSQL)
        from adapters.webhooks.node import open_node_webhooks

        webhooks = await stack.enter_async_context(open_node_webhooks(pg, drain_s=o.webhook_drain_s))
        # telemetry spans/metrics export threads stop after everything else has flushed
        stack.callback(telemetry.shutdown)

        # outbound calls: the trunk ledger counts each trunk's calls from this node's CTI events
        # (both paths publish through these ports, the Ray gateway for its shards)
        from engine.routing.router import outbound_router
        from engine.routing.usage import LedgerCti, TrunkLedger

        ledger = TrunkLedger()
        # parking: the slots and the "who rings where" view follow the same CTI events; pickup
        # groups are read from the live extensions (docs/parking.md)
        from engine.parking import ParkingCti, ParkingViews

        parking = ParkingViews(groups_of=lambda tenant: pickup_groups(config.snapshot, tenant))

        def wrap(ports: Ports) -> Ports:
            tee = TeeCti(ports.cti, sink, recordings, voicemail)
            cti, cdr = webhooks.ports(ParkingCti(parking, LedgerCti(ledger, tee)),
                                      writer)
            return telemetry.wrap_ports(Ports(ports.media, cti, cdr, ports.replies))

        # the Admin API writes to PostgreSQL; NOTIFY brings each change back to every node
        admin = ConfigAdminStore(store)
        await admin.prime()
        # an emergency number is planned first; then DIDs (queue/flow); then the outbound routes
        outbound = OutboundConfigs(config)
        router = outbound_router(outbound, ledger, fallback=_flow_router(config, o.flows))
        # in front of all: a tenant's own phone dialling a pickup code (**<ext>, *8, a park slot)
        from engine.parking import pickup_router

        router = pickup_router(parking, router, _is_internal(config, links.registry))
        cluster: Any = None
        gateway: Any = None
        api_stack: Any
        node: Any
        if o.in_process:
            api_stack = await _open_inprocess_stack(
                stack, o, secret=secret, nats_url=nats_url, bridge=bridge, links=links, wrap=wrap, store=admin,
                node_options={"name": o.node_name, "router": router, "media_links": [TaskSpec("esl", links.run)]})
            node = api_stack.node
        else:
            api_stack, cluster, gateway = await _open_cluster_stack(
                stack, o, state=state, secret=secret, nats_url=nats_url, bridge=bridge, links=links, wrap=wrap,
                store=admin, router=router)
            node = gateway.node
        api_stack.nats_server = nats_server
        links.attach(telemetry.wrap_sink(node), engine_live_calls(node, links))
        config.start(node)
        presence = PresenceBridge(links.registry, node)
        api_stack.api.on_login = presence.on_login
        # click-to-call and blind transfers to outside numbers: the same routes and trunk counts
        api_stack.api.outbound = _api_outbound(config, outbound, ledger, links.registry)
        api_stack.api.parking = parking
        api_stack.api.webhooks = webhooks
        # conferences (docs/conferences.md): the tenants' rooms from the live snapshot, one machine per
        # live room fed by a conference-only ESL connection per node, CTI through the node's own port
        from adapters.postgres.config import ConferenceRoom as RoomRow
        from engine.conference import ConferenceEsl, ConferenceService, rooms_from_rows

        def _call_of(uuid: str) -> str:
            for media_node in links.nodes.values():
                info = media_node.table.by_uuid.get(uuid)
                if info is not None:
                    return str(info.call_id)
            return ""

        cti_owner = gateway if gateway is not None else node
        conferences = ConferenceService(
            lambda event: cti_owner.ports.cti.publish(event), call_of=_call_of,
            source=lambda: ((id(config.snapshot), config.applied), rooms_from_rows(config.snapshot.of(RoomRow))))
        conference_esl = ConferenceEsl([link.config for link in links.links.values()], conferences)
        api_stack.api.conferences = conferences
        # recordings: the tenant's policy and the rows for the API; audio is fetched from the media
        # store at CALLENGINE_RECORDINGS_URL (+ the file name), when the operator runs one
        api_stack.api.recordings = PgRecordings(pg, audio_base=os.environ.get("CALLENGINE_RECORDINGS_URL", ""))
        api_stack.api.voicemail = voicemail
        # a voicemail_access node's mailbox goes back to its call through the node (docs/voicemail.md)
        voicemail.deliver = node.deliver_nowait
        telemetry.bind(node=node, links=links, cdr_writer=writer, publisher=api_stack.publisher, webhooks=webhooks)
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
        await nursery.start(conference_esl.run)
        # retention: expired recording rows are marked hourly (the audio is the media server's to delete)
        nursery.start_soon(lambda: run_retention(pg, interval_s=o.recording_retention_s))
        nursery.start_soon(voicemail.run)
        nursery.start_soon(lambda: voicemail.run_retention(time.time, interval_s=o.voicemail_retention_s))
        engine = Engine(node=node, stack=api_stack, links=links, pg=pg, store=store, config=config,
                        cdr_writer=writer, event_sink=sink, telemetry=telemetry, secret=secret,
                        state_dir=state, cluster=cluster, gateway=gateway, nats_server=nats_server,
                        webhooks=webhooks, trunk_ledger=ledger, outbound=outbound)
        del watcher
        if o.outbound_port is not None:
            from adapters.freeswitch.outbound import OutboundServer

            server = OutboundServer.for_links(links, host=o.host, port=o.outbound_port)
            port = await nursery.start(server.run)
            engine.outbound_url = f"{o.host}:{port}"
        if telemetry.metrics is not None and telemetry.prometheus_port is not None:
            engine.prometheus_url = await nursery.start(telemetry.serve_prometheus)
        if o.xml_curl_port is not None:
            from adapters.freeswitch.xml_curl import XmlCurlApp, serve_xml_curl

            app = XmlCurlApp(lambda: config.snapshot, credentials=o.xml_curl_credentials,
                             socket=engine.outbound_url)
            engine.xml_curl_url = await nursery.start(serve_xml_curl, app, o.host, o.xml_curl_port)
        yield engine


@dataclass
class ClusterStack:
    """What ``api.app.open_stack`` gives (``Engine.stack``), built here on the engine's one NATS
    bridge: around the gateway's ``ClusterNode`` (Ray path) or a ``Node`` in this process."""

    node: Any
    api: Any
    publisher: Any
    hub: Any
    media: Any
    bridge: Any = None
    nats_url: str = ""
    http_url: str = ""
    ws_url: str = ""
    ws: Any = None
    services: list[Any] = field(default_factory=list)
    relays: Any = None
    nats_server: Any = None
    #: the multi-node feed (``adapters.nats.fanout.NatsFanout``) with ``fanout="nats"``
    fanout: Any = None


async def _start_fanout(o: RunOptions, nursery: trio.Nursery, bridge: Any, hub: Any) -> Any:
    if o.fanout != "nats":
        return None
    from adapters.nats.fanout import NatsFanout

    feed = NatsFanout(bridge, hub)
    await nursery.start(feed.run)
    return feed


async def _serve_api(stack: AsyncExitStack, o: RunOptions, result: ClusterStack, api: Any,
                     nursery: trio.Nursery) -> None:
    """HTTP (Connect), WebSocket and the NATS micro services around ``api`` (as ``open_stack``)."""
    from adapters.nats.micro import WatchRelays, start_micro_services, stop_micro_services
    from api.http import serve_http
    from api.ws import WsServer

    result.http_url = await nursery.start(serve_http, api, o.host, 0)
    result.ws = WsServer(api)
    port = await nursery.start(result.ws.serve, o.host, 0)
    result.ws_url = f"ws://{o.host}:{port}"
    result.relays = WatchRelays(nursery, result.bridge)
    result.services = await start_micro_services(result.bridge, api, relays=result.relays)

    async def stop_services() -> None:
        # first thing on the way out: stop taking API requests
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await stop_micro_services(result.bridge, result.services)

    stack.push_async_callback(stop_services)


async def _open_publisher(stack: AsyncExitStack, o: RunOptions, bridge: Any) -> tuple[Any, Any, Any]:
    """The CTI publisher (and the fan-out feed) in a nursery that outlives the node: on the way
    out the publisher empties after the node has produced its last events."""
    from adapters.nats.publisher import CtiPublisher
    from api.hub import EventHub

    hub = EventHub()
    publisher = CtiPublisher(bridge, hub)
    pumps = await stack.enter_async_context(trio.open_nursery())
    stack.callback(pumps.cancel_scope.cancel)
    await pumps.start(publisher.run)

    async def publisher_flushed() -> None:
        with trio.move_on_after(10):
            while len(publisher):
                await trio.sleep(0.05)

    stack.push_async_callback(publisher_flushed)
    feed = await _start_fanout(o, pumps, bridge, hub)
    return hub, publisher, feed


async def _open_inprocess_stack(stack: AsyncExitStack, o: RunOptions, *, secret: str, nats_url: str, bridge: Any,
                                links: Any, wrap: Any, store: Any, node_options: dict[str, Any]) -> ClusterStack:
    """``--in-process``: the node in this process, the API around it, all NATS on ``bridge``."""
    from api.auth import AuditLog, Authenticator, RateLimiter
    from api.dispatch import Api
    from engine.actors import InMemoryCdrs, InMemoryReplies, Ports, open_node

    hub, publisher, feed = await _open_publisher(stack, o, bridge)
    ports = wrap(Ports(links, publisher, InMemoryCdrs(keep=False), InMemoryReplies(keep=False)))
    node = await stack.enter_async_context(open_node(ports=ports, **node_options))
    api = Api(node, Authenticator(secret), store=store, hub=hub, bridge=bridge,
              limiter=RateLimiter(200.0, 400.0), audit=AuditLog())
    result = ClusterStack(node=node, api=api, publisher=publisher, hub=hub, media=links, bridge=bridge,
                          nats_url=nats_url, fanout=feed)
    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    await _serve_api(stack, o, result, api, nursery)
    return result


async def _open_cluster_stack(stack: AsyncExitStack, o: RunOptions, *, state: pathlib.Path, secret: str,
                              nats_url: str, bridge: Any, links: Any, wrap: Any, store: Any,
                              router: Any) -> tuple[ClusterStack, Any, Any]:
    """The gateway process (engine/cluster/gateway.py): NATS bridge, CTI publisher, the Ray shard
    hosts, the gateway pumps, the API over the gateway's ``ClusterNode``. Registered on ``stack``
    so that on exit the gateway drains the hosts (CDRs, CTI) before anything is stopped."""
    from adapters.freeswitch.channels import EslChannelSource
    from api.auth import AuditLog, Authenticator, RateLimiter
    from api.dispatch import Api
    from engine.actors import InMemoryCdrs, InMemoryReplies, Ports
    from engine.cluster.cluster import Cluster, default_shards
    from engine.cluster.gateway import Gateway, SwitchChannelSource, channel_file_for
    from engine.cluster.host import HostConfig
    from engine.cluster.snapshots import FileSnapshotStore

    hub, publisher, feed = await _open_publisher(stack, o, bridge)
    ports = wrap(Ports(links, publisher, InMemoryCdrs(keep=False), InMemoryReplies(keep=False)))
    channel_file = channel_file_for(state)
    snapshots = state / "snapshots"
    if o.ray_address is None and snapshots.exists():
        import shutil

        shutil.rmtree(snapshots, ignore_errors=True)  # a fresh local cluster: no stale images
    channel_file.unlink(missing_ok=True)
    shards = o.shards if o.shards is not None else default_shards()
    # a restarted host asks each FreeSWITCH node itself; the mirror file only when one cannot answer
    mirror = str(channel_file) if o.channel_mirror else ""
    sources = tuple(SwitchChannelSource(EslChannelSource(link.config), link.config.name, mirror)
                    for link in links.links.values())
    host_config = HostConfig(namespace=f"callengine-{os.getpid()}", store=FileSnapshotStore(snapshots),
                             channel_sources=sources,
                             collect_events=True, snapshot_interval_s=o.snapshot_interval_s)
    cluster = Cluster(shards=shards, ray_address=o.ray_address, config=host_config,
                      host_cpus=0.5 if o.ray_address is None else 1.0)
    log.info("starting %d shard host(s) on Ray", shards)
    import ray

    started_ray = False
    if o.ray_address is None and not ray.is_initialized():
        # address="local": a Ray of our own, even when another one runs on this machine (a plain
        # ray.init() would join it)
        # its own temp dir (short: Ray's socket paths must fit 107 bytes), not the machine-wide
        # /tmp/ray that other Ray instances on this machine share
        import tempfile

        ray_tmp = tempfile.mkdtemp(prefix="cer-")
        # in THIS thread, blocking the loop for the few seconds it takes: Ray starts its GCS and
        # raylet with PR_SET_PDEATHSIG, i.e. they are killed when the *thread* that started them
        # exits, and a trio worker thread exits once idle (the head died ~10-30 s into a run)
        ray.init(address="local", num_cpus=max(1, shards), include_dashboard=False,
                 object_store_memory=cluster.object_store_memory, namespace=host_config.namespace,
                 log_to_driver=False, _temp_dir=ray_tmp)
        started_ray = True
    await trio.to_thread.run_sync(cluster.start)

    async def stop_cluster() -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cluster.shutdown)
            if started_ray:
                await trio.to_thread.run_sync(ray.shutdown)
                import shutil

                shutil.rmtree(ray_tmp, ignore_errors=True)

    stack.push_async_callback(stop_cluster)
    gateway = Gateway(cluster, ports, name=o.node_name, router=router,
                      channel_file=channel_file if o.channel_mirror else None, sweep=True,
                      refresh_s=o.view_refresh_s)
    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    await nursery.start(gateway.run)
    await nursery.start(links.run)
    # gateway.node is the Node facade (gateway.py), not a Node: hence the ignore
    api = Api(gateway.node, Authenticator(secret), store=store, hub=hub, bridge=bridge,  # type: ignore[arg-type]
              limiter=RateLimiter(200.0, 400.0), audit=AuditLog())
    result = ClusterStack(node=gateway.node, api=api, publisher=publisher, hub=hub, media=links,
                          bridge=bridge, nats_url=nats_url, fanout=feed)

    async def stop_gateway() -> None:
        # Ctrl-C: (the API stopped taking requests first, _serve_api) hand every event already in
        # to the shards and bring back what they produced (Rule 7 of gateway.py): nothing is lost
        with trio.CancelScope(shield=True):
            n = await gateway.drain(timeout=10.0)
            log.info("gateway drained %d outputs at shutdown", n)

    stack.push_async_callback(stop_gateway)
    await _serve_api(stack, o, result, api, nursery)
    return result, cluster, gateway


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
    p.add_argument("--xml-curl-port", type=int, default=None, metavar="PORT",
                   help="serve FreeSWITCH's directory and dialplan to mod_xml_curl on this port of --host "
                        "(env CALLENGINE_XML_CURL_PORT; Basic auth from CALLENGINE_XML_CURL_CREDENTIALS "
                        "user:password; default off)")
    add_cluster_arguments(p)
    add_nats_arguments(p)
    p.set_defaults(func=main)
    return p


def add_nats_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "NATS", "the NATS server and how to authenticate to it (default: an embedded nats-server, no "
                "credentials). Each option falls back to the variable named in its help; prefer the "
                "variables or files for secrets (command lines are visible to other local users)")
    g.add_argument("--nats-url", default=None, metavar="URL",
                   help="NATS server, e.g. nats://nats.example:4222 (env CALLENGINE_NATS_URL; "
                        "default: start an embedded nats-server)")
    g.add_argument("--nats-creds", default=None, metavar="FILE",
                   help="a .creds file (user JWT + nkey seed; NATS operator mode) "
                        "(env CALLENGINE_NATS_CREDS, then NATS_CREDS)")
    g.add_argument("--nats-user", default=None, metavar="USER",
                   help="user name, with --nats-password (env CALLENGINE_NATS_USER, then NATS_USER)")
    g.add_argument("--nats-password", default=None, metavar="PASSWORD",
                   help="password of --nats-user (env CALLENGINE_NATS_PASSWORD, then NATS_PASSWORD)")
    g.add_argument("--nats-token", default=None, metavar="TOKEN",
                   help="authentication token (env CALLENGINE_NATS_TOKEN, then NATS_TOKEN)")
    g.add_argument("--nats-nkey-seed", default=None, metavar="FILE",
                   help="a file holding a user nkey seed (SU...) (env CALLENGINE_NATS_NKEY_SEED, then NATS_NKEY)")
    g.add_argument("--fanout", choices=("local", "nats"), default=None,
                   help="local: event watchers (WebSocket, Connect, NATS Watch) get this node's events; "
                        "nats: also the events other nodes publish for their tenants, for several nodes on "
                        "one NATS (env CALLENGINE_FANOUT; default local)")


def nats_options(options: RunOptions, args: argparse.Namespace) -> RunOptions:
    """Apply the NATS options over the environment's values (bad combinations: SystemExit with
    the reason)."""
    for name in ("nats_url", "nats_creds", "nats_user", "nats_password", "nats_token", "nats_nkey_seed",
                 "fanout"):
        value = getattr(args, name, None)
        if value:
            setattr(options, name, value)
    try:
        options.check()
    except ValueError as error:
        raise SystemExit(f"callengine run: {error}") from None
    return options


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("actors", "where the actors run (default: local Ray shard hosts)")
    g.add_argument("--in-process", action="store_true",
                   help="run the actors in this process (one trio runtime, no Ray)")
    g.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (default: CALLENGINE_RAY_ADDRESS, else a local ray.init())")
    g.add_argument("--shards", type=int, default=None, help="shard hosts (default: one per core)")


def cluster_options(options: RunOptions, args: argparse.Namespace) -> RunOptions:
    """Apply --in-process / --ray-address / --shards (bad values: SystemExit with the reason)."""
    if args.shards is not None and args.shards < 1:
        raise SystemExit("--shards must be >= 1")
    if args.in_process and (args.ray_address or args.shards is not None):
        raise SystemExit("--in-process runs no Ray shards: drop --ray-address/--shards")
    options.in_process = bool(args.in_process)
    if args.ray_address:
        options.ray_address = args.ray_address
    options.shards = args.shards
    return options


async def _serve(options: RunOptions, seconds: float) -> None:
    async with open_engine(options) as engine:
        s = engine.stack
        where = ("in process" if engine.cluster is None else
                 f"{len(engine.cluster.names)} Ray shard host(s)"
                 + (f" on {options.ray_address}" if options.ray_address else " (local Ray)"))
        print(f"callengine node {engine.node.name} running ({where}): http {s.http_url}  ws {s.ws_url}  "
              f"nats {s.nats_url}" + (f"  metrics {engine.prometheus_url}" if engine.prometheus_url else "")
              + (f"  xml_curl {engine.xml_curl_url}" if engine.xml_curl_url else ""),
              flush=True)
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
    if getattr(args, "xml_curl_port", None) is not None:
        options.xml_curl_port = args.xml_curl_port
    cluster_options(options, args)
    nats_options(options, args)
    from adapters.nats.bridge import NatsConnectError

    try:
        trio.run(_serve, options, args.seconds, clock=EpochClock())
    except NatsConnectError as error:
        # wrong credentials or no server: said in one line, before PostgreSQL or Ray started
        print(f"callengine run: cannot connect to NATS: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
