"""The driver side: start shard hosts on Ray, place entities, route ingress, add/remove shards.

Rules
1. Local default: ``ray.init()`` on this machine (no dashboard, a modest object store) with one
   shard host per core; ``ray_address`` joins an existing Ray cluster instead.
2. Shard hosts are named Ray actors (``<prefix><shard>`` in ``namespace``) with
   ``max_restarts=-1`` and ``max_task_retries=-1``: Ray restarts a killed host, and batches sent to
   it meanwhile wait for the new instance instead of failing.
3. The ingress (``send``) is the media-affinity point: every event of a FreeSWITCH link is routed
   by call id to the shard that owns the call, grouped per shard, one Ray call per shard per batch,
   so events of one call arrive in the order the link saw them. An item that is already an
   ``Envelope`` (kind, runtime key, message) is sent as addressed: that is how a command for a
   non-default tenant's agent or queue reaches its key ``"<tenant>/<id>"`` (shard.py Rule 5).
4. Membership changes are hand-overs (``_rebalance``): every host installs the new directory and
   parks messages for ids it now owns but has not received, the old owners export those actors
   (state, timers, queued mail) to the new owners over the shard links (a later message that overtakes
   its Adopt is parked), the driver waits
   until every adoption arrived, then the parked messages are delivered. Live calls move with their
   timers like idle entities; nothing is dropped, a call just pauses for the hand-over (~ms).
5. A removed host is retired only when nothing is in flight: every batch sent to it was applied
   there, its undrained media commands, CDRs, CTI events and replies are kept for the next
   ``drain`` (``drain_retired``), and it is killed once its last forwards were applied by peers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from engine.actors.node import TENANT_SCOPED, route
from engine.cluster.host import (
    HostConfig,
    ShardHostCore,
    actor_name,
    decode_outputs,
    decode_retired,
)
from engine.cluster.placement import Directory, directory_encoder
from engine.cluster.snapshots import DIRECTORY_KEY
from engine.cluster.wire import Envelope, encode_batch
from engine.fsm.queue import QueueConfig
from engine.messages import Cdr, MediaCommand

__all__ = ["Cluster", "default_shards", "runtime_key"]


def runtime_key(kind: str, tenant: str | None, actor_id: str) -> str:
    """The key of an actor on the shards (``Runtime.key``): ``"<tenant>/<id>"`` for a non-default
    tenant's agent or queue, else the plain id (so the default tenant's keys are unchanged)."""
    if tenant and tenant != "default" and kind in TENANT_SCOPED:
        return f"{tenant}/{actor_id}"
    return actor_id


def default_shards() -> int:
    import os

    return max(1, os.cpu_count() or 1)


class Cluster:
    def __init__(self, *, shards: int | Sequence[str] | None = None, ray_address: str | None = None,
                 config: HostConfig | None = None, host_cpus: float = 1.0,
                 object_store_memory: int = 80 * 1024 * 1024) -> None:
        self.config = config or HostConfig()
        if shards is None:
            shards = default_shards()
        self.names = [f"s{i}" for i in range(shards)] if isinstance(shards, int) else list(shards)
        self.ray_address = ray_address
        self.host_cpus = host_cpus
        self.object_store_memory = object_store_memory
        self.directory = msgspec.structs.replace(self.config.directory, shards=tuple(sorted(self.names)))
        self.hosts: dict[str, Any] = {}
        self.tenants: dict[str, str] = {}
        self._started_ray = False
        self._actor_cls: Any = None
        #: the ingress numbers its batches per shard like an outbox (links.LinkInbox: in order, once)
        self.ingress_name = f"ingress-{os.getpid()}-{id(self):x}"
        self._incarnation = time.time_ns()
        self._seq: dict[str, int] = {}
        #: what removed shards produced and was not drained yet: media, cdrs, cti, replies
        self._carried: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Cluster:
        import ray

        if not ray.is_initialized():
            if self.ray_address:
                ray.init(address=self.ray_address, namespace=self.config.namespace, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, int(len(self.names) * self.host_cpus)), include_dashboard=False,
                         object_store_memory=self.object_store_memory, namespace=self.config.namespace,
                         log_to_driver=False)
            self._started_ray = True
        self._actor_cls = ray.remote(max_restarts=-1, max_task_retries=-1)(ShardHostCore)
        self._write_directory()
        for name in self.names:
            self.hosts[name] = self._create(name)
        ray.get([h.ready.remote() for h in self.hosts.values()], timeout=120)
        return self

    def _create(self, name: str) -> Any:
        cfg = msgspec.structs.replace(self.config, directory=self.directory)
        return self._actor_cls.options(name=actor_name(cfg, name), namespace=cfg.namespace,
                                       num_cpus=self.host_cpus).remote(name, cfg)

    def shutdown(self) -> None:
        import ray

        for host in self.hosts.values():
            try:
                ray.kill(host, no_restart=True)
            except Exception:
                pass
        self.hosts.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _write_directory(self) -> None:
        if self.config.store is not None:
            self.config.store.put_many({DIRECTORY_KEY: directory_encoder.encode(self.directory)})

    def _broadcast_directory(self) -> None:
        import ray

        self._write_directory()
        payload = directory_encoder.encode(self.directory)
        ray.get([h.set_directory.remote(payload) for h in self.hosts.values()], timeout=60)

    # ---------------------------------------------------------------- entities

    def add_entities(self, queues: Iterable[QueueConfig] = (), agents: Iterable[tuple[str, str]] = ()) -> None:
        """Place queues and (agent_id, tenant) pairs tenant-aware, then create them on their shards.
        The directory records each under its runtime key (``"agent/<tenant>/<id>"`` for a
        non-default tenant, ``runtime_key``), so ``Directory.owner(kind, key)`` finds it."""
        import ray

        queues, agents = list(queues), list(agents)
        placed: dict[str, str] = {}
        per_shard: dict[str, tuple[list[QueueConfig], list[tuple[str, str]]]] = {}
        for q in queues:
            rk = runtime_key("queue", q.tenant, q.queue_id)
            shard = placed[f"queue/{rk}"] = self.directory.place("queue", rk, q.tenant)
            self.tenants[f"queue/{rk}"] = q.tenant
            per_shard.setdefault(shard, ([], []))[0].append(q)
        for agent_id, tenant in agents:
            rk = runtime_key("agent", tenant, agent_id)
            shard = placed[f"agent/{rk}"] = self.directory.place("agent", rk, tenant)
            self.tenants[f"agent/{rk}"] = tenant
            per_shard.setdefault(shard, ([], []))[1].append((agent_id, tenant))
        self.directory = self.directory.with_entities(placed)
        self._broadcast_directory()
        ray.get([self.hosts[s].add_entities.remote(qs, ags) for s, (qs, ags) in per_shard.items()], timeout=60)

    # ---------------------------------------------------------------- ingress (media affinity)

    def send(self, messages: Iterable[Any], *, wait: bool = False) -> list[Any]:
        """Route messages (media events, commands) to their owners' shards, one batch per shard;
        an ``Envelope`` goes to the owner of its key as it is (Rule 3)."""
        import ray

        groups: dict[str, list[Envelope]] = {}
        owner = self.directory.owner
        for message in messages:
            if type(message) is Envelope:
                groups.setdefault(owner(message.kind, message.actor_id), []).append(message)
                continue
            kind, actor_id = route(message)
            groups.setdefault(owner(kind, actor_id), []).append(Envelope(kind, actor_id, message))
        refs = []
        for shard, items in groups.items():
            seq = self._seq[shard] = self._seq.get(shard, 0) + 1
            refs.append(self.hosts[shard].deliver_batch.remote(
                encode_batch(self.ingress_name, items, seq, self._incarnation)))
        if wait and refs:
            ray.get(refs, timeout=60)
        return refs

    def drain(self) -> tuple[list[MediaCommand], list[Cdr]]:
        import ray

        media: list[MediaCommand] = self._carried[0]
        cdrs: list[Cdr] = self._carried[1]
        self._carried = ([], [], self._carried[2], self._carried[3])
        for data in ray.get([h.drain_outputs.remote() for h in self.hosts.values()], timeout=60):
            m, c = decode_outputs(data)
            media += m
            cdrs += c
        return media, cdrs

    def drain_retired(self) -> tuple[list[MediaCommand], list[Cdr], list[Any], list[Any]]:
        """What removed shards produced after their last drain and ``drain`` did not return yet:
        media commands, CDRs, CTI events and replies (the last two with ``collect_events``)."""
        carried, self._carried = self._carried, ([], [], [], [])
        return carried

    def states(self, kind: str) -> list[Any]:
        import ray

        return [s for part in ray.get([h.states.remote(kind) for h in self.hosts.values()], timeout=60)
                for s in part]

    def statistics(self) -> dict[str, Any]:
        import ray

        return {name: st for name, st in zip(self.hosts, ray.get(
            [h.statistics.remote() for h in self.hosts.values()], timeout=60), strict=True)}

    # ---------------------------------------------------------------- failures

    def kill(self, shard: str, *, restart: bool = True) -> None:
        import ray

        ray.kill(self.hosts[shard], no_restart=not restart)

    def wait_ready(self, shard: str, timeout: float = 60.0) -> dict[str, Any]:
        import ray

        return ray.get(self.hosts[shard].ready.remote(), timeout=timeout)

    def resync(self, restarted: str) -> int:
        import ray

        return sum(ray.get([h.resync.remote(restarted) for s, h in self.hosts.items() if s != restarted],
                           timeout=60))

    # ---------------------------------------------------------------- membership

    def add_shard(self, name: str) -> dict[str, int]:
        import ray

        self.hosts[name] = self._create(name)
        ray.get(self.hosts[name].ready.remote(), timeout=120)
        return self._rebalance(self.directory.with_shards([*self.directory.shards, name]))

    def remove_shard(self, name: str, timeout: float = 30.0) -> dict[str, int]:
        """Hand everything ``name`` owns over to the others, then retire it. Nothing in flight is
        lost: it is stopped only once every batch sent to it was applied there, the media commands
        and CDRs it produced are kept for the next ``drain``, and it is killed only once every
        batch it sent was applied by its peers."""
        import ray

        moved = self._rebalance(self.directory.with_shards([s for s in self.directory.shards if s != name]))
        host = self.hosts[name]
        # 1. every batch sent to it (the ingress's, the peers' flushed outboxes) has been applied
        links = [(self.ingress_name, self._incarnation, self._seq.get(name, 0))]
        links += ray.get([h.sent_to.remote(name) for s, h in self.hosts.items() if s != name], timeout=60)
        self._await_applied({name: [link for link in links if link[2]]}, timeout)
        # 2. stop it; keep what it produced since the last drain
        retired = decode_retired(ray.get(host.retire.remote(), timeout=60))
        del self.hosts[name]
        self._carried[0].extend(retired.media)
        self._carried[1].extend(retired.cdrs)
        self._carried[2].extend(retired.cti)
        self._carried[3].extend(retired.replies)
        # 3. what it forwarded on its way out has been applied by its peers
        self._await_applied({dest: [(retired.source, retired.incarnation, seq)] for dest, seq in retired.sent.items()
                             if seq and dest in self.hosts}, timeout)
        ray.kill(host, no_restart=True)
        return moved

    def _await_applied(self, links: dict[str, list[tuple[str, int, int]]], timeout: float) -> None:
        """Wait until each host has applied (or given up, see links.py) every batch up to the given
        number on each of the given links."""
        import ray

        deadline = time.monotonic() + timeout
        pending = {(dest, src, inc): seq for dest, items in links.items() for src, inc, seq in items}
        while pending:
            keys = list(pending)
            marks = ray.get([self.hosts[d].applied.remote(src, inc) for d, src, inc in keys], timeout=60)
            pending = {k: pending[k] for k, low in zip(keys, marks, strict=True) if low < pending[k]}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"batches not applied in {timeout}s: {pending}")
            time.sleep(0.005)

    def _rebalance(self, directory: Directory, timeout: float = 30.0) -> dict[str, int]:
        import ray

        directory, _ = directory.rebalanced(self.tenants)
        self.directory = directory
        self._write_directory()
        payload = directory_encoder.encode(directory)
        base = {s: st["adopts_received"] for s, st in self.statistics().items()}
        exported = ray.get([h.begin_handoff.remote(payload) for h in self.hosts.values()], timeout=60)
        expected: dict[str, int] = {}
        for part in exported:
            for dest, n in part.items():
                expected[dest] = expected.get(dest, 0) + n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.statistics()
            if all(stats[d]["adopts_received"] - base.get(d, 0) >= n for d, n in expected.items()):
                break
            time.sleep(0.01)
        else:
            raise TimeoutError(f"hand-over did not complete in {timeout}s: expected {expected}")
        ray.get([h.end_handoff.remote() for h in self.hosts.values()], timeout=60)
        return expected
