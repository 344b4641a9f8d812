"""A switch inside a shard host, for benchmarks: the host's own FreeSWITCH link, with instant humans.

It keeps ``concurrency`` calls in flight on the calls this shard owns (as the link of a media node
whose calls hash here would): every caller dials a queue, every agent leg answers at once, every
caller hangs up as soon as it is bridged, and each CDR starts the next call. So the figure it
yields (completed calls/s) is the engine's capacity: routing, queue, cross-shard reservation,
media commands and CDR, with no human delay. Runs in the shard's trio thread.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    MediaBridge,
    MediaOriginate,
)

__all__ = ["LocalSwitch", "local_switch"]


class LocalSwitch:
    def __init__(self, host: Any, *, destinations: tuple[str, ...], concurrency: int,
                 local_queues: bool = False, tenants: dict[str, str] | None = None) -> None:
        self.host = host
        self.destinations = destinations
        #: destination -> tenant of the caller (and of the queue it dials); "default" when absent
        self.tenants = tenants or {}
        self.concurrency = concurrency
        #: dial only the destinations whose queue lives on this shard (a media node whose
        #: tenants' queues are placed with its calls); the benchmark's "no cross-shard" ceiling
        self.local_queues = local_queues
        self.pending: deque[Any] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.started = 0
        self.completed = 0
        self.running = False
        self.seq = 0
        host.media.keep = False
        host.cdrs.keep = False
        host.media.listeners.append(self.on_media)
        host.cdrs.listeners.append(self.on_cdr)

    def statistics(self) -> dict[str, Any]:
        return {"started": self.started, "completed": self.completed, "running": self.running}

    def start(self) -> None:
        if self.local_queues:
            node, routes = self.host.node, self.host.config.routes
            rt = node.runtime
            mine = tuple(d for d in self.destinations if node.directory.owner(
                "queue", rt.key("queue", self.tenants.get(d, "default"), routes[d])) == node.name)
            self.destinations = mine or self.destinations
        self.running = True
        for _ in range(self.concurrency):
            self._new_call()
        self.lot.unpark()

    def stop(self) -> None:
        self.running = False

    def _new_call(self) -> None:
        node = self.host.node
        shard = node.name
        while True:
            self.seq += 1
            call_id = f"{shard}-c{self.seq}"
            if node.directory.owner("call", call_id) == shard:
                break
        dest = self.destinations[self.seq % len(self.destinations)]
        self.started += 1
        self.pending.append(ChannelCreated(call_id=call_id, at=trio.current_time(), destination=dest,
                                           tenant=self.tenants.get(dest, "default")))

    def on_media(self, cmd: Any) -> None:
        t = trio.current_time()
        if type(cmd) is MediaOriginate and cmd.leg != "a":
            self.pending.append(ChannelAnswered(call_id=cmd.call_id, leg=cmd.leg, at=t))
        elif type(cmd) is MediaBridge:
            self.pending.append(ChannelHangup(call_id=cmd.call_id, at=t))
        else:
            return
        if len(self.pending) == 1:
            self.lot.unpark()

    def on_cdr(self, cdr: Any) -> None:
        self.completed += 1
        if self.running:
            self._new_call()
            if len(self.pending) == 1:
                self.lot.unpark()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        accept = self.host.node.accept_routed
        while True:
            if not self.pending:
                await self.lot.park()
                continue
            batch, self.pending = self.pending, deque()
            for event in batch:
                accept(event)
            await trio.sleep(0)


class local_switch:  # noqa: N801 - a picklable factory, used like a function
    def __init__(self, destinations: tuple[str, ...], concurrency: int = 200, local_queues: bool = False,
                 tenants: dict[str, str] | None = None) -> None:
        self.destinations = destinations
        self.concurrency = concurrency
        self.local_queues = local_queues
        self.tenants = dict(tenants or {})

    def __call__(self, host: Any) -> LocalSwitch:
        return LocalSwitch(host, destinations=self.destinations, concurrency=self.concurrency,
                           local_queues=self.local_queues, tenants=self.tenants)
