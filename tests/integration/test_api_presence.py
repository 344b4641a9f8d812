"""Agents.Login / Logout with a PresenceBridge on the stack: an agent whose phone is not registered
is never offered a call from the moment it logs in; registering the phone gets it the next call."""

from __future__ import annotations

import trio

from adapters.freeswitch.mapping import DeviceEvent
from adapters.freeswitch.presence import DeviceRegistry, PresenceBridge
from engine.messages import ChannelCreated, MediaOriginate
from tests.support.nats import api_stack, http_call, setup_tenant, token

ADMIN = token(tenant="t1", sub="root-t1", roles=("admin",))


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def _rung(stack, call_id: str) -> list[MediaOriginate]:
    return [c for c in stack.media.items if isinstance(c, MediaOriginate) and c.call_id == call_id]


def test_unregistered_agent_is_never_offered_and_registering_gets_the_call():
    async def main():
        registry = DeviceRegistry()
        presence = PresenceBridge(registry)
        async with api_stack(nats=False, ws=False, presence=presence) as stack:
            await setup_tenant(stack, "t1", agents=("a1",))  # logs in ready at extension t1-200
            status, body = await http_call(stack, "Agents/Get", {"agent_id": "a1"}, ADMIN)
            assert status == 200 and body["state"] == "AVAILABLE" and body["phone_registered"] is False, body
            assert registry.agent_for("t1-200") == "a1"  # later (un)registrations reach it
            node = stack.node
            node.deliver_nowait(ChannelCreated(call_id="c1", at=node.runtime.clock(), destination="100",
                                               tenant="t1"))
            await trio.sleep(0.5)
            assert _rung(stack, "c1") == []  # not offered: the phone is not registered
            assert len(node.state_of("queue", "sales", "t1").waiting) == 1
            # the phone registers: the registry tells the agent, which takes the waiting call
            for state in registry.apply(DeviceEvent(extension="t1-200", registered=True,
                                                    at=node.runtime.clock(), registration_id="r1")):
                node.deliver_nowait(state, "t1")
            with trio.fail_after(5):
                while not _rung(stack, "c1"):
                    await trio.sleep(0.02)
            # a logged-out agent's extension is no longer watched
            node.deliver_nowait(ChannelCreated(call_id="c2", at=node.runtime.clock(), destination="100",
                                               tenant="t1"))
            status, body = await http_call(stack, "Agents/Logout", {"agent_id": "a1"}, ADMIN)
            assert status == 200, body
            assert registry.agent_for("t1-200") is None

    run(main)
