"""Webhook configuration in PostgreSQL (tables ``webhooks`` and ``contact_lookups``, migration 0007).

Rules
1. Kept like the tenant configuration (queues, agents: ``adapters/postgres/config.py``): rows in
   PostgreSQL, read when the node starts, changed live by NOTIFY. The webhook rows have their own
   channel (``callengine_webhooks``): the webhook adapter applies them, not ``NodeConfig``.
2. A row's ``config`` is the webhook's settings (``WebhookConfig`` without ``id``; the id is the
   ``webhook_id`` column) or the tenant's ``ContactLookupConfig``. Writes validate first and
   raise the typed ``WebhookConfigError`` (nothing is written). ``load`` validates every row
   again (someone may have edited the table by hand): a bad row is refused, logged and listed in
   ``rejected``; the other rows still load.
3. The whole webhook configuration is small, so a notification reloads all of it
   (``WebhookConfigWatcher``): one query, then each listener gets the new ``WebhooksConfig``
   (``WebhookDispatcher.reconfigure``, ``ContactLookup.configure``). After a lost connection the
   watcher reconnects with backoff and reloads (notifications sent meanwhile are gone).
4. Dead letters are listed from ``webhook_dead_letters`` (``PgDeadLetterStore.list``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from adapters.webhooks.config import (
    ContactLookupConfig,
    InvalidSetting,
    TenantWebhooks,
    WebhookConfig,
    WebhookConfigError,
    WebhooksConfig,
    validate,
    validate_contact_lookup,
    validate_webhook,
)
from adapters.webhooks.deadletter import DeadLetter, PgDeadLetterStore

__all__ = ["CHANNEL", "PgWebhookConfigStore", "WebhookConfigWatcher", "open_webhook_config_watcher"]

log = logging.getLogger("callengine.webhooks")

CHANNEL = "callengine_webhooks"

Listener = Callable[[WebhooksConfig], object]


def _config_json(obj: msgspec.Struct, drop: str = "") -> str:
    data = msgspec.to_builtins(obj)
    if drop:
        data.pop(drop, None)
    text = msgspec.json.encode(data).decode()
    if "\\u0000" in text:  # jsonb refuses NUL
        raise InvalidSetting("text must not contain NUL (U+0000)")
    return text


def _decode(value: Any) -> dict[str, Any]:
    data = msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value
    if not isinstance(data, dict):
        raise InvalidSetting("config is not a JSON object")
    return data


class PgWebhookConfigStore:
    """Reads and writes the webhook configuration; ``Postgres`` from ``adapters.postgres``."""

    def __init__(self, pg: Any) -> None:
        self.pg = pg
        #: rows refused by the last ``load``: (tenant, webhook id or "contact_lookup", message)
        self.rejected: list[tuple[str, str, str]] = []

    # ---- writes (validated first; typed errors) -------------------------------------------------

    async def put_webhook(self, tenant: str, webhook: WebhookConfig, *, actor: str = "") -> WebhookConfig:
        """Create or replace one webhook of ``tenant``."""
        if not tenant:
            raise InvalidSetting("a webhook needs a tenant")
        validate_webhook(webhook, tenant=tenant)
        text = _config_json(webhook, drop="id")

        async def go(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("SELECT set_config('callengine.actor', $1, true)", actor)
                await conn.execute(
                    "INSERT INTO webhooks (tenant, webhook_id, config) VALUES ($1, $2, $3::jsonb) "
                    "ON CONFLICT (tenant, webhook_id) DO UPDATE SET config = EXCLUDED.config, updated_at = now()",
                    tenant, webhook.id, text)

        await self.pg.run(go)
        return webhook

    async def delete_webhook(self, tenant: str, webhook_id: str, *, actor: str = "") -> bool:
        """True when it existed."""
        async def go(conn: Any) -> str:
            async with conn.transaction():
                await conn.execute("SELECT set_config('callengine.actor', $1, true)", actor)
                return str(await conn.execute("DELETE FROM webhooks WHERE tenant = $1 AND webhook_id = $2",
                                              tenant, webhook_id))

        return (await self.pg.run(go)).endswith(" 1")

    async def put_contact_lookup(self, tenant: str, lookup: ContactLookupConfig, *,
                                 actor: str = "") -> ContactLookupConfig:
        if not tenant:
            raise InvalidSetting("a contact lookup needs a tenant")
        validate_contact_lookup(lookup, tenant=tenant)
        text = _config_json(lookup)

        async def go(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("SELECT set_config('callengine.actor', $1, true)", actor)
                await conn.execute(
                    "INSERT INTO contact_lookups (tenant, config) VALUES ($1, $2::jsonb) "
                    "ON CONFLICT (tenant) DO UPDATE SET config = EXCLUDED.config, updated_at = now()",
                    tenant, text)

        await self.pg.run(go)
        return lookup

    async def delete_contact_lookup(self, tenant: str, *, actor: str = "") -> bool:
        async def go(conn: Any) -> str:
            async with conn.transaction():
                await conn.execute("SELECT set_config('callengine.actor', $1, true)", actor)
                return str(await conn.execute("DELETE FROM contact_lookups WHERE tenant = $1", tenant))

        return (await self.pg.run(go)).endswith(" 1")

    # ---- reads ----------------------------------------------------------------------------------

    async def list_webhooks(self, tenant: str) -> list[WebhookConfig]:
        config = await self.load()
        return [w for t in config.tenants if t.tenant == tenant for w in t.webhooks]

    async def dead_letters(self, tenant: str, webhook_id: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await PgDeadLetterStore(self.pg).list(tenant, webhook_id, limit)

    async def load(self) -> WebhooksConfig:
        """Every valid row (rule 2); refused rows in ``self.rejected``."""
        async def go(conn: Any) -> tuple[list[Any], list[Any]]:
            hooks = await conn.fetch("SELECT tenant, webhook_id, config FROM webhooks ORDER BY tenant, webhook_id")
            lookups = await conn.fetch("SELECT tenant, config FROM contact_lookups ORDER BY tenant")
            return list(hooks), list(lookups)

        hook_rows, lookup_rows = await self.pg.run(go)
        rejected: list[tuple[str, str, str]] = []
        webhooks: dict[str, list[WebhookConfig]] = {}
        lookups: dict[str, ContactLookupConfig] = {}
        for rec in hook_rows:
            tenant, hook_id = rec["tenant"], rec["webhook_id"]
            try:
                data = _decode(rec["config"])
                data["id"] = hook_id
                hook = msgspec.convert(data, WebhookConfig)
                validate_webhook(hook, tenant=tenant)
            except (msgspec.ValidationError, msgspec.DecodeError, WebhookConfigError) as exc:
                rejected.append((tenant, hook_id, str(exc)))
                log.error("webhook row refused: webhooks[%s/%s]: %s", tenant, hook_id, exc)
                continue
            webhooks.setdefault(tenant, []).append(hook)
        for rec in lookup_rows:
            tenant = rec["tenant"]
            try:
                lookup = msgspec.convert(_decode(rec["config"]), ContactLookupConfig)
                validate_contact_lookup(lookup, tenant=tenant)
            except (msgspec.ValidationError, msgspec.DecodeError, WebhookConfigError) as exc:
                rejected.append((tenant, "contact_lookup", str(exc)))
                log.error("contact lookup row refused: contact_lookups[%s]: %s", tenant, exc)
                continue
            lookups[tenant] = lookup
        config = WebhooksConfig(tenants=[
            TenantWebhooks(tenant=t, webhooks=webhooks.get(t, []), contact_lookup=lookups.get(t))
            for t in sorted(set(webhooks) | set(lookups))])
        validate(config)
        self.rejected = rejected
        return config


class WebhookConfigWatcher:
    """LISTEN ``callengine_webhooks``; on each batch of notifications (and after a reconnection)
    reload the configuration and hand it to the listeners (rule 3)."""

    def __init__(self, store: PgWebhookConfigStore, *, max_backoff_s: float = 5.0) -> None:
        self.store = store
        self.max_backoff_s = max_backoff_s
        self._listeners: list[Listener] = []
        self.reloads = 0
        self.received = 0
        self.reconnects = 0
        self.errors = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def reload(self) -> WebhooksConfig:
        config = await self.store.load()
        self.reloads += 1
        for listener in list(self._listeners):
            try:
                listener(config)
            except Exception:  # noqa: BLE001 - one listener must not starve the others
                self.errors += 1
                log.exception("webhooks: a configuration listener failed")
        return config

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from adapters.postgres.listen import listen_forever

        async def listening(reconnected: bool) -> None:
            if reconnected:
                self.reconnects += 1
                log.warning("webhook config watcher: listening again; reloading")
                await self.reload()

        async def consume(recv: trio.MemoryReceiveChannel[str | None]) -> None:
            while True:
                payload = await recv.receive()
                if payload is None:
                    return
                self.received += 1
                while True:  # a burst of changes: one reload
                    try:
                        extra = recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if extra is None:
                        payload = None
                        break
                    self.received += 1
                await self.reload()
                if payload is None:
                    return

        # a full channel needs nothing: a reload is pending anyway, and it reads everything
        await listen_forever(self.store.pg.dsn, CHANNEL, name="webhook config watcher", consume=consume,
                             on_listening=listening, capacity=1000, max_backoff_s=self.max_backoff_s,
                             logger=log, task_status=task_status)


@asynccontextmanager
async def open_webhook_config_watcher(store: PgWebhookConfigStore) -> AsyncIterator[WebhookConfigWatcher]:
    watcher = WebhookConfigWatcher(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        try:
            yield watcher
        finally:
            nursery.cancel_scope.cancel()
