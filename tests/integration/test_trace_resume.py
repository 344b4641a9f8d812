"""An incoming trace context is resumed, not just linked: a call that arrives through the ESL
emulator with ``sip_h_traceparent`` gets spans in the caller's trace (root span parented by the
incoming span), its CTI events on NATS carry that trace id in ``traceparent``, and the agent leg
the engine originates carries it to FreeSWITCH."""

from __future__ import annotations

import pytest
import trio

from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.nodes import MediaLinks, engine_live_calls
from adapters.nats.bridge import NatsSettings, open_bridge
from adapters.nats.publisher import CtiPublisher
from adapters.nats.server import open_embedded_nats
from engine.actors import Ports, TaskSpec, open_node, route_by_destination
from engine.fsm.queue import QueueConfig
from engine.messages import AgentLogin
from engine.telemetry import Telemetry
from sim.freeswitch import FreeSwitchEmulator
from tests.integration.test_telemetry import Receiver, _attr
from tests.support.nats import CtiTee

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.slow
def test_incoming_traceparent_is_resumed_by_spans_nats_headers_and_originated_legs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rx = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    telemetry = Telemetry.from_env()
    seen: dict[str, object] = {}

    async def main() -> str:
        emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.05)
        async with open_embedded_nats() as server, open_bridge(NatsSettings(url=server.url)) as bridge, \
                trio.open_nursery() as n:
            publisher = CtiPublisher(bridge, None, batch=64)
            await n.start(publisher.run)
            port = await n.start(emu.run)
            emu.register_phone("7001")
            links = MediaLinks([EslNodeConfig(name="fs1", port=port)], heartbeat_s=1.0)
            mem = Ports.in_memory()
            ports = telemetry.wrap_ports(Ports(links, CtiTee(publisher, mem.cti), mem.cdr, mem.replies))
            async with open_node(ports=ports, queues=[QueueConfig(queue_id="q")], agents=["a1"],
                                 router=route_by_destination({"5000": "q"}),
                                 media_links=[TaskSpec("esl", links.run)]) as node:
                links.attach(telemetry.wrap_sink(node), engine_live_calls(node, links))
                with trio.fail_after(10):
                    await links.wait_all_up()
                r = await node.ask(AgentLogin(agent_id="a1", at=trio.current_time(), extension="7001",
                                              queues=("q",), ready=True))
                assert r.ok
                ch = await emu.place_inbound_call("+15550001", "5000",
                                                  variables={"sip_h_traceparent": f"00-{TRACE}-{SPAN}-01"})
                with trio.fail_after(10):
                    while not ch.peer:
                        await trio.sleep(0.01)
                seen["agent_leg_vars"] = dict(emu.channels[ch.peer].variables)
                await emu.hangup(ch.uuid)
                with trio.fail_after(10):
                    while not ports.cdr.port.items:
                        await trio.sleep(0.01)
            await publisher.wait_idle()
            headers = []
            info = await bridge.aio(bridge.jsm.stream_info, "CTI")
            for stream_seq in range(1, info.state.messages + 1):
                msg = await bridge.aio(lambda s=stream_seq: bridge.jsm.get_msg("CTI", seq=s))
                if f".call.{ch.uuid}." in msg.subject:
                    headers.append((msg.subject, msg.headers["traceparent"]))
            seen["headers"] = headers
            n.cancel_scope.cancel()
        return ch.uuid

    try:
        call_id = trio.run(main)
        telemetry.shutdown()
    finally:
        rx.close()
    # NATS: every event of the call carries the caller's trace id (CALL_CREATED .. CALL_ENDED)
    headers = seen["headers"]
    assert isinstance(headers, list) and len(headers) >= 3, headers
    assert any(s.endswith(".CALL_CREATED") for s, _ in headers) and any(s.endswith(".CALL_ENDED") for s, _ in headers)
    assert all(tp.split("-")[1] == TRACE for _, tp in headers), headers
    # spans: the call's root is a child of the incoming span, in the incoming trace
    spans = [s for s in rx.spans if s.trace_id.hex() == TRACE]
    root = next(s for s in spans if s.name == "call")
    assert root.parent_span_id.hex() == SPAN
    assert _attr(root, "callengine.call_id") == call_id
    assert {"agent.offer", "queue.wait q"} <= {s.name for s in spans}
    # the agent leg the engine originated carries the same trace to FreeSWITCH
    agent_vars = seen["agent_leg_vars"]
    assert isinstance(agent_vars, dict) and agent_vars.get("traceparent", "").split("-")[1] == TRACE, agent_vars
