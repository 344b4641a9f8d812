"""Per-link FIFO and exactly-once for the batches a shard host receives (the reorder buffer).

A link is one sender (an outbox, or an ingress) to one receiving host. The state machines assume
that the messages from one sender reach one recipient in the order they were sent. Ray does not
keep that order for calls from one caller to one actor (measured: 3 of 20 batches of a flood ran
out of order; Ray also re-sends calls to a restarted actor, in any order). Every batch of a link
carries ``(source, incarnation, seq)`` (wire.Batch): ``seq`` counts 1, 2, 3, ... per destination,
``incarnation`` is the sender's birth in ns (new after the sender restarts).

Rules
1. In order, once: a batch whose ``seq`` is the next one is applied at once, followed by every
   held batch that is now next. A batch that arrives early is held. A copy of a batch that was
   applied or is held is dropped (``duplicates``). ``seq == 0`` is unsequenced: applied at once.
2. Bounded: a link holds at most ``max_held`` batches. When one more arrives, the oldest gap is
   given up: the held batches after it are applied in order (``gaps_skipped``).
3. Timeout: a gap open for ``hold_s`` (the missing batch died with its sender, or was applied
   before a crash but after the last snapshot) is given up the same way (``expire``, driven by the
   host's clock). So a lost batch never blocks a link for longer than ``hold_s``. A link restored
   from a snapshot (rule 7) waits only ``restored_hold_s`` for its first gap: right after a
   restart, the batches applied after the last snapshot pass will not come again (Ray re-sends
   only calls that had not completed), so that gap is usually final.
4. Epoch: the first batch of a newer incarnation of a source means the older incarnations are
   dead. Their held batches are applied first (in order, gaps given up), then the new one. A
   straggler of an older incarnation is applied at once, never held (FIFO does not span a crash).
5. Never lose a batch that was given up on: the seqs of a given-up gap are remembered
   (``skipped``, bounded by ``max_skipped`` per link). If one still arrives it is applied, late,
   once (``late``); any other seq at or below the link's low mark is a copy.
6. Joining a stream: a link the inbox has never seen whose first batch is above ``join_slack``
   (a receiver restarted without snapshots, or a shard name that was used before) starts there;
   the ``join_slack`` seqs below it count as given up (rule 5), so none of them is lost. A new
   sender starts at 1, so its first batches are never mistaken for a mid-stream join.
7. ``export``/``restore`` carry what was applied (per link: low mark and given-up seqs), never
   what is held: a snapshot pass writes them with the images of the same instant. A held batch is
   not in those images; if the host dies, it is lost with them like any batch applied after the
   last pass (resync and the machines' timers recover, see docs/cluster.md).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["LinkInbox"]

T = TypeVar("T")


class _Link(Generic[T]):
    __slots__ = ("low", "skipped", "held", "sealed", "restored")

    def __init__(self, low: int = 0, skipped: set[int] | None = None, sealed: bool = False) -> None:
        #: every seq <= low was applied or given up (``skipped``)
        self.low = low
        self.skipped: set[int] = skipped if skipped is not None else set()
        #: seq -> (payload, arrival time) of batches that arrived early
        self.held: dict[int, tuple[T, float]] = {}
        #: an older incarnation: nothing is held any more (rule 4)
        self.sealed = sealed
        #: restored from a snapshot and no gap given up since: the first gap is short (rule 3)
        self.restored = False


class LinkInbox(Generic[T]):
    """``offer`` a batch, get back the payloads to apply now, in order. Pure: time is a parameter."""

    def __init__(self, *, max_held: int = 256, hold_s: float = 0.5, keep: int = 4, max_skipped: int = 4096,
                 join_slack: int = 64, restored_hold_s: float = 0.05) -> None:
        if max_held < 1 or hold_s <= 0 or keep < 1 or max_skipped < 0 or join_slack < 1 or restored_hold_s <= 0:
            raise ValueError("LinkInbox needs max_held >= 1, hold_s > 0, keep >= 1, max_skipped >= 0, "
                             "join_slack >= 1, restored_hold_s > 0")
        self.max_held = max_held
        self.hold_s = hold_s
        self.restored_hold_s = min(restored_hold_s, hold_s)
        self.keep = keep
        self.max_skipped = max_skipped
        self.join_slack = join_slack
        #: source -> incarnation -> link
        self._links: dict[str, dict[int, _Link[T]]] = {}
        #: links that hold batches now
        self._holding: set[_Link[T]] = set()
        self.duplicates = 0
        #: batches that arrived early and were held
        self.reordered = 0
        self.gaps_skipped = 0
        #: batches applied after their gap was given up, or stragglers of a dead incarnation
        self.late = 0
        self.joined = 0

    # ---------------------------------------------------------------- arrival

    def offer(self, source: str, incarnation: int, seq: int, payload: T, now: float) -> list[T]:
        if seq <= 0:
            return [payload]
        per = self._links.get(source)
        if per is None:
            per = self._links[source] = {}
        link = per.get(incarnation)
        out: list[T] = []
        if link is None:
            newest = max(per, default=None)
            if newest is not None and incarnation < newest:
                # a straggler of an incarnation already superseded (or forgotten): no FIFO (rule 4)
                link = per[incarnation] = _Link(sealed=True)
            else:
                for old in per.values():  # rule 4: a newer incarnation seals the older ones
                    if not old.sealed:
                        out += self._seal(old)
                link = per[incarnation] = _Link()
                if seq > self.join_slack:  # rule 6
                    self.joined += 1
                    link.low = seq - 1
                    self._skip_range(link, seq - self.join_slack, seq)
            while len(per) > self.keep:
                gone = per.pop(min(per))
                if gone.held:  # only a sealed link can be dropped, and a sealed link holds nothing
                    out += self._seal(gone)
        out += self._arrive(link, seq, payload, now)
        return out

    def _arrive(self, link: _Link[T], seq: int, payload: T, now: float) -> list[T]:
        if seq <= link.low:
            if seq in link.skipped:
                link.skipped.discard(seq)
                self.late += 1
                return [payload]
            self.duplicates += 1
            return []
        if seq in link.held:
            self.duplicates += 1
            return []
        if link.sealed:
            self.late += 1
            if seq > link.low + 1:
                self._skip_range(link, link.low + 1, seq)
            link.low = seq
            return [payload]
        if seq == link.low + 1:
            link.low = seq
            out = [payload]
            if link.held:
                self._drain(link, out)
            return out
        self.reordered += 1
        link.held[seq] = (payload, now)
        self._holding.add(link)
        if len(link.held) > self.max_held:  # rule 2
            out = []
            self._skip_gap(link, out)
            return out
        return []

    # ---------------------------------------------------------------- giving gaps up

    def _drain(self, link: _Link[T], out: list[T]) -> None:
        held = link.held
        while link.low + 1 in held:
            link.low += 1
            out.append(held.pop(link.low)[0])
        if not held:
            self._holding.discard(link)

    def _hold(self, link: _Link[T]) -> float:
        return self.restored_hold_s if link.restored else self.hold_s

    def _skip_gap(self, link: _Link[T], out: list[T]) -> None:
        link.restored = False
        first = min(link.held)
        self._skip_range(link, link.low + 1, first)
        link.low = first - 1
        self.gaps_skipped += 1
        self._drain(link, out)

    def _skip_range(self, link: _Link[T], start: int, stop: int) -> None:
        """Remember seqs ``start .. stop-1`` as given up (rule 5), keeping the newest ``max_skipped``."""
        if self.max_skipped == 0:
            return
        start = max(start, stop - self.max_skipped, 1)
        skipped = link.skipped
        skipped.update(range(start, stop))
        if len(skipped) > self.max_skipped:
            for s in sorted(skipped)[: len(skipped) - self.max_skipped]:
                skipped.discard(s)

    def _seal(self, link: _Link[T]) -> list[T]:
        out: list[T] = []
        while link.held:
            self._skip_gap(link, out)
        link.sealed = True
        self._holding.discard(link)
        return out

    def expire(self, now: float) -> list[T]:
        """Give up every gap open for ``hold_s`` or longer (rule 3); the payloads to apply, in order."""
        out: list[T] = []
        for link in list(self._holding):
            while link.held and min(t for _, t in link.held.values()) + self._hold(link) <= now:
                self._skip_gap(link, out)
        return out

    def next_deadline(self) -> float | None:
        """When ``expire`` has something to do (None: nothing is held)."""
        if not self._holding:
            return None
        return min(t + self._hold(link) for link in self._holding for _, t in link.held.values())

    def low(self, source: str, incarnation: int) -> int:
        """The link's low mark: every batch up to it was applied (or given up, rule 5)."""
        link = self._links.get(source, {}).get(incarnation)
        return 0 if link is None else link.low

    def held(self) -> int:
        return sum(len(link.held) for link in self._holding)

    # ---------------------------------------------------------------- snapshots

    def export(self) -> bytes:
        return _encoder.encode({src: {inc: (link.low, sorted(link.skipped)) for inc, link in per.items()}
                                for src, per in self._links.items()})

    def restore(self, data: bytes) -> None:
        """Put back what a snapshot pass recorded (rule 7), before the first batch arrives. A link
        known here already keeps the higher low mark."""
        if self._holding:
            raise RuntimeError("LinkInbox.restore: batches are held already; restore before the first offer")
        saved = msgspec.msgpack.decode(data, type=dict[str, dict[int, tuple[int, list[int]]]])
        for source, links in saved.items():
            per = self._links.setdefault(source, {})
            for inc, (low, skipped) in links.items():
                link = per.get(inc)
                if link is None:
                    link = per[inc] = _Link(low, set(skipped))
                    link.restored = True
                elif low > link.low:
                    link.skipped = {s for s in link.skipped | set(skipped) if s <= low}
                    link.low = low
            if not per:
                continue
            newest = max(per)
            for inc, link in per.items():
                if inc != newest and not link.held:
                    link.sealed = True

    def links(self) -> int:
        return sum(len(per) for per in self._links.values())

    def statistics(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates, "reordered": self.reordered, "held": self.held(),
                "gaps_skipped": self.gaps_skipped, "late": self.late, "joined": self.joined,
                "links": self.links()}


_encoder = msgspec.msgpack.Encoder()
