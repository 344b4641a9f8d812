"""Events.Watch over NATS (api.<tenant>.Events.Watch -> events on the client's inbox), against a
real nats-server: replay from a per-tenant seq, then live; RBAC; tenant isolation; the end."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import trio

from engine.messages import CtiEvent
from tests.support.nats import ADMIN2, AGENT1, SUP1, api_stack, token


def run(fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def _event(tenant: str, agent_id: str = "a1") -> CtiEvent:
    return CtiEvent(name="AGENT_STATE_CHANGED", tenant=tenant, at=1.0, agent_id=agent_id,
                    data={"state": "AVAILABLE"})


class Client:
    """A separate nats-py connection: subscribes to an inbox, then asks for the watch."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.nc: Any = None
        self.sub: Any = None
        self.inbox = ""
        self.events: list[dict[str, Any]] = []
        self.seqs: list[int] = []
        self.control: list[tuple[str, dict[str, Any]]] = []

    async def connect(self) -> None:
        self.nc = await self.stack.bridge.aio(nats.connect, self.stack.nats_url)

    async def close(self) -> None:
        await self.stack.bridge.aio(self.nc.close)

    async def watch(self, tok: str | None, tenant: str = "t1", **params: Any) -> tuple[str, dict[str, Any]]:
        self.inbox = self.nc.new_inbox()

        async def on_msg(msg: Any) -> None:
            headers = msg.headers or {}
            if "Cti-Control" in headers:
                if headers["Cti-Control"] == "end":
                    self.control.append(("end", json.loads(msg.data)))
                return
            self.events.append(json.loads(msg.data))
            self.seqs.append(int(headers["Cti-Seq"]))

        async def go() -> tuple[str, dict[str, Any]]:
            self.sub = await self.nc.subscribe(self.inbox, cb=on_msg)
            headers = {"Authorization": f"Bearer {tok}"} if tok else {}
            body = json.dumps({"deliver_subject": self.inbox, **params}).encode()
            msg = await self.nc.request(f"api.{tenant}.Events.Watch", body, timeout=5, headers=headers)
            return (msg.headers or {}).get("Nats-Service-Error-Code", "OK"), json.loads(msg.data)

        return await self.stack.bridge.aio(go)

    async def unsubscribe(self) -> None:
        await self.stack.bridge.aio(self.sub.unsubscribe)

    async def wait(self, n: int, timeout: float = 5) -> None:
        with trio.fail_after(timeout):
            while len(self.events) < n:
                await trio.sleep(0.01)

    async def wait_end(self, timeout: float = 5) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while not self.control:
                await trio.sleep(0.01)
        return self.control[0][1]


def test_replay_from_seq_then_live_and_never_another_tenants_events():
    async def main() -> None:
        async with api_stack(http=False, ws=False) as stack:
            pub = stack.publisher
            for _ in range(5):
                pub.publish(_event("t1"))
                pub.publish(_event("t2"))
            await pub.wait_idle()
            client = Client(stack)
            await client.connect()
            try:
                code, body = await client.watch(token(**SUP1), from_seq=3)
                assert code == "OK" and body["deliver_subject"] == client.inbox and body["watch_id"]
                await client.wait(3)
                assert client.seqs == [3, 4, 5]  # replayed from JetStream
                for _ in range(2):
                    pub.publish(_event("t2"))
                    pub.publish(_event("t1"))
                await client.wait(5)
                await trio.sleep(0.3)  # anything else that would arrive
                assert client.seqs == [3, 4, 5, 6, 7]  # then live, no gap, no duplicate
                assert {e["tenant"] for e in client.events} == {"t1"}
                assert [e["seq"] for e in client.events] == client.seqs
                assert stack.relays.running == 1
            finally:
                await client.close()

    run(main)


def test_rbac_tenant_isolation_and_bad_requests():
    async def main() -> None:
        async with api_stack(http=False, ws=False) as stack:
            client = Client(stack)
            await client.connect()
            try:
                # another tenant's token on t1's subject
                code, _ = await client.watch(token(**ADMIN2), tenant="t1")
                assert code == "PERMISSION_DENIED"
                assert await client.watch(None) == ("UNAUTHENTICATED", {
                    "code": "UNAUTHENTICATED", "message": "a bearer token is required"})
                # an agent watches only its own events
                code, _ = await client.watch(token(**AGENT1), agent_id="a2")
                assert code == "PERMISSION_DENIED"
                code, _ = await client.watch(token(**SUP1), deliver_subject="")
                assert code == "INVALID_ARGUMENT"
                code, _ = await client.watch(token(**SUP1), deliver_subject="cti.t2.>")
                assert code == "INVALID_ARGUMENT"
                assert stack.relays.running == 0
                denied = [r for r in stack.api.audit.records if r.outcome == "PERMISSION_DENIED"]
                assert len(denied) == 2 and all(r.transport == "nats" for r in denied)

                code, _ = await client.watch(token(**AGENT1))
                assert code == "OK"
                stack.publisher.publish(_event("t1", "a2"))
                stack.publisher.publish(_event("t1", "a1"))
                stack.publisher.publish(_event("t2", "a1"))
                await client.wait(1)
                await trio.sleep(0.3)
                assert [(e["tenant"], e["agent_id"]) for e in client.events] == [("t1", "a1")]
            finally:
                await client.close()

    run(main)


def test_the_stream_ends_after_max_events_and_when_nobody_listens():
    async def main() -> None:
        async with api_stack(http=False, ws=False, watch_options={"probe_s": 0.1}) as stack:
            pub = stack.publisher
            client = Client(stack)
            await client.connect()
            try:
                code, _ = await client.watch(token(**SUP1), max_events=2)
                assert code == "OK"
                for _ in range(3):
                    pub.publish(_event("t1"))
                assert await client.wait_end() == {}
                assert client.seqs == [1, 2]
                with trio.fail_after(5):
                    while stack.relays.running:
                        await trio.sleep(0.01)

                other = Client(stack)
                other.nc = client.nc
                code, _ = await other.watch(token(**SUP1))
                assert code == "OK" and stack.relays.running == 1
                await other.unsubscribe()  # the client went away: the relay notices and stops
                with trio.fail_after(5):
                    while stack.relays.running:
                        await trio.sleep(0.02)
                assert stack.relays.ended == 2
            finally:
                await client.close()

    run(main)
