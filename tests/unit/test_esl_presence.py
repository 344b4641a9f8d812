"""Device presence: sofia::register / unregister / expire -> which phones are registered -> the
``DeviceState`` the agent machine needs, so an agent whose phone is gone is never offered a call."""

from __future__ import annotations

from adapters.freeswitch.mapping import DeviceEvent
from adapters.freeswitch.presence import DeviceRegistry, Registration, parse_show_registrations
from engine.fsm import agent as agent_fsm
from engine.messages import AgentLogin, DeviceState

AGENTS = {"1000": "alice", "1001": "bob"}


def reg(ext: str, rid: str = "r1", registered: bool = True, reason: str = "register",
        at: float = 1.0, contact: str | None = None) -> DeviceEvent:
    return DeviceEvent(extension=ext, registered=registered, at=at, reason=reason,
                       registration_id=rid, contact=contact or f"sip:{ext}@10.0.0.7:5060",
                       node="fs1")


def test_register_and_unregister_emit_device_state_only_on_change() -> None:
    r = DeviceRegistry(AGENTS.get)
    assert r.apply(reg("1000")) == [DeviceState(agent_id="alice", at=1.0, registered=True,
                                                contact="sip:1000@10.0.0.7:5060")]
    assert r.apply(reg("1000", at=2.0)) == []  # refresh: nothing changed
    assert r.registered("1000") and r.contact("1000") == "sip:1000@10.0.0.7:5060"
    assert r.apply(reg("1000", registered=False, reason="unregister", at=3.0)) == [
        DeviceState(agent_id="alice", at=3.0, registered=False, contact="")]
    assert not r.registered("1000")


def test_expire_counts_as_unregister() -> None:
    r = DeviceRegistry(AGENTS.get)
    r.apply(reg("1001"))
    assert r.apply(reg("1001", registered=False, reason="expire", at=9.0)) == [
        DeviceState(agent_id="bob", at=9.0, registered=False)]


def test_two_phones_on_one_extension_stay_registered_until_both_are_gone() -> None:
    r = DeviceRegistry(AGENTS.get)
    r.apply(reg("1000", "desk", contact="sip:desk"))
    assert r.apply(reg("1000", "soft", contact="sip:soft")) == []
    assert r.contact("1000") == "sip:soft"
    assert r.apply(reg("1000", "desk", registered=False, reason="unregister")) == []
    assert r.registered("1000")
    # an unregister for a registration we never saw changes nothing
    assert r.apply(reg("1000", "other", registered=False, reason="unregister")) == []
    out = r.apply(reg("1000", "soft", registered=False, reason="unregister", at=5.0))
    assert out == [DeviceState(agent_id="alice", at=5.0, registered=False)]


def test_unregister_without_call_id_removes_every_registration() -> None:
    r = DeviceRegistry(AGENTS.get)
    r.apply(reg("1000", "a"))
    r.apply(reg("1000", "b"))
    assert r.apply(reg("1000", "", registered=False, reason="unregister"))[0].registered is False


def test_extensions_without_agents_are_tracked_but_emit_nothing() -> None:
    r = DeviceRegistry(AGENTS.get)
    assert r.apply(reg("7000")) == []
    assert r.registered("7000") and r.extensions() == {"7000"}


def test_sync_with_freeswitchs_list_after_a_reconnect() -> None:
    r = DeviceRegistry(AGENTS.get)
    r.apply(reg("1000"))
    # while we were away: 1000 went away, 1001 came
    out = r.sync([Registration(extension="1001", contact="sip:1001@x", registration_id="z",
                               node="fs1")], at=7.0, node="fs1")
    assert out == [DeviceState(agent_id="alice", at=7.0, registered=False),
                   DeviceState(agent_id="bob", at=7.0, registered=True, contact="sip:1001@x")]
    # registrations learnt from another node are left alone by fs1's list
    r.apply(DeviceEvent(extension="1000", registered=True, at=8.0, registration_id="q",
                        node="fs2", contact="sip:q"))
    assert r.sync([], at=9.0, node="fs1") == [DeviceState(agent_id="bob", at=9.0,
                                                          registered=False)]
    assert r.registered("1000")


def test_parse_show_registrations_from_the_emulator_format() -> None:
    text = ("reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname,"
            "metadata\n1000,127.0.0.1,abc123,sofia/internal/sip:1000@127.0.0.1:5070,3600,"
            "127.0.0.1,5060,udp,emulator,\n\n1 total.\n")
    assert parse_show_registrations(text, "fs1") == [
        Registration(extension="1000", contact="sip:1000@127.0.0.1:5070",
                     registration_id="abc123", node="fs1")]
    assert parse_show_registrations("-ERR no reply\n") == []
    assert parse_show_registrations(text.split("\n")[0] + "\n\n0 total.\n") == []


def test_unregistered_agent_is_never_offered_a_call() -> None:
    """The classic complaint: the phone is gone, the agent still shows Available."""
    r = DeviceRegistry(AGENTS.get)
    agent, _ = agent_fsm.step(agent_fsm.new_agent("alice"),
                              AgentLogin(agent_id="alice", at=0.0, extension="1000",
                                         queues=("q",), ready=True))
    assert agent.offerable
    gone = r.device_state("alice", "1000", 1.0)  # logged in, phone never seen registered
    assert gone.registered is False
    agent, _ = agent_fsm.step(agent, gone)
    assert not agent.offerable
    (back,) = r.apply(reg("1000", at=2.0))
    agent, _ = agent_fsm.step(agent, back)
    assert agent.offerable


def test_device_state_for_an_agent_logging_in() -> None:
    r = DeviceRegistry(AGENTS.get)
    assert r.device_state("alice", "1000", 1.0).registered is False
    r.apply(reg("1000"))
    assert r.device_state("alice", "1000", 2.0) == DeviceState(
        agent_id="alice", at=2.0, registered=True, contact="sip:1000@10.0.0.7:5060")
