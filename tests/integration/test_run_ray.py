"""``callengine run`` on the Ray path (``open_engine`` with the gateway and 2 shard hosts), against
the FreeSWITCH emulator over real ESL, embedded PostgreSQL and NATS: agents log in through the API
(phone presence included), calls are bridged by actors living in the shard hosts, and leaving the
engine right after the callers hang up (what Ctrl-C does) still lands every call's CDR in
PostgreSQL: the gateway drains the hosts before anything stops."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time

import pytest
import trio

pytest.importorskip("ray")

from adapters.postgres.embedded import EmbeddedPostgres  # noqa: E402
from engine.run import EpochClock, RunOptions, open_engine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

AGENTS = [("sale000", "7000", ["sales"], {"sales": 80}), ("sale001", "7001", ["sales"], {"sales": 80})]
#: added while the engine runs (PostgreSQL NOTIFY -> NodeConfig -> the gateway -> a shard host)
LATE = ("sale002", "7002", ["sales"], {"sales": 80})


def test_run_on_ray_bridges_calls_and_a_stop_right_after_the_hangups_loses_no_cdr(monkeypatch) -> None:
    from adapters.freeswitch.config import EslNodeConfig
    from engine.demo import DID_SALES, DemoResult, _check_pg, _seed
    from engine.messages import AgentLogin
    from sim.freeswitch import FreeSwitchEmulator

    state = pathlib.Path(tempfile.mkdtemp(prefix="callengine-run-ray-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(state))
    out: dict = {}

    async def main() -> None:
        await _seed(state, AGENTS)
        emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.1, ring_delay=0.02)
        async with trio.open_nursery() as outer:
            port = await outer.start(emu.run)
            for _a, ext, _q, _s in [*AGENTS, LATE]:
                emu.register_phone(ext)
            options = RunOptions(secret="s" * 32, state_dir=str(state), esl_nodes=[EslNodeConfig(name="fs1", port=port)],
                                 esl_heartbeat_s=1.0, shards=2, node_name="t")
            async with open_engine(options) as engine:
                out["where"] = (engine.cluster is not None, len(engine.cluster.names))
                with trio.fail_after(15):
                    await engine.links.wait_all_up()
                # a configuration change while running: a new agent and a new DID
                from adapters.postgres.config import AgentDef, Did

                await engine.store.put(AgentDef(tenant="default", agent_id=LATE[0], extension=LATE[1]), actor="t")
                await engine.store.put(Did(tenant="default", number="5098", destination="queue:sales"), actor="t")
                gw = engine.gateway
                with trio.fail_after(20):  # on its shard (not only in the gateway's view of what it created)
                    while LATE[0] in gw._pending["agent"] or engine.node.state_of("agent", LATE[0]) is None:
                        await trio.sleep(0.05)
                for agent, ext, queues, skills in [*AGENTS, LATE]:
                    reply = await engine.stack.api.ask(AgentLogin(agent_id=agent, at=time.time(), extension=ext,
                                                                  queues=tuple(queues), skills=skills, ready=True),
                                                       "default")
                    assert reply.ok, reply
                channels = [await emu.place_inbound_call(f"+1555000{i}", DID_SALES) for i in range(2)]
                channels.append(await emu.place_inbound_call("+15550009", "5098"))
                with trio.fail_after(30):
                    while not all(ch.peer for ch in channels):
                        await trio.sleep(0.05)
                out["bridged"] = sum(1 for ch in channels if ch.peer)
                out["created"] = [ch.uuid for ch in channels]
                # from now on the gateway's egress is (nearly) asleep: only the stop's drain can
                # bring the CDRs back from the shard hosts
                gw.busy_poll_s = gw.idle_poll_s = 60.0
                gw.hot_s = 0.0
                await trio.sleep(0.1)
                for ch in channels:
                    await emu.hangup(ch.uuid)
                await trio.sleep(0.3)  # the hangups reach the shards; the CDRs wait there
                # leave at once: the CDRs are still in the shard hosts (or on their way)
                out["cdrs_before_stop"] = engine.cdr_writer.statistics().accepted
            outer.cancel_scope.cancel()
        result = DemoResult()
        await _check_pg(out["created"], result, state)
        out["result"] = result

    try:
        trio.run(main, clock=EpochClock())
    finally:
        EmbeddedPostgres(state / "pg").stop()
        shutil.rmtree(state, ignore_errors=True)
        os.environ.pop("CALLENGINE_STATE_DIR", None)
    assert out["where"] == (True, 2)
    assert out["bridged"] == 3
    r = out["result"]
    assert r.calls_with_one_cdr == 3, (out["cdrs_before_stop"], r.calls_without_cdr, r.calls_with_duplicate_cdrs)
    print("CDRs accepted before the stop:", out["cdrs_before_stop"])
