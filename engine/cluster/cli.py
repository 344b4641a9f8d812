"""``callengine cluster``: start shard hosts on Ray and run a short demo through a fake switch.

Local default: ``ray.init()`` on this machine, one shard host per core. ``--ray-address`` joins an
existing Ray cluster (``ray start --head`` on one machine, ``ray start --address=...`` on others).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cluster", help="run the engine's shards on Ray (local or --ray-address)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting one")
    p.add_argument("--shards", type=int, default=None, help="shard hosts (default: one per core)")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--calls", type=int, default=100, help="demo calls through a fake switch (0: none)")
    p.add_argument("--nats-url", default=None,
                   help="snapshot store: a JetStream KV bucket on this NATS (default: an embedded nats-server)")
    p.add_argument("--snapshots", default=None,
                   help="snapshot directory: use the file store instead of NATS KV (offline, tests)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from engine.cluster.fakeswitch import FileChannelSource
    from engine.cluster.host import HostConfig
    from engine.cluster.natsio import EmbeddedNatsThread, NatsKvSnapshotStore
    from engine.cluster.snapshots import FileSnapshotStore

    tmp = args.snapshots or tempfile.mkdtemp(prefix="callengine-cluster-")
    channel_file = f"{tmp}/channels"
    embedded = None
    if args.snapshots:
        store: Any = FileSnapshotStore(f"{tmp}/snapshots")
    else:
        url = args.nats_url
        if url is None:  # the local default (ARCHITECTURE.md §6): an embedded nats-server
            embedded = EmbeddedNatsThread()
            url = embedded.url
        store = NatsKvSnapshotStore(url)
    config = HostConfig(store=store, channel_sources=(FileChannelSource(channel_file),), routes={"100": "demo"})
    try:
        return _demo(args, config, channel_file)
    finally:
        if embedded is not None:
            embedded.stop()


def _demo(args: argparse.Namespace, config: Any, channel_file: str) -> int:
    from engine.cluster.clock import now
    from engine.cluster.cluster import Cluster
    from engine.cluster.fakeswitch import FakeSwitch
    from engine.fsm.queue import QueueConfig
    from engine.messages import AgentLogin

    agents = [f"agent{i}" for i in range(args.agents)]
    with Cluster(shards=args.shards, ray_address=args.ray_address, config=config) as cl:
        cl.add_entities([QueueConfig(queue_id="demo")], [(a, "default") for a in agents])
        cl.send([AgentLogin(agent_id=a, at=now(), extension=f"x-{a}", queues=("demo",), ready=True)
                 for a in agents], wait=True)
        sw = FakeSwitch(channel_file=channel_file, ext_to_agent={f"x-{a}": a for a in agents})
        calls = {sw.new_call("100") for _ in range(args.calls)}
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.timeout and not sw.ended >= calls:
            events = sw.tick()
            if events:
                cl.send(events)
            media, _ = cl.drain()
            for m in media:
                sw.on_media(m)
            time.sleep(0.01)
        stats = cl.statistics()
        print(json.dumps({"shards": sorted(cl.hosts), "calls": len(calls), "ended": len(sw.ended & calls),
                          "answered": len(sw.bridged & calls), "violations": len(sw.violations),
                          "snapshot_store": type(config.store).__name__,
                          "seconds": round(time.monotonic() - t0, 2),
                          "per_shard": {s: {"calls": st["calls_created"], "actors": st["actors"],
                                            "cross_shard_out": st["outbox"]["messages"]}
                                        for s, st in stats.items()}}))
        return 0 if sw.ended >= calls and not sw.violations else 1
