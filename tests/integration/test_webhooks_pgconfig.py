"""Webhook configuration in PostgreSQL (migration 0007, ``adapters/webhooks/pgconfig.py``), on
embedded PostgreSQL: typed errors before anything is written, bad hand-written rows refused at
load (the rest loads), the audit log without the secret, and live changes through LISTEN/NOTIFY
reconfiguring a running dispatcher (a kept webhook keeps its queue; a removed one dead-letters
what it held)."""

from __future__ import annotations

import json

import pytest
import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.migrate import apply_migrations
from adapters.webhooks import (
    BadUrl,
    InvalidSetting,
    MemoryDeadLetterStore,
    WebhookDispatcher,
    WebhooksConfig,
)
from adapters.webhooks.config import ContactLookupConfig, WebhookConfig
from adapters.webhooks.pgconfig import PgWebhookConfigStore, open_webhook_config_watcher
from api.events import CallCreated

pytestmark = pytest.mark.timeout(60)


async def _stuck_server(nursery: trio.Nursery) -> int:
    """Accepts connections, reads, never answers."""

    async def serve(stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    return int(listeners[0].socket.getsockname()[1])


def _event(i: int) -> CallCreated:
    return CallCreated(tenant="acme", seq=i, at=1.0, call_id=f"c{i}", caller_id="+1", destination="100")


def test_pg_webhook_config_typed_errors_refused_rows_audit_and_live_reconfigure() -> None:
    from tests.support.pg import fresh_dsn

    dsn = fresh_dsn("webhookcfg")
    out: dict = {}

    async def main() -> None:
        async with open_postgres(dsn) as pg:
            await pg.run(apply_migrations)
            store = PgWebhookConfigStore(pg)
            # ---- typed errors, nothing written ----
            errors = []
            for bad in (WebhookConfig(id="x", url="ftp://crm/x", events=["CALL_CREATED"]),
                        WebhookConfig(id="x", url="http://crm/x", events=["CALL_CREATED"], secret="a\0b"),
                        WebhookConfig(id="x", url="http://crm/x", events=["CALL_CREATED"], headers={"X-K": "a\nb"})):
                with pytest.raises((BadUrl, InvalidSetting)) as info:
                    await store.put_webhook("acme", bad)
                errors.append(type(info.value).__name__)
            with pytest.raises(InvalidSetting, match="timeout_s"):
                await store.put_contact_lookup("acme", ContactLookupConfig(url="http://crm/c", timeout_s=10))
            out["errors"] = errors
            out["empty"] = await store.load()
            # ---- a hand-written bad row is refused at load, the rest loads ----

            async def by_hand(conn):
                await conn.execute("INSERT INTO webhooks (tenant, webhook_id, config) VALUES "
                                   "('acme', 'bad', '{\"url\": \"gopher://x\", \"events\": [\"CALL_CREATED\"]}'),"
                                   "('acme', 'odd', '{\"url\": \"http://x/\", \"events\": [\"NOPE\"]}')")

            await pg.run(by_hand)
            await store.put_webhook("acme", WebhookConfig(id="ok", url="http://crm/ok", events=["CDR"],
                                                          secret="whsec_1"), actor="alice")
            loaded = await store.load()
            out["loaded"] = [(t.tenant, [w.id for w in t.webhooks]) for t in loaded.tenants]
            out["rejected"] = sorted((t, h) for t, h, _m in store.rejected)

            async def audit(conn):
                return await conn.fetch("SELECT actor, op, after FROM audit_log WHERE tbl = 'webhooks' "
                                        "AND actor = 'alice'")

            out["audit"] = [(r["actor"], r["op"], json.loads(r["after"])["config"]["secret"])
                            for r in await pg.run(audit)]
            assert await store.delete_webhook("acme", "bad") and await store.delete_webhook("acme", "odd")
            assert not await store.delete_webhook("acme", "odd")

            # ---- live: NOTIFY -> reload -> dispatcher.reconfigure ----
            async with trio.open_nursery() as nursery:
                port = await _stuck_server(nursery)
                dead = MemoryDeadLetterStore()
                dispatcher = WebhookDispatcher(WebhooksConfig(), dead)
                await nursery.start(dispatcher.run)
                async with open_webhook_config_watcher(store) as watcher:
                    watcher.subscribe(dispatcher.reconfigure)
                    hook = WebhookConfig(id="live", url=f"http://127.0.0.1:{port}/", events=["CALL_CREATED"],
                                         timeout_s=30, max_attempts=1)
                    await store.put_webhook("acme", hook)
                    with trio.fail_after(10):
                        while not dispatcher.wants("acme", "CALL_CREATED"):
                            await trio.sleep(0.01)
                    for i in range(3):
                        dispatcher.offer(_event(i))
                    with trio.fail_after(5):
                        while dispatcher.statistics()["webhooks"]["acme/live"]["queued"] != 3:
                            await trio.sleep(0.01)
                    reloads = watcher.reloads
                    await store.put_webhook("acme", WebhookConfig(id="live", url=hook.url, events=["CALL_CREATED",
                                                                  "CALL_ENDED"], timeout_s=30, max_attempts=1))
                    with trio.fail_after(10):
                        while not dispatcher.wants("acme", "CALL_ENDED"):
                            await trio.sleep(0.01)
                    out["kept_queue"] = dispatcher.statistics()["webhooks"]["acme/live"]["queued"]
                    out["reloaded"] = watcher.reloads > reloads
                    await store.delete_webhook("acme", "live")
                    with trio.fail_after(10):
                        while dispatcher.wants("acme", "CALL_CREATED") or len(dead.letters) < 3:
                            await trio.sleep(0.01)
                    out["removed_letters"] = sorted((x.reason, x.last_error, json.loads(x.event)["call_id"])
                                                    for x in dead.letters)
                    out["queued_after_removal"] = dispatcher.queued()
                await dispatcher.aclose(0.1)
                nursery.cancel_scope.cancel()
            # ---- contact lookups load per tenant and delete ----
            await store.put_contact_lookup("beta", ContactLookupConfig(url="http://crm/c", secret="k"))
            out["lookups"] = sorted((await store.load()).contact_lookups())
            out["lookup_deleted"] = await store.delete_contact_lookup("beta")
            out["lookups_after"] = sorted((await store.load()).contact_lookups())

    trio.run(main)
    assert out["errors"] == ["BadUrl", "InvalidSetting", "InvalidSetting"]
    assert out["empty"].tenants == []
    assert out["loaded"] == [("acme", ["ok"])]
    assert out["rejected"] == [("acme", "bad"), ("acme", "odd")]
    assert out["audit"] == [("alice", "INSERT", "***")]
    assert out["kept_queue"] == 3 and out["reloaded"]
    assert out["removed_letters"] == [("shutdown", "webhook removed", "c1"), ("shutdown", "webhook removed", "c2"),
                                      ("shutdown", "webhook removed during delivery", "c0")]
    assert out["queued_after_removal"] == 0
    assert out["lookups"] == ["beta"] and out["lookup_deleted"] and out["lookups_after"] == []
