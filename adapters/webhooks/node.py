"""Webhooks, contact lookup and call journaling for one ``callengine run`` node.

``open_node_webhooks(pg)`` gives a ``NodeWebhooks``. It holds:

- the configuration from PostgreSQL (``pgconfig.py``), kept live by LISTEN/NOTIFY;
- the dispatcher, with PostgreSQL dead letters;
- the contact lookup.

``NodeWebhooks.ports(cti, cdr)`` wraps the node's CTI and CDR ports. ``engine/run.py`` calls it
in ``wrap`` for both paths (in process, and the Ray gateway, which writes the shards' CDRs and
publishes their events through the same ports).

Rules
1. The CTI feed is ``WebhookCti``: this node's own events, offered in wire form as the engine
   emits them (``seq`` is 0 in the body; receivers deduplicate on ``Callengine-Delivery``).
   With ``--fanout nats`` a hub subscription would also carry other nodes' events, and every node
   would send every event (docs/webhooks.md, "the decision for the wiring step"). The same feed
   is used in every mode, so a change of ``--fanout`` does not change what is sent.
2. CDRs go through ``WebhookCdrStore``: written to the CDR writer first, then offered to the
   ``CDR`` webhooks (call journaling).
3. The contact lookup sits last in the CTI tee and publishes ``CALL_CONTACT`` into the tee
   without itself: to the publisher, the event store and the webhooks.
4. Order at exit (the caller's exit stack opens this after PostgreSQL, the CDR writer and the
   event sink, and before the node): the node stops first. Then the lookups are cancelled, and
   the dispatcher drains for ``drain_s``. What is still queued becomes ``shutdown`` dead letters,
   which are flushed to PostgreSQL. Last, the watcher stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from adapters.webhooks.deadletter import PgDeadLetterStore
from adapters.webhooks.dispatcher import WebhookDispatcher, open_webhook_dispatcher
from adapters.webhooks.lookup import ContactLookup
from adapters.webhooks.pgconfig import (
    PgWebhookConfigStore,
    WebhookConfigWatcher,
    open_webhook_config_watcher,
)
from adapters.webhooks.wiring import WebhookCdrStore, WebhookCti

__all__ = ["NodeWebhooks", "open_node_webhooks"]

log = logging.getLogger("callengine.webhooks")


class _Tee:
    def __init__(self, *ports: Any) -> None:
        self.ports = ports

    def publish(self, event: Any) -> None:
        for p in self.ports:
            p.publish(event)


@dataclass
class NodeWebhooks:
    store: PgWebhookConfigStore
    watcher: WebhookConfigWatcher
    dispatcher: WebhookDispatcher
    lookup: ContactLookup

    def ports(self, cti: Any, cdr: Any) -> tuple[Any, Any]:
        """The node's CTI and CDR ports, with the webhooks and the contact lookup beside them."""
        with_hooks = _Tee(cti, WebhookCti(self.dispatcher))
        self.lookup.out = with_hooks
        return _Tee(with_hooks, self.lookup), WebhookCdrStore(cdr, self.dispatcher)

    def statistics(self) -> dict[str, Any]:
        return {**self.dispatcher.statistics(), "contact_lookup": self.lookup.statistics(),
                "config_reloads": self.watcher.reloads, "config_rejected": len(self.store.rejected)}


@asynccontextmanager
async def open_node_webhooks(pg: Any, *, drain_s: float = 5.0) -> AsyncIterator[NodeWebhooks]:
    store = PgWebhookConfigStore(pg)
    config = await store.load()
    async with open_webhook_config_watcher(store) as watcher, \
            open_webhook_dispatcher(config, PgDeadLetterStore(pg), drain_s=drain_s) as dispatcher:
        lookup = ContactLookup(None, config)
        watcher.subscribe(dispatcher.reconfigure)
        watcher.subscribe(lookup.configure)
        # a change between the first load and LISTEN would be missed: load once more, now listening
        await watcher.reload()
        async with trio.open_nursery() as nursery:
            await nursery.start(lookup.run)
            try:
                yield NodeWebhooks(store=store, watcher=watcher, dispatcher=dispatcher, lookup=lookup)
            finally:
                nursery.cancel_scope.cancel()
        log.info("webhooks at stop: %s", {k: v for k, v in dispatcher.statistics().items() if k != "webhooks"})
