"""Admin on a node shared by tenants: same ids in two tenants, deletes that really remove the
actor (refused while busy)."""

from __future__ import annotations

import trio

from tests.support.nats import api_stack, connected_call, http_call, setup_tenant, token


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def admin(tenant: str) -> str:
    return token(tenant=tenant, sub=f"root-{tenant}", roles=("admin",))


def test_two_tenants_same_ids_and_deletes_remove_the_actor_unless_busy():
    async def main():
        async with api_stack(nats=False, ws=False) as stack:
            await setup_tenant(stack, "t1")
            await setup_tenant(stack, "t2")  # the same agent and queue ids: no collision
            rt = stack.node.runtime
            assert sorted(rt.ids("agent")) == ["t1/a1", "t1/a2", "t2/a1", "t2/a2"]
            await connected_call(stack, "c1", tenant="t1")
            busy = stack.node.state_of("call", "c1").agent_id
            status, body = await http_call(stack, "Admin/DeleteAgent", {"id": busy}, admin("t1"))
            assert (status, body["code"]) == (400, "failed_precondition"), body
            assert (await http_call(stack, "Admin/GetAgent", {"id": busy}, admin("t1")))[0] == 200
            assert rt.exists("agent", f"t1/{busy}")
            # t2's idle agent with the same id: removed for real, t1's untouched
            status, body = await http_call(stack, "Admin/DeleteAgent", {"id": busy}, admin("t2"))
            assert status == 200, body
            assert not rt.exists("agent", f"t2/{busy}") and rt.exists("agent", f"t1/{busy}")
            status, body = await http_call(stack, "Agents/Get", {"agent_id": busy}, admin("t2"))
            assert status == 404, body
            status, body = await http_call(stack, "Agents/List", {}, admin("t2"))
            assert [a["agent_id"] for a in body["agents"]] == [a for a in ("a1", "a2") if a != busy]
            status, body = await http_call(stack, "Admin/DeleteQueue", {"id": "sales"}, admin("t2"))
            assert status == 200, body
            assert not rt.exists("queue", "t2/sales") and rt.exists("queue", "t1/sales")
            assert (await http_call(stack, "Queues/Get", {"queue_id": "sales"}, admin("t2")))[0] == 404
            assert (await http_call(stack, "Queues/Get", {"queue_id": "sales"}, admin("t1")))[0] == 200
            # deleting what does not exist is NOT_FOUND; re-creating works
            assert (await http_call(stack, "Admin/DeleteQueue", {"id": "sales"}, admin("t2")))[0] == 404
            status, body = await http_call(stack, "Admin/CreateQueue", {"id": "sales"}, admin("t2"))
            assert status == 200 and rt.exists("queue", "t2/sales"), body

    run(main)
