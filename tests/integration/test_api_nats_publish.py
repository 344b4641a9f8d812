"""The publisher's own HPUB frames and per-batch JetStream acks, against a real nats-server."""

from __future__ import annotations

import trio

from adapters.nats.bridge import NatsSettings, open_bridge
from adapters.nats.publisher import CtiPublisher
from adapters.nats.server import open_embedded_nats
from adapters.nats.subjects import cti_frame, header_block, hpub_frame, traceparent
from engine.messages import CtiEvent


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def _event(i: int, tenant: str = "t1", **data) -> CtiEvent:
    return CtiEvent(name="AGENT_STATE_CHANGED", tenant=tenant, at=float(i), agent_id=f"a{i % 7}",
                    call_id=f"c{i % 3}", data={"state": "AVAILABLE", **data})


def test_fast_frame_equals_the_generic_frame_and_headers_cannot_be_injected():
    payload = b'{"x":1}'
    for tenant in ("acme", "evil\r\nX-Injected: 1"):
        fast = cti_frame("cti.t.call.c1.CALL_HELD", payload, tenant, "c1", 42)
        generic = hpub_frame("cti.t.call.c1.CALL_HELD", payload, {
            "Nats-Msg-Id": f"{tenant}:42", "Cti-Seq": "42", "traceparent": traceparent(tenant, "c1", 42)})
        assert fast == generic
        head, _, rest = fast.partition(b"\r\n")
        _, subject, hlen, total = head.split(b" ")
        assert len(rest) == int(total) + 2 and rest.endswith(payload + b"\r\n")
        assert rest[:int(hlen)].count(b"\r\n") == 5  # NATS/1.0 + 3 headers + the blank line
    assert b"X-Injected" not in header_block({"A": "x\r\nX-Injected: 1"}).split(b"\r\n")[2]


def test_batches_are_stored_with_headers_acked_once_per_batch_and_deduplicated():
    async def main():
        async with open_embedded_nats() as server, open_bridge(NatsSettings(url=server.url)) as bridge:
            publisher = CtiPublisher(bridge, None, batch=64, window=3)
            async with trio.open_nursery() as nursery:
                await nursery.start(publisher.run)
                for i in range(1000):
                    publisher.publish(_event(i, tenant=("t1", "t2")[i % 2]))
                await publisher.wait_idle()
                info = await bridge.aio(bridge.jsm.stream_info, "CTI")
                assert info.state.messages == 1000
                assert publisher.acked == 1000 and publisher.lost_batches == 0 and publisher.errors == 0
                assert bridge.batches <= 1000 // 64 + 2  # one ack per batch, not per message
                # every message (framed by us or by nats-py) carries the contract's headers
                for stream_seq in (1, 2, 500, 999, 1000):
                    msg = await bridge.aio(lambda s=stream_seq: bridge.jsm.get_msg("CTI", seq=s))
                    tenant, seq = msg.headers["Nats-Msg-Id"].split(":")
                    assert msg.headers["Cti-Seq"] == seq and msg.subject.startswith(f"cti.{tenant}.agent.")
                    assert msg.headers["traceparent"].startswith("00-") and len(msg.headers["traceparent"]) == 55
                assert await bridge.last_seqs(["t1", "t2"]) == {"t1": 500, "t2": 500}
                nursery.cancel_scope.cancel()

    run(main)


def test_a_batch_the_stream_did_not_fully_store_is_detected_and_resent():
    async def main():
        async with open_embedded_nats() as server, open_bridge(NatsSettings(url=server.url)) as bridge:
            publisher = CtiPublisher(bridge, None, batch=16, window=1)
            async with trio.open_nursery() as nursery:
                await nursery.start(publisher.run)
                for i in range(16):
                    publisher.publish(_event(i))
                await publisher.wait_idle()
                assert publisher.lost_batches == 0
                # from now on the stream refuses large messages; core publishes get no error back
                info = await bridge.aio(bridge.jsm.stream_info, "CTI")
                config = info.config
                config.max_msg_size = 600
                await bridge.aio(bridge.jsm.update_stream, config)
                for i in range(16, 32):
                    publisher.publish(_event(i, note="x" * (2000 if i == 20 else 1)))
                await publisher.wait_idle()
                assert publisher.lost_batches == 1  # seen by the ack's stream sequence, re-sent
                info = await bridge.aio(bridge.jsm.stream_info, "CTI")
                assert info.state.messages == 31  # the re-send was deduplicated, the big one refused
                nursery.cancel_scope.cancel()

    run(main)
