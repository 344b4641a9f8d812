"""The shipped examples: they run clean, and scripted callers walk their IVRs.

Scripted callers use the production call/agent/queue machines and the production flow interpreter;
only the outside world (switch, people) is simulated, in virtual time.
"""

from __future__ import annotations

import pathlib

import pytest

from sim import cli
from sim.scenario import load_scenario
from sim.script import World

ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICE = ROOT / "examples/office/scenario.yaml"
CC = ROOT / "examples/contact_centre/scenario.yaml"
MAIN, SUPPORT_LINE = "+442079460000", "+442079460001"
OPEN = 3700.0  # 09:01:40 London on a Monday: open, agents logged in at 09:00


# ---- the small office ----------------------------------------------------------------------------


def test_office_menu_to_support_answered_by_a_support_agent():
    world = World.from_file(OFFICE, start_at=OPEN)
    caller = world.call(MAIN, "+441134960000", talk_s=120)
    caller.expect_prompt("welcome.wav", within=1)
    caller.expect_prompt("main_menu.wav", within=5)
    caller.press("2")
    caller.expect_queue("support", within=2)
    agent = caller.expect_answered(within=30, skill="support")
    assert agent.startswith("support")
    caller.expect_ended(within=125, disposition="answered")
    assert world.agent(agent).calls_handled == 1


def test_office_vip_caller_id_gets_sales_priority():
    world = World.from_file(OFFICE, start_at=OPEN)
    vip = world.call(MAIN, "+442079460015")
    vip.expect_prompt("main_menu.wav", within=5)
    vip.press("1")
    vip.expect_queue("sales")
    assert vip.state.priority == 10
    vip.expect_answered(within=30, skill="sales")
    normal = world.call(MAIN, "+447700900123")
    normal.expect_prompt("main_menu.wav", within=5)
    normal.press("1")
    normal.expect_queue("sales")
    assert normal.state.priority == 0


def test_office_support_line_skips_the_menu():
    world = World.from_file(OFFICE, start_at=OPEN)
    caller = world.call(SUPPORT_LINE)
    caller.expect_queue("support", within=1)
    assert not [o for o in caller.log if o.kind == "prompt"]
    caller.expect_answered(within=30, skill="support")


def test_office_closed_goes_to_voicemail_and_ends_answered():
    world = World.from_file(OFFICE, start_at=60.0)  # 08:01: closed
    caller = world.call(MAIN)
    caller.expect_prompt("closed.wav", within=1)
    caller.expect_prompt("leave_message.wav", within=10)
    caller.expect_voicemail(within=5)
    caller.expect_ended(within=91, disposition="answered")  # the greeting's 90 s max length


def test_office_invalid_input_twice_then_the_operator():
    world = World.from_file(OFFICE, start_at=OPEN)
    caller = world.call(MAIN)
    caller.expect_prompt("main_menu.wav", within=5)
    for _ in range(3):  # first try + 2 retries, each wrong
        caller.press("7")
        if _ < 2:
            caller.expect_prompt("invalid.wav", within=2)
            caller.expect_prompt("main_menu.wav", within=5)
    caller.expect_ringing("2000", within=2)


def test_office_silence_replays_the_menu_then_the_operator():
    world = World.from_file(OFFICE, start_at=OPEN)
    caller = world.call(MAIN)
    caller.expect_prompt("main_menu.wav", within=5)
    caller.expect_prompt("main_menu.wav", within=12)  # 6 s prompt + 5 s timeout
    caller.expect_prompt("main_menu.wav", within=12)
    caller.expect_ringing("2000", within=12)
    caller.expect_answered(within=10, destination="2000")


def test_office_caller_who_hangs_up_in_queue_is_an_abandon():
    world = World.from_file(OFFICE, start_at=OPEN)
    busy = [world.call(SUPPORT_LINE, talk_s=600) for _ in range(4)]  # all four support agents
    for c in busy:
        c.expect_answered(within=30)
    caller = world.call(SUPPORT_LINE)
    caller.expect_queue("support", within=1)
    caller.wait(20)
    assert caller.state.state.name == "QUEUED"
    caller.hangup()
    caller.expect_ended(within=1, disposition="abandoned")
    assert world.sim.queues["support"].stats.abandoned == 1


def test_office_closed_message_hang_up_is_an_abandon():
    world = World.from_file(OFFICE, start_at=100.0)  # 08:01: closed
    caller = world.call(SUPPORT_LINE)
    caller.expect_prompt("closed.wav", within=1)
    caller.hangup()
    caller.expect_ended(within=1, disposition="abandoned")


def test_a_failing_expectation_lists_what_the_caller_observed():
    world = World.from_file(OFFICE, start_at=OPEN)
    caller = world.call(SUPPORT_LINE)
    with pytest.raises(AssertionError) as err:
        caller.expect_prompt("welcome.wav", within=3)
    assert "expected prompt 'welcome.wav' within 3s" in str(err.value)
    assert "queue {'queue': 'support'}" in str(err.value)


# ---- the contact centre ----------------------------------------------------------------------------


def test_contact_centre_spanish_billing_is_answered_by_a_spanish_speaker():
    world = World.from_file(CC, start_at=10.0)
    caller = world.call("+18005550100", talk_s=30)
    caller.expect_prompt("cc_language.wav", within=6)
    caller.press("2")
    caller.expect_prompt("cc_topic_es.wav", within=2)
    caller.press("1")
    caller.expect_queue("billing", within=2)
    assert caller.state.skills == {"billing": 30, "spanish": 50}
    agent = caller.expect_answered(within=30, skill="spanish")
    assert agent.startswith("bilingual")


def test_contact_centre_vip_line_routes_by_caller_id():
    world = World.from_file(CC, start_at=10.0)
    vip = world.call("+18005550199", "+12125551000")
    vip.expect_queue("vip", within=1)
    assert vip.expect_answered(within=30, skill="senior").startswith("senior")
    other = world.call("+18005550199", "+13105550100")
    other.expect_queue("tech", within=1)
    assert other.state.priority == 5


# ---- every example runs clean and deterministically ---------------------------------------------


@pytest.mark.parametrize("name", ["office/scenario.yaml", "contact_centre/scenario.yaml", "textbook/mmn.yaml",
                                  "textbook/mmn_patience.yaml"])
def test_examples_run_clean_and_replay_byte_identically(name, tmp_path, capsys):
    path = ROOT / "examples" / name
    sc = load_scenario(path)
    duration = min(sc.duration_s, 14400.0)
    args = [str(path), "--duration", str(duration), "--json"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first
    assert '"cdrs"' in first


def test_contact_centre_full_day_report(tmp_path):
    assert cli.main([str(CC), "--report", str(tmp_path)]) == 0
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    total = report["total"]
    assert report["calls"]["created"] == report["calls"]["cdrs"] > 3000
    assert set(report["queues"]) == {"billing", "tech", "sales", "vip"}
    assert 0.5 < total["sl"] <= 1 and total["answered"] > 0.8 * total["offered"]
    assert all(q["theory"] is None for q in report["queues"].values())  # not textbook cases
    assert len(report["agents"]) == 50
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") >= 8
