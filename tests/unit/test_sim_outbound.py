"""Outbound routing in the deterministic simulator: scripted callers dial out through emulated
trunks (examples/outbound), and the whole example runs clean and replays identically."""

from __future__ import annotations

import pathlib

import msgspec
import pytest

from sim.report import build_report, to_json
from sim.scenario import ScenarioError, parse_scenario
from sim.script import World

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/outbound/scenario.yaml"


def _world(**trunk_patch) -> World:
    raw = msgspec.yaml.decode(EXAMPLE.read_bytes())
    raw["traffic"] = []
    for t in raw["trunks"]:
        t.update(trunk_patch.get(t["id"], {}))
    return World(parse_scenario(raw, "outbound.yaml", EXAMPLE.parent))


def test_busy_trunk_a_fails_over_to_b_which_carries_the_call() -> None:
    world = _world(A={"busy_p": 1.0}, B={"busy_p": 0.0, "congestion_p": 0.0})
    caller = world.call("0033142685300", "2001", talk_s=30)
    caller.expect_trunk("gw_a", within=1)
    caller.expect_trunk("gw_b", within=2)
    assert caller.expect_answered(within=10, destination="0033142685300") == ""
    caller.expect_ended(within=40, disposition="answered")
    assert world.sim.stats.trunk_carried == {"B": 1} and world.sim.stats.failover_causes == {"USER_BUSY": 1}
    assert world.sim.stats.trunks["gw_a"]["failed"] == 1


def test_national_numbers_go_to_b_first_in_e164() -> None:
    world = _world(B={"busy_p": 0.0, "congestion_p": 0.0})
    caller = world.call("01134960000", "2004", talk_s=5)
    hit = caller.expect_trunk("gw_b", within=1)
    assert hit.detail["destination"] == "+441134960000"
    caller.expect_ended(within=30, disposition="answered")


def test_trunk_limits_refuse_ordinary_calls_but_never_an_emergency_call() -> None:
    world = _world(A={"busy_p": 0.0, "max_concurrent": 1}, B={"congestion_p": 0.0, "max_concurrent": 1})
    first = world.call("0033142685300", "2001")
    first.expect_trunk("gw_a", within=1)
    first.expect_answered(within=10)
    second = world.call("0033142685300", "2002")
    second.expect_trunk("gw_b", within=1)
    second.expect_answered(within=10)
    third = world.call("0033142685300", "2003")  # both trunks full: refused, never dialled
    third.expect_ended(within=1, disposition="failed")
    assert not [o for o in third.log if o.kind == "ringing"]
    assert world.sim.stats.outbound_refused == {"AllTrunksFull": 1}
    sos = world.call("112", "2003")  # emergency: over trunk A's limit
    sos.expect_trunk("gw_a", within=1)
    sos.expect_answered(within=10)
    assert world.sim.stats.trunks["gw_a"]["peak"] == 2
    unrouted = world.call("0999", "2004")
    unrouted.expect_ended(within=1, disposition="failed")
    assert world.sim.stats.outbound_refused == {"AllTrunksFull": 1, "NoRoute": 1}


def test_the_example_runs_clean_and_replays_identically() -> None:
    raw = msgspec.yaml.decode(EXAMPLE.read_bytes())
    raw["duration_s"] = 3600
    sc = parse_scenario(raw, "outbound.yaml", EXAMPLE.parent)
    from sim.core import Simulator

    reports = []
    for _ in range(2):
        sim = Simulator(sc)
        stats = sim.run()
        assert not sim.violations
        reports.append(to_json(build_report(stats, sc.seed)))
    assert reports[0] == reports[1]
    out = build_report(stats, sc.seed)["outbound"]
    assert out["failovers"] > 0 and set(out["carried_by_trunk"]) == {"A", "B"}
    assert out["failover_causes"]["USER_BUSY"] > 0
    assert out["gateways"]["gw_a"]["peak"] <= 4 and out["gateways"]["gw_b"]["peak"] <= 8


@pytest.mark.parametrize("patch,path", [
    ({"outbound_routes": [{"route_id": "r", "pattern": "^00", "trunks": ["A"]}]}, "$.outbound_routes"),
    ({"outbound_routes": [{"route_id": "r", "pattern": "_00.", "trunks": ["Q"]}]}, "$.outbound_routes"),
    ({"trunks": [{"id": "A", "gateway": "g w"}]}, "$.trunks"),
    ({"trunks": [{"id": "A", "busy_p": 0.8, "congestion_p": 0.5}]}, "$.trunks[0]"),
    ({"dids": {"1": {"outbound": True, "queue": "x"}}}, "$.dids.1"),
])
def test_bad_outbound_scenarios_are_scenario_errors(patch, path) -> None:
    raw = msgspec.yaml.decode(EXAMPLE.read_bytes())
    raw["traffic"] = []
    raw.update(patch)
    if "dids" in patch:
        raw["dids"] = patch["dids"]
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw, "o.yaml", EXAMPLE.parent)
    assert path in str(info.value)
