"""Click-to-call resumes the caller's trace: ``CallControl/Originate`` with a W3C ``traceparent`` (the
Connect HTTP header, the WebSocket request frame's ``traceparent`` field, the NATS micro request's
``traceparent`` header) gives a call whose CALL_CREATED CTI event carries that trace context
(the publisher and the tracer take the call's trace id from it, engine/tracecontext.py), and the
CTI event on NATS has the same trace id in its ``traceparent`` header. A malformed header is
ignored (the call keeps its derived trace id). Real nats-server and hypercorn on loopback."""

from __future__ import annotations

import json

import pytest
import trio

from engine.tracecontext import derived_trace_id
from tests.support.nats import CtiTee, _post, api_stack, setup_tenant, token

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


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


async def _originate_ws(stack, tok: str, traceparent: str | None) -> str:
    from trio_websocket import open_websocket_url

    frame: dict = {"id": 1, "method": "CallControl/Originate", "params": {"to": "+15550100"}}
    if traceparent is not None:
        frame["traceparent"] = traceparent
    async with open_websocket_url(stack.ws_url + "/", extra_headers=[("Authorization", f"Bearer {tok}")]) as ws:
        await ws.send_message(json.dumps(frame))
        for _ in range(100):
            reply = json.loads(await ws.get_message())
            if reply.get("id") == 1:
                break
    assert "result" in reply, reply
    return reply["result"]["call_id"]


async def _originate_nats(stack, tok: str, traceparent: str | None) -> str:
    import nats

    async def go() -> tuple[str, dict]:
        nc = await nats.connect(stack.nats_url)
        try:
            headers = {"Authorization": f"Bearer {tok}"}
            if traceparent is not None:
                headers["traceparent"] = traceparent
            msg = await nc.request("api.t1.CallControl.Originate", json.dumps({"to": "+15550100"}).encode(),
                                   timeout=5, headers=headers)
            return (msg.headers or {}).get("Nats-Service-Error-Code", "OK"), json.loads(msg.data)
        finally:
            await nc.close()

    code, body = await stack.bridge.aio(go)
    assert code == "OK", body
    return body["call_id"]


_ORIGINATE = {"http": _originate, "ws": _originate_ws, "nats": _originate_nats}


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["http", "ws", "nats"])
def test_originate_resumes_the_request_traceparent(transport: str) -> None:
    originate = _ORIGINATE[transport]
    seen = _Seen()
    out: dict = {}

    async def main() -> None:
        with trio.fail_after(60):
            async with api_stack(ports_wrap=lambda p: p.__class__(p.media, CtiTee(p.cti, seen), p.cdr, p.replies)) \
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
                out["traced"] = await originate(stack, agent, tp)
                out["bad"] = await originate(stack, agent, "00-not-a-trace-01")

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

