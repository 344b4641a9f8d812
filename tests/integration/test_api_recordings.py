"""Recordings through the API (#10 part 2, docs/recordings.md): each role and each action, allowed
and refused, by the tenant's recording policy; tenant isolation; consent from the policy; the
compliance override. Real HTTP on 127.0.0.1 (the Connect transport) into a node with the in-memory
recordings catalog fed by the node's CTI events."""

from __future__ import annotations

import msgspec
import trio

from engine.actors import Ports
from engine.messages import (
    ChannelAnswered,
    MediaBroadcast,
    MediaRecordMask,
    MediaRecordStart,
    MediaRecordStop,
    StartRecording,
)
from engine.recordings import RecordingCatalog, RecordingPolicy
from tests.support.nats import CtiTee, api_stack, connected_call, http_call, setup_tenant, token

ADMIN = token(tenant="t1", sub="root1", roles=("admin",))
SUP = token(tenant="t1", sub="sup1", roles=("supervisor",))
A1 = token(tenant="t1", sub="a1", roles=("agent",))
A2 = token(tenant="t1", sub="a2", roles=("agent",))
ADMIN2 = token(tenant="t2", sub="root2", roles=("admin",))


def run(body, timeout: float = 30) -> None:
    async def main() -> None:
        catalog = RecordingCatalog(audio_base="https://media.example/rec/")

        def wrap(ports: Ports) -> Ports:
            return Ports(ports.media, CtiTee(ports.cti, catalog), ports.cdr, ports.replies)

        with trio.fail_after(timeout):
            async with api_stack(nats=False, ws=False, micro=False, ports_wrap=wrap) as stack:
                stack.api.recordings = catalog
                await setup_tenant(stack)
                await connected_call(stack, "c1")
                owner = stack.node.runtime.state_of("call", "c1").agent_id
                mine, other = (A1, A2) if owner == "a1" else (A2, A1)
                await body(stack, catalog, mine, other)

    trio.run(main)


async def call(stack, method, params, tok):
    status, body = await http_call(stack, method, params, tok)
    return "ok" if status == 200 else body["code"], body


def media(stack, kind):
    return [c for c in stack.media.items if isinstance(c, kind)]


async def settle(stack):
    for _ in range(100):
        await trio.sleep(0.005)


def test_agents_control_only_their_own_calls_staff_any_other_tenant_sees_nothing():
    async def body(stack, catalog, mine, other):
        c1 = {"call_id": "c1"}
        for method in ("StartRecording", "StopRecording", "PauseRecording", "ResumeRecording"):
            assert (await call(stack, f"CallControl/{method}", c1, other))[0] == "permission_denied"
            assert (await call(stack, f"CallControl/{method}", c1, ADMIN2))[0] == "not_found"
        code, started = await call(stack, "CallControl/StartRecording", c1, mine)
        assert code == "ok" and started["data"]["stage"] == "recording"
        rid = started["data"]["recording_id"]
        assert (await call(stack, "CallControl/PauseRecording", c1, mine))[0] == "ok"
        assert (await call(stack, "CallControl/PauseRecording", c1, mine))[0] == "failed_precondition"
        assert (await call(stack, "CallControl/ResumeRecording", c1, mine))[0] == "ok"
        assert (await call(stack, "CallControl/StopRecording", c1, mine))[0] == "ok"
        assert [c.mask for c in media(stack, MediaRecordMask)] == [True, False]
        assert len(media(stack, MediaRecordStop)) == 1
        # staff control any call of the tenant
        assert (await call(stack, "CallControl/StartRecording", c1, SUP))[0] == "ok"
        assert (await call(stack, "CallControl/PauseRecording", c1, ADMIN))[0] == "ok"
        assert (await call(stack, "CallControl/StopRecording", c1, SUP))[0] == "ok"
        await settle(stack)
        row = await catalog.get("t1", rid)
        assert row is not None and row.started_by.startswith("agent:") and row.stopped_at is not None
        (second,) = [r for r in catalog.rows.values() if r.recording_id != rid]
        assert second.started_by == "user:sup1"
        # a client never names the file
        assert (await call(stack, "CallControl/StartRecording", {"call_id": "c1", "path": "/etc/x"}, ADMIN))[0] \
            == "invalid_argument"
    run(body)


def test_listen_is_staff_only_by_default_and_own_recordings_for_agents_when_the_policy_allows():
    async def body(stack, catalog, mine, other):
        _, started = await call(stack, "CallControl/StartRecording", {"call_id": "c1"}, mine)
        rid = started["data"]["recording_id"]
        await call(stack, "CallControl/StopRecording", {"call_id": "c1"}, mine)
        await settle(stack)
        # default policy: agents listen to nothing
        for tok in (mine, other):
            assert (await call(stack, "Recordings/Get", {"recording_id": rid}, tok))[0] == "permission_denied"
            assert (await call(stack, "Recordings/List", {}, tok))[0] == "permission_denied"
        for tok in (SUP, ADMIN):
            code, info = await call(stack, "Recordings/Get", {"recording_id": rid}, tok)
            assert code == "ok" and info["call_id"] == "c1" and info["path"] == "c1.wav"
            assert info["audio_url"] == "https://media.example/rec/c1.wav"
            code, listed = await call(stack, "Recordings/List", {"call_id": "c1"}, tok)
            assert [i["recording_id"] for i in listed["items"]] == [rid]
        # another tenant: the id does not exist there
        assert (await call(stack, "Recordings/Get", {"recording_id": rid}, ADMIN2))[0] == "not_found"
        assert (await call(stack, "Recordings/List", {}, ADMIN2))[1]["items"] == []
        catalog.set_policy(RecordingPolicy(tenant="t1", agent_listen=True))
        assert (await call(stack, "Recordings/Get", {"recording_id": rid}, mine))[0] == "ok"
        assert (await call(stack, "Recordings/Get", {"recording_id": rid}, other))[0] == "permission_denied"
        assert len((await call(stack, "Recordings/List", {}, mine))[1]["items"]) == 1
        assert (await call(stack, "Recordings/List", {}, other))[1]["items"] == []
        # expired: gone for everyone
        key = next(iter(catalog.rows))
        catalog.rows[key] = msgspec.structs.replace(catalog.rows[key], expired_at=1.0)
        assert (await call(stack, "Recordings/Get", {"recording_id": rid}, ADMIN))[0] == "not_found"
    run(body)


def test_policy_without_agent_control_refuses_agents_and_its_consent_plays_first():
    async def body(stack, catalog, mine, other):
        catalog.set_policy(RecordingPolicy(tenant="t1", agent_control=False, consent="/snd/consent.wav"))
        assert (await call(stack, "CallControl/StartRecording", {"call_id": "c1"}, mine))[0] == "permission_denied"
        code, started = await call(stack, "CallControl/StartRecording", {"call_id": "c1"}, SUP)
        assert code == "ok" and started["data"]["stage"] == "consent"
        assert [b.file for b in media(stack, MediaBroadcast)] == ["/snd/consent.wav"]
        assert not media(stack, MediaRecordStart)  # not before the announcement finished
        for method in ("StopRecording", "PauseRecording"):
            assert (await call(stack, f"CallControl/{method}", {"call_id": "c1"}, mine))[0] == "permission_denied"
    run(body)


def test_a_compliance_recording_is_stopped_or_paused_only_by_the_roles_the_policy_names():
    async def body(stack, catalog, mine, other):
        node = stack.node
        reply = await node.ask(StartRecording(call_id="c1", at=node.runtime.clock(), compliance=True,
                                              by="auto:queue:sales"))
        assert reply.ok
        for tok in (mine, SUP, ADMIN):
            for method in ("StopRecording", "PauseRecording"):
                assert (await call(stack, f"CallControl/{method}", {"call_id": "c1"}, tok))[0] == "permission_denied"
        catalog.set_policy(RecordingPolicy(tenant="t1", compliance_stop_roles=("admin",)))
        assert (await call(stack, "CallControl/PauseRecording", {"call_id": "c1"}, SUP))[0] == "permission_denied"
        assert (await call(stack, "CallControl/PauseRecording", {"call_id": "c1"}, ADMIN))[0] == "ok"
        assert (await call(stack, "CallControl/ResumeRecording", {"call_id": "c1"}, ADMIN))[0] == "ok"
        assert (await call(stack, "CallControl/StopRecording", {"call_id": "c1"}, mine))[0] == "permission_denied"
        assert (await call(stack, "CallControl/StopRecording", {"call_id": "c1"}, ADMIN))[0] == "ok"
        assert len(media(stack, MediaRecordStop)) == 1
    run(body)


def test_admin_sets_the_policy_and_the_always_on_flag_of_a_queue():
    async def body(stack, catalog, mine, other):
        code, policy = await call(stack, "Admin/GetRecordingPolicy", {}, ADMIN)
        assert code == "ok" and policy == {"consent": "", "retention_days": 90, "agent_control": True,
                                           "agent_listen": False, "compliance_stop_roles": []}
        for tok in (SUP, mine):
            assert (await call(stack, "Admin/SetRecordingPolicy", {"agent_listen": True}, tok))[0] == "permission_denied"
        for bad in ({"retention_days": 0}, {"compliance_stop_roles": ["root"]}, {"consent": "a b.wav"}):
            assert (await call(stack, "Admin/SetRecordingPolicy", bad, ADMIN))[0] == "invalid_argument"
        code, policy = await call(stack, "Admin/SetRecordingPolicy",
                                  {"agent_listen": True, "retention_days": 7, "compliance_stop_roles": ["supervisor"]},
                                  ADMIN)
        assert code == "ok" and policy["retention_days"] == 7
        assert (await catalog.policy("t1")).compliance_stop_roles == ("supervisor",)
        assert (await catalog.policy("t2")).retention_days == 90  # the other tenant keeps the defaults
        _, started = await call(stack, "CallControl/StartRecording", {"call_id": "c1"}, mine)
        await settle(stack)
        code, info = await call(stack, "Recordings/Get", {"recording_id": started["data"]["recording_id"]}, mine)
        assert code == "ok" and info["retain_until"] - info["started_at"] == 7 * 86_400
        # an always-on queue created through Admin: its queue machine runs with the flag
        code, _ = await call(stack, "Admin/CreateQueue", {"id": "rec", "record": True, "record_consent": "/snd/c.wav"},
                             ADMIN)
        assert code == "ok"
        config = stack.node.state_of("queue", "rec", "t1").config
        assert config.record and config.record_consent == "/snd/c.wav"
    run(body)


def test_every_allowed_role_runs_the_whole_cycle_and_the_other_agent_none_of_it():
    async def body(stack, catalog, mine, other):
        c1 = {"call_id": "c1"}
        for tok in (ADMIN, SUP, mine):
            for method in ("StartRecording", "PauseRecording", "ResumeRecording", "StopRecording"):
                assert (await call(stack, f"CallControl/{method}", c1, tok))[0] == "ok", method
        await call(stack, "CallControl/StartRecording", c1, SUP)
        for method in ("PauseRecording", "ResumeRecording", "StopRecording"):
            assert (await call(stack, f"CallControl/{method}", c1, other))[0] == "permission_denied", method
        assert [c.mask for c in media(stack, MediaRecordMask)] == [True, False] * 3
        assert len(media(stack, MediaRecordStart)) == 4 and len(media(stack, MediaRecordStop)) == 3
    run(body)


def test_a_blind_transfer_to_an_always_on_extension_is_recorded_there():
    async def body(stack, catalog, mine, other):
        for ext, record in (("3001", True), ("3002", False)):
            code, _ = await call(stack, "Admin/CreateExtension", {"id": ext, "record": record}, ADMIN)
            assert code == "ok"
        node = stack.node
        for ext, call_id in (("3002", "c1"), ("3001", "c2")):
            if call_id == "c2":
                await connected_call(stack, "c2")
            assert (await call(stack, "CallControl/BlindTransfer", {"call_id": call_id, "target": ext}, SUP))[0] == "ok"
            leg = node.runtime.state_of("call", call_id).ringing[0].id
            node.deliver_nowait(ChannelAnswered(call_id=call_id, at=node.runtime.clock(), leg=leg))
            await settle(stack)
        starts = media(stack, MediaRecordStart)
        assert [s.call_id for s in starts] == ["c2"]
        (row,) = catalog.rows.values()
        assert row.call_id == "c2" and row.started_by == "auto:extension:3001" and row.compliance
    run(body)
