"""The contact lookup (``adapters/webhooks/lookup.py``) against a real HTTP server on 127.0.0.1:
what is asked (inbound calls of tenants with a lookup only), what becomes ``CALL_CONTACT`` (a JSON
object's scalars, ``name`` renamed) and what does not (timeout, non-2xx, not JSON, the call ended
first), the per-agent re-publish, the bound on waiting lookups, and a new configuration."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import pytest
import trio

from adapters.webhooks.config import ContactLookupConfig, TenantWebhooks, WebhooksConfig
from adapters.webhooks.lookup import ContactLookup
from engine.messages import CtiEvent

pytestmark = pytest.mark.timeout(30)


class Capture:
    def __init__(self) -> None:
        self.events: list[CtiEvent] = []

    def publish(self, event: CtiEvent) -> None:
        self.events.append(event)


async def _crm(nursery: trio.Nursery, asked: list[dict[str, list[str]]]) -> int:
    """Answers by caller id: +404 -> 404, +bad -> not JSON, +list -> a JSON list, +slow -> after 2 s,
    +late -> after 0.15 s."""

    async def serve(stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
        target = data.split(b" ", 2)[1].decode()
        query = parse_qs(target.split("?", 1)[1])
        asked.append(query)
        caller = query["caller_id"][0]
        status, body = 200, json.dumps({"name": f"Contact {caller}", "crm_id": caller[1:], "score": 7,
                                         "tags": ["x"]}).encode()
        if caller == "+404":
            status, body = 404, b"{}"
        elif caller == "+bad":
            body = b"<html>"
        elif caller == "+list":
            body = b"[1, 2]"
        elif caller == "+slow":
            await trio.sleep(2)
        elif caller == "+late":  # within the 0.3 s timeout
            await trio.sleep(0.15)
        try:
            await stream.send_all(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                  % (status, len(body), body))
        except trio.BrokenResourceError:
            pass
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    return int(listeners[0].socket.getsockname()[1])


def _config(port: int, tenant: str = "acme") -> WebhooksConfig:
    return WebhooksConfig(tenants=[TenantWebhooks(tenant=tenant, contact_lookup=ContactLookupConfig(
        url=f"http://127.0.0.1:{port}/lookup", timeout_s=0.3))])


def _created(call_id: str, caller: str, tenant: str = "acme", direction: str = "inbound") -> CtiEvent:
    return CtiEvent(name="CALL_CREATED", tenant=tenant, at=time.time(), call_id=call_id,
                    data={"caller_id": caller, "destination": "5099", "direction": direction})


def test_lookup_results_failures_agent_republish_bounds_and_reconfigure() -> None:
    out: dict = {}

    async def main() -> None:
        asked: list[dict[str, list[str]]] = []
        async with trio.open_nursery() as nursery:
            port = await _crm(nursery, asked)
            cap = Capture()
            lookup = ContactLookup(cap, _config(port), max_pending=10)
            await nursery.start(lookup.run)
            for call_id, caller in [("ok", "+1555"), ("nf", "+404"), ("bad", "+bad"), ("list", "+list"),
                                    ("slow", "+slow")]:
                lookup.publish(_created(call_id, caller))
            lookup.publish(_created("out", "+1666", direction="outbound"))  # not inbound: not asked
            lookup.publish(_created("other", "+1777", tenant="beta"))  # no lookup for beta
            # the call rings an agent before the answer: the contact follows to that agent
            lookup.publish(CtiEvent(name="CALL_RINGING", tenant="acme", at=time.time(), call_id="ok", agent_id="a1"))
            with trio.fail_after(5):
                while lookup.found + lookup.not_found + lookup.timeouts < 5:
                    await trio.sleep(0.01)
            # known contact, a second agent rings: published at the ring
            lookup.publish(CtiEvent(name="CALL_RINGING", tenant="acme", at=time.time(), call_id="ok", agent_id="a2"))
            out["events"] = [(e.name, e.call_id, e.agent_id, dict(e.data)) for e in cap.events]
            out["stats1"] = lookup.statistics()
            out["asked"] = sorted(q["caller_id"][0] for q in asked)
            out["query_ok"] = next(q for q in asked if q["caller_id"] == ["+1555"])
            # the call ends before its answer: nothing is published for it
            cap.events.clear()
            lookup.publish(_created("gone", "+late"))
            lookup.publish(CtiEvent(name="CALL_ENDED", tenant="acme", at=time.time(), call_id="gone"))
            with trio.fail_after(5):
                while lookup.found < 2:
                    await trio.sleep(0.01)
            out["after_end"] = list(cap.events)
            # bounded: with no worker free, waiting lookups stop at max_pending (plain calls, no await)
            before = lookup.dropped
            lookup.max_pending = 5
            for i in range(40):
                lookup.publish(_created(f"burst{i}", "+slow"))
            out["dropped"] = lookup.dropped - before
            with trio.fail_after(5):  # the 5 waiting ones are taken by workers
                while lookup.statistics()["pending"]:
                    await trio.sleep(0.01)
            # a new configuration applies to the next call: beta now has a lookup, acme none
            lookup.configure(_config(port, tenant="beta"))
            n = len(asked)
            lookup.publish(_created("acme2", "+1888"))
            lookup.publish(_created("beta2", "+1999", tenant="beta"))
            with trio.fail_after(5):
                while not any(e.call_id == "beta2" for e in cap.events):
                    await trio.sleep(0.01)
            out["after_reconfigure"] = sorted(q["caller_id"][0] for q in asked[n:] if q["caller_id"][0] != "+slow")
            nursery.cancel_scope.cancel()

    trio.run(main)
    contact = {"contact_name": "Contact +1555", "crm_id": "1555", "score": 7}  # the list value dropped
    assert out["events"] == [("CALL_CONTACT", "ok", "", contact), ("CALL_CONTACT", "ok", "a1", contact),
                             ("CALL_CONTACT", "ok", "a2", contact)]
    assert out["asked"] == ["+1555", "+404", "+bad", "+list", "+slow"]
    assert out["query_ok"] == {"caller_id": ["+1555"], "destination": ["5099"], "call_id": ["ok"]}
    s = out["stats1"]
    assert (s["found"], s["not_found"], s["timeouts"], s["published"]) == (1, 3, 1, 3), s
    assert out["after_end"] == []
    assert out["dropped"] == 35  # 5 wait; no worker ran in between (publish never yields)
    assert out["after_reconfigure"] == ["+1999"]
