"""Engine metrics as OpenTelemetry instruments.

Most instruments are *observable*: their callbacks read the node's, the links' and the writers'
counters when a reader collects (every export interval or Prometheus scrape), so a call pays
nothing for them. Only calls-by-disposition and the queue-wait histogram are recorded as they
happen (by ``CallTracer``'s port wrappers, or by ``EngineMetrics.wrap_ports`` when tracing is off).

| instrument | type | attributes |
| --- | --- | --- |
| callengine.calls.active | gauge | |
| callengine.call.setups | counter (observable; rate() = setups/s) | |
| callengine.calls.ended | counter | disposition, queue |
| callengine.queue.length | gauge | queue |
| callengine.queue.wait | histogram (s) | queue, outcome |
| callengine.queue.service_level | gauge (0..1) | queue |
| callengine.queue.offered / answered / abandoned | counter (observable) | queue |
| callengine.agents | gauge | state |
| callengine.mailbox.depth / callengine.mailbox.max_depth | gauge | |
| callengine.actor.restarts / crashes / dead_letters | counter (observable) | |
| callengine.esl.link.up | gauge (0/1) | node |
| callengine.esl.reconnects | counter (observable) | node |
| callengine.cdr.spool.bytes / callengine.cdr.pending | gauge | |
| callengine.cti.pending | gauge | |
| callengine.webhooks.delivered / retries / dead_lettered | counter (observable) | tenant, webhook |
| callengine.webhooks.queued | gauge | tenant, webhook |
| callengine.webhooks.redriven / dropped_dead_letters | counter (observable) | |
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from engine.actors.ports import Ports

__all__ = ["EngineMetrics"]

WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class EngineMetrics:
    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.node: Any = None
        self.links: Any = None
        self.cdr_writer: Any = None
        self.publisher: Any = None
        #: ``adapters.webhooks.node.NodeWebhooks`` (anything with ``dispatcher.statistics()``)
        self.webhooks: Any = None
        self.errors = 0
        self._ended = meter.create_counter("callengine.calls.ended", unit="{call}",
                                           description="calls ended, by disposition")
        self._wait = meter.create_histogram(
            "callengine.queue.wait", unit="s", description="time callers waited in a queue",
            explicit_bucket_boundaries_advisory=list(WAIT_BUCKETS))
        g, c = meter.create_observable_gauge, meter.create_observable_counter
        g("callengine.calls.active", [self._active], unit="{call}", description="calls in progress")
        c("callengine.call.setups", [self._setups], unit="{call}", description="calls created (rate = setups/s)")
        g("callengine.queue.length", [self._queue_length], unit="{call}", description="callers waiting")
        g("callengine.queue.service_level", [self._service_level], unit="1",
          description="answered within the SL threshold / (offered - short abandons)")
        c("callengine.queue.offered", [self._queue_stat("offered")], unit="{call}")
        c("callengine.queue.answered", [self._queue_stat("answered")], unit="{call}")
        c("callengine.queue.abandoned", [self._queue_stat("abandoned")], unit="{call}")
        g("callengine.agents", [self._agents], unit="{agent}", description="agents per state")
        g("callengine.mailbox.depth", [self._rt("mailbox_depth")], unit="{message}")
        g("callengine.mailbox.max_depth", [self._rt("max_mailbox_depth")], unit="{message}")
        c("callengine.actor.restarts", [self._rt("restarts")], unit="{restart}")
        c("callengine.actor.crashes", [self._rt("crashes")], unit="{crash}")
        c("callengine.actor.dead_letters", [self._rt("dead_letters")], unit="{message}")
        g("callengine.esl.link.up", [self._links_up], unit="1", description="1 when the ESL link to the node is up")
        c("callengine.esl.reconnects", [self._reconnects], unit="{reconnect}")
        g("callengine.cdr.spool.bytes", [self._spool], unit="By", description="CDR spool file size")
        g("callengine.cdr.pending", [self._cdr_pending], unit="{cdr}", description="CDRs not yet committed")
        g("callengine.cti.pending", [self._cti_pending], unit="{event}")
        for field in ("delivered", "retries", "dead_lettered"):
            c(f"callengine.webhooks.{field}", [self._webhook_stat(field)], unit="{event}")
        g("callengine.webhooks.queued", [self._webhook_stat("queued")], unit="{event}",
          description="events waiting for a webhook's receiver")
        c("callengine.webhooks.redriven", [self._webhooks_total("redriven")], unit="{event}",
          description="dead letters sent again")
        c("callengine.webhooks.dropped_dead_letters", [self._webhooks_total("dead_letters_dropped")],
          unit="{event}", description="dead letters lost because their store was too slow")

    def bind(self, *, node: Any = None, links: Any = None, cdr_writer: Any = None, publisher: Any = None,
             webhooks: Any = None) -> None:
        if webhooks is not None:
            self.webhooks = webhooks
        if node is not None:
            self.node = node
        if links is not None:
            self.links = links
        if cdr_writer is not None:
            self.cdr_writer = cdr_writer
        if publisher is not None:
            self.publisher = publisher

    # ------------------------------------------------------------ recorded
    def call_ended(self, cdr: Any) -> None:
        self._ended.add(1, {"disposition": cdr.disposition, "queue": cdr.queue_id})

    def queue_left(self, queue_id: str, outcome: str, wait_s: float) -> None:
        self._wait.record(wait_s, {"queue": queue_id, "outcome": outcome})

    def wrap_ports(self, ports: Ports) -> Ports:
        """Feed the recorded instruments without tracing (tracing's wrappers do it otherwise)."""
        return Ports(ports.media, _MetricCti(self, ports.cti), _MetricCdr(self, ports.cdr), ports.replies)

    # ------------------------------------------------------------ observed
    def _guard(self, fn: Any) -> list[Observation]:
        try:
            return list(fn())
        except Exception:  # noqa: BLE001 - a failing callback must not stop the export
            self.errors += 1
            return []

    def _active(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(len(self.node.runtime.ids("call")))] if self.node is not None else [])

    def _setups(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(self.node.calls_created)] if self.node is not None else [])

    def _queues(self) -> list[Any]:
        return list(self.node.runtime.states("queue")) if self.node is not None else []

    def _queue_length(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(len(q.waiting), {"queue": q.queue_id}) for q in self._queues()])

    def _service_level(self, _o: CallbackOptions) -> list[Observation]:
        def gen() -> list[Observation]:
            out = []
            for q in self._queues():
                s = q.stats
                base = s.offered - s.short_abandoned
                if base > 0:
                    out.append(Observation(s.answered_within_sl / base, {"queue": q.queue_id}))
            return out
        return self._guard(gen)

    def _queue_stat(self, field: str) -> Any:
        def cb(_o: CallbackOptions) -> list[Observation]:
            return self._guard(lambda: [Observation(getattr(q.stats, field), {"queue": q.queue_id})
                                        for q in self._queues()])
        return cb

    def _agents(self, _o: CallbackOptions) -> list[Observation]:
        def gen() -> list[Observation]:
            counts = Counter(a.state.name for a in self.node.runtime.states("agent"))
            from engine.fsm.agent import AgentState

            return [Observation(counts.get(s.name, 0), {"state": s.name}) for s in AgentState]
        return self._guard(gen) if self.node is not None else []

    def _rt(self, field: str) -> Any:
        def cb(_o: CallbackOptions) -> list[Observation]:
            return self._guard(lambda: [Observation(getattr(self.node.runtime.statistics(), field))]
                               if self.node is not None else [])
        return cb

    def _links_up(self, _o: CallbackOptions) -> list[Observation]:
        # ``link.up`` (connected and subscribed), not ``healthy()``: callbacks run in the exporter's
        # thread, where trio's clock (heartbeat age) cannot be read
        return self._guard(lambda: [Observation(int(bool(link.up)), {"node": name})
                                    for name, link in self.links.links.items()] if self.links is not None else [])

    def _reconnects(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(link.reconnects, {"node": name})
                                    for name, link in self.links.links.items()] if self.links is not None else [])

    def _spool(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(self.cdr_writer.spool.size)] if self.cdr_writer is not None else [])

    def _cdr_pending(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(len(self.cdr_writer))] if self.cdr_writer is not None else [])

    def _cti_pending(self, _o: CallbackOptions) -> list[Observation]:
        return self._guard(lambda: [Observation(len(self.publisher))] if self.publisher is not None else [])

    def _webhook_stat(self, field: str) -> Any:
        def gen() -> list[Observation]:
            if self.webhooks is None:
                return []
            out = []
            for key, counters in self.webhooks.dispatcher.statistics()["webhooks"].items():
                tenant, _, webhook = key.partition("/")
                out.append(Observation(counters[field], {"tenant": tenant, "webhook": webhook}))
            return out

        return lambda _o: self._guard(gen)

    def _webhooks_total(self, field: str) -> Any:
        return lambda _o: self._guard(lambda: [Observation(self.webhooks.dispatcher.statistics()[field])]
                                      if self.webhooks is not None else [])


class _MetricCti:
    __slots__ = ("m", "port")

    def __init__(self, m: EngineMetrics, port: Any) -> None:
        self.m, self.port = m, port

    def publish(self, event: Any) -> None:
        self.port.publish(event)
        if event.name == "QUEUE_LEFT":
            try:
                self.m.queue_left(event.queue_id, str(event.data.get("outcome", "")),
                                  float(event.data.get("wait_s", 0.0) or 0.0))
            except Exception:  # noqa: BLE001
                self.m.errors += 1


class _MetricCdr:
    __slots__ = ("m", "port")

    def __init__(self, m: EngineMetrics, port: Any) -> None:
        self.m, self.port = m, port

    def write(self, cdr: Any) -> None:
        self.port.write(cdr)
        try:
            self.m.call_ended(cdr)
        except Exception:  # noqa: BLE001
            self.m.errors += 1
