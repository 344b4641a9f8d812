"""Shared helpers for the ESL integration tests: an engine stand-in and bounded waits."""

from __future__ import annotations

import random

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
