"""Shared helpers for the ESL integration tests: an engine stand-in and bounded waits."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio


class Sink:
    """Collects what the adapter delivers (an engine stand-in)."""

    def __init__(self) -> None:
        self.items: list = []

    def deliver_nowait(self, m) -> None:
        self.items.append(m)

    async def deliver(self, m) -> None:
        self.items.append(m)

    def of(self, cls, **fields) -> list:
        return [m for m in self.items if isinstance(m, cls)
                and all(getattr(m, k) == v for k, v in fields.items())]

    async def wait_for(self, cls, timeout: float = 5.0, **fields):
        with trio.fail_after(timeout):
            for _ in range(100_000):
                found = self.of(cls, **fields)
                if found:
                    return found[0]
                await trio.sleep(0.005)
        raise AssertionError("unreachable")


class MaxRng(random.Random):
    """Backoff = its cap, so a test knows how long the link stays down."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def until(pred, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        for _ in range(100_000):
            if pred():
                return
            await trio.sleep(0.005)


def ring_the_destination(event: Any) -> Any:
    """A router for ``node_on_emulator``: the dialled number is rung as an extension (5 s)."""
    from engine.messages import RouteToExtension

    return RouteToExtension(call_id=event.call_id, at=event.at, target=event.destination, timeout_s=5.0)


@asynccontextmanager
async def node_on_emulator(nursery: trio.Nursery, *, cti: Any, cdrs: Any, router: Any, phones: Iterable[str] = (),
                           emulator: dict[str, Any] | None = None) -> AsyncIterator[tuple[Any, Any, Any]]:
    """The engine's node driving the FreeSWITCH emulator over real ESL on 127.0.0.1 (node "fs1"):
    the emulator runs in ``nursery`` with ``phones`` registered, the node routes new calls with
    ``router`` and publishes to ``cti`` / writes CDRs to ``cdrs``. Yields (emulator, node, links)
    once the link is up."""
    from adapters.freeswitch.config import EslNodeConfig
    from adapters.freeswitch.nodes import MediaLinks, engine_live_calls
    from engine.actors import Ports, TaskSpec, open_node
    from engine.actors.ports import InMemoryReplies
    from sim.freeswitch import FreeSwitchEmulator

    emu = FreeSwitchEmulator(**{"heartbeat": 0.5, "answer_delay": 0.01, "ring_delay": 0.002, **(emulator or {})})
    await nursery.start(emu.run)
    for phone in phones:
        emu.register_phone(phone)
    links = MediaLinks([EslNodeConfig(name="fs1", port=emu.port)], heartbeat_s=0.5)
    ports = Ports(links, cti, cdrs, InMemoryReplies())
    async with open_node(ports=ports, router=router, media_links=[TaskSpec("esl", links.run)]) as node:
        links.attach(node, engine_live_calls(node, links))
        with trio.fail_after(5):
            await links.wait_all_up()
        yield emu, node, links
