"""OpenTelemetry for callengine: one trace per call, routing decisions on spans, engine metrics.

Rules
1. Nothing here runs inside the state machines. Traces are built from what the actors already emit
   (CTI events, media commands, the CDR) by port wrappers (``CallTracer``); routing decisions are
   reconstructed from the queue actor's state with the queue machine's own pure ranking functions.
   Metrics are observable instruments read at collection time (no cost per call) plus a few
   counters/histograms fed by the same wrappers.
2. Off unless configured: with no ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_/..._METRICS_``
   variant), no ``CALLENGINE_PROMETHEUS_PORT`` and no explicit exporter, ``Telemetry.from_env()``
   returns a disabled instance whose ``wrap_ports`` returns the ports untouched: the hot path pays
   nothing. ``OTEL_SDK_DISABLED=true`` turns everything off. The standard ``OTEL_*`` variables
   (service name, resource attributes, headers, timeouts, batch sizes, export interval) are read
   by the SDK itself.
3. Trace ids are the ones the NATS publisher puts in ``traceparent`` headers
   (``engine.tracecontext.derived_trace_id``: blake2b of tenant/call id), so a CTI event on the bus
   and the call's spans share one trace. Originated legs get a ``traceparent`` channel variable
   (the offer span). A call that arrives with a valid trace context (channel variable
   ``traceparent`` / ``sip_h_traceparent``, or ``Originate.traceparent``) resumes it: the call
   machine puts it on CALL_CREATED, the root span's parent is the incoming span (same trace id)
   and the publisher uses that trace id for the call's events; ``callengine.parent_traceparent``
   keeps the value.
"""

from engine.telemetry.metrics import EngineMetrics
from engine.telemetry.setup import Telemetry
from engine.telemetry.tracing import CallTracer, explain_routing

__all__ = ["CallTracer", "EngineMetrics", "Telemetry", "explain_routing"]
