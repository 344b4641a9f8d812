"""Queues.Join / Queues.Leave use the agent machine's AgentJoinQueue / AgentLeaveQueue: they apply
at once in any state (no log-out/log-in: readiness, reason and calls are untouched)."""

from __future__ import annotations

import trio

from tests.support.nats import api_stack, connected_call, http_call, setup_tenant, token


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


ADMIN = token(tenant="t1", sub="root-t1", roles=("admin",))


async def _members(stack, queue: str) -> set[str]:
    with trio.fail_after(5):
        while True:
            await trio.sleep(0.02)
            status, body = await http_call(stack, "Queues/Get", {"queue_id": queue}, ADMIN)
            assert status == 200, body
            return set(body["members"])


def test_join_and_leave_apply_at_once_in_any_state_without_relogging():
    async def main():
        async with api_stack(micro=False) as stack:
            await setup_tenant(stack)
            await setup_tenant(stack, agents=(), queue="support")
            node = stack.node
            # NOT_READY with a reason: joins and keeps its state and reason
            assert (await http_call(stack, "Agents/SetNotReady", {"agent_id": "a2", "reason": "lunch"}, ADMIN))[0] == 200
            status, body = await http_call(stack, "Queues/Join", {"queue_id": "support", "agent_id": "a2"}, ADMIN)
            assert status == 200 and body["effect"] == "applied" and body["queues"] == ["sales", "support"], body
            a2 = node.state_of("agent", "a2", "t1")
            assert (a2.state.name, a2.reason) == ("NOT_READY", "lunch")
            assert await _members(stack, "support") == {"a2"}
            # on a call: the old workaround refused (FAILED_PRECONDITION); now it applies
            await connected_call(stack, "c1")
            busy = node.runtime.state_of("call", "c1").agent_id
            status, body = await http_call(stack, "Queues/Join", {"queue_id": "support", "agent_id": busy}, ADMIN)
            assert status == 200 and body["effect"] == "applied", body
            assert node.state_of("agent", busy, "t1").state.name == "ON_CALL"
            assert node.runtime.state_of("call", "c1").agent_id == busy  # the call is untouched
            status, body = await http_call(stack, "Queues/Leave", {"queue_id": "sales", "agent_id": busy}, ADMIN)
            assert status == 200 and "sales" not in body["queues"]
            assert busy not in await _members(stack, "sales")
            # the configuration record follows
            status, record = await http_call(stack, "Admin/GetAgent", {"id": busy}, ADMIN)
            assert record["queues"] == ["support"]
            # logged out: kept for the next login
            assert (await http_call(stack, "Agents/Logout", {"agent_id": "a2"}, ADMIN))[0] == 200
            status, body = await http_call(stack, "Queues/Leave", {"queue_id": "support", "agent_id": "a2"}, ADMIN)
            assert status == 200 and body["effect"] == "at_next_login" and body["queues"] == ["sales"]
            assert "a2" not in await _members(stack, "support")
            # leaving a queue it is not in is a no-op; an unknown queue is NOT_FOUND
            assert (await http_call(stack, "Queues/Leave", {"queue_id": "support", "agent_id": "a2"}, ADMIN))[0] == 200
            status, body = await http_call(stack, "Queues/Join", {"queue_id": "nope", "agent_id": "a2"}, ADMIN)
            assert (status, body["code"]) == (404, "not_found")

    run(main)
