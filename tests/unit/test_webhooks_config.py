"""Webhook configuration: typed validation errors, the template's JSON rendering, the signature."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from adapters.webhooks.config import (
    BadUrl,
    InvalidSetting,
    InvalidTemplate,
    UnknownEventType,
    UnknownPlaceholder,
    WebhookConfigError,
    fields_of,
    known_event_types,
    load_config,
    render_body,
)
from adapters.webhooks.dispatcher import full_jitter, parse_retry_after
from adapters.webhooks.signing import SignatureError, signature_header, verify_signature


def cfg(**hook):
    base = {"id": "crm", "url": "https://crm.example.com/hook", "events": ["CALL_CREATED"]}
    base.update(hook)
    return {"tenants": [{"tenant": "acme", "webhooks": [base]}]}


def test_a_valid_config_loads_from_a_mapping_and_from_json():
    config = load_config(cfg(body_template='{"call": $call_id, "from": $caller_id}',
                             headers={"X-Api-Key": "k"}, secret="s3cret"))
    (hook,) = config.for_tenant("acme")
    assert hook.id == "crm" and hook.headers == {"X-Api-Key": "k"} and hook.secret == "s3cret"
    again = load_config(json.dumps(cfg(events=["CDR", "CALL_ENDED"])).encode())
    assert again.for_tenant("acme")[0].events == ["CDR", "CALL_ENDED"]
    assert again.for_tenant("other") == []


@pytest.mark.parametrize("url", ["ftp://crm.example.com/x", "crm.example.com/hook", "file:///etc/passwd",
                                 "http:///nohost", "https://user:pw@crm.example.com/"])
def test_bad_urls_are_refused_with_bad_url(url):
    with pytest.raises(BadUrl) as info:
        load_config(cfg(url=url))
    assert "acme/crm" in str(info.value) and info.value.tenant == "acme" and info.value.webhook_id == "crm"


def test_an_unknown_event_type_is_refused_and_named():
    with pytest.raises(UnknownEventType, match="CALL_CREATD"):
        load_config(cfg(events=["CALL_CREATED", "CALL_CREATD"]))
    with pytest.raises(UnknownEventType):
        load_config(cfg(events=[]))
    assert {"CALL_CREATED", "CALL_ENDED", "AGENT_STATE_CHANGED", "CDR"} <= known_event_types()
    assert "UNKNOWN" not in known_event_types()


def test_a_placeholder_the_event_does_not_have_is_refused():
    with pytest.raises(UnknownPlaceholder, match=r"\$callid"):
        load_config(cfg(body_template='{"c": $callid}'))
    # state is a field of AGENT_STATE_CHANGED but not of CALL_CREATED: a webhook taking both fails
    load_config(cfg(events=["AGENT_STATE_CHANGED"], body_template='{"s": $state}'))
    with pytest.raises(UnknownPlaceholder, match="CALL_CREATED"):
        load_config(cfg(events=["AGENT_STATE_CHANGED", "CALL_CREATED"], body_template='{"s": $state}'))
    # CDR fields
    load_config(cfg(events=["CDR"], body_template='{"d": $disposition, "talk": ${talk_s}, "e": $event}'))
    assert "talk_s" in fields_of("CDR") and "caller_id" in fields_of("CALL_CREATED")


def test_malformed_templates_are_refused():
    with pytest.raises(InvalidTemplate, match="dollar"):
        load_config(cfg(body_template='{"price": "5$"}'))
    with pytest.raises(InvalidTemplate, match="JSON"):  # placeholders are JSON values already
        load_config(cfg(body_template='{"call": "$call_id"}'))
    load_config(cfg(body_template='{"price": "5$$", "call": $call_id}'))


@pytest.mark.parametrize("hook, match", [
    ({"headers": {"Content-Length": "1"}}, "set by the dispatcher"),
    ({"headers": {"callengine-signature": "x"}}, "set by the dispatcher"),
    ({"headers": {"X-Bad": "a\r\nInjected: 1"}}, "line break"),
    ({"headers": {"bad header": "x"}}, "token"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"backoff_base_s": 2.0, "backoff_cap_s": 1.0}, "backoff"),
    ({"queue_capacity": 0}, "queue_capacity"),
    ({"secret": ""}, "secret"),
    ({"id": "has space"}, "webhook id"),
    ({"surprise": 1}, "does not decode"),
])
def test_bad_settings_are_refused(hook, match):
    with pytest.raises(InvalidSetting, match=match):
        load_config(cfg(**hook))


def test_duplicate_ids_and_tenants_are_refused():
    two = cfg()
    two["tenants"][0]["webhooks"].append(dict(two["tenants"][0]["webhooks"][0]))
    with pytest.raises(InvalidSetting, match="share"):
        load_config(two)
    with pytest.raises(InvalidSetting, match="twice"):
        load_config({"tenants": [{"tenant": "acme"}, {"tenant": "acme"}]})
    assert issubclass(InvalidSetting, WebhookConfigError) and issubclass(WebhookConfigError, ValueError)


def test_rendered_values_are_json_escaped_whatever_they_hold():
    hostile = 'Bob "the" \\ builder\n\u0000</script>${x}'
    body = render_body('{"from": $caller_id, "n": $position, "none": $reason, "all": $event}',
                       {"caller_id": hostile, "position": 3, "reason": None}, b'{"type":"X"}')
    parsed = json.loads(body)
    assert parsed == {"from": hostile, "n": 3, "none": None, "all": {"type": "X"}}


def test_signature_verifies_with_the_secret_only_and_within_tolerance():
    body = b'{"type":"CALL_CREATED"}'
    header = signature_header("s3cret", 1_700_000_000, body)
    # the documented scheme, recomputed independently: HMAC-SHA256(secret, "<t>." + body), hex
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    verify_signature("s3cret", header, body, now=1_700_000_100)
    with pytest.raises(SignatureError):
        verify_signature("other", header, body, now=1_700_000_100)
    with pytest.raises(SignatureError):
        verify_signature("s3cret", header, body + b" ", now=1_700_000_100)
    with pytest.raises(SignatureError, match="from now"):
        verify_signature("s3cret", header, body, now=1_700_001_000)
    rotated = header + ",v1=" + "0" * 64
    verify_signature("s3cret", rotated, body, now=1_700_000_000)


def test_retry_after_and_full_jitter():
    import random

    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after("-1", 0.0) is None and parse_retry_after("soon", 0.0) is None
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", 1_700_000_000.0) == pytest.approx(10.0)
    rng = random.Random(1)
    waits = [full_jitter(a, 0.5, 4.0, rng) for a in (1, 2, 3, 4, 5, 6) for _ in range(200)]
    assert all(0 <= w <= 4.0 for w in waits)
    assert max(full_jitter(1, 0.5, 4.0, rng) for _ in range(200)) <= 0.5
    assert max(full_jitter(6, 0.5, 4.0, rng) for _ in range(200)) > 2.0  # capped, not stuck at base
