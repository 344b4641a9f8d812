"""The flow's conference node (docs/conferences.md): the PIN asked and checked by the pure
interpreter (moderator PIN, member PIN, none for a room without a member PIN, retries then hang
up), and the call machine putting the caller's leg into the tenant's room."""

from __future__ import annotations

from engine.conference import hash_pin
from engine.flows import interpreter as I
from engine.flows.loader import decode_document, parse_flows
from engine.fsm import call as C
from engine.fsm.call import CallState as S
from engine.messages import (
    ChannelCreated,
    ChannelHangup,
    DtmfReceived,
    EnterFlow,
    MediaConference,
    MediaPlay,
    MediaStopPlayback,
    PlaybackFinished,
    PublishCti,
    SendMedia,
    TimerFired,
    WriteCdr,
)

SALT = b"0123456789abcdef"
MOD, MEMBER = hash_pin("4321", SALT, 1000), hash_pin("1111", SALT, 1000)


def flow(**room):
    fields = "".join(f"\n    {k}: {v!r}" for k, v in room.items())
    return parse_flows(decode_document(f"""
id: conf
start: room
nodes:
  room:
    type: conference
    room: "3000"{fields}
""".encode(), "f.yaml"), "f.yaml")[0]


def run(graph, *events):
    step = I.start(graph, call_id="c1", at=0.0)
    steps = [step]
    for ev in events:
        step = I.handle(graph, step.run, ev)
        steps.append(step)
    return steps


def digits(text, at=2.0):
    return [DtmfReceived(call_id="c1", at=at + i * 0.1, digit=d) for i, d in enumerate(text)]


PROMPT_DONE = PlaybackFinished(call_id="c1", at=1.0, file="pin.wav")


def test_moderator_pin_member_pin_and_a_room_without_pin():
    g = flow(prompt="pin.wav", invalid_prompt="bad.wav", moderator_pin_hash=MOD, member_pin_hash=MEMBER)
    steps = run(g, PROMPT_DONE, *digits("4321#"))
    assert [type(e.command) for e in steps[0].effects if isinstance(e, SendMedia)][-1] is MediaPlay
    assert steps[-1].outcome == I.ToConference(room="3000", moderator=True, flags=("moderator",))
    assert run(g, PROMPT_DONE, *digits("1111#"))[-1].outcome == I.ToConference(room="3000")
    # barge-in: digits during the prompt stop it
    steps = run(g, *digits("1111#", at=0.5))
    assert any(isinstance(e, SendMedia) and isinstance(e.command, MediaStopPlayback) for e in steps[1].effects)
    assert steps[-1].outcome == I.ToConference(room="3000")
    # no PIN configured: straight into the room, the room's flags kept
    (only,) = run(flow(prompt="pin.wav", flags=["mute"]))
    assert only.outcome == I.ToConference(room="3000", flags=("mute",))
    # only a moderator PIN: members just press # (or wait), the moderator types it
    g = flow(prompt="pin.wav", moderator_pin_hash=MOD, timeout_s=3)
    assert run(g, PROMPT_DONE, *digits("#"))[-1].outcome == I.ToConference(room="3000")
    assert run(g, PROMPT_DONE, TimerFired(at=5.0, key=I.FLOW_TIMER))[-1].outcome == \
        I.ToConference(room="3000")
    assert run(g, PROMPT_DONE, *digits("4321#"))[-1].outcome.moderator


def test_a_wrong_pin_retries_then_hangs_up():
    g = flow(prompt="pin.wav", invalid_prompt="bad.wav", member_pin_hash=MEMBER, retries=1)
    steps = run(g, PROMPT_DONE, *digits("9999#"))
    assert steps[-1].outcome is None and steps[-1].run.waiting == "conf_invalid"
    assert [e.command.file for e in steps[-1].effects if isinstance(e, SendMedia)] == ["bad.wav"]
    steps = run(g, PROMPT_DONE, *digits("9999#"), PlaybackFinished(call_id="c1", at=3.0, file="bad.wav"),
                PlaybackFinished(call_id="c1", at=4.0, file="pin.wav"), *digits("1111#", at=5.0))
    assert steps[-1].outcome == I.ToConference(room="3000")  # the second try is right
    steps = run(g, PROMPT_DONE, *digits("9999#"), PlaybackFinished(call_id="c1", at=3.0, file="bad.wav"),
                PlaybackFinished(call_id="c1", at=4.0, file="pin.wav"), *digits("0000#", at=5.0))
    assert steps[-1].outcome == I.ToHangup(reason="conference_bad_pin")
    # no input at all where a member PIN is required counts as wrong
    steps = run(g, PROMPT_DONE, TimerFired(at=7.0, key=I.FLOW_TIMER))
    assert steps[-1].outcome is None and steps[-1].run.failures == 1


def test_the_call_machine_puts_the_caller_alone_into_the_tenant_room_and_writes_one_cdr():
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="+4411", destination="3000",
                                        tenant="acme"))
    g = flow(prompt="pin.wav", moderator_pin_hash=MOD)
    call, effects = C.step(call, EnterFlow(call_id="c1", at=1.0, flow_id="conf", flow=g))
    assert call.state is S.IN_FLOW
    for ev in [PlaybackFinished(call_id="c1", at=2.0, file="pin.wav"), *digits("4321#", at=3.0)]:
        call, effects = C.step(call, ev)
    assert call.state is S.ACTIVE and call.conference == "3000-acme"
    conf = [e.command for e in effects if isinstance(e, SendMedia) and isinstance(e.command, MediaConference)]
    assert conf == [MediaConference(call_id="c1", leg="a", room="3000-acme", flags=("moderator",))]
    cti = [e.event for e in effects if isinstance(e, PublishCti)]
    assert [(e.name, e.data.get("room"), e.data.get("moderator")) for e in cti
            if e.name == "CALL_CONFERENCED"] == [("CALL_CONFERENCED", "3000-acme", True)]
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=60.0, leg="a"))
    cdrs = [e.cdr for e in effects if isinstance(e, WriteCdr)]
    assert len(cdrs) == 1 and cdrs[0].conference == "3000-acme" and cdrs[0].disposition == "answered"
    assert cdrs[0].answered_at is not None and cdrs[0].talk_s > 50


def test_callengine_run_fills_the_node_from_its_room():
    from engine.conference import RoomConfig, fill_flow_rooms

    room = RoomConfig(tenant="acme", number="3000", moderator_pin_hash=MOD, member_pin_hash=MEMBER,
                      flags=("mute",))
    g = flow(prompt="pin.wav")
    filled = fill_flow_rooms(g, {"3000": room}.get)
    node = filled.nodes["room"]
    assert (node.moderator_pin_hash, node.member_pin_hash, node.flags) == (MOD, MEMBER, ("mute",))
    own = flow(prompt="pin.wav", member_pin_hash=hash_pin("2222", SALT, 1000), flags=["deaf"])
    node = fill_flow_rooms(own, {"3000": room}.get).nodes["room"]
    assert node.moderator_pin_hash == MOD and node.member_pin_hash != MEMBER and node.flags == ("deaf",)
    assert fill_flow_rooms(g, {}.get) is g  # no such room: unchanged (the node then asks no PIN)


def test_call_conferenced_carries_moderator_as_a_typed_field():
    from api.events import CallConferenced, to_wire
    from engine.messages import CtiEvent

    wire = to_wire(CtiEvent(name="CALL_CONFERENCED", tenant="acme", at=1.0, call_id="c1",
                            data={"room": "3000-acme", "moderator": True}), seq=1)
    assert isinstance(wire, CallConferenced) and wire.moderator and wire.data == {}
