"""OpenTelemetry: real OTLP/HTTP export to an in-process receiver (protobuf decoded with
opentelemetry-proto), the trace of a call through the ESL emulator, routing attributes, no-op default."""

from __future__ import annotations

import http.server
import threading
from typing import Any

import pytest
import trio

from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.nodes import MediaLinks, engine_live_calls
from adapters.nats.subjects import _trace_id
from engine.actors import Ports, TaskSpec, open_node, route_by_destination
from engine.fsm.queue import QueueConfig
from engine.messages import AgentLogin
from engine.telemetry import Telemetry
from sim.freeswitch import FreeSwitchEmulator


class Receiver:
    """A minimal OTLP/HTTP collector: stores decoded ExportTrace/MetricsServiceRequests."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[Any] = []
        self.metrics: list[Any] = []
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.paths.append(self.path)
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            outer.spans.extend(ss.spans)
                elif self.path == "/v1/metrics":
                    req = ExportMetricsServiceRequest()
                    req.ParseFromString(body)
                    for rm in req.resource_metrics:
                        for sm in rm.scope_metrics:
                            outer.metrics.extend(sm.metrics)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attr(span: Any, key: str) -> Any:
    for kv in span.attributes:
        if kv.key == key:
            v = kv.value
            which = v.WhichOneof("value")
            if which == "array_value":
                return [x.string_value for x in v.array_value.values]
            return getattr(v, which)
    return None


def test_no_exporter_configured_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
              "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "CALLENGINE_PROMETHEUS_PORT"):
        monkeypatch.delenv(k, raising=False)
    t = Telemetry.from_env()
    ports = Ports.in_memory()
    assert not t.enabled
    assert t.wrap_ports(ports) is ports
    sink = object()
    assert t.wrap_sink(sink) is sink
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not Telemetry.from_env().enabled


@pytest.mark.slow
def test_call_trace_and_metrics_exported_over_otlp_http(monkeypatch: pytest.MonkeyPatch) -> None:
    rx = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "callengine-test")
    telemetry = Telemetry.from_env()
    assert telemetry.tracer is not None and telemetry.metrics is not None
    originated_vars: dict[str, str] = {}

    async def main() -> str:
        emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.05)
        async with trio.open_nursery() as n:
            port = await n.start(emu.run)
            agents = {"7001": "best", "7002": "second", "7003": "unskilled"}
            for ext in agents:
                emu.register_phone(ext)
            links = MediaLinks([EslNodeConfig(name="fs1", port=port)], heartbeat_s=1.0)
            mem = Ports.in_memory()
            ports = telemetry.wrap_ports(Ports(links, mem.cti, mem.cdr, mem.replies))
            q = QueueConfig(queue_id="tech", strategy="skills-based")
            async with open_node(ports=ports, queues=[q], agents=list(agents.values()),
                                 router=route_by_destination({"5000": "tech"}),
                                 media_links=[TaskSpec("esl", links.run)]) as node:
                links.attach(telemetry.wrap_sink(node), engine_live_calls(node, links))
                telemetry.bind(node=node, links=links)
                with trio.fail_after(10):
                    await links.wait_all_up()
                skills = {"best": {"tech": 90}, "second": {"tech": 60}, "unskilled": {"sales": 90}}
                for ext, a in agents.items():
                    r = await node.ask(AgentLogin(agent_id=a, at=trio.current_time(), extension=ext,
                                                  queues=("tech",), skills=skills[a], ready=True))
                    assert r.ok
                # the caller requires tech >= 50: "unskilled" must be skipped for lack of skills
                from engine.messages import RouteToQueue

                node.router = lambda ev: RouteToQueue(call_id=ev.call_id, at=ev.at, queue_id="tech",
                                                      skills={"tech": 50})
                ch = await emu.place_inbound_call("+15550001", "5000")
                with trio.fail_after(10):
                    while not ch.peer:
                        await trio.sleep(0.01)
                peer = emu.channels[ch.peer]
                originated_vars.update(peer.variables)
                await trio.sleep(0.1)
                await emu.hangup(ch.uuid)
                with trio.fail_after(10):
                    while not ports.cdr.port.items:
                        await trio.sleep(0.01)
                await trio.sleep(0.6)  # a metric export interval or two
            n.cancel_scope.cancel()
        return ch.uuid

    try:
        call_id = trio.run(main)
        telemetry.shutdown()
    finally:
        rx.close()
    spans = [s for s in rx.spans if s.trace_id.hex() == _trace_id("default", call_id)]
    names = [s.name for s in spans]
    assert "call" in names, names
    for expected in ("queue.wait tech", "agent.offer", "media.MediaAnswer", "media.MediaOriginate",
                     "media.MediaBridge"):
        assert expected in names, (expected, names)
    root = next(s for s in spans if s.name == "call")
    assert root.parent_span_id == b""
    assert _attr(root, "callengine.disposition") == "answered"
    by_id = {s.span_id: s for s in spans}
    offer = next(s for s in spans if s.name == "agent.offer")
    assert by_id[offer.parent_span_id].name == "queue.wait tech"
    assert _attr(offer, "callengine.routing.strategy") == "skills-based"
    assert _attr(offer, "callengine.routing.chosen") == "best"
    cands = _attr(offer, "callengine.routing.candidates")
    assert cands[0].startswith("best=skills:90") and any(c.startswith("second=skills:60") for c in cands)
    skipped = _attr(offer, "callengine.routing.skipped")
    assert any(s.startswith("unskilled: lacks skills tech<50") for s in skipped), skipped
    assert any(s.startswith("second: ranked below best") for s in skipped), skipped
    assert _attr(offer, "callengine.offer.outcome") == "answered"
    # trace context on the originated leg: the same trace as the call (and as the NATS headers)
    tp = originated_vars.get("traceparent", "")
    assert tp.split("-")[1] == _trace_id("default", call_id), originated_vars
    # metrics arrived too
    metric_names = {m.name for m in rx.metrics}
    for expected in ("callengine.calls.active", "callengine.call.setups", "callengine.calls.ended",
                     "callengine.queue.wait", "callengine.agents", "callengine.esl.link.up",
                     "callengine.mailbox.depth", "callengine.queue.service_level"):
        assert expected in metric_names, (expected, metric_names)
    assert "/v1/traces" in rx.paths and "/v1/metrics" in rx.paths


def test_prometheus_endpoint_serves_the_metrics_the_grafana_dashboard_uses() -> None:
    import json
    import pathlib
    import re

    telemetry = Telemetry(prometheus_port=0)

    async def main() -> str:
        async with open_node(ports=telemetry.wrap_ports(Ports.in_memory()),
                             queues=[QueueConfig(queue_id="q1")], agents=["a1"]) as node:
            from types import SimpleNamespace

            class Pending(list):
                spool = SimpleNamespace(size=123)

            telemetry.bind(node=node, links=SimpleNamespace(links={"fs1": SimpleNamespace(up=True, reconnects=2)}),
                           cdr_writer=Pending(), publisher=Pending())
            async with trio.open_nursery() as n:
                url = await n.start(telemetry.serve_prometheus)
                host, port = url.split("//")[1].split("/")[0].split(":")
                stream = await trio.open_tcp_stream(host, int(port))
                await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                n.cancel_scope.cancel()
        return data.decode()

    text = trio.run(main)
    telemetry.shutdown()
    assert text.startswith("HTTP/1.1 200")
    exposed = set(re.findall(r"^([a-z_]+?)(?:_bucket)?(?:\{| )", text.split("\r\n\r\n", 1)[1], re.M))
    dash = json.loads((pathlib.Path(__file__).parents[2] / "deploy/grafana/callengine.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"callengine_[a-z_]+", t["expr"])}
    # recorded instruments (wait histogram, calls ended) and the SL (needs an offered call) only
    # appear once there is data
    missing = {m for m in used if m not in exposed and not m.startswith("callengine_queue_wait")
               and m not in ("callengine_calls_ended_total", "callengine_queue_service_level")}
    assert not missing, (missing, sorted(exposed))
    assert 'callengine_agents{state="LOGGED_OUT"} 1' in text
    assert 'callengine_esl_link_up{node="fs1"} 1' in text and "callengine_cdr_spool_bytes 123" in text
