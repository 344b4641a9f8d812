"""The Webhooks service through ``callengine run`` (in process, embedded PostgreSQL and NATS, the
FreeSWITCH emulator over real ESL, an HTTP receiver on 127.0.0.1): webhooks and the contact lookup
managed over the API (validated, secrets never shown nor audited), dead letters listed, redriven
once each under their own delivery id, dead again when the redrive fails, put back when their
webhook is gone; per-webhook counters; admin only. Every wait is bounded."""

from __future__ import annotations

import pytest
import trio

from api.auth import issue_token
from tests.integration.test_webhooks_run import Receiver
from tests.support.engine import SECRET, run_engine
from tests.support.nats import http_call

TENANT = "default"
HOOK_SECRET = "whsec-not-for-the-log"


async def _until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


@pytest.mark.timeout(120)
def test_webhooks_admin_dead_letters_and_redrive(monkeypatch) -> None:
    out: dict = {}

    async def body(engine, emu) -> None:
        async with trio.open_nursery() as nursery:
            receiver = await Receiver(status=503).start(nursery)
            await exercise(engine, emu, receiver)
            nursery.cancel_scope.cancel()

    async def exercise(engine, emu, receiver) -> None:
        admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))
        sup = issue_token(SECRET, tenant=TENANT, sub="boss", roles=("supervisor",))

        async def api(method: str, params: dict, tok: str = admin) -> tuple[int, dict]:
            return await http_call(engine.stack, f"Webhooks/{method}", params, tok)

        out["bad"] = await api("Put", {"id": "x", "url": "ftp://nowhere", "events": ["CALL_CREATED"]})
        out["sup"] = await api("List", {}, sup)
        hook = {"id": "crm", "url": receiver.url("/hook"), "events": ["CALL_CREATED"],
                "secret": HOOK_SECRET, "headers": {"X-Api-Key": "k-123"}, "max_attempts": 1}
        out["put"] = await api("Put", hook)
        out["get"] = await api("Get", {"id": "crm"})
        out["missing"] = await api("Get", {"id": "nope"})
        out["audit"] = [r.request for r in engine.stack.api.audit.records if r.method.endswith("Webhooks/Put")]
        # NOTIFY brings the webhook to the dispatcher
        await _until(lambda: _true(engine.webhooks.dispatcher.wants(TENANT, "CALL_CREATED")))

        async def letters(**params) -> list[dict]:
            status, body = await api("ListDeadLetters", params)
            assert status == 200, body
            return body["items"]

        async def dead(n: int) -> bool:
            return len([x for x in await letters() if x.get("redriven_at") is None]) == n

        # the receiver fails: one attempt, then a dead letter
        await emu.place_inbound_call("2001", "5000")
        await _until(lambda: _true(len(receiver.posts("CALL_CREATED")) == 1))
        await _until(lambda: dead(1))
        (letter,) = await letters()
        out["letter"] = letter
        failed_delivery = receiver.posts("CALL_CREATED")[0].headers["callengine-delivery"]
        # the receiver recovers: a redrive sends it again, same delivery id, once
        receiver.status = 200
        out["redrive"] = await api("Redrive", {})
        out["redrive_again"] = await api("Redrive", {"ids": [letter["id"]]})
        await _until(lambda: _true(len(receiver.posts("CALL_CREATED")) == 2))
        out["redelivered"] = (receiver.posts("CALL_CREATED")[1].headers["callengine-delivery"],
                              failed_delivery)
        (after,) = await letters()
        out["after"] = (after["redriven_at"] is not None, after["redrives"])
        # a redrive that fails again: the same row is dead again (not lost)
        receiver.status = 503
        await emu.place_inbound_call("2002", "5000")
        await _until(lambda: dead(1))
        second = [x for x in await letters() if x["redriven_at"] is None][0]
        out["redrive_fail"] = await api("Redrive", {"ids": [second["id"]]})
        await _until(lambda: _true(len(receiver.posts("CALL_CREATED")) == 4))
        await _until(lambda: dead(1))
        again = [x for x in await letters() if x["id"] == second["id"]][0]
        out["dead_again"] = (again["redriven_at"], again["redrives"], again["attempts"])
        out["stats"] = await api("Stats", {})
        # the webhook removed: a redrive puts the letter back, with the reason
        out["delete"] = await api("Delete", {"id": "crm"})
        await _until(lambda: _true(not engine.webhooks.dispatcher.wants(TENANT, "CALL_CREATED")))
        out["redrive_gone"] = await api("Redrive", {"webhook_id": "crm"})
        out["still_dead"] = await dead(1)
        # the contact lookup
        out["lookup_none"] = await api("GetContactLookup", {})
        out["lookup_put"] = await api("PutContactLookup", {"url": receiver.url("/lookup"),
                                                           "secret": "x", "timeout_s": 0.5})
        out["lookup_get"] = await api("GetContactLookup", {})
        out["lookup_delete"] = await api("DeleteContactLookup", {})
        out["list"] = await api("List", {})

    run_engine(monkeypatch, body)
    assert out["bad"][0] == 400 and out["bad"][1]["code"] == "invalid_argument", out["bad"]
    assert out["sup"][0] == 403, out["sup"]
    status, view = out["put"]
    assert status == 200 and view["signed"] is True and "secret" not in view, view
    assert view["headers"] == {"X-Api-Key": "***"}, view
    assert out["get"] == (200, view)
    assert out["missing"][0] == 404
    # the audit log has the call, not the secret nor the header value
    # (the refused Put is audited too)
    assert len(out["audit"]) == 2 and not any(HOOK_SECRET in r or "k-123" in r for r in out["audit"])
    assert '"secret":"***"' in out["audit"][1] and '"url":"http' in out["audit"][1], out["audit"]
    letter = out["letter"]
    assert letter["reason"] == "exhausted" and letter["event_type"] == "CALL_CREATED" and letter["attempts"] == 1
    assert letter["last_status"] == 503 and letter["redriven_at"] is None and letter["redrives"] == 0, letter
    assert out["redrive"] == (200, {"queued": 1, "skipped": {}}), out["redrive"]
    assert out["redrive_again"] == (200, {"queued": 0, "skipped": {}}), out["redrive_again"]
    delivery, failed = out["redelivered"]
    assert delivery == failed  # the receiver can deduplicate
    assert out["after"] == (True, 1)
    assert out["redrive_fail"] == (200, {"queued": 1, "skipped": {}})
    assert out["dead_again"] == (None, 1, 1), out["dead_again"]
    status, stats = out["stats"]
    assert status == 200 and stats["webhooks"]["crm"]["delivered"] == 1, stats
    assert stats["webhooks"]["crm"]["dead_lettered"] == 3, stats  # 2 calls failed, then 1 redrive
    assert out["delete"] == (200, {"id": "crm"})
    assert out["redrive_gone"] == (200, {"queued": 0, "skipped": {"no_webhook": 1}}), out["redrive_gone"]
    assert out["still_dead"]
    assert out["lookup_none"] == (200, {"configured": False, "url": "", "headers": {}, "signed": False,
                                        "timeout_s": 0.0, "enabled": False})
    assert out["lookup_put"][0] == 200 and out["lookup_put"][1]["signed"] is True
    assert out["lookup_get"] == out["lookup_put"]
    assert out["lookup_delete"] == (200, {"id": "contact_lookup"})
    assert out["list"] == (200, {"items": []})


async def _true(value: bool) -> bool:
    return value
