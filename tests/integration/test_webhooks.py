"""Outbound webhooks against a real HTTP receiver on 127.0.0.1 (trio TCP + h11, free port).

Delivery with the templated body and the configured headers, the HMAC signature, retries with
backoff on 5xx, 429 with Retry-After, a 4xx dead-lettered at once, a receiver that is down or too
slow, ``offer`` never blocking (10k events against a stuck receiver), shutdown, the hub and CDR
wiring, and the PostgreSQL dead-letter store on embedded PostgreSQL. Backoffs are milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import random
import time
import warnings

import pytest
import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.migrate import apply_migrations
from adapters.webhooks import (
    DeadLetter,
    MemoryDeadLetterStore,
    PgDeadLetterStore,
    SignatureError,
    WebhookCdrStore,
    WebhookCti,
    WebhookDispatcher,
    attach_to_hub,
    load_config,
    open_webhook_dispatcher,
    verify_signature,
)
from api.events import CallCreated, CallEnded, encode_event
from api.hub import EventHub
from engine.actors.ports import InMemoryCdrs
from engine.messages import Cdr, CtiEvent
from tests.support.http import HttpReceiver, free_port

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

pytestmark = pytest.mark.timeout(60)


#: the receiver of these tests: records every request, answers with ``script(n)``
Receiver = HttpReceiver


def config(url: str, **hook) -> dict:
    base = {"id": "crm", "url": url, "events": ["CALL_CREATED"], "timeout_s": 2.0, "max_attempts": 3,
            "backoff_base_s": 0.01, "backoff_cap_s": 0.05}
    base.update(hook)
    return {"tenants": [{"tenant": "acme", "webhooks": [base]}]}


def created(i: int = 1, tenant: str = "acme", caller: str = "+441234") -> CallCreated:
    return CallCreated(tenant=tenant, seq=i, at=1_700_000_000.0 + i, call_id=f"c{i}", caller_id=caller,
                       destination="100")


def a_cdr(i: int = 1) -> Cdr:
    return Cdr(call_id=f"c{i}", tenant="acme", direction="inbound", caller_id="+441234", destination="100",
               created_at=1_700_000_000.0, answered_at=1_700_000_003.0, ended_at=1_700_000_060.0,
               disposition="answered", hangup_cause="NORMAL_CLEARING", queue_id="q1", agent_id="a1",
               wait_s=3.0, talk_s=57.0)


class RecordingSleep:
    """The dispatcher's backoff sleeps, recorded (and slept for real)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await trio.sleep(seconds)


def run(body):
    return trio.run(body)


# ---- delivery ------------------------------------------------------------------------------------


def test_delivery_with_templated_body_headers_and_a_signature_that_verifies():
    hostile = 'Bob "the" \\ builder\n'

    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver().start(nursery)
            cfg = load_config(config(rx.url(), headers={"X-Api-Key": "k-123"}, secret="s3cret",
                                     body_template='{"call": $call_id, "from": $caller_id, "seq": $seq, '
                                                   '"kind": $type}'))
            store = MemoryDeadLetterStore()
            async with open_webhook_dispatcher(cfg, store) as d:
                d.offer(created(7, caller=hostile))
                d.offer(created(8, tenant="other"))  # another tenant has no webhooks
                d.offer(CallEnded(tenant="acme", call_id="c7"))  # a type this webhook does not take
                assert await d.wait_idle()
                stats = d.statistics()
            nursery.cancel_scope.cancel()
        return rx, stats, store

    rx, stats, store = run(main)
    assert len(rx.requests) == 1 and stats["delivered"] == 1 and stats["offered"] == 1
    req = rx.requests[0]
    assert req.target == "/hook"
    assert json.loads(req.body) == {"call": "c7", "from": hostile, "seq": 7, "kind": "CALL_CREATED"}
    h = req.headers
    assert h["x-api-key"] == "k-123" and h["content-type"] == "application/json"
    assert h["callengine-webhook-id"] == "crm" and h["callengine-event"] == "CALL_CREATED"
    assert h["callengine-attempt"] == "1" and h["callengine-delivery"]
    verify_signature("s3cret", h["callengine-signature"], req.body, now=time.time())
    # the documented scheme, recomputed here independently: HMAC-SHA256(secret, t + "." + body)
    t, v1 = (part.split("=", 1)[1] for part in h["callengine-signature"].split(","))
    assert v1 == hmac.new(b"s3cret", t.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert abs(int(t) - time.time()) < 30
    with pytest.raises(SignatureError):
        verify_signature("another-secret", h["callengine-signature"], req.body, now=time.time())
    assert store.letters == []


def test_without_a_template_the_body_is_the_event_and_cdrs_carry_type_cdr():
    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver().start(nursery)
            cfg = load_config(config(rx.url(), events=["CALL_CREATED", "CDR"]))
            async with open_webhook_dispatcher(cfg, MemoryDeadLetterStore()) as d:
                inner = InMemoryCdrs()
                cdrs = WebhookCdrStore(inner, d)
                d.offer(created(1))
                cdrs.write(a_cdr(1))
                assert await d.wait_idle()
                assert len(inner) == 1  # the real store got it too
                assert cdrs.by_call() == {"c1": 1}  # the wrapped store's other methods stay reachable
            nursery.cancel_scope.cancel()
        return rx

    rx = run(main)
    first, second = (json.loads(r.body) for r in rx.requests)
    assert first["type"] == "CALL_CREATED" and first["call_id"] == "c1" and first["caller_id"] == "+441234"
    assert second["type"] == "CDR" and second["disposition"] == "answered" and second["talk_s"] == 57.0
    assert rx.requests[1].headers["callengine-event"] == "CDR"


def test_hub_events_reach_the_webhook_per_tenant_and_per_type():
    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver().start(nursery)
            cfg = load_config(config(rx.url(), events=["CALL_ENDED"]))
            hub = EventHub()
            async with open_webhook_dispatcher(cfg, MemoryDeadLetterStore()) as d:
                await attach_to_hub(nursery, hub, d)
                events = [created(1), CallEnded(tenant="acme", seq=2, call_id="c1", disposition="answered"),
                          CallEnded(tenant="other", seq=1, call_id="x1")]
                hub.publish_batch([(e, encode_event(e).decode()) for e in events])
                with trio.fail_after(5):
                    while not rx.requests:
                        await trio.sleep(0.01)
                assert await d.wait_idle()
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        return rx

    rx = run(main)
    assert [json.loads(r.body)["call_id"] for r in rx.requests] == ["c1"]
    assert json.loads(rx.requests[0].body)["type"] == "CALL_ENDED"


def test_the_cti_port_feeds_own_events_in_wire_form():
    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver().start(nursery)
            cfg = load_config(config(rx.url(), events=["AGENT_STATE_CHANGED"],
                                     body_template='{"agent": $agent_id, "state": $state, "was": $previous}'))
            async with open_webhook_dispatcher(cfg, MemoryDeadLetterStore()) as d:
                port = WebhookCti(d)
                port.publish(CtiEvent(name="AGENT_STATE_CHANGED", tenant="acme", at=1.0, agent_id="a1",
                                      data={"state": "AVAILABLE", "previous": "LOGGED_OUT"}))
                port.publish(CtiEvent(name="CALL_CREATED", tenant="acme", at=1.0, call_id="c1"))
                port.publish(CtiEvent(name="AGENT_STATE_CHANGED", tenant="other", at=1.0, agent_id="a1"))
                assert await d.wait_idle()
            nursery.cancel_scope.cancel()
        return rx

    rx = run(main)
    assert [json.loads(r.body) for r in rx.requests] == [{"agent": "a1", "state": "AVAILABLE",
                                                          "was": "LOGGED_OUT"}]


# ---- retries and dead letters ----------------------------------------------------------------------


def test_5xx_is_retried_with_backoff_then_succeeds():
    sleeps = RecordingSleep()

    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver(script=lambda n: (500 if n < 2 else 200, [], b"boom" if n < 2 else b"ok", 0.0)
                                ).start(nursery)
            cfg = load_config(config(rx.url(), max_attempts=4, secret="s"))
            store = MemoryDeadLetterStore()
            async with open_webhook_dispatcher(cfg, store, sleep=sleeps, rng=random.Random(3)) as d:
                d.offer(created(1))
                assert await d.wait_idle()
                stats = d.statistics()
            nursery.cancel_scope.cancel()
        return rx, stats, store

    rx, stats, store = run(main)
    assert [r.headers["callengine-attempt"] for r in rx.requests] == ["1", "2", "3"]
    assert len({r.headers["callengine-delivery"] for r in rx.requests}) == 1  # one id across retries
    assert stats["delivered"] == 1 and stats["retries"] == 2 and store.letters == []
    # full jitter: uniform(0, min(cap, base * 2 ** (attempt - 1))), base 0.01, cap 0.05
    assert len(sleeps.waits) == 2
    assert 0 <= sleeps.waits[0] <= 0.01 and 0 <= sleeps.waits[1] <= 0.02
    for r in rx.requests:  # each attempt signed afresh over the same body
        verify_signature("s", r.headers["callengine-signature"], r.body, now=time.time())


def test_429_retry_after_is_honoured():
    sleeps = RecordingSleep()

    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver(script=lambda n: (429, [("retry-after", "1")], b"slow down", 0.0) if n == 0
                                else (200, [], b"ok", 0.0)).start(nursery)
            cfg = load_config(config(rx.url()))
            async with open_webhook_dispatcher(cfg, MemoryDeadLetterStore(), sleep=sleeps) as d:
                d.offer(created(1))
                assert await d.wait_idle()
            nursery.cancel_scope.cancel()
        return rx

    rx = run(main)
    assert len(rx.requests) == 2
    assert sleeps.waits == [1.0]  # not the 0.01-0.05 s backoff
    assert rx.requests[1].at - rx.requests[0].at >= 0.95


def test_4xx_is_not_retried_and_becomes_a_dead_letter():
    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver(script=lambda n: (400, [], b'{"error": "bad payload"}', 0.0)).start(nursery)
            cfg = load_config(config(rx.url(), max_attempts=5))
            store = MemoryDeadLetterStore()
            async with open_webhook_dispatcher(cfg, store) as d:
                d.offer(created(1))
                assert await d.wait_idle()
            nursery.cancel_scope.cancel()
        return rx, store

    rx, store = run(main)
    assert len(rx.requests) == 1
    (letter,) = store.letters
    assert (letter.reason, letter.attempts, letter.last_status) == ("rejected", 1, 400)
    assert "bad payload" in letter.last_error
    assert letter.tenant == "acme" and letter.webhook_id == "crm" and letter.event_type == "CALL_CREATED"
    assert json.loads(letter.event)["call_id"] == "c1"
    assert letter.delivery_id == rx.requests[0].headers["callengine-delivery"]
    assert abs(letter.at - time.time()) < 30


def test_receiver_down_is_dead_lettered_after_max_attempts():
    port = free_port()
    sleeps = RecordingSleep()

    async def main():
        cfg = load_config(config(f"http://127.0.0.1:{port}/hook", max_attempts=3))
        store = MemoryDeadLetterStore()
        async with open_webhook_dispatcher(cfg, store, sleep=sleeps) as d:
            d.offer(created(1))
            assert await d.wait_idle()
            stats = d.statistics()
        return store, stats

    store, stats = run(main)
    (letter,) = store.letters
    assert (letter.reason, letter.attempts, letter.last_status) == ("exhausted", 3, None)
    assert "ConnectError" in letter.last_error
    assert stats["attempts"] == 3 and len(sleeps.waits) == 2


def test_a_receiver_slower_than_the_timeout_is_retried_then_dead_lettered():
    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver(script=lambda n: (200, [], b"late", 5.0)).start(nursery)
            cfg = load_config(config(rx.url(), timeout_s=0.2, max_attempts=2))
            store = MemoryDeadLetterStore()
            async with open_webhook_dispatcher(cfg, store) as d:
                d.offer(created(1))
                assert await d.wait_idle()
            nursery.cancel_scope.cancel()
        return rx, store

    rx, store = run(main)
    assert len(rx.requests) == 2
    (letter,) = store.letters
    assert letter.reason == "exhausted" and letter.attempts == 2 and "timeout" in letter.last_error


def test_a_receiver_that_drips_its_response_is_cut_at_the_attempt_timeout():
    """Bytes every 0.1 s never trip a per-read timeout; ``timeout_s`` bounds the whole attempt."""
    requests = []

    async def drip(stream: trio.SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += await stream.receive_some(65536)
            requests.append(body)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
            for _ in range(30):
                await trio.sleep(0.1)
                await stream.send_all(b"x")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def main():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), drip, 0)
            port = listeners[0].socket.getsockname()[1]
            cfg = load_config(config(f"http://127.0.0.1:{port}/hook", timeout_s=0.4, max_attempts=2))
            store = MemoryDeadLetterStore()
            async with open_webhook_dispatcher(cfg, store) as d:
                d.offer(created(1))
                assert await d.wait_idle(timeout_s=20)
            nursery.cancel_scope.cancel()
        return store

    store = run(main)
    assert len(requests) == 2
    (letter,) = store.letters
    assert letter.reason == "exhausted" and "timeout" in letter.last_error


def test_a_stuck_receiver_never_blocks_offer_and_overflow_is_dead_lettered():
    """10k offers in one synchronous loop (no checkpoint in between: offer never awaits); the
    webhook's queue holds 100, the rest are queue_full dead letters; at shutdown what is still
    queued is dead-lettered too, so every one of the 10k events is accounted for."""

    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver(script=lambda n: (200, [], b"late", 60.0)).start(nursery)
            cfg = load_config(config(rx.url(), timeout_s=30.0, queue_capacity=100))
            store = MemoryDeadLetterStore()
            async with open_webhook_dispatcher(cfg, store, drain_s=0.2) as d:
                ticks = [0]

                async def ticker():  # runs whenever the loop below would yield to the scheduler
                    while True:
                        ticks[0] += 1
                        await trio.sleep(0)

                nursery.start_soon(ticker)
                await trio.sleep(0.01)
                before = ticks[0]
                for i in range(10_000):
                    d.offer(created(i))
                # the loop ran without yielding once: offer is synchronous, whatever the receiver does
                assert ticks[0] == before and rx.requests == []
                stats = d.statistics()
                assert await d.wait_idle(timeout_s=0.5) is False  # the stuck receiver holds the queue
                await trio.sleep(0)
            nursery.cancel_scope.cancel()
        return rx, stats, store

    rx, stats, store = run(main)
    assert stats["offered"] == 10_000 and stats["queued"] == 100 and stats["dead_lettered"] == 9_900
    reasons: dict[str, int] = {}
    for letter in store.letters:
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
    assert reasons == {"queue_full": 9_900, "shutdown": 100}
    assert len({x.delivery_id for x in store.letters}) == 10_000
    assert len(rx.requests) == 1  # one request in flight, stuck


def test_offer_never_raises():
    async def main():
        cfg = load_config(config("http://127.0.0.1:9/hook"))
        d = WebhookDispatcher(cfg, MemoryDeadLetterStore())
        d.offer(None)  # type: ignore[arg-type]  # not an event at all
        d.offer_cdr("nonsense")  # type: ignore[arg-type]
        return d.offer_errors

    assert run(main) == 2


def test_dead_letter_store_failures_are_retried_not_lost():
    class Flaky(MemoryDeadLetterStore):
        fails = 2

        async def add(self, letters):
            if self.fails:
                self.fails -= 1
                raise OSError("store down")
            await super().add(letters)

    async def main():
        async with trio.open_nursery() as nursery:
            rx = await Receiver(script=lambda n: (404, [], b"", 0.0)).start(nursery)
            store = Flaky()
            async with open_webhook_dispatcher(load_config(config(rx.url())), store) as d:
                d.offer(created(1))
                d.offer(created(2))
                assert await d.wait_idle()
                stats = d.statistics()
            nursery.cancel_scope.cancel()
        return store, stats

    store, stats = run(main)
    assert [json.loads(x.event)["call_id"] for x in store.letters] == ["c1", "c2"]
    assert stats["store_errors"] == 2


# ---- PostgreSQL ----------------------------------------------------------------------------------


def test_postgres_dead_letter_store_round_trip():
    from tests.support.pg import fresh_dsn

    dsn = fresh_dsn("webhooks")

    async def main():
        async with open_postgres(dsn) as pg:
            await pg.run(apply_migrations)
            store = PgDeadLetterStore(pg)
            one = DeadLetter(tenant="acme", webhook_id="crm", delivery_id="d-1", event_type="CALL_CREATED",
                             event='{"type":"CALL_CREATED","caller_id":"a\\u0000b"}', reason="exhausted",
                             attempts=3, last_status=503, last_error="nul \0 here", at=1_700_000_000.5)
            two = DeadLetter(tenant="acme", webhook_id="erp", delivery_id="d-2", event_type="CDR",
                             event='{"type":"CDR"}', reason="queue_full", attempts=0, at=1_700_000_001.0)
            other = DeadLetter(tenant="beta", webhook_id="crm", delivery_id="d-1", event_type="CDR",
                               event="{}", reason="rejected", attempts=1, last_status=400, at=1_700_000_002.0)
            await store.add([one, two, other])
            await store.add([one])  # a retried batch: idempotent
            acme = await store.list("acme")
            crm = await store.list("acme", "crm")
            beta = await store.list("beta")

            # end to end: a dispatcher whose receiver refuses writes its dead letter to PostgreSQL
            async with trio.open_nursery() as nursery:
                rx = await Receiver(script=lambda n: (410, [], b"gone", 0.0)).start(nursery)
                async with open_webhook_dispatcher(load_config(config(rx.url())), store) as d:
                    d.offer(created(42))
                    assert await d.wait_idle()
                nursery.cancel_scope.cancel()
            latest = await store.list("acme", "crm", limit=1)
            return acme, crm, beta, latest

    acme, crm, beta, latest = run(main)
    assert [x.delivery_id for x in acme] == ["d-1", "d-2"]
    assert [x.webhook_id for x in crm] == ["crm"]
    got = crm[0]
    assert got.event == '{"type":"CALL_CREATED","caller_id":"a\\u0000b"}'  # stored literally
    assert json.loads(got.event)["caller_id"] == "a\0b"
    assert (got.reason, got.attempts, got.last_status, got.last_error) == ("exhausted", 3, 503, "nul \ufffd here")
    assert got.at == pytest.approx(1_700_000_000.5)
    assert acme[1].last_status is None and acme[1].event_type == "CDR"
    assert [(x.tenant, x.reason, x.last_status) for x in beta] == [("beta", "rejected", 400)]
    (letter,) = latest
    assert (letter.reason, letter.last_status, json.loads(letter.event)["call_id"]) == ("rejected", 410, "c42")
