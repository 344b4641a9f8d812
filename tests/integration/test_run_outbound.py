"""Outbound routing through ``callengine run`` (``open_engine``): the trunks and outbound routes are
rows in (embedded) PostgreSQL, written while the node runs (LISTEN/NOTIFY brings them in), and a
call to an outside number from the FreeSWITCH emulator (real ESL on 127.0.0.1) dials trunk A,
which is busy, then fails over to trunk B, which answers. In process, and on the Ray path (the
gateway routes and counts the trunks). Every wait is bounded."""

from __future__ import annotations

import pytest
import trio

from tests.support.engine import run_engine
from tests.support.engine import until as _until

TENANT = "default"


@pytest.mark.parametrize("in_process", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["in_process", "ray"])
@pytest.mark.timeout(120)
def test_run_fails_over_from_a_busy_trunk_to_the_next(monkeypatch, in_process: bool) -> None:
    from adapters.postgres.config import OutboundRoute, Trunk

    if not in_process:
        pytest.importorskip("ray")
    out: dict = {}

    async def body(engine, emu) -> None:
        store = engine.store
        # written while the node runs: NOTIFY must bring them to the router
        await store.create(Trunk(tenant=TENANT, trunk_id="A", host="carrier-a.example", max_channels=4))
        await store.create(Trunk(tenant=TENANT, trunk_id="B", host="carrier-b.example", max_channels=4))
        await store.create(OutboundRoute(tenant=TENANT, route_id="intl", pattern="00[0-9]+", priority=10,
                                         trunks=("A", "B"), caller_id_mode="replace",
                                         caller_id_value="+33140000000"))
        await _until(lambda: "intl" in {r.route_id for r in
                                        engine.outbound[TENANT].routes} if TENANT in engine.outbound else False)
        emu.set_gateway("A", outcome="busy")
        emu.set_gateway("B", outcome="answer")
        ch = await emu.place_inbound_call("2001", "0044201234")
        await _until(lambda: ch.peer is not None, 20)
        out["gateway_log"] = list(emu.gateway_log)
        out["originates"] = [line for line in emu.command_log if "originate " in line]
        out["answered_on"] = emu.channels[ch.peer].variables.get("emulator_gateway")
        out["usage"] = engine.trunk_ledger.usage(TENANT)
        await emu.hangup(ch.uuid)
        await _until(lambda: not engine.trunk_ledger.usage(TENANT), 10)
        # the CDR stored in PostgreSQL names the trunk that carried the call (cdrs.trunk, 0008)
        rows: list = []

        async def cdr_rows() -> None:
            rows[:] = await engine.pg.run(lambda conn: conn.fetch(
                "SELECT disposition, destination, trunk FROM cdrs WHERE call_id = $1", ch.uuid))
        with trio.fail_after(15):
            while not rows:
                await engine.cdr_writer.flush()
                await cdr_rows()
                await trio.sleep(0.05)
        out["cdr"] = [tuple(r) for r in rows]

    run_engine(monkeypatch, body, in_process=in_process)
    assert out["gateway_log"] == [("A", "0044201234"), ("B", "0044201234")], out
    assert "sofia/gateway/A/0044201234 " in out["originates"][0] and "callengine_trunk_id=A" in out["originates"][0]
    assert "sofia/gateway/B/0044201234 " in out["originates"][1]
    # the route's caller-id rule (replace): the far end sees the company's number, not 2001
    assert all("origination_caller_id_number=+33140000000," in line for line in out["originates"]), out

    assert out["answered_on"] == "B"
    assert out["usage"] == {"B": 1}
    assert out["cdr"] == [("answered", "0044201234", "B")]

