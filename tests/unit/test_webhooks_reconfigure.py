"""Property test of ``WebhookDispatcher.reconfigure`` (the live configuration from PostgreSQL):
over random sequences of configurations and offers (no workers running, so nothing is delivered),

- the dispatcher takes exactly the event types and tenants of the current configuration;
- no event is lost or duplicated: every offered event is in exactly one place, either the queue
  of a current webhook or a dead letter;
- a webhook that stays keeps its queue (same events, same order); a removed or disabled one
  leaves its events as ``shutdown`` dead letters; a full queue refuses (``queue_full``). A kept
  webhook whose capacity shrinks keeps what it already holds.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.webhooks import MemoryDeadLetterStore, WebhookDispatcher, WebhooksConfig
from adapters.webhooks.config import TenantWebhooks, WebhookConfig
from api.events import CallCreated, CallEnded

TENANTS = ("acme", "beta")
IDS = ("a", "b", "c")
TYPES = ("CALL_CREATED", "CALL_ENDED")

hook_st = st.fixed_dictionaries({
    "events": st.lists(st.sampled_from(TYPES), min_size=1, max_size=2, unique=True),
    "capacity": st.integers(1, 4),
    "enabled": st.booleans(),
})
config_st = st.dictionaries(st.sampled_from(TENANTS), st.dictionaries(st.sampled_from(IDS), hook_st, max_size=3),
                            max_size=2)
step_st = st.one_of(
    st.tuples(st.just("config"), config_st),
    st.tuples(st.just("offer"), st.tuples(st.sampled_from(TENANTS), st.sampled_from(TYPES))),
)


def _config(spec: dict) -> WebhooksConfig:
    return WebhooksConfig(tenants=[
        TenantWebhooks(tenant=t, webhooks=[
            WebhookConfig(id=i, url=f"http://127.0.0.1:9/{t}/{i}", events=h["events"], queue_capacity=h["capacity"],
                          enabled=h["enabled"]) for i, h in hooks.items()])
        for t, hooks in spec.items()])


@settings(max_examples=200, deadline=None)
@given(st.lists(step_st, max_size=30))
def test_reconfigure_keeps_queues_and_loses_no_event(steps) -> None:
    d = WebhookDispatcher(WebhooksConfig(), MemoryDeadLetterStore(), max_pending_dead_letters=10_000)
    spec: dict = {}
    offered: list[str] = []  # call ids
    n = 0
    for kind, arg in steps:
        if kind == "config":
            before = {(h.tenant, h.config.id): [j.event.call_id for j in h.queue]
                      for hooks in d._hooks.values() for h in hooks}
            d.reconfigure(_config(arg))
            spec = arg
            for (tenant, hook_id), queue in before.items():
                h = spec.get(tenant, {}).get(hook_id)
                if h is not None and h["enabled"]:
                    (kept,) = [x for x in d._hooks[tenant] if x.config.id == hook_id]
                    assert [j.event.call_id for j in kept.queue] == queue
                    assert kept.config.queue_capacity == h["capacity"]
        else:
            tenant, event_type = arg
            n += 1
            cls = CallCreated if event_type == "CALL_CREATED" else CallEnded
            d.offer(cls(tenant=tenant, call_id=f"c{n}"))
            takers = [i for i, h in spec.get(tenant, {}).items() if h["enabled"] and event_type in h["events"]]
            offered += [f"c{n}"] * len(takers)
        # the dispatcher takes what the configuration says, nothing else
        for tenant in TENANTS:
            for event_type in TYPES:
                expected = any(h["enabled"] and event_type in h["events"] for h in spec.get(tenant, {}).values())
                assert d.wants(tenant, event_type) == expected
        # conservation: each (event, webhook) offer is queued once or dead-lettered once
        queued = [j.event.call_id for hooks in d._hooks.values() for h in hooks for j in h.queue]
        dead = [x.event for x in d._dead]
        assert sorted(queued + [_call_id(e) for e in dead]) == sorted(offered)
    assert {x.reason for x in d._dead} <= {"queue_full", "shutdown"}


def _call_id(event_json: str) -> str:
    import json

    return str(json.loads(event_json)["call_id"])
