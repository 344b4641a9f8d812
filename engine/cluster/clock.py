"""One clock for the whole cluster.

trio's default clock starts at a random offset per process (on purpose, so code cannot assume
it). Shards exchange event times (``at``) and hand actors over with absolute timer deadlines, and
the machines clamp time with ``max(now, at)``: with per-process offsets, a ReserveAgent stamped by
a queue on another shard could push an agent's clock (and its offer safety timer) hours ahead.
So every shard host runs trio on ``ClusterClock``: monotonic within the process, anchored to the
wall clock at start, so hosts agree to NTP accuracy (a few ms) and deadlines survive a hand-over
or a restart from a snapshot.
"""

from __future__ import annotations

import time

import trio

__all__ = ["ClusterClock", "now"]


class ClusterClock(trio.abc.Clock):
    def __init__(self) -> None:
        self._offset = time.time() - time.perf_counter()

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter() + self._offset

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


def now() -> float:
    """The cluster clock outside trio (ingress processes stamp events with it)."""
    return time.time()
