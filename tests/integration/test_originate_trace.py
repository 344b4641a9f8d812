"""Click-to-call resumes the caller's trace: ``CallControl/Originate`` over the Connect HTTP API with
a W3C ``traceparent`` header gives a call whose CALL_CREATED CTI event carries that trace context
(the publisher and the tracer take the call's trace id from it, engine/tracecontext.py), and the
CTI event on NATS has the same trace id in its ``traceparent`` header. A malformed header is
ignored (the call keeps its derived trace id). Real nats-server and hypercorn on loopback."""

from __future__ import annotations

import json

import pytest
import trio

from engine.tracecontext import derived_trace_id
from tests.support.nats import _post, api_stack, setup_tenant, token

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


class _Tee:
    def __init__(self, *ports) -> None:
        self.ports = ports

    def publish(self, event) -> None:
        for p in self.ports:
            p.publish(event)


class _Seen:
    def __init__(self) -> None:
        self.items: list = []

    def publish(self, event) -> None:
        self.items.append(event)


async def _originate(stack, tok: str, traceparent: str | None) -> str:
    headers_tp = {"traceparent": traceparent} if traceparent is not None else {}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tok}", **headers_tp}
    status, body, _ = await trio.to_thread.run_sync(
        _post, stack.http_url, "/callengine.v1.CallControl/Originate", json.dumps({"to": "+15550100"}).encode(),
        headers)
    assert status == 200, body
    return json.loads(body)["call_id"]


@pytest.mark.slow
def test_originate_over_http_resumes_the_request_traceparent() -> None:
    seen = _Seen()
    out: dict = {}

    async def main() -> None:
        with trio.fail_after(60):
            async with api_stack(ports_wrap=lambda p: p.__class__(p.media, _Tee(p.cti, seen), p.cdr, p.replies)) \
                    as stack:
                await setup_tenant(stack, "t1", agents=("a1",))
                # the NATS side: the CTI event of the call carries the trace id in its header
                got: list = []

                async def subscribe() -> None:
                    nc = stack.bridge.nc

                    async def on_msg(msg) -> None:
                        got.append((msg.subject, dict(msg.headers or {})))

                    await nc.subscribe("cti.t1.call.>", cb=on_msg)

                await stack.bridge.aio(subscribe)
                agent = token(tenant="t1", sub="a1", roles=("agent",))
                tp = f"00-{TRACE}-{SPAN}-01"
                out["traced"] = await _originate(stack, agent, tp)
                out["bad"] = await _originate(stack, agent, "00-not-a-trace-01")

                def created(call_id: str):
                    return next((e for e in seen.items if e.name == "CALL_CREATED" and e.call_id == call_id), None)

                while created(out["traced"]) is None or created(out["bad"]) is None or not any(
                        out["traced"] in s and "call_created" in s.lower() for s, _ in got):
                    await trio.sleep(0.02)
                out["created"] = created(out["traced"])
                out["created_bad"] = created(out["bad"])
                out["nats"] = [h for s, h in got if out["traced"] in s and "call_created" in s.lower()]

    trio.run(main)
    assert out["created"].data.get("traceparent") == f"00-{TRACE}-{SPAN}-01", out["created"]
    assert "traceparent" not in out["created_bad"].data, out["created_bad"]
    header = out["nats"][0].get("traceparent", "")
    assert header.split("-")[1] == TRACE, out["nats"]
    assert derived_trace_id("t1", out["traced"]) != TRACE

