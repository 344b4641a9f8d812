"""Fuzz the WebSocket and HTTP bodies: whatever arrives, the answer is a typed error (or a result),
never a crash, a hang or an untyped 500; and the servers keep serving."""

from __future__ import annotations

import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.errors import CODES
from api.services import METHODS
from tests.support.nats import api_stack, http_raw, setup_tenant, token, ws_client

SUP = token(tenant="t1", sub="sup1", roles=("supervisor",))
names = sorted(m.full_name.removeprefix("callengine.v1.") for m in METHODS.values()) + ["Nope/X", "", "auth"]
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                      max_leaves=8)
fields = st.sampled_from(["call_id", "agent_id", "queue_id", "id", "to", "digits", "target", "reason",
                          "from_seq", "types", "extension", "queues", "tenant", "x"])
params = st.dictionaries(fields, values, max_size=4) | values
frames = st.one_of(
    st.builds(lambda i, m, p: json.dumps({"id": i, "method": m, "params": p}), st.integers() | st.text(max_size=5),
              st.sampled_from(names), params),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.text(max_size=64),
)
bodies = st.one_of(params.map(lambda p: json.dumps(p).encode()), st.binary(max_size=128))


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws_frames=st.lists(frames, min_size=10, max_size=30),
       http_bodies=st.lists(st.tuples(st.sampled_from(names), bodies), min_size=10, max_size=30))
def test_fuzzed_bodies_only_yield_typed_errors(ws_frames, http_bodies):
    async def main():
        with trio.fail_after(60):
            async with api_stack(rate=0) as stack:
                await setup_tenant(stack)
                async with ws_client(stack, SUP) as ws:
                    for frame in ws_frames:
                        await ws.ws.send_message(frame)
                        # every frame gets exactly one reply (Watch may add events)
                        with trio.fail_after(5):
                            while True:
                                reply = json.loads(await ws.ws.get_message())
                                if "event" not in reply:
                                    break
                        assert "result" in reply or reply["error"]["code"] in CODES, reply
                        assert reply["error"]["code"] != "INTERNAL" if "error" in reply else True
                    assert "result" in await ws.call("Queues/List")
                for name, body in http_bodies:
                    status, raw, _ = await http_raw(stack, f"/callengine.v1.{name}", body, SUP)
                    answer = json.loads(raw)
                    assert status == 200 or (answer["code"].upper() in CODES and answer["code"] != "internal"), answer
                    assert status != 500
                assert stack.api.errors.get("INTERNAL", 0) == 0

    trio.run(main)
