"""EslChannelSource against the FreeSWITCH emulator: what a restarted shard host learns from the
switch itself (issue #8), and how it fails.

Rules: real sockets on 127.0.0.1; the source is called from a worker thread, as the shard host
calls it (``trio.to_thread.run_sync``); every wait is bounded.
"""

from __future__ import annotations

import pickle
import socket
import time

import pytest
import trio

from adapters.freeswitch.channels import (
    VARIABLES,
    ChannelSourceError,
    EslChannelSource,
    live_channels,
)
from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.mapping import originate_line
from engine.cluster.recovery import LiveChannel
from engine.messages import MediaOriginate
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import until


def _dial(call_id: str, leg: str, ext: str, **ids: str) -> str:
    """The dial string of the originate the engine sends for an agent leg (call.py ``_ring``)."""
    variables = {"callengine_role": "agent", **{f"callengine_{k}": v for k, v in ids.items()}}
    line = originate_line(MediaOriginate(call_id=call_id, leg=leg, node="fs1", destination=ext,
                                         timeout_s=30, caller_id="2001", variables=variables))
    return line.removeprefix("originate ").rsplit(" ", 1)[0]


def _epoch(ch) -> float:
    return float(ch.created_us // 1_000_000)


def test_a_caller_an_answered_agent_leg_and_a_ringing_offer_become_live_channels() -> None:
    async def main() -> None:
        emu = FreeSwitchEmulator(heartbeat=None)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            caller = await emu.place_inbound_call("2001", "5000", answer=True,
                                                  variables={"domain_name": "acme"})
            await until(lambda: caller.answer_state == "answered")
            cid = caller.uuid
            talking, cause = await emu.originate(
                _dial(cid, f"{cid}-1", "sofia/internal/1001@127.0.0.1", agent_id="a1", queue_id="sales",
                      offer_id="o1"))
            assert talking is not None, cause
            emu.bridge(caller, talking)
            # what FreeSWITCH sets on both legs while they are bridged (capture 02_bridge_two_legs);
            # the emulator only sets bridge_uuid, which FreeSWITCH keeps after an unbridge
            caller.variables["bridge_to"], talking.variables["bridge_to"] = talking.uuid, caller.uuid
            emu.set_endpoint("1002", answer_after=30)
            n.start_soon(emu.originate, _dial(cid, f"{cid}-2", "sofia/internal/1002@127.0.0.1",
                                              agent_id="a2", queue_id="sales", offer_id="o2"))
            await until(lambda: any(c.uuid == f"{cid}-2" and c.call_state == "RINGING"
                                    for c in emu.channels.values()))
            ringing = emu.channels[f"{cid}-2"]
            foreign, _ = await emu.originate("sofia/internal/1003@127.0.0.1")  # not the engine's
            assert foreign is not None

            source = EslChannelSource(EslNodeConfig(name="fs1", port=emu.port))
            got = await trio.to_thread.run_sync(source)

            assert sorted(got, key=lambda c: c.leg) == sorted([
                LiveChannel(call_id=cid, leg="a", node="fs1", answered=True, bridged_to=f"{cid}-1",
                            direction="inbound", caller_id="2001", destination="5000", tenant="acme",
                            created_at=_epoch(caller)),
                LiveChannel(call_id=cid, leg=f"{cid}-1", node="fs1", answered=True, bridged_to="a",
                            direction="outbound", caller_id="2001", destination="1001", tenant="acme",
                            created_at=_epoch(talking), agent_id="a1", queue_id="sales", offer_id="o1"),
                LiveChannel(call_id=cid, leg=f"{cid}-2", node="fs1", answered=False,
                            direction="outbound", caller_id="2001", destination="1002", tenant="acme",
                            created_at=_epoch(ringing), agent_id="a2", queue_id="sales", offer_id="o2"),
            ], key=lambda c: c.leg)
            n.cancel_scope.cancel()

    trio.run(main)


def test_wrong_password_is_a_typed_auth_error_that_does_not_show_the_password() -> None:
    async def main() -> None:
        emu = FreeSwitchEmulator(heartbeat=None, password="right-one")
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            source = EslChannelSource(EslNodeConfig(name="fs1", port=emu.port, password="Wr0ng-secret"))
            with pytest.raises(ChannelSourceError) as info:
                await trio.to_thread.run_sync(source)
            assert info.value.reason == "auth" and info.value.node == "fs1"
            assert "rejected the ESL password" in str(info.value)
            assert "Wr0ng-secret" not in str(info.value) and "Wr0ng-secret" not in repr(info.value)
            n.cancel_scope.cancel()

    trio.run(main)


def test_switch_down_is_a_typed_error_within_the_timeout() -> None:
    # nothing listens: refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ChannelSourceError) as info:
        EslChannelSource(EslNodeConfig(name="fs1", port=port), timeout_s=2.0)()
    assert info.value.reason == "unreachable" and "fs1" in str(info.value)
    assert time.monotonic() - t0 < 2.0
    # a switch that accepts and never speaks (hung, or a black hole): bounded by timeout_s
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        source = EslChannelSource(EslNodeConfig(name="fs1", port=s.getsockname()[1]), timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(ChannelSourceError) as info:
            source()
        took = time.monotonic() - t0
    assert info.value.reason == "timeout" and "within 0.5 s" in str(info.value)
    assert 0.4 < took < 1.5


def test_pickled_source_still_reaches_the_switch_with_its_password() -> None:
    async def main() -> None:
        emu = FreeSwitchEmulator(heartbeat=None, password="s3cret-pw")
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            caller = await emu.place_inbound_call("2001", "5000")
            source = EslChannelSource(EslNodeConfig(name="fs2", port=emu.port, password="s3cret-pw"),
                                      timeout_s=3.0)
            data = pickle.dumps(source)
            copy = pickle.loads(data)
            assert "s3cret-pw" not in repr(copy) and copy.timeout_s == 3.0
            got = await trio.to_thread.run_sync(copy)
            assert [(c.call_id, c.leg, c.node) for c in got] == [(caller.uuid, "a", "fs2")]
            n.cancel_scope.cancel()

    trio.run(main)
    err = pickle.loads(pickle.dumps(ChannelSourceError("node 'fs1': refused", "fs1", "unreachable")))
    assert (str(err), err.node, err.reason) == ("node 'fs1': refused", "fs1", "unreachable")


def test_a_channel_gone_between_the_two_requests_is_left_out() -> None:
    rows = [{"uuid": "u1", "direction": "inbound", "callstate": "ACTIVE"},
            {"uuid": "u2", "direction": "inbound", "callstate": "RINGING"}]
    answers = ["-ERR No such channel!\n"] * len(VARIABLES) + ["_undef_"] * len(VARIABLES)
    assert [(c.call_id, c.leg) for c in live_channels(rows, answers, "fs1")] == [("u2", "a")]


# ------------------------------------------------------------------------------ on the Ray path

AGENTS = [("sale000", "7000", ["sales"], {"sales": 80}), ("sale001", "7001", ["sales"], {"sales": 80})]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_shard_host_rebuilds_its_calls_from_esl_without_a_mirror_file(monkeypatch) -> None:
    """``callengine run`` on 2 Ray shard hosts with NO channel mirror file: the host owning a
    bridged call is killed; Ray restarts it and it asks the emulator over ESL. The call is rebuilt
    ACTIVE with its agent and, when the caller hangs up, ends with exactly one CDR written by the
    rebuilt call itself (node ``fs1``, not the gateway's ``recovered:`` stand-in)."""
    pytest.importorskip("ray")
    import os
    import pathlib
    import shutil
    import tempfile

    from adapters.postgres import open_database
    from adapters.postgres.embedded import EmbeddedPostgres
    from engine.demo import DID_SALES, _seed
    from engine.messages import AgentLogin
    from engine.run import EpochClock, RunOptions, open_engine

    state = pathlib.Path(tempfile.mkdtemp(prefix="callengine-esl-recovery-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(state))
    out: dict = {}

    async def main() -> None:
        await _seed(state, AGENTS)
        emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.1, ring_delay=0.02)
        async with trio.open_nursery() as outer:
            port = await outer.start(emu.run)
            for _a, ext, _q, _s in AGENTS:
                emu.register_phone(ext)
            options = RunOptions(secret="s" * 32, state_dir=str(state), esl_nodes=[EslNodeConfig(name="fs1", port=port)],
                                 esl_heartbeat_s=1.0, shards=2, node_name="t", channel_mirror=False)
            async with open_engine(options) as engine:
                with trio.fail_after(15):
                    await engine.links.wait_all_up()
                for agent, ext, queues, skills in AGENTS:
                    reply = await engine.stack.api.ask(AgentLogin(agent_id=agent, at=time.time(), extension=ext,
                                                                  queues=tuple(queues), skills=skills, ready=True),
                                                       "default")
                    assert reply.ok, reply
                channels = [await emu.place_inbound_call(f"+1555000{i}", DID_SALES) for i in range(2)]
                with trio.fail_after(30):
                    while not all(ch.peer for ch in channels):
                        await trio.sleep(0.05)
                cluster = engine.cluster
                victim = cluster.directory.owner("call", channels[0].uuid)
                mine = [ch.uuid for ch in channels if cluster.directory.owner("call", ch.uuid) == victim]
                out["created"], out["mine"] = [ch.uuid for ch in channels], mine
                out["mirror_file"] = (state / "channels.msgpack").exists()
                await trio.sleep(0.6)  # a snapshot pass or two: the agents' ON_CALL images are stored
                before = await trio.to_thread.run_sync(cluster.wait_ready, victim, 30.0)
                await trio.to_thread.run_sync(cluster.kill, victim)
                info = before
                with trio.fail_after(90):
                    while info["pid"] == before["pid"]:
                        await trio.sleep(0.2)
                        try:
                            info = await trio.to_thread.run_sync(cluster.wait_ready, victim, 30.0)
                        except Exception:  # noqa: BLE001 - being restarted
                            pass
                out["recovery"] = info["recovery"]
                with trio.fail_after(10):  # the rebuilt calls show in the gateway's view, talking
                    while not all(getattr(engine.node.state_of("call", c), "state", None) is not None
                                  and engine.node.state_of("call", c).state.name == "ACTIVE" for c in mine):
                        await trio.sleep(0.05)
                out["agents"] = {c: engine.node.state_of("call", c).agent_id for c in mine}
                for ch in channels:
                    await emu.hangup(ch.uuid)
                await trio.sleep(1.0)
            outer.cancel_scope.cancel()
        async with open_database() as pg:
            out["cdrs"] = await pg.run(lambda conn: conn.fetch(
                "SELECT call_id, disposition, agent_id, node FROM cdrs WHERE call_id = ANY($1::text[])",
                out["created"]))

    try:
        trio.run(main, clock=EpochClock())
    finally:
        EmbeddedPostgres(state / "pg").stop()
        shutil.rmtree(state, ignore_errors=True)
        os.environ.pop("CALLENGINE_STATE_DIR", None)
    assert out["mirror_file"] is False
    rec = out["recovery"]
    assert "channel_source_errors" not in rec, rec
    assert rec["calls"] == len(out["mine"]) and rec["channels"] >= 2 * len(out["mine"]), rec
    assert all(out["agents"].values()), out["agents"]
    cdrs = {}
    for row in out["cdrs"]:
        cdrs.setdefault(row["call_id"], []).append(dict(row))
    assert sorted(cdrs) == sorted(out["created"]) and all(len(v) == 1 for v in cdrs.values()), cdrs
    for call_id in out["mine"]:
        (cdr,) = cdrs[call_id]
        assert (cdr["disposition"], cdr["node"], cdr["agent_id"]) == ("answered", "fs1", out["agents"][call_id]), cdr


def test_a_node_that_cannot_answer_falls_back_to_its_channels_in_the_mirror_file(tmp_path) -> None:
    from engine.cluster.gateway import ChannelMirror, SourceFellBack, SwitchChannelSource
    from engine.messages import ChannelCreated

    mirror = ChannelMirror(tmp_path / "channels")
    for node in ("fs1", "fs2"):
        mirror.event(ChannelCreated(call_id=f"c-{node}", at=1.0, node=node, caller_id="2001", destination="5000"))
    mirror.write()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    ask = EslChannelSource(EslNodeConfig(name="fs1", port=port), timeout_s=2.0)
    source = pickle.loads(pickle.dumps(SwitchChannelSource(ask, "fs1", str(tmp_path / "channels"))))
    with pytest.raises(SourceFellBack) as info:
        source()
    assert [(c.call_id, c.node) for c in info.value.channels] == [("c-fs1", "fs1")]  # fs1's only
    assert "unreachable" in str(info.value) and "1 channel(s) from the mirror file" in str(info.value)
    # no mirror file (hosts on other machines, or RunOptions.channel_mirror=False): nothing to fall back on
    with pytest.raises(SourceFellBack) as info:
        SwitchChannelSource(ask, "fs1", "")()
    assert info.value.channels == [] and "no mirror file" in str(info.value)
    # a node that answers: its own list, the file is not read
    assert SwitchChannelSource(lambda: [], "fs1", str(tmp_path / "channels"))() == []
