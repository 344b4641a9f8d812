"""How a node feeds its webhook dispatcher: CTI events from the hub, CDRs from the CDR port.

Rules
1. CTI events come from ``api.hub.EventHub`` like any other watcher: one subscription per tenant
   that has webhooks, filtered to the event types some webhook of that tenant takes. The hub's
   rule holds (the engine never waits for a watcher); ``pump_hub`` only moves events from the
   subscription into the dispatcher's queues (``offer``: no I/O), so it keeps up easily.
   If the subscription overflows anyway (the hub drops a slow watcher), the pump logs how many
   events the gap may hold, counts it and subscribes again: events published in between are not
   sent (they are in JetStream; replaying them from the last seq is future work).
2. Several nodes (``--fanout nats``): a hub subscription makes the node's feed subscribe to the
   tenant's events from *every* node, so each node with that tenant's webhooks would send them
   all. Either run a tenant's webhooks only on the node its events are pinned to (docs/api.md:
   one publisher owns a tenant's seq), or feed the dispatcher from the node's CTI port instead:
   ``WebhookCti`` (a ``CtiPort`` beside the publisher in a ``TeeCti``) offers this node's own
   events only, before the publisher assigns their ``seq`` (0 in the webhook body).
3. CDRs: ``WebhookCdrStore`` wraps the node's ``CdrStore`` (the PostgreSQL ``CdrWriter``): each
   ``write`` goes first to the real store, then to ``offer_cdr``. Both are plain functions, so
   the shard's worker still never blocks; a webhook problem cannot stop a CDR from being stored.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import trio

from adapters.webhooks.dispatcher import WebhookDispatcher
from api.events import CtiBase, event_name, to_wire
from api.hub import EventHub
from engine.actors.ports import CdrStore
from engine.messages import Cdr, CtiEvent

__all__ = ["pump_hub", "attach_to_hub", "WebhookCdrStore", "WebhookCti"]

log = logging.getLogger("callengine.webhooks")


async def pump_hub(hub: EventHub, tenant: str, dispatcher: WebhookDispatcher, *,
                   capacity: int = 10_000, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Offer the tenant's CTI events from ``hub`` to ``dispatcher`` until cancelled."""

    def accept(event: CtiBase) -> bool:
        return dispatcher.wants(tenant, event_name(event))

    started = False
    while True:
        with hub.subscribe(tenant, accept, capacity) as sub:
            if not started:
                task_status.started(sub)
                started = True
            while True:
                batch = await sub.next_batch(1024)
                if not batch:
                    break
                for event, _json in batch:
                    dispatcher.offer(event)
            if sub.overflowed:
                dispatcher.hub_overflows += 1
                log.error("webhooks: tenant %s: the hub dropped the webhook subscription (more than "
                          "%d events waiting); events until it resubscribes are not sent", tenant, capacity)
                continue
            return  # closed


async def attach_to_hub(nursery: trio.Nursery, hub: EventHub, dispatcher: WebhookDispatcher,
                        capacity: int = 10_000) -> None:
    """Start one ``pump_hub`` per tenant with webhooks; returns once every subscription exists."""
    for tenant in dispatcher.tenants():
        await nursery.start(functools.partial(pump_hub, capacity=capacity), hub, tenant, dispatcher)


class WebhookCdrStore:
    """A ``CdrStore`` that writes to ``inner`` and then offers the CDR to the webhooks."""

    def __init__(self, inner: CdrStore, dispatcher: WebhookDispatcher) -> None:
        self.inner = inner
        self.dispatcher = dispatcher

    def write(self, cdr: Cdr) -> None:
        self.inner.write(cdr)
        self.dispatcher.offer_cdr(cdr)

    def __getattr__(self, name: str) -> Any:  # flush, statistics, ... of the real store
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class WebhookCti:
    """A ``CtiPort`` that offers this node's own CTI events to the webhooks (rule 2).

    Plain and non-blocking like every port: events no webhook of their tenant takes cost one
    lookup; the others are turned into their wire form (``to_wire``) and offered."""

    def __init__(self, dispatcher: WebhookDispatcher) -> None:
        self.dispatcher = dispatcher

    def publish(self, event: CtiEvent) -> None:
        if self.dispatcher.wants(event.tenant, event.name):
            try:
                wire = to_wire(event)
            except Exception:  # noqa: BLE001 - never into the engine
                self.dispatcher.offer_errors += 1
                log.exception("webhooks: CTI event %s could not be converted", event.name)
                return
            self.dispatcher.offer(wire)
