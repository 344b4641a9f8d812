"""mod_xml_curl replies (adapters/freeswitch/xml_curl.py): directory per tenant domain, dialplan to
the engine, escaping, the "not found" result, form parsing and bad requests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.freeswitch.xml_curl import (
    BadRequest,
    a1_hash,
    build_reply,
    not_found_xml,
    parse_form,
)
from adapters.postgres.config import (
    ENTITIES,
    ConfigSnapshot,
    Did,
    Extension,
    SipCredential,
    SipDomain,
    Tenant,
)

HOSTILE = 'Eve <&> "quoted" \'apos\' ]]> <!-- x --> ${system(id)}'


def snapshot(*rows) -> ConfigSnapshot:
    out: dict = {k: {} for k in ENTITIES}
    for r in rows:
        out[type(r)][(r.tenant, *r.key())] = r
    return ConfigSnapshot(rows=out)


def world(**ext_kw) -> ConfigSnapshot:
    a = dict(tenant="acme", extension="1001", name="Alice", caller_id="+3225550100", voicemail=True)
    a.update(ext_kw)
    return snapshot(
        Tenant(tenant="acme"), Tenant(tenant="globex"),
        SipDomain(tenant="acme", domain="acme.example"), SipDomain(tenant="globex", domain="globex.example"),
        Extension(**a), Extension(tenant="globex", extension="2001", name="Gus"),
        SipCredential(tenant="acme", extension="1001", realm="acme.example",
                      a1_hash=a1_hash("1001", "acme.example", "s3cret")),
        Did(tenant="globex", number="+3225550199", destination="queue:support"),
    )


def directory(user: str, domain: str, action: str = "sip_auth", **extra) -> dict[str, str]:
    return {"hostname": "fs1", "section": "directory", "tag_name": "domain", "key_name": "name",
            "key_value": domain, "key": "id", "user": user, "domain": domain, "action": action, **extra}


def dialplan(dest: str, context: str = "public", **extra) -> dict[str, str]:
    return {"hostname": "fs1", "section": "dialplan", "tag_name": "context", "key_name": "name",
            "key_value": context, "Caller-Destination-Number": dest, "Caller-Context": context,
            "Hunt-Context": context, "Unique-ID": "u-1", "Call-Direction": "inbound", **extra}


def is_not_found(xml: str) -> bool:
    doc = ET.fromstring(xml)
    section = doc.find("section")
    return (doc.get("type") == "freeswitch/xml" and section is not None and section.get("name") == "result"
            and section.find("result").get("status") == "not found")


def named(parent: ET.Element, path: str) -> dict[str, str]:
    return {e.get("name"): e.get("value") for e in parent.findall(path)}


def test_a1_hash_is_md5_of_user_realm_password() -> None:
    # RFC 2617 A1 for "Mufasa" / "testrealm@host.com" / "Circle Of Life"
    assert a1_hash("Mufasa", "testrealm@host.com", "Circle Of Life") == "939e7578ed9e3c518a452acee763bce9"


def test_directory_serves_an_extension_of_its_tenant_domain() -> None:
    xml = build_reply(directory("1001", "acme.example"), world())
    doc = ET.fromstring(xml)
    assert doc.tag == "document" and doc.get("type") == "freeswitch/xml"
    section = doc.find("section")
    assert section.get("name") == "directory"
    domain = section.find("domain")
    assert domain.get("name") == "acme.example"
    assert "sofia_contact" in named(domain, "params/param")["dial-string"]
    user = domain.find("groups/group/users/user")
    assert user.get("id") == "1001"
    params = named(user, "params/param")
    assert params == {"a1-hash": a1_hash("1001", "acme.example", "s3cret"), "vm-enabled": "true"}
    assert "password" not in params
    variables = named(user, "variables/variable")
    assert variables["user_context"] == "acme" and variables["callengine_tenant"] == "acme"
    assert variables["effective_caller_id_name"] == "Alice"
    assert variables["effective_caller_id_number"] == "1001"
    assert variables["outbound_caller_id_number"] == "+3225550100"


@pytest.mark.parametrize("action", ["sip_auth", "user_call", "message-count"])
def test_every_directory_action_gets_the_same_user(action: str) -> None:
    doc = ET.fromstring(build_reply(directory("1001", "Acme.Example", action), world()))
    user = doc.find("section/domain/groups/group/users/user")
    assert user.get("id") == "1001"
    # domains compare in lower case (DNS), so the credential's realm still matches
    assert named(user, "params/param")["a1-hash"] == a1_hash("1001", "acme.example", "s3cret")


def test_directory_not_found_for_another_tenants_domain_or_unknown_user_or_domain() -> None:
    w = world()
    assert is_not_found(build_reply(directory("1001", "globex.example"), w))  # acme's user, globex's domain
    assert is_not_found(build_reply(directory("2001", "acme.example"), w))  # globex's user, acme's domain
    assert is_not_found(build_reply(directory("1999", "acme.example"), w))
    assert is_not_found(build_reply(directory("1001", "nowhere.example"), w))
    assert is_not_found(build_reply(directory("1001", ""), w))
    assert is_not_found(build_reply(directory("1001", "acme.example", key="number-alias"), w))


def test_disabled_extension_or_tenant_is_not_found() -> None:
    assert is_not_found(build_reply(directory("1001", "acme.example"), world(enabled=False)))
    w = world()
    w.rows[Tenant][("acme",)] = Tenant(tenant="acme", enabled=False)
    assert is_not_found(build_reply(directory("1001", "acme.example"), w))


def test_no_credential_or_another_realm_serves_no_password() -> None:
    w = world()
    w.rows[SipCredential][("acme", "1001")] = SipCredential(
        tenant="acme", extension="1001", realm="old.example", a1_hash="0" * 32)
    user = ET.fromstring(build_reply(directory("1001", "acme.example"), w)).find(".//user")
    assert set(named(user, "params/param")) == {"vm-enabled"}
    del w.rows[SipCredential][("acme", "1001")]
    user = ET.fromstring(build_reply(directory("1001", "acme.example"), w)).find(".//user")
    assert set(named(user, "params/param")) == {"vm-enabled"}


def test_domain_only_lookup_gets_the_domain_without_users() -> None:
    doc = ET.fromstring(build_reply(directory("", "acme.example"), world()))
    assert doc.find("section/domain").get("name") == "acme.example"
    assert doc.find(".//user") is None


def test_hostile_strings_are_escaped_and_round_trip() -> None:
    w = world(name=HOSTILE, caller_id="+1")
    xml = build_reply(directory("1001", "acme.example"), w)
    assert HOSTILE not in xml  # never glued in raw
    user = ET.fromstring(xml).find(".//user")
    assert named(user, "variables/variable")["effective_caller_id_name"] == HOSTILE
    # a hostile context name from the request comes back escaped too
    ctx = 'ctx"><extension name="evil'
    doc = ET.fromstring(build_reply(dialplan("100", context=ctx), w))
    assert [c.get("name") for c in doc.iter("context")] == [ctx]
    assert [e.get("name") for e in doc.iter("extension")] == ["callengine"]


def actions(xml: str) -> list[tuple[str, str | None]]:
    doc = ET.fromstring(xml)
    assert doc.find("section").get("name") == "dialplan"
    return [(a.get("application"), a.get("data")) for a in doc.iter("action")]


def test_dialplan_hands_every_call_to_the_engine_in_the_context_asked_for() -> None:
    w = world()
    xml = build_reply(dialplan("5000", context="acme"), w)
    doc = ET.fromstring(xml)
    assert doc.find("section/context").get("name") == "acme"
    cond = doc.find("section/context/extension/condition")
    assert cond.get("field") == "destination_number" and cond.get("expression") == "^(.*)$"
    # the caller's domain decides the tenant when nothing else does
    assert actions(build_reply(dialplan("5000", variable_domain_name="acme.example"), w)) == [
        ("set", "callengine_tenant=acme"), ("park", None)]
    # a DID held by one tenant decides (the dialled number says whose call it is)
    assert actions(build_reply(dialplan("+3225550199", variable_domain_name="acme.example"), w)) == [
        ("set", "callengine_tenant=globex"), ("park", None)]
    # the directory already set it on an authenticated user: trusted, not set again
    assert actions(build_reply(dialplan("+3225550199", variable_callengine_tenant="acme"), w)) == [
        ("park", None)]
    # nothing known: parked all the same (the engine's default tenant)
    assert actions(xml) == [("park", None)]


def test_dialplan_socket_mode_and_unsafe_tenant_fails_closed() -> None:
    w = world()
    assert actions(build_reply(dialplan("5000", variable_domain_name="acme.example"), w,
                               socket="127.0.0.1:8084")) == [
        ("set", "callengine_tenant=acme"), ("socket", "127.0.0.1:8084 async full")]
    w.rows[Tenant][("${x}",)] = Tenant(tenant="${x}")
    w.rows[SipDomain][("${x}", "bad.example")] = SipDomain(tenant="${x}", domain="bad.example")
    assert is_not_found(build_reply(dialplan("5000", variable_domain_name="bad.example"), w))
    assert is_not_found(build_reply(directory("1001", "bad.example"), w))


def test_other_sections_not_found_and_bad_requests_are_typed() -> None:
    assert is_not_found(build_reply({"section": "configuration", "key_value": "sofia.conf"}, world()))
    assert is_not_found(not_found_xml())
    with pytest.raises(BadRequest, match="section"):
        build_reply({"user": "1001"}, world())
    with pytest.raises(BadRequest, match="context"):
        build_reply({"section": "dialplan"}, world())


def test_parse_form_reads_what_mod_xml_curl_sends() -> None:
    body = urlencode(directory("1001", "acme.example") | {"sip_auth_nonce": "a&b=c"}).encode() + b"\n"
    fields = parse_form(body)
    assert fields["user"] == "1001" and fields["sip_auth_nonce"] == "a&b=c" and fields["section"] == "directory"
    with pytest.raises(BadRequest, match="UTF-8"):
        parse_form(b"section=\xff\xfe")
    with pytest.raises(BadRequest, match="NUL"):
        parse_form(b"section=directory&user=10%0001")


def test_in_memory_store_ties_a_credential_to_its_extension() -> None:
    import trio

    from adapters.postgres.config import InMemoryConfigStore
    from adapters.postgres.errors import FailedPrecondition, InvalidArgument, NotFound

    async def main() -> None:
        store = InMemoryConfigStore()
        await store.create(Tenant(tenant="acme"))
        cred = SipCredential(tenant="acme", extension="1001", realm="acme.example", a1_hash="0" * 32)
        with pytest.raises(FailedPrecondition):
            await store.create(cred)  # no such extension
        await store.create(Extension(tenant="acme", extension="1001"))
        await store.create(cred)
        assert "0" * 32 not in repr(cred)  # password-equivalent: not in logs
        with pytest.raises(InvalidArgument, match="a1_hash"):
            await store.put(SipCredential(tenant="acme", extension="1001", realm="acme.example", a1_hash="x"))
        with pytest.raises(InvalidArgument, match="domain"):
            await store.create(SipDomain(tenant="acme", domain="Acme.Example"))
        await store.delete(Extension, "acme", "1001")
        with pytest.raises(NotFound):
            await store.get(SipCredential, "acme", "1001")

    trio.run(main)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
       context=st.text(min_size=1, max_size=40))
def test_any_text_gives_xml_that_parses_and_keeps_what_xml_can_carry(name: str, context: str) -> None:
    import re

    def carried(t: str) -> str:
        return re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", "\ufffd", t)

    user = ET.fromstring(build_reply(directory("1001", "acme.example"), world(name=name))).find(".//user")
    assert named(user, "variables/variable")["effective_caller_id_name"] == carried(name)
    doc = ET.fromstring(build_reply(dialplan("100", context=context), world()))
    assert [c.get("name") for c in doc.iter("context")] == [carried(context)]
