"""Webhook counters as OpenTelemetry instruments, and the dispatcher's redrive decisions, without a
network: a real ``WebhookDispatcher`` (not running, so offered events stay queued) read by
``EngineMetrics`` through an in-memory reader, and ``MemoryDeadLetterStore``'s take/release."""

from __future__ import annotations

import types

import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from adapters.webhooks.config import TenantWebhooks, WebhookConfig, WebhooksConfig
from adapters.webhooks.deadletter import DeadLetter, MemoryDeadLetterStore
from adapters.webhooks.dispatcher import WebhookDispatcher
from api.events import encode_event, to_wire
from engine.messages import CtiEvent
from engine.telemetry.metrics import EngineMetrics


def _dispatcher(capacity: int = 10) -> WebhookDispatcher:
    hook = WebhookConfig(id="crm", url="https://crm.example/h", events=["CALL_CREATED", "CDR"],
                         queue_capacity=capacity)
    return WebhookDispatcher(WebhooksConfig(tenants=[TenantWebhooks(tenant="acme", webhooks=[hook])]),
                             MemoryDeadLetterStore())


def _event(call_id: str = "c1"):
    return to_wire(CtiEvent(name="CALL_CREATED", tenant="acme", at=1.0, call_id=call_id,
                            data={"direction": "inbound"}))


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    return out


def test_webhook_counters_are_observed_per_tenant_and_webhook() -> None:
    reader = InMemoryMetricReader()
    metrics = EngineMetrics(MeterProvider(metric_readers=[reader]).get_meter("t"))
    dispatcher = _dispatcher()
    metrics.bind(webhooks=types.SimpleNamespace(dispatcher=dispatcher))
    dispatcher.offer(_event("c1"))
    dispatcher.offer(_event("c2"))
    points = _points(reader)
    assert points["callengine.webhooks.queued"] == [({"tenant": "acme", "webhook": "crm"}, 2)]
    assert points["callengine.webhooks.delivered"] == [({"tenant": "acme", "webhook": "crm"}, 0)]
    assert points["callengine.webhooks.redriven"] == [({}, 0)]
    assert metrics.errors == 0


def _letter(event: str, event_type: str = "CALL_CREATED", webhook: str = "crm") -> DeadLetter:
    return DeadLetter(tenant="acme", webhook_id=webhook, delivery_id="d-1", event_type=event_type, event=event,
                      reason="exhausted", attempts=5, at=1.0, id=7)


def test_redrive_queues_under_the_same_delivery_id_or_says_why_not() -> None:
    dispatcher = _dispatcher(capacity=1)
    good = encode_event(_event()).decode()
    assert dispatcher.redrive(_letter(good, webhook="gone")) == "no_webhook"
    assert dispatcher.redrive(_letter(good, event_type="CALL_ENDED")) == "no_webhook"  # not subscribed
    assert dispatcher.redrive(_letter("{not json")) == "bad_event"
    assert dispatcher.redrive(_letter(good)) == "queued"
    assert dispatcher.redrive(_letter(good)) == "queue_full"
    (hook,) = dispatcher._hooks["acme"]
    (job,) = hook.queue
    assert job.delivery_id == "d-1" and job.event == _event()
    assert dispatcher.statistics()["redriven"] == 1


def test_memory_store_take_marks_once_release_puts_back_and_a_new_failure_revives() -> None:
    async def main() -> None:
        store = MemoryDeadLetterStore(clock=lambda: 5.0)
        await store.add([_letter("{}"), DeadLetter(tenant="other", webhook_id="crm", delivery_id="d-1",
                                                   event_type="CDR", event="{}", reason="rejected", attempts=1)])
        (taken,) = await store.take("acme")
        assert taken.redriven_at == 5.0 and taken.redrives == 1
        assert await store.take("acme") == []  # taken once
        await store.release("acme", [taken.id])
        (again,) = await store.take("acme", ids=[taken.id])
        # the redrive fails again: the same delivery becomes dead again, counting its redrives
        await store.add([_letter("{}")])
        (row,) = await store.list("acme")
        assert row.redriven_at is None and row.redrives == again.redrives == 1
        await store.add([_letter("{}")])  # a retried batch of a letter not being redriven: no change
        assert len(store.letters) == 2
    trio.run(main)
