"""The shard host: one Ray actor hosting one trio actor runtime (``ShardNode``) in its own thread.

Rules
1. Ray is the control plane and the batch carrier, never the per-event path: a method call
   carries a batch (``deliver_batch``) or asks for something rare (statistics, hand-over). The
   trio thread owns every actor; Ray's thread only hands bytes over (``trio.from_thread``), which
   also keeps a method call's batch in call order.
2. Start = recovery. Ray reruns ``__init__`` after a crash (``max_restarts=-1``). The host then
   (a) reads the newest directory from the snapshot store, (b) adopts the agent and queue images
   it owns (timers re-armed at their deadlines), (c) asks every media node which channels exist and
   rebuilds the calls it owns, (d) repairs agents against those channels, and only then returns
   from ``__init__``, so the batches Ray queued for it meanwhile (``max_task_retries=-1``) land on
   rebuilt actors. Finally it asks its peers to re-announce (``resync``): agents whose queues live
   here resend their status, callers waiting in queues that live here rejoin them.
3. Cross-shard sends go through the ``Outbox`` to ``peer.deliver_batch.remote(bytes)``: one Ray
   call per batch, fire-and-forget; Ray does not always keep a link's order, the receiver
   restores it (Rule 4).
4. A batch is applied once, and in order per link. Ray retries a call to a restarted host
   (``max_task_retries=-1``), so the same batch can arrive twice, and Ray may run two batches of
   one link out of order. ``LinkInbox`` (links.py; per link: sender incarnation, sequence number)
   drops the copy and holds an early batch until the ones before it arrived (at most
   ``link_max_held`` per link, at most ``link_hold_s``: a lost batch never blocks a link). The
   marks of what was applied are written with every snapshot pass, in the same ``put_many`` as
   the images they match, and restored on start: a retried batch that the restored images
   already contain is dropped, one they do not contain is applied.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from engine.actors.node import route_by_destination
from engine.actors.ports import InMemoryCti, InMemoryReplies, Ports
from engine.cluster.clock import ClusterClock
from engine.cluster.links import LinkInbox
from engine.cluster.outbox import Outbox
from engine.cluster.placement import Directory, directory_decoder
from engine.cluster.recovery import (
    LiveChannel,
    agent_claims,
    agent_status,
    rebuild_calls,
    reconcile_agent,
    reconcile_queue,
    requeue_message,
    restored_agent,
    restored_queue,
)
from engine.cluster.shard import ShardNode
from engine.cluster.snapshots import DIRECTORY_KEY, SnapshotStore, entity_key, parse_key
from engine.cluster.wire import decode_batch, decode_image, encode_image, state_of
from engine.fsm.agent import Agent, AgentState
from engine.fsm.queue import QueueConfig
from engine.messages import Cdr, CtiEvent, MediaCommand, Reply, Send, TimerFired

__all__ = ["HostConfig", "ShardHostCore", "actor_name"]


class HostConfig(msgspec.Struct, kw_only=True):
    namespace: str = "callengine"
    prefix: str = "callengine-shard-"
    directory: Directory = Directory()
    #: picklable store (FileSnapshotStore for a machine, a NATS KV store for a cluster)
    store: Any = None
    #: picklable callables, one per media node, returning ``list[LiveChannel]``
    channel_sources: tuple[Any, ...] = ()
    #: dialled destination -> queue (the router for new calls)
    routes: dict[str, str] = {}
    snapshot_interval_s: float = 0.1
    max_batch: int = 1024
    max_delay_s: float = 0.001
    #: keep media commands and CDRs for ``drain_outputs`` (an external switch plays FreeSWITCH)
    collect_outputs: bool = True
    #: also keep CTI events and replies nobody here asked for, for ``drain_outputs`` (a gateway
    #: process publishes them and answers its API's asks: engine/cluster/gateway.py)
    collect_events: bool = False
    #: a ``loadgen.LocalSwitch`` factory (benchmarks): plays FreeSWITCH inside the shard
    local_switch: Any = None
    #: shard-to-shard carrier: "ray" (chosen, docs/cluster.md) or "nats" (a subject per shard on
    #: ``nats_url``; measured in bench/cluster.py, at most once, no retry to a restarted host)
    transport: str = "ray"
    nats_url: str = ""
    #: per-link FIFO (links.py): batches held per link at most, and how long a gap is waited for
    link_max_held: int = 256
    link_hold_s: float = 0.5
    #: a link restored from a snapshot gives its first gap up sooner (links.py Rule 3)
    link_restored_hold_s: float = 0.05
    #: how long a restarted host waits for its peers' agent claims (recovery.py Rule 6)
    peer_claims_timeout_s: float = 5.0
    #: how long, at most, a restarted host holds the agents of the ringing legs it hung up until
    #: those hangups are drained (``_release_after_hangups``)
    after_hangups_max_s: float = 2.0


#: snapshot key kind of a host's link marks (``links.<hex shard>``)
LINKS_KIND = "links"


def actor_name(config: HostConfig, shard: str) -> str:
    return f"{config.prefix}{shard}"


class _CollectMedia:
    def __init__(self) -> None:
        self.items: deque[MediaCommand] = deque()
        self.count = 0
        self.keep = True
        self.listeners: list[Callable[[MediaCommand], None]] = []

    def send(self, command: MediaCommand) -> None:
        self.count += 1
        if self.keep:
            self.items.append(command)
        for listener in self.listeners:
            listener(command)


class _CollectCdrs:
    def __init__(self) -> None:
        self.items: deque[Cdr] = deque()
        self.count = 0
        self.keep = True
        self.listeners: list[Callable[[Cdr], None]] = []

    def write(self, cdr: Cdr) -> None:
        self.count += 1
        if self.keep:
            self.items.append(cdr)
        for listener in self.listeners:
            listener(cdr)


_out_encoder = msgspec.msgpack.Encoder()
_claims_encoder = msgspec.msgpack.Encoder()
_claims_decoder = msgspec.msgpack.Decoder(list[LiveChannel])


class ShardHostCore:
    """Plain class; ``cluster.py`` makes it a Ray actor. Usable without Ray in one process when
    ``send`` is given (unit tests wire hosts to each other directly)."""

    def __init__(self, shard: str, config: HostConfig, send: Callable[[str, bytes], None] | None = None) -> None:
        self.shard = shard
        self.config = config
        self._send_override = send
        self._peers: dict[str, Any] = {}
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._error: BaseException | None = None
        self.started_at = time.time()
        self.recovery: dict[str, Any] = {}
        #: offers of legs the rebuild hung up, released to their agents once the hangups are handed
        #: over (recovery.py Rule 4)
        self._peer_claims_error = ""
        self._after_hangups: list[tuple[str, Send]] = []  # (tenant of the call, send)
        self._written: dict[tuple[str, str], Any] = {}
        self._snapshot_lock: trio.Lock | None = None
        self.snapshots_written = 0
        self.links: LinkInbox[list[Any]] = LinkInbox(max_held=config.link_max_held, hold_s=config.link_hold_s,
                                                     restored_hold_s=config.link_restored_hold_s)
        self._links_lot: trio.lowlevel.ParkingLot | None = None
        self._links_written = b""
        self._link: Any = None
        self._thread = threading.Thread(target=self._thread_main, name=f"trio-{shard}", daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"shard {shard} failed to start: {self._error!r}")
        self.restarted = False
        if config.transport == "nats" and send is None:
            from engine.cluster.natsio import NatsLink

            link = NatsLink(config.nats_url, prefix=f"{config.namespace}.shard")
            link.start(shard, self.deliver_batch)
            self._link = link
        if send is None:
            self._announce_restart()

    def _announce_restart(self) -> None:
        """After a crash, ask every peer to re-announce what this shard may have lost (Rule 2)."""
        import ray

        try:
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        except Exception:
            return
        if not self.restarted:
            return
        for peer in self.node.directory.shards:
            if peer != self.shard:
                try:
                    handle = self._peers.get(peer) or ray.get_actor(actor_name(self.config, peer),
                                                                   namespace=self.config.namespace)
                    self._peers[peer] = handle
                    handle.resync.remote(self.shard)
                except Exception as exc:  # a peer that is gone has nothing to re-announce
                    self.recovery["resync_error"] = repr(exc)

    # ---------------------------------------------------------------- the trio thread

    def _thread_main(self) -> None:
        try:
            trio.run(self._main, clock=ClusterClock())
        except BaseException as exc:  # reported through ready() / statistics
            self._error = exc
            self._ready.set()

    def _transport(self, dest: str, payload: bytes) -> None:
        if self._send_override is not None:
            self._send_override(dest, payload)
            return
        if self._link is not None:
            self._link.send(dest, payload)
            return
        handle = self._peers.get(dest)
        if handle is None:
            import ray

            handle = self._peers[dest] = ray.get_actor(actor_name(self.config, dest),
                                                       namespace=self.config.namespace)
        handle.deliver_batch.remote(payload)

    async def _main(self) -> None:
        cfg = self.config
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self.outbox = Outbox(self.shard, self._transport, max_batch=cfg.max_batch, max_delay_s=cfg.max_delay_s)
        self.media = _CollectMedia()
        self.cdrs = _CollectCdrs()
        self.media.keep = self.cdrs.keep = cfg.collect_outputs
        self.cti = InMemoryCti(keep=cfg.collect_events)
        self.replies = InMemoryReplies(keep=cfg.collect_events)
        ports = Ports(self.media, self.cti, self.cdrs, self.replies)
        directory = cfg.directory
        stored = await self._load_directory()
        if stored is not None and stored.epoch >= directory.epoch:
            directory = stored
        router = route_by_destination(dict(cfg.routes)) if cfg.routes else None
        self.node = ShardNode(name=self.shard, directory=directory, outbox=self.outbox, ports=ports,
                              router=router, call_mailbox=4096)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            await nursery.start(self.outbox.pump)
            await self._recover()
            self._links_lot = trio.lowlevel.ParkingLot()
            if self._after_hangups:
                nursery.start_soon(self._release_after_hangups)
            nursery.start_soon(self._link_timeouts)
            if cfg.snapshot_interval_s > 0 and cfg.store is not None:
                nursery.start_soon(self._snapshot_loop)
            if cfg.local_switch is not None:
                self.switch = cfg.local_switch(self)
                await nursery.start(self.switch.run)
            self._ready.set()
            await self._stop.wait()
            await self.node.shutdown(2.0)
            self.outbox.flush_nowait()
            nursery.cancel_scope.cancel()

    async def _load_directory(self) -> Directory | None:
        store: SnapshotStore | None = self.config.store
        if store is None:
            return None
        data = await trio.to_thread.run_sync(store.load, DIRECTORY_KEY)
        raw = data.get(DIRECTORY_KEY)
        return None if raw is None else directory_decoder.decode(raw)

    async def _recover(self) -> None:
        """Rule 2: images from the store, calls from the switch, agents repaired. Everything slow
        (the store, the switch) is read first; adopting, rebuilding and repairing then run with no
        ``await`` in between, so no restored actor acts on a stale image (recovery.py Rule 5)."""
        t0 = time.perf_counter()
        node, cfg = self.node, self.config
        raw = {} if cfg.store is None else await trio.to_thread.run_sync(cfg.store.load, "")
        channels: list[LiveChannel] = []
        failed: list[str] = []
        for source in cfg.channel_sources:
            try:
                channels += await trio.to_thread.run_sync(source)
            except Exception as exc:  # noqa: BLE001 - recorded; a fallback's channels (gateway.py Rule 5) count
                failed.append(str(exc))
                channels += getattr(exc, "channels", [])
        claims = await trio.to_thread.run_sync(self._peer_claims)
        adopted = 0
        newest: dict[tuple[str, str], Any] = {}
        for key, value in raw.items():
            if key == DIRECTORY_KEY:
                continue
            kind, actor_id = parse_key(key)
            if kind == LINKS_KIND:
                if actor_id == self.shard:
                    self.links.restore(value)
                    self._links_written = value
                continue
            if node.directory.owner(kind, actor_id) != self.shard:
                continue
            image = decode_image(value)
            old = newest.get((kind, actor_id))
            if old is None or image.taken_at > old.taken_at:
                newest[(kind, actor_id)] = image
        for image in newest.values():
            node.adopt(image)
            self._written[(image.kind, image.actor_id)] = None
            adopted += 1
        now = trio.current_time()
        calls, orphans = rebuild_calls(channels, lambda cid: node.directory.owner("call", cid) == self.shard,
                                       node.router, now)
        rt = node.runtime
        for call, effects in calls:
            if not rt.exists("call", call.call_id):
                held = [e for e in effects if type(e) is Send and e.to == "agent"]
                self._after_hangups += [(call.tenant, e) for e in held]
                node.start_actor("call", call.call_id, call, [e for e in effects if e not in held])
        if orphans:
            rt.perform(orphans)
        # an agent leg's tenant is its call's (the caller's channel says it; a claim carries it)
        call_tenant = {c.call_id: c.tenant for c in channels if c.leg == "a"}
        legs = [((call_tenant.get(c.call_id, c.tenant), c.agent_id), c)
                for c in [*channels, *claims] if c.leg != "a" and c.agent_id]
        talking = {who: c.call_id for who, c in legs if c.answered}
        ringing = {who: c for who, c in legs if not c.answered}
        live = set(call_tenant) | {c.call_id for c in claims}
        repaired = 0
        for agent_id in rt.ids("agent"):
            agent: Agent = rt.state_of("agent", agent_id)
            who = (agent.tenant, agent.agent_id)
            fixed, effects = reconcile_agent(agent, talking.get(who), live, now, ringing.get(who))
            repaired += fixed is not agent
            fixed = restored_agent(fixed)  # recovery.py Rule 8; its queues hear it again (seq 0: taken as is)
            rt.patch("agent", agent_id, fixed, [*effects, *agent_status(fixed, now)])
        rung = {c.offer_id for _, c in legs if c.offer_id}
        queues_repaired = 0
        for queue_id in rt.ids("queue"):
            queue = rt.state_of("queue", queue_id)
            fixed_queue, effects = reconcile_queue(queue, rung)
            queues_repaired += fixed_queue is not queue
            rt.patch("queue", queue_id, restored_queue(fixed_queue), effects)
        self.recovery = {"images": adopted, "link_marks": self.links.links(), "calls": len(calls),
                         "peer_claims": len(claims),
                         "orphan_legs": len(orphans), "agents_repaired": repaired, "queues_repaired": queues_repaired,
                         "channels": len(channels),
                         "recovery_s": round(time.perf_counter() - t0, 4)}
        if failed:
            self.recovery["channel_source_errors"] = failed
        if self._peer_claims_error:
            self.recovery["peer_claims_error"] = self._peer_claims_error

    def _peer_claims(self) -> list[LiveChannel]:
        """recovery.py Rule 6: after a restart, every live peer's agent legs for agents owned here
        (in a worker thread: blocking Ray calls). A peer that does not answer in time adds nothing;
        the switch's list and the offer timers still hold."""
        if self._send_override is not None:  # hosts wired without Ray (unit tests)
            return []
        try:
            import ray

            if not ray.get_runtime_context().was_current_actor_reconstructed:
                return []
            refs = []
            for peer in self.node.directory.shards:
                if peer != self.shard:
                    handle = self._peers.get(peer) or ray.get_actor(actor_name(self.config, peer),
                                                                   namespace=self.config.namespace)
                    self._peers[peer] = handle
                    refs.append(handle.agent_claims.remote(self.shard))
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.config.peer_claims_timeout_s)
            return [c for data in ray.get(ready) for c in _claims_decoder.decode(data)]
        except Exception as exc:  # noqa: BLE001 - no claims: the switch's list and the timers hold
            self._peer_claims_error = repr(exc)  # shown in ``recovery`` once it is written
            return []

    async def _release_after_hangups(self) -> None:
        """Free the agents of the ringing legs the rebuild hung up only once those hangups have left
        this host (the next ``drain_outputs``, or at once when media go straight to a listener):
        freed earlier, an agent could be offered, and rung, before the switch drops its old leg.
        ``after_hangups_max_s`` bounds the wait when nobody drains."""
        if self.media.keep:
            with trio.move_on_after(self.config.after_hangups_max_s):
                while self.media.items:
                    await trio.sleep(0.01)
        self._flush_after_hangups()

    def _flush_after_hangups(self) -> None:
        held, self._after_hangups = self._after_hangups, []
        for tenant, send in held:  # addressed in the call's tenant, as the call would have sent it
            self.node.runtime.perform([send], tenant=tenant)

    async def _snapshot_loop(self) -> None:
        while True:
            await trio.sleep(self.config.snapshot_interval_s)
            await self.snapshot_once()

    async def snapshot_once(self) -> int:
        """Write every agent and queue whose state changed since it was last written. One pass at a
        time (a forced pass waits for the loop's), and an image counts as written once stored."""
        if self._snapshot_lock is None:
            self._snapshot_lock = trio.Lock()
        async with self._snapshot_lock:
            return await self._snapshot_pass()

    async def _snapshot_pass(self) -> int:
        rt = self.node.runtime
        dirty = [(kind, actor_id, state) for kind in ("agent", "queue") for actor_id in rt.ids(kind)
                 if self._written.get((kind, actor_id)) is not (state := rt.state_of(kind, actor_id))]
        marks = self.links.export()
        if not dirty and marks == self._links_written:
            return 0
        deadlines = rt.timer_deadlines()
        items = {}
        taken = []
        for kind, actor_id, state in dirty:
            items[entity_key(kind, actor_id)] = encode_image(rt.image(kind, actor_id, deadlines))
            taken.append(((kind, actor_id), state))
        # the marks of this same instant: the images contain exactly the batches they cover (Rule 4)
        items[entity_key(LINKS_KIND, self.shard)] = marks
        await trio.to_thread.run_sync(self.config.store.put_many, items)
        self._written.update(taken)
        self._links_written = marks
        self.snapshots_written += len(taken)
        return len(taken)

    # ---------------------------------------------------------------- calls into trio

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def _acall(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    # ---------------------------------------------------------------- Ray methods

    def ready(self) -> dict[str, Any]:
        return {"shard": self.shard, "pid": os.getpid(), "recovery": self.recovery,
                "started_at": self.started_at, "restarted": self.restarted}

    def deliver_batch(self, payload: bytes) -> int:
        return self._call(self._ingest, payload)

    def _ingest(self, payload: bytes) -> int:
        """Apply a batch in its link's order (Rule 4): a copy is dropped, an early batch is held, a
        batch that fills a gap is applied with the held ones after it. Returns the items applied."""
        batch = decode_batch(payload)
        links = self.links
        ready = links.offer(batch.source, batch.incarnation, batch.seq, batch.items, trio.current_time())
        if links.next_deadline() is not None and self._links_lot is not None:
            self._links_lot.unpark()  # the timeout task (re)computes its deadline
        apply = self.node.apply
        return sum(apply(items) for items in ready)

    async def _link_timeouts(self) -> None:
        """Give up a gap held for ``link_hold_s`` (a lost batch): apply what waited behind it."""
        assert self._links_lot is not None
        links, lot = self.links, self._links_lot
        while True:
            deadline = links.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await lot.park()
            for items in links.expire(trio.current_time()):
                self.node.apply(items)

    def set_directory(self, payload: bytes) -> bool:
        return self._call(self.node.set_directory, directory_decoder.decode(payload))

    def add_entities(self, queues: Sequence[QueueConfig], agents: Sequence[tuple[str, str]]) -> int:
        def add() -> int:
            n = 0
            rt = self.node.runtime  # agents and queues are keyed per tenant (shard.py Rule 5)
            for config in queues:
                if not rt.exists("queue", rt.key("queue", config.tenant, config.queue_id)):
                    self.node.add_queue(config)
                    n += 1
            for agent_id, tenant in agents:
                if not rt.exists("agent", rt.key("agent", tenant, agent_id)):
                    self.node.add_agent(agent_id, tenant)
                    n += 1
            return n
        return self._call(add)

    def begin_handoff(self, payload: bytes) -> dict[str, int]:
        moved = self._call(self.node.begin_handoff, directory_decoder.decode(payload))
        return {dest: len(adopts) for dest, adopts in moved.items()}

    def end_handoff(self) -> int:
        return self._call(self.node.end_handoff)

    def agent_claims(self, restarted: str) -> bytes:
        """recovery.py Rule 6: the agent legs of the calls held here whose agent or queue
        ``restarted`` owns."""
        def run() -> bytes:
            node = self.node
            rt, directory = node.runtime, node.directory

            def owns(tenant: str, agent_id: str, queue_id: str) -> bool:
                return restarted in (directory.owner("agent", rt.key("agent", tenant, agent_id)),
                                     directory.owner("queue", rt.key("queue", tenant, queue_id)))

            return _claims_encoder.encode(agent_claims(rt.states("call"), owns))
        return self._call(run)

    def resync(self, restarted: str) -> int:
        """A peer restarted: re-announce what it may have lost (Rule 2)."""
        def run() -> int:
            rt, directory = self.node.runtime, self.node.directory
            now = trio.current_time()
            # per tenant: a Send names a plain id, addressed in the tenant given to perform, and the
            # directory places a tenant's queue under its key (shard.py Rule 5)
            sends: dict[str, list[Send]] = {}

            def on_restarted(tenant: str, queue_id: str) -> bool:
                return directory.owner("queue", rt.key("queue", tenant, queue_id)) == restarted

            for agent_id in rt.ids("agent"):
                agent: Agent = rt.state_of("agent", agent_id)
                mine = sends.setdefault(agent.tenant, [])
                if agent.state is not AgentState.LOGGED_OUT and any(on_restarted(agent.tenant, q)
                                                                    for q in agent.queues):
                    mine += [s for s in agent_status(agent, now) if on_restarted(agent.tenant, s.to_id)]
                # an agent talking on a call that lived on the restarted shard asks that call now
                # (its probe timer fires early): a call that ended while the shard was down answers
                # "not connected" and the agent is freed, instead of waiting for its next probe
                if (agent.state is AgentState.ON_CALL and "probe" in agent.timers
                        and directory.owner("call", agent.call_id) == restarted):
                    mine.append(Send(to="agent", to_id=agent.agent_id, message=TimerFired(key="probe", at=now)))
            for call_id in rt.ids("call"):
                call = rt.state_of("call", call_id)
                send = requeue_message(call, now)
                if send is not None and on_restarted(call.tenant, send.to_id):
                    sends.setdefault(call.tenant, []).append(send)
            for tenant, items in sends.items():
                if items:
                    rt.perform(items, tenant=tenant)
            return sum(len(items) for items in sends.values())
        return self._call(run)

    def drain_outputs(self) -> bytes:
        def drain() -> bytes:
            media = list(self.media.items)
            self.media.items.clear()
            if self._after_hangups and media:
                self._flush_after_hangups()  # the hangups go out with this drain
            cdrs = list(self.cdrs.items)
            self.cdrs.items.clear()
            out: dict[str, Any] = {"media": media, "cdrs": cdrs}
            if self.config.collect_events:
                out["cti"], self.cti.items = self.cti.items, []
                out["replies"], self.replies.items = self.replies.items, []
            return _out_encoder.encode(out)
        return self._call(drain)

    def states(self, kind: str) -> list[Any]:
        return self._call(lambda: list(self.node.runtime.states(kind)))

    def snapshot_now(self) -> int:
        return self._acall(self.snapshot_once) if self.config.store is not None else 0

    def statistics(self) -> dict[str, Any]:
        def stats() -> dict[str, Any]:
            node = self.node
            rt = node.runtime
            s = rt.statistics()
            return {"shard": self.shard, "pid": os.getpid(), "epoch": node.directory.epoch,
                    "actors": s.actors, "processed": s.processed, "dead_letters": s.dead_letters,
                    "forwarded": rt.forwarded, "bounced": rt.bounced,
                    "replies_forwarded": rt.replies_forwarded, "duplicates_dropped": self.links.duplicates,
                    "reordered": self.links.reordered, "links": self.links.statistics(), "accepted": node.accepted,
                    "adopted": node.adopted, "adopts_received": node.adopts_received,
                    "hop_dropped": node.hop_dropped,
                    "media_dropped": node.media_dropped, "calls_created": node.calls_created,
                    "cdrs": self.cdrs.count, "media": self.media.count, "timers": s.timers,
                    "snapshots_written": self.snapshots_written,
                    "outbox": self.outbox.statistics(), "recovery": self.recovery,
                    "switch": getattr(getattr(self, "switch", None), "statistics", dict)()}
        return self._call(stats)

    def dead_letters(self) -> list[str]:
        return self._call(lambda: [f"{d.kind}:{d.actor_id} {type(d.message).__name__} {d.reason}"
                                   for d in self.node.runtime.dead_letters])

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(self)`` in the trio thread (tests, benchmarks)."""
        return self._call(fn, self)

    def sent_to(self, dest: str) -> tuple[str, int, int]:
        """Flush the outbox now: (source, incarnation, number of the last batch sent to ``dest``)."""
        def run() -> tuple[str, int, int]:
            box = self.outbox
            box.flush_nowait()
            return box.source, box.incarnation, box.sent().get(dest, 0)
        return self._call(run)

    def applied(self, source: str, incarnation: int) -> int:
        """The link's low mark here: every batch of it up to this number was applied (Rule 4)."""
        return self._call(self.links.low, source, incarnation)

    def retire(self) -> bytes:
        """Stop for good (a removed shard, after its hand-over): the runtime shuts down, the outbox
        is flushed, and what the switch and the CDR store have not collected yet is returned with
        the numbers of the last batches sent (``decode_retired``), so nothing it produced is lost."""
        self.stop()
        box = self.outbox
        return _out_encoder.encode(_Retired(media=list(self.media.items), cdrs=list(self.cdrs.items),
                                            cti=list(self.cti.items), replies=list(self.replies.items),
                                            source=box.source, incarnation=box.incarnation, sent=box.sent()))

    def stop(self) -> None:
        if self._stop is not None and self._token is not None:
            try:
                self._call(self._stop.set)
            except trio.RunFinishedError:
                pass
        self._thread.join(5)


def decode_outputs(data: bytes) -> tuple[list[MediaCommand], list[Cdr]]:
    raw = msgspec.msgpack.decode(data, type=_Outputs)
    return raw.media, raw.cdrs


class _Outputs(msgspec.Struct):
    media: list[MediaCommand]
    cdrs: list[Cdr]
    cti: list[CtiEvent] = []
    replies: list[Reply] = []


class _Retired(msgspec.Struct):
    media: list[MediaCommand]
    cdrs: list[Cdr]
    cti: list[CtiEvent]
    replies: list[Reply]
    source: str
    incarnation: int
    sent: dict[str, int]


def decode_retired(data: bytes) -> _Retired:
    """What ``retire`` returns: the outputs not drained yet, and the numbers of the last batches sent."""
    return msgspec.msgpack.decode(data, type=_Retired)


def decode_all_outputs(data: bytes) -> tuple[list[MediaCommand], list[Cdr], list[CtiEvent], list[Reply]]:
    """``drain_outputs`` with the CTI events and replies (``HostConfig.collect_events``)."""
    raw = msgspec.msgpack.decode(data, type=_Outputs)
    return raw.media, raw.cdrs, raw.cti, raw.replies


def _state_of_image(data: bytes) -> Any:  # convenience for tests
    return state_of(decode_image(data))
