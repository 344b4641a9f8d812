"""Webhooks, contact lookup and call journaling through ``callengine run`` (``open_engine``,
in process, and on the Ray path with 2 shard hosts behind the gateway), against the FreeSWITCH emulator over real ESL, embedded PostgreSQL and NATS, with HTTP
receivers on 127.0.0.1 (trio TCP + h11, free ports).

The configuration is in PostgreSQL, as migration 0007 defines it. The contact lookup is written
before the node starts. The webhooks are written while it runs: NOTIFY must bring them to the
dispatcher.

One run checks, for every call:

- the good receiver gets its CALL_CREATED and CALL_ENDED webhooks and its CDR journal entry,
  each signed (checked with ``verify_signature`` and with an independent HMAC);
- the contact lookup is asked with the caller id in a signed query;
- its answer is published as ``CALL_CONTACT`` for the call, after the call already rang its
  agent (routing did not wait for the lookup), and again for the agent;
- beside it, a webhook to a port nobody listens on and a webhook whose receiver never answers.
  They do not slow the calls. The check counts events, not time: every call is queued, rung,
  ended and journaled while the stuck receiver holds its first request and has answered nothing.
  Their events end up as dead letters in PostgreSQL (exhausted, queue_full, shutdown).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import pytest
import trio

from adapters.postgres.embedded import EmbeddedPostgres
from adapters.webhooks import verify_signature
from adapters.webhooks.config import ContactLookupConfig, WebhookConfig
from api.events import event_name
from engine.run import EpochClock, RunOptions, open_engine
from tests.support.http import HttpReceiver, Request, free_port

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec_test_secret"
LOOKUP_SECRET = "lookup_secret"
AGENT = ("sale000", "7000", ["sales"], {"sales": 80})
CALLS = 4
CONTACT = {"name": "Ada Lovelace", "crm_id": "42", "url": "https://crm.example/contacts/42", "vip": True,
           "nested": {"dropped": 1}}
#: the lookup answers only after a call has rung its agent (at most this long; timeout_s is 5)
LOOKUP_HOLD_S = 4.5


@dataclass
class Receiver(HttpReceiver):
    """``stuck``: reads a request and never answers. ``status``: of every answer (a failing receiver:
    503). A GET (the contact lookup) is answered with ``CONTACT`` once ``release_lookups`` is set
    (at most ``LOOKUP_HOLD_S`` later)."""

    stuck: bool = False
    status: int = 200
    release_lookups: trio.Event = field(default_factory=trio.Event)

    async def answer(self, request: Request, n: int) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.stuck:
            await trio.sleep_forever()
        payload = b"ok"
        if request.method == "GET":
            with trio.move_on_after(LOOKUP_HOLD_S):
                await self.release_lookups.wait()
            payload = json.dumps(CONTACT).encode()
        return self.status, [("content-type", "application/json")], payload

    def posts(self, event_type: str) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.headers.get("callengine-event") == event_type]


def _signed(secret: str, header: str, message: bytes) -> bool:
    """An independent check of the scheme: t=..,v1=HMAC-SHA256(secret, t + "." + message)."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + message, hashlib.sha256).hexdigest()
    verify_signature(secret, header, message, now=time.time())
    return hmac.compare_digest(expected, parts["v1"])


@pytest.mark.parametrize("in_process", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["in_process", "ray"])
def test_webhooks_contact_lookup_and_journaling_through_callengine_run(monkeypatch, in_process: bool) -> None:
    from adapters.freeswitch.config import EslNodeConfig
    from adapters.postgres import open_database
    from adapters.webhooks.pgconfig import PgWebhookConfigStore
    from engine.demo import DID_SALES, TENANT, _seed
    from engine.messages import AgentLogin
    from sim.freeswitch import FreeSwitchEmulator

    if not in_process:
        pytest.importorskip("ray")
    state = pathlib.Path(tempfile.mkdtemp(prefix="callengine-webhooks-run-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(state))
    out: dict = {}

    async def main() -> None:
        await _seed(state, [AGENT])
        good, stuck = Receiver(), Receiver(stuck=True)
        async with trio.open_nursery() as outer:
            await good.start(outer)
            await stuck.start(outer)
            async with open_database() as pg:  # the contact lookup is configured before the start
                await PgWebhookConfigStore(pg).put_contact_lookup(TENANT, ContactLookupConfig(
                    url=good.url("/contact?source=pbx"), secret=LOOKUP_SECRET, timeout_s=5.0), actor="test")
            emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.05, ring_delay=0.02)
            port = await outer.start(emu.run)
            emu.register_phone(AGENT[1])
            options = RunOptions(secret="s" * 32, state_dir=str(state), in_process=in_process, node_name="t",
                                 shards=None if in_process else 2,
                                 esl_nodes=[EslNodeConfig(name="fs1", port=port)], esl_heartbeat_s=1.0,
                                 webhook_drain_s=0.5)
            async with open_engine(options) as engine:
                hooks = engine.webhooks
                # written while the node runs: LISTEN/NOTIFY must bring them to the dispatcher
                for hook in [
                    WebhookConfig(id="wall", url=good.url("/events"), events=["CALL_CREATED", "CALL_ENDED"],
                                  secret=SECRET),
                    WebhookConfig(id="journal", url=good.url("/cdr"), events=["CDR"], secret=SECRET,
                                  body_template='{"call": $call_id, "from": $caller_id, "agent": $agent_id, '
                                                '"talk_s": $talk_s, "outcome": $disposition}'),
                    WebhookConfig(id="dead", url=f"http://127.0.0.1:{free_port()}/x",
                                  events=["CALL_CREATED", "CALL_ENDED", "CDR"], max_attempts=2,
                                  backoff_base_s=0.01, backoff_cap_s=0.02, timeout_s=1.0),
                    WebhookConfig(id="stuck", url=stuck.url("/x"), events=["CALL_CREATED", "CALL_ENDED", "CDR"],
                                  timeout_s=60.0, max_attempts=1, queue_capacity=2),
                ]:
                    await hooks.store.put_webhook(TENANT, hook, actor="test")
                with trio.fail_after(10):
                    while not all(f"{TENANT}/{h}" in hooks.dispatcher.statistics()["webhooks"]
                                  for h in ("wall", "journal", "dead", "stuck")):
                        await trio.sleep(0.02)
                with trio.fail_after(15):
                    await engine.links.wait_all_up()
                reply = await engine.stack.api.ask(AgentLogin(agent_id=AGENT[0], at=time.time(), extension=AGENT[1],
                                                              queues=tuple(AGENT[2]), skills=AGENT[3], ready=True),
                                                   TENANT)
                assert reply.ok, reply
                seen: list = []
                with engine.stack.hub.subscribe(TENANT, capacity=100_000) as sub:
                    async def watch() -> None:
                        while True:
                            batch = await sub.next_batch(1000)
                            if not batch:
                                return
                            seen.extend(e for e, _json in batch)

                    async with trio.open_nursery() as inner:
                        inner.start_soon(watch)
                        channels = [await emu.place_inbound_call(f"+1555000{i}", DID_SALES) for i in range(CALLS)]
                        ids = [ch.uuid for ch in channels]

                        def names(call_id: str) -> list[str]:
                            return [event_name(e) for e in seen if e.call_id == call_id]

                        with trio.fail_after(20):  # one call rings the agent; all are queued
                            while not (any("CALL_RINGING" in names(c) for c in ids)
                                       and all("QUEUE_ENTERED" in names(c) for c in ids)
                                       and sum(1 for r in good.requests if r.method == "GET") == CALLS):
                                await trio.sleep(0.02)
                        out["contact_before_ring"] = any("CALL_CONTACT" in names(c) for c in ids)
                        # which call rang the agent (on the Ray path, not necessarily the first placed)
                        rung = next(c for c in ids if "CALL_RINGING" in names(c))
                        out["rung"] = rung
                        out["lookups_asked_at_ring"] = sum(1 for r in good.requests if r.method == "GET")
                        good.release_lookups.set()
                        with trio.fail_after(20):
                            while not channels[ids.index(rung)].peer:
                                await trio.sleep(0.02)
                        with trio.fail_after(10):
                            while names(rung).count("CALL_CONTACT") < 2:
                                await trio.sleep(0.02)
                        for ch in channels:
                            await emu.hangup(ch.uuid)
                        with trio.fail_after(20):
                            while not (all("CALL_ENDED" in names(c) for c in ids)
                                       and engine.cdr_writer.statistics().accepted >= CALLS):
                                await trio.sleep(0.02)
                        # count-based: everything above happened while the stuck receiver held its
                        # first request and answered nothing
                        out["stuck_requests_when_all_ended"] = len(stuck.requests)
                        out["stuck_delivered_when_all_ended"] = \
                            hooks.dispatcher.statistics()["webhooks"][f"{TENANT}/stuck"]["delivered"]
                        with trio.fail_after(15):
                            while not (len(good.posts("CDR")) >= CALLS and len(good.posts("CALL_ENDED")) >= CALLS):
                                await trio.sleep(0.02)
                        with trio.fail_after(10):  # the dead port's events have used their 2 attempts
                            while hooks.dispatcher.statistics()["webhooks"][f"{TENANT}/dead"]["dead_lettered"] \
                                    < 3 * CALLS:
                                await trio.sleep(0.02)
                        inner.cancel_scope.cancel()
                out["ids"] = ids
                out["contact_events"] = [(e.call_id, e.agent_id, dict(e.data)) for e in seen
                                         if event_name(e) == "CALL_CONTACT"]
                out["order0"] = [event_name(e) for e in seen if e.call_id == rung]
                out["lookup_stats"] = hooks.lookup.statistics()
                out["stats"] = hooks.dispatcher.statistics()
            # stopped: the queued and in-flight events of "stuck" are shutdown dead letters now
            async with open_database() as pg:
                out["letters"] = await PgWebhookConfigStore(pg).dead_letters(TENANT, limit=1000)
            outer.cancel_scope.cancel()
        out["good"] = good.requests
        out["stuck"] = stuck.requests

    try:
        trio.run(main, clock=EpochClock())
    except BaseExceptionGroup as group:  # the engine's nested nurseries: show the failure itself
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from group
    finally:
        EmbeddedPostgres(state / "pg").stop()
        shutil.rmtree(state, ignore_errors=True)
        os.environ.pop("CALLENGINE_STATE_DIR", None)

    ids: list[str] = out["ids"]
    good: list[Request] = out["good"]
    # ---- webhooks: each call's CALL_CREATED and CALL_ENDED, signed ----
    for event_type in ("CALL_CREATED", "CALL_ENDED"):
        posts = [r for r in good if r.method == "POST" and r.headers["callengine-event"] == event_type]
        assert sorted(json.loads(r.body)["call_id"] for r in posts) == sorted(ids), event_type
        for r in posts:
            assert r.target == "/events" and r.headers["callengine-webhook-id"] == "wall"
            assert _signed(SECRET, r.headers["callengine-signature"], r.body)
            assert json.loads(r.body)["type"] == event_type
    # ---- journaling: each call's CDR, templated and signed ----
    cdrs = [r for r in good if r.method == "POST" and r.headers["callengine-event"] == "CDR"]
    assert sorted(json.loads(r.body)["call"] for r in cdrs) == sorted(ids)
    for r in cdrs:
        assert r.target == "/cdr" and _signed(SECRET, r.headers["callengine-signature"], r.body)
    bodies = {json.loads(r.body)["call"]: json.loads(r.body) for r in cdrs}
    rung = out["rung"]
    assert bodies[rung]["agent"] == AGENT[0] and bodies[rung]["outcome"] == "answered", bodies[rung]
    assert bodies[rung]["from"] == f"+1555000{ids.index(rung)}"
    # ---- contact lookup: asked per call, caller id in the signed query ----
    lookups = [r for r in good if r.method == "GET"]
    assert len(lookups) == CALLS, [r.target for r in lookups]
    for r in lookups:
        path, query = r.target.split("?", 1)
        assert path == "/contact" and query.startswith("source=pbx&caller_id=%2B1555000")
        assert _signed(LOOKUP_SECRET, r.headers["callengine-signature"], query.encode())
    # routing did not wait: every lookup was asked and a call rang its agent before any contact came
    assert out["lookups_asked_at_ring"] == CALLS and not out["contact_before_ring"]
    order = out["order0"]
    assert order.index("CALL_RINGING") < order.index("CALL_CONTACT"), order
    contacts = out["contact_events"]
    expected = {("contact_name" if k == "name" else k): v for k, v in CONTACT.items() if k != "nested"}
    assert (rung, "", expected) in contacts, contacts
    assert (rung, AGENT[0], expected) in contacts, contacts  # for the ringing agent's desktop
    assert sorted({c for c, _a, _d in contacts}) == sorted(ids)
    # ---- the dead and the stuck receivers did not slow the calls, and left dead letters ----
    assert out["stuck_requests_when_all_ended"] == 1 and out["stuck_delivered_when_all_ended"] == 0
    letters = out["letters"]
    by = {(x.webhook_id, x.reason) for x in letters}
    dead = [x for x in letters if x.webhook_id == "dead"]
    assert {x.reason for x in dead} == {"exhausted"} and len(dead) == 3 * CALLS, by
    assert all(x.attempts == 2 and x.last_status is None for x in dead)
    stuck = [x for x in letters if x.webhook_id == "stuck"]
    assert len(stuck) == 3 * CALLS, by  # every event: queue_full while stuck, the rest at shutdown
    assert {x.reason for x in stuck} == {"queue_full", "shutdown"}, by
    assert not [x for x in letters if x.webhook_id in ("wall", "journal")]
    assert out["stats"]["offer_errors"] == 0
