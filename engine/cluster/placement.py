"""Placement: which shard owns an entity. Pure, no I/O, no Ray.

Rules
1. Rendezvous (highest-random-weight) hashing: an entity belongs to the shard with the highest
   ``hash(shard, key)``. Adding or removing a shard moves only the keys that land on / left that
   shard (1/n of them), and every process computes the same answer with no shared state.
2. Calls are placed by ``call_id`` over all active shards: every ingress (a FreeSWITCH link, the
   API) can compute a call's owner from the id alone, for every event of the call's life.
3. Agents and queues are tenant-aware: a tenant is given ``spread`` shards (its own rendezvous
   top-k), and its agents and queues are placed among those. A small tenant's queues and agents
   then live together (the reservation protocol stays mostly shard-local); a big tenant spreads.
   Their owner is recorded in the ``Directory`` (messages name an agent or queue by id, not tenant).
4. The directory is a value (msgspec Struct) with an epoch; hosts swap whole directories, never
   patch one in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import msgspec

__all__ = ["Directory", "rendezvous", "rendezvous_top", "score"]

_blake = hashlib.blake2b


def score(shard: str, key: str) -> int:
    """64-bit rendezvous weight of ``key`` on ``shard`` (stable across processes and runs)."""
    return int.from_bytes(_blake(f"{shard}\x00{key}".encode(), digest_size=8).digest(), "big")


def rendezvous(key: str, shards: Sequence[str]) -> str:
    """The shard with the highest weight for ``key``. Raises ``ValueError`` when there is none."""
    if not shards:
        raise ValueError(f"no shard to place {key!r} on")
    best, best_score = "", -1
    for shard in shards:
        s = score(shard, key)
        if s > best_score or (s == best_score and shard < best):
            best, best_score = shard, s
    return best


def rendezvous_top(key: str, shards: Sequence[str], k: int) -> list[str]:
    """The ``k`` best shards for ``key``, best first (all of them when ``k`` <= 0)."""
    ranked = sorted(shards, key=lambda s: (-score(s, key), s))
    return ranked if k <= 0 else ranked[:k]


class Directory(msgspec.Struct, frozen=True, kw_only=True):
    """Who owns what, at one epoch. Hosts and ingresses hold one and replace it as a whole.

    ``shards``: active members (new placements go there). ``entities``: ``"agent/<id>"`` or
    ``"queue/<id>"`` -> shard, for agents and queues (placed tenant-aware, see Rule 3).
    ``tenant_spread``: how many shards each tenant gets (0 = all; ``default_spread`` otherwise).
    """

    epoch: int = 0
    shards: tuple[str, ...] = ()
    entities: dict[str, str] = {}
    tenant_spread: dict[str, int] = {}
    default_spread: int = 0

    # ------------------------------------------------------------------ lookups

    def owner(self, kind: str, actor_id: str) -> str:
        """The shard that owns (kind, id): recorded entry first, else rendezvous over the shards."""
        if kind != "call":
            shard = self.entities.get(f"{kind}/{actor_id}")
            if shard is not None:
                return shard
        return rendezvous(f"{kind}/{actor_id}", self.shards)

    def tenant_shards(self, tenant: str) -> list[str]:
        k = self.tenant_spread.get(tenant, self.default_spread)
        return rendezvous_top(f"tenant/{tenant}", self.shards, k)

    def place(self, kind: str, actor_id: str, tenant: str = "default") -> str:
        """Where a new agent or queue of ``tenant`` should live under this membership."""
        if kind == "call":
            return rendezvous(f"call/{actor_id}", self.shards)
        return rendezvous(f"{kind}/{actor_id}", self.tenant_shards(tenant))

    # ------------------------------------------------------------------ changes (new values)

    def with_entities(self, placed: dict[str, str]) -> Directory:
        entities = dict(self.entities)
        entities.update(placed)
        return msgspec.structs.replace(self, epoch=self.epoch + 1, entities=entities)

    def with_shards(self, shards: Iterable[str]) -> Directory:
        return msgspec.structs.replace(self, epoch=self.epoch + 1, shards=tuple(sorted(set(shards))))

    def rebalanced(self, tenants: dict[str, str]) -> tuple[Directory, dict[str, tuple[str, str]]]:
        """Re-place every recorded entity under the current shards.

        ``tenants`` maps entity keys to their tenant. Returns the new directory and the moves
        ``{key: (from_shard, to_shard)}``.
        """
        entities = dict(self.entities)
        moves: dict[str, tuple[str, str]] = {}
        for key, shard in self.entities.items():
            kind, _, actor_id = key.partition("/")
            target = self.place(kind, actor_id, tenants.get(key, "default"))
            if target != shard:
                moves[key] = (shard, target)
                entities[key] = target
        return msgspec.structs.replace(self, epoch=self.epoch + 1, entities=entities), moves


directory_encoder = msgspec.msgpack.Encoder()
directory_decoder = msgspec.msgpack.Decoder(Directory)
