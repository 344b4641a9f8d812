"""Fuzz the WebSocket and HTTP bodies: whatever arrives, the answer is a typed error (or a result),
never a crash, a hang or an untyped 500; and the servers keep serving.

Every example carries fuzzed params for the frames the WebSocket handles itself (``auth``,
``Events/Watch``, ``Events/Unwatch``) and fuzzed Connect streaming bodies, so a decode error that
escapes untyped on those paths is found on every run, not only when the sampler happens to pick
them. Mutations this file was seen to catch: a unary decode error raised untyped (INTERNAL), the
WebSocket reader not catching malformed JSON, a Watch or auth decode error raised untyped, an
INVALID_ARGUMENT mapped to HTTP 500, a malformed streaming envelope raised untyped."""

from __future__ import annotations

import json
import struct

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
                          "from_seq", "types", "extension", "queues", "tenant", "x", "token", "since",
                          "max_events", "batch", "deliver_subject"])
params = st.dictionaries(fields, values, max_size=4) | values
ids = st.integers() | st.text(max_size=5)


def frame(i, method, p) -> str:
    return json.dumps({"id": i, "method": method, "params": p})


frames = st.one_of(
    st.builds(frame, ids, st.sampled_from(names), params),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.text(max_size=64),
)
#: the methods the WebSocket connection handles itself, with fuzzed params (one of each per example)
own_frames = st.tuples(*(st.builds(frame, ids, st.just(m), params)
                         for m in ("auth", "Events/Watch", "Events/Unwatch", "callengine.v1.Events.Watch")))
bodies = st.one_of(params.map(lambda p: json.dumps(p).encode()), st.binary(max_size=128))


def envelope(flags: int, p, skew: int) -> bytes:
    # a Watch that turns out valid must end soon: timeout_s is pinned (after the fuzzed keys)
    data = json.dumps({**p, "timeout_s": 0.2} if isinstance(p, dict) else p).encode()
    return struct.pack(">BI", flags, max(0, len(data) + skew)) + data


def _well_formed(body: bytes) -> bool:
    """An uncompressed envelope whose length matches: it may hold a valid Watch (e.g. an empty
    message means ``{}``) that would stream for the HTTP default of 60 s."""
    return len(body) >= 5 and not body[0] & 1 and int.from_bytes(body[1:5], "big") == len(body) - 5


stream_bodies = st.one_of(st.binary(max_size=64).filter(lambda b: not _well_formed(b)),
                          st.builds(envelope, st.integers(0, 3), params, st.sampled_from([0, 0, -1, 1, 1000])))


def typed_end(raw: bytes) -> dict:
    """The end-of-stream message of a Connect streaming response (its envelopes must parse)."""
    last = None
    while raw:
        flags, n = raw[0], int.from_bytes(raw[1:5], "big")
        last = (flags, json.loads(raw[5:5 + n]))
        raw = raw[5 + n:]
    assert last is not None and last[0] == 2, last
    return last[1]


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws_frames=st.lists(frames, min_size=10, max_size=30), own=own_frames, order=st.randoms(),
       http_bodies=st.lists(st.tuples(st.sampled_from(names), bodies), min_size=10, max_size=30),
       streams=st.lists(stream_bodies, min_size=3, max_size=6))
def test_fuzzed_bodies_only_yield_typed_errors(ws_frames, own, order, http_bodies, streams):
    ws_frames = list(ws_frames) + list(own)
    order.shuffle(ws_frames)

    async def main():
        with trio.fail_after(60):
            async with api_stack(rate=0) as stack:
                await setup_tenant(stack)
                async with ws_client(stack, SUP) as ws:
                    for sent in ws_frames:
                        await ws.ws.send_message(sent)
                        # every frame gets exactly one reply (Watch may add events)
                        with trio.fail_after(5):
                            while True:
                                reply = json.loads(await ws.ws.get_message())
                                if "event" not in reply and "events" not in reply:
                                    break
                        assert "result" in reply or reply["error"]["code"] in CODES, reply
                        assert reply["error"]["code"] != "INTERNAL" if "error" in reply else True
                    assert "result" in await ws.call("Queues/List")
                for name, body in http_bodies:
                    status, raw, _ = await http_raw(stack, f"/callengine.v1.{name}", body, SUP)
                    assert status != 500, raw
                    answer = json.loads(raw)
                    assert status == 200 or (answer["code"].upper() in CODES and answer["code"] != "internal"), answer
                for body in streams:
                    status, raw, headers = await http_raw(stack, "/callengine.v1.Events/Watch", body, SUP,
                                                          content_type="application/connect+json")
                    assert status == 200 and headers["content-type"] == "application/connect+json", (status, raw)
                    end = typed_end(raw)
                    assert end == {} or (end["error"]["code"].upper() in CODES
                                         and end["error"]["code"] != "internal"), end
                assert stack.api.errors.get("INTERNAL", 0) == 0

    trio.run(main)
