"""Several FreeSWITCH nodes behind one ``MediaPort``: a supervised link per node, calls bound to
the node they live on, commands routed there, originates placed on a healthy node.

Rules
-----
* ``MediaLinks.send(command)`` is the engine's ``MediaPort``: plain, non-blocking. It picks the
  node, encodes (``mapping.py``) and appends to that node's connection buffer; one writer task per
  connection flushes batches (STYLE.md §5).
* Which node: the command's own ``node`` if the call machine knows it; else the node the call is
  bound to (bound by the first channel of the call seen on a node, or by the originate that placed
  it); else, for ``MediaOriginate`` of a call with no node yet (click-to-call), the healthy node
  with the fewest channels (ties by name, so tests are deterministic). Nothing healthy: the command
  is dropped and counted, and the call machine's own ring timer ends the attempt.
* Bindings live in a bounded LRU (oldest dropped past ``max_bindings``); calls of inbound channels
  carry their node in every command anyway, the binding matters for click-to-call.
* ``run`` supervises the links (one task each) and is what the engine's ``media`` supervisor runs
  (``TaskSpec("esl", links.run)``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.link import EslLink, MediaNode, NodeHealth, Sink, Trace
from adapters.freeswitch.mapping import OriginateSettings
from adapters.freeswitch.presence import DeviceRegistry
from engine.messages import MediaCommand, MediaOriginate

__all__ = ["MediaLinks", "engine_live_calls"]

log = logging.getLogger("callengine.freeswitch")


class MediaLinks:
    def __init__(self, configs: Sequence[EslNodeConfig], sink: Sink | None = None, *,
                 registry: DeviceRegistry | None = None,
                 settings: OriginateSettings | None = None,
                 live_calls: Callable[[str], Iterable[str]] | None = None,
                 trace: Trace | None = None, max_bindings: int = 200_000,
                 **link_options: Any) -> None:
        if not configs:
            raise ValueError("MediaLinks needs at least one FreeSWITCH node")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate FreeSWITCH node names: {names}")
        self.registry = registry if registry is not None else DeviceRegistry()
        self.nodes: dict[str, MediaNode] = {}
        self.links: dict[str, EslLink] = {}
        self.bindings: OrderedDict[str, str] = OrderedDict()
        self.max_bindings = max_bindings
        self.unroutable = 0
        for cfg in configs:
            cfg.check_password()
            node = MediaNode(cfg.name, sink, registry=self.registry, settings=settings,
                             bind=self.bind, trace=trace)
            self.nodes[cfg.name] = node
            self.links[cfg.name] = EslLink(cfg, node, live_calls=live_calls, **link_options)

    def __repr__(self) -> str:
        return f"MediaLinks(nodes={list(self.nodes)!r})"

    def attach(self, sink: Sink, live_calls: Callable[[str], Iterable[str]] | None = None) -> None:
        """Set where events go (and how to ask which calls are live) once the engine exists."""
        for node in self.nodes.values():
            node.sink = sink
        if live_calls is not None:
            for link in self.links.values():
                link.live_calls = live_calls

    # ------------------------------------------------------------------ bindings
    def bind(self, call_id: str, node: str) -> None:
        b = self.bindings
        if b.get(call_id) == node:
            return
        b[call_id] = node
        if len(b) > self.max_bindings:
            b.popitem(last=False)

    def node_of(self, call_id: str) -> str | None:
        return self.bindings.get(call_id)

    def unbind(self, call_id: str) -> None:
        self.bindings.pop(call_id, None)

    # ------------------------------------------------------------------ MediaPort
    def send(self, command: MediaCommand) -> None:
        node = self._route(command)
        if node is None:
            self.unroutable += 1
            log.warning("no healthy FreeSWITCH node for %s of call %s", type(command).__name__,
                        command.call_id)
            return
        node.send(command)

    def _route(self, cmd: MediaCommand) -> MediaNode | None:
        nodes = self.nodes
        if cmd.node and cmd.node in nodes:
            return nodes[cmd.node]
        bound = self.bindings.get(cmd.call_id)
        if bound is not None:
            return nodes[bound]
        if type(cmd) is MediaOriginate:
            node = self.pick()
            if node is not None:
                self.bind(cmd.call_id, node.name)
            return node
        if len(nodes) == 1:
            return next(iter(nodes.values()))
        return None

    def pick(self) -> MediaNode | None:
        """A healthy node for a new call: fewest channels, then name."""
        healthy = [n for n in self.nodes.values() if n.healthy()]
        if not healthy:
            return None
        return min(healthy, key=lambda n: (len(n.table), n.name))

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                await nursery.start(link.run)
            task_status.started()

    async def wait_all_up(self) -> None:
        for link in self.links.values():
            await link.wait_up()

    def health(self) -> list[NodeHealth]:
        return [n.health() for n in self.nodes.values()]

    def statistics(self) -> dict[str, Any]:
        return {"unroutable": self.unroutable, "bindings": len(self.bindings),
                "nodes": [n.statistics() for n in self.nodes.values()]}


def engine_live_calls(engine_node: Any,
                      links: MediaLinks | None = None) -> Callable[[str], list[str]]:
    """``live_calls`` for an ``engine.actors.Node``: ids of its calls not yet ENDED, by media node.

    A click-to-call has no media node in its state (the call machine only learns one from an
    inbound channel); ``links``' binding (made when the originate was placed) stands in for it.
    """
    from engine.fsm.call import CallState

    def live(media_node: str) -> list[str]:
        out = []
        for call in engine_node.runtime.states("call"):
            if call.state is CallState.ENDED:
                continue
            where = call.node or (links.node_of(call.call_id) if links is not None else None)
            if where == media_node:
                out.append(call.call_id)
        return out

    return live
