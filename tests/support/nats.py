"""Helpers for the API/NATS/WebSocket tests: a real stack (nats-server, hypercorn, trio-websocket)
on loopback, tokens, and real clients (http.client in a thread, trio-websocket, nats-py)."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import open_websocket_url

from api.app import Stack, open_stack
from api.auth import issue_token
from engine.actors import route_by_destination
from engine.messages import ChannelAnswered, ChannelCreated, MediaOriginate

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(tenant: str = "t1", sub: str = "boss", roles: tuple[str, ...] = ("admin",), **kw: Any) -> str:
    return issue_token(SECRET, tenant=tenant, sub=sub, roles=roles, **kw)


ADMIN1 = dict(tenant="t1", sub="root1", roles=("admin",))
SUP1 = dict(tenant="t1", sub="sup1", roles=("supervisor",))
AGENT1 = dict(tenant="t1", sub="a1", roles=("agent",))
AGENT2 = dict(tenant="t1", sub="a2", roles=("agent",))
ADMIN2 = dict(tenant="t2", sub="root2", roles=("admin",))


@asynccontextmanager
async def api_stack(**kw: Any) -> AsyncIterator[Stack]:
    options = dict(secret=SECRET, node_options={"router": route_by_destination({"100": "sales", "200": "support"})})
    options.update(kw)
    async with open_stack(**options) as stack:
        yield stack


def _post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


async def http_raw(stack: Stack, path: str, body: bytes, tok: str | None = None,
                   content_type: str = "application/json") -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": content_type}
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    return await trio.to_thread.run_sync(_post, stack.http_url, path, body, headers)


async def http_call(stack: Stack, method: str, params: dict[str, Any] | None = None,
                    tok: str | None = None) -> tuple[int, dict[str, Any]]:
    status, body, _ = await http_raw(stack, f"/callengine.v1.{method}", json.dumps(params or {}).encode(), tok)
    return status, json.loads(body)


async def nats_call(stack: Stack, method: str, params: dict[str, Any] | None = None, tok: str | None = None,
                    tenant: str = "t1") -> tuple[str, dict[str, Any]]:
    """(code, body) of a request-reply on api.<tenant>.<Service>.<Method> (a separate client)."""
    import nats

    assert stack.bridge is not None
    service, name = method.split("/")

    async def go() -> tuple[str, dict[str, Any]]:
        nc = await nats.connect(stack.nats_url)
        try:
            headers = {"Authorization": f"Bearer {tok}"} if tok else {}
            msg = await nc.request(f"api.{tenant}.{service}.{name}", json.dumps(params or {}).encode(),
                                   timeout=5, headers=headers)
            code = (msg.headers or {}).get("Nats-Service-Error-Code", "OK")
            return code, json.loads(msg.data)
        finally:
            await nc.close()

    return await stack.bridge.aio(go)


class WsClient:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 5) -> dict[str, Any]:
        self.next_id += 1
        rid = self.next_id
        await self.ws.send_message(json.dumps({"id": rid, "method": method, "params": params or {}}))
        with trio.fail_after(timeout):
            while True:
                frame = json.loads(await self.ws.get_message())
                if "event" in frame:
                    self.events.append(frame["event"])
                elif frame.get("id") == rid:
                    return frame
                else:
                    self.other.append(frame)

    async def wait_events(self, n: int, timeout: float = 5) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while len(self.events) < n:
                frame = json.loads(await self.ws.get_message())
                if "event" in frame:
                    self.events.append(frame["event"])
                else:
                    self.other.append(frame)
        return self.events


@asynccontextmanager
async def ws_client(stack: Stack, tok: str | None = None, **kw: Any) -> AsyncIterator[WsClient]:
    headers = [("Authorization", f"Bearer {tok}")] if tok else None
    async with open_websocket_url(stack.ws_url + "/", extra_headers=headers, **kw) as ws:
        yield WsClient(ws)


async def connected_call(stack: Stack, call_id: str, tenant: str = "t1", destination: str = "100") -> str:
    """An inbound call routed to the queue and answered by the agent it rang; returns the leg."""
    node = stack.node
    node.deliver_nowait(ChannelCreated(call_id=call_id, at=node.runtime.clock(), destination=destination,
                                       caller_id="+15550001", tenant=tenant))
    with trio.fail_after(5):
        while True:
            legs = [c for c in stack.media.items if isinstance(c, MediaOriginate) and c.call_id == call_id]
            if legs:
                break
            await trio.sleep(0.01)
    node.deliver_nowait(ChannelAnswered(call_id=call_id, at=node.runtime.clock(), leg=legs[0].leg))
    with trio.fail_after(5):
        while node.runtime.state_of("call", call_id).state.name != "ACTIVE":
            await trio.sleep(0.01)
    return legs[0].leg


async def setup_tenant(stack: Stack, tenant: str = "t1", agents: tuple[str, ...] = ("a1", "a2"),
                       queue: str = "sales", login: bool = True) -> None:
    """Admin creates a queue and agents over HTTP; the agents log in ready."""
    admin = token(tenant=tenant, sub=f"root-{tenant}", roles=("admin",))
    status, body = await http_call(stack, "Admin/CreateQueue", {"id": queue, "ring_timeout_s": 20}, admin)
    assert status == 200, body
    for i, agent in enumerate(agents):
        status, body = await http_call(stack, "Admin/CreateAgent",
                                       {"id": agent, "extension": f"{tenant}-20{i}", "queues": [queue]}, admin)
        assert status == 200, body
        if login:
            status, body = await http_call(stack, "Agents/Login", {"agent_id": agent, "ready": True}, admin)
            assert status == 200, body


class CtiTee:
    """A CTI port that hands every event to several ports (e.g. the NATS publisher and an
    in-memory list the test reads)."""

    def __init__(self, *ports: Any) -> None:
        self.ports = ports

    def publish(self, event: Any) -> None:
        for p in self.ports:
            p.publish(event)
