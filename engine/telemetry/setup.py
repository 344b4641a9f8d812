"""Turning telemetry on from the standard ``OTEL_*`` variables (or explicitly, in tests).

* traces: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set
  (and ``OTEL_TRACES_EXPORTER`` is not ``none``); exported over OTLP/HTTP protobuf by a
  ``BatchSpanProcessor`` (``OTEL_BSP_*`` apply), or gRPC when ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``.
* metrics: on when an OTLP endpoint (or ``..._METRICS_ENDPOINT``) is set, exported every
  ``OTEL_METRIC_EXPORT_INTERVAL`` ms; and/or a Prometheus scrape endpoint when
  ``CALLENGINE_PROMETHEUS_PORT`` is set (``GET /metrics`` on ``CALLENGINE_PROMETHEUS_HOST``,
  default 127.0.0.1).
* ``OTEL_SDK_DISABLED=true`` turns everything off. ``OTEL_SERVICE_NAME`` /
  ``OTEL_RESOURCE_ATTRIBUTES`` name the resource (default service name ``callengine``).
Nothing configured: ``enabled`` is False and ``wrap_ports`` returns the ports unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from engine.actors.ports import Ports
from engine.telemetry.metrics import EngineMetrics
from engine.telemetry.tracing import CallIdGenerator, CallTracer

__all__ = ["Telemetry", "render_prometheus"]


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


class Telemetry:
    def __init__(self, *, span_exporter: Any = None, metric_readers: tuple[Any, ...] = (),
                 prometheus_port: int | None = None, prometheus_host: str = "127.0.0.1",
                 service_name: str = "callengine") -> None:
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.tracer: CallTracer | None = None
        self.metrics: EngineMetrics | None = None
        self.prometheus_port = prometheus_port
        self.prometheus_host = prometheus_host
        self.prometheus_url = ""
        self._prom_reader: Any = None
        if span_exporter is None and not metric_readers and prometheus_port is None:
            return
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
        resource = resource.merge(OTELResourceDetector().detect())
        readers = list(metric_readers)
        if prometheus_port is not None:
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            self._prom_reader = InMemoryMetricReader()
            readers.append(self._prom_reader)
        if readers:
            from opentelemetry.sdk.metrics import MeterProvider

            self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
            self.metrics = EngineMetrics(self.meter_provider.get_meter("callengine"))
        if span_exporter is not None:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            ids = CallIdGenerator()
            self.tracer_provider = TracerProvider(resource=resource, id_generator=ids)
            self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
            self.tracer = CallTracer(self.tracer_provider.get_tracer("callengine"), ids, metrics=self.metrics)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None or self.metrics is not None

    @classmethod
    def from_env(cls, **overrides: Any) -> Telemetry:
        if _env("OTEL_SDK_DISABLED").lower() == "true":
            return cls()
        grpc = _env("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc"
        base = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
        span_exporter = metric_reader = None
        if (base or _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) and _env("OTEL_TRACES_EXPORTER") != "none":
            if grpc:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
            span_exporter = OTLPSpanExporter()
        if (base or _env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) and _env("OTEL_METRICS_EXPORTER") != "none":
            if grpc:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
                    OTLPMetricExporter,
                )
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            metric_reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        port = _env("CALLENGINE_PROMETHEUS_PORT")
        options: dict[str, Any] = dict(span_exporter=span_exporter,
                                       metric_readers=(metric_reader,) if metric_reader else (),
                                       prometheus_port=int(port) if port else None,
                                       prometheus_host=_env("CALLENGINE_PROMETHEUS_HOST") or "127.0.0.1")
        options.update(overrides)
        return cls(**options)

    # ------------------------------------------------------------ wiring
    def wrap_ports(self, ports: Ports) -> Ports:
        if self.tracer is not None:
            return self.tracer.wrap_ports(ports)
        if self.metrics is not None:
            return self.metrics.wrap_ports(ports)
        return ports

    def wrap_sink(self, sink: Any) -> Any:
        return self.tracer.wrap_sink(sink) if self.tracer is not None else sink

    def bind(self, *, node: Any = None, links: Any = None, cdr_writer: Any = None, publisher: Any = None,
             webhooks: Any = None) -> None:
        if self.tracer is not None and node is not None:
            self.tracer.queue_state = lambda qid: node.runtime.state_of("queue", qid)
        if self.metrics is not None:
            self.metrics.bind(node=node, links=links, cdr_writer=cdr_writer, publisher=publisher, webhooks=webhooks)

    def shutdown(self) -> None:
        """Flush and stop the exporters (call after the node has stopped)."""
        if self.tracer is not None:
            self.tracer.end_all()
        for p in (self.tracer_provider, self.meter_provider):
            if p is not None:
                try:
                    if hasattr(p, "force_flush"):
                        p.force_flush(5000)
                    p.shutdown()
                except Exception:  # noqa: BLE001 - an exporter that cannot flush must not block exit
                    pass

    # ------------------------------------------------------------ prometheus
    async def serve_prometheus(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """``GET /metrics`` in the Prometheus text format (collected in the trio thread)."""
        if self._prom_reader is None:
            task_status.started("")
            return
        listeners = await trio.open_tcp_listeners(self.prometheus_port or 0, host=self.prometheus_host)
        port = listeners[0].socket.getsockname()[1]
        self.prometheus_url = f"http://{self.prometheus_host}:{port}/metrics"
        task_status.started(self.prometheus_url)
        await trio.serve_listeners(self._scrape, listeners)

    async def _scrape(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 16384:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                line = data.split(b"\r\n", 1)[0].split()
                if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                    body = render_prometheus(self._prom_reader.get_metrics_data()).encode()
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                else:
                    body, head = b"not found\n", b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                await stream.send_all(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


def _labels(attrs: Any, extra: str = "") -> str:
    parts = [f'{k.replace(".", "_")}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
             for k, v in sorted((attrs or {}).items())]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render_prometheus(data: Any) -> str:
    """OTel SDK metrics data -> Prometheus text exposition (cumulative)."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    out: list[str] = []
    if data is None:
        return ""
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                name = metric.name.replace(".", "_")
                d = metric.data
                if isinstance(d, Sum) and d.is_monotonic:
                    name += "_total"
                    kind = "counter"
                elif isinstance(d, Histogram):
                    kind = "histogram"
                else:
                    kind = "gauge"
                if metric.description:
                    out.append(f"# HELP {name} {metric.description}")
                out.append(f"# TYPE {name} {kind}")
                if isinstance(d, (Sum, Gauge)):
                    for p in d.data_points:
                        out.append(f"{name}{_labels(p.attributes)} {p.value}")
                elif isinstance(d, Histogram):
                    for h in d.data_points:
                        acc = 0
                        for bound, count in zip(list(h.explicit_bounds) + [float("inf")], h.bucket_counts, strict=False):
                            acc += count
                            le = "+Inf" if bound == float("inf") else repr(float(bound))
                            lbl = _labels(h.attributes, 'le="' + le + '"')
                            out.append(f"{name}_bucket{lbl} {acc}")
                        out.append(f"{name}_sum{_labels(h.attributes)} {h.sum}")
                        out.append(f"{name}_count{_labels(h.attributes)} {h.count}")
    return "\n".join(out) + "\n"
