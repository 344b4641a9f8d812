"""Distribution with Ray: shard hosts, placement, cross-shard batching, recovery. See docs/cluster.md."""

from engine.cluster.placement import Directory, rendezvous, rendezvous_top

__all__ = ["Directory", "rendezvous", "rendezvous_top"]
