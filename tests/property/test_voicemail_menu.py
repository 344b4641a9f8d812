"""Property tests of the voicemail owner's menu (engine/voicemail.py) and its pure helpers.

Hypothesis drives random key presses over random mailboxes and checks: the menu is never reached
without the right PIN; after the attempts are spent the session hangs up; a deleted message is
never played again; every MWI carries the counts of the mailbox as it then is; every message is
played at most once per session and ``1`` walks new messages before saved ones; every PIN entered
is reported once, right or wrong; the lockout across calls locks after ``max_failures`` wrong PINs
in a row, opens only when its time is over, and a right PIN (outside a lock) clears the count.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import voicemail as vm

SALT = b"0123456789abcdef"
PIN = "4711"
PIN_HASH = vm.hash_pin(PIN, SALT, rounds=1)  # one round: speed in tests, same code path

messages = st.lists(
    st.tuples(st.sampled_from(["new", "saved"]), st.integers(0, 1000)), max_size=6,
).map(lambda xs: [vm.MessageRef(id=f"m{i}", folder=f, path=f"vm/m{i}.wav", created=float(c))  # type: ignore[arg-type]
                  for i, (f, c) in enumerate(xs)])
keys = st.lists(st.sampled_from(list("0123456789#*")), max_size=40)
#: PIN attempts: few keys, so near misses ("471#", "47111#", "1#") are likely
pin_keys = st.lists(st.sampled_from(list("1147#")), max_size=30)


def run(msgs, presses, max_attempts=3):
    state, actions = vm.start("1001", PIN_HASH, msgs, max_pin_attempts=max_attempts)
    trace = [(None, state, actions)]
    for k in presses:
        state, actions = vm.step(state, vm.Digit(k))
        trace.append((k, state, actions))
    return trace


@settings(max_examples=300, deadline=None)
@given(msgs=messages, presses=pin_keys)
def test_menu_is_never_reached_without_the_pin(msgs, presses):
    entered = ""
    right = False
    for k, state, _ in run(msgs, presses)[1:]:
        if not right:
            if state.phase == "menu":
                assert entered == PIN, f"menu reached after {entered!r}"
                right = True
            elif k == "#":
                entered = ""
            else:
                entered += k


@settings(max_examples=300, deadline=None)
@given(msgs=messages, presses=keys, max_attempts=st.integers(1, 4))
def test_wrong_pins_hang_up_after_the_attempts(msgs, presses, max_attempts):
    trace = run(msgs, presses, max_attempts)
    for _k, state, actions in trace:
        if any(isinstance(a, vm.HangUp) and a.reason == "pin_failed" for a in actions):
            assert state.pin_failures == max_attempts and state.phase == "done"
        assert state.pin_failures <= max_attempts
    final = trace[-1][1]
    if final.phase == "done" and final.pin_failures == max_attempts:
        # nothing happens after the hang-up
        assert vm.step(final, vm.Digit("1"))[1] == []


@settings(max_examples=400, deadline=None)
@given(msgs=messages, presses=keys)
def test_no_deleted_message_is_played_and_mwi_counts_stay_consistent(msgs, presses):
    presses = list(PIN) + ["#"] + presses
    deleted: set[str] = set()
    folder = {m.id: m.folder for m in msgs}
    played: list[str] = []
    for _k, _state, actions in run(msgs, presses):
        for a in actions:
            if isinstance(a, vm.PlayMessage):
                assert a.id not in deleted
                played.append(a.id)
            elif isinstance(a, vm.DeleteMessage):
                assert a.id not in deleted and a.id in folder
                deleted.add(a.id)
            elif isinstance(a, vm.SaveMessage):
                assert a.id not in deleted
                folder[a.id] = "saved"
            elif isinstance(a, vm.Mwi):
                live = [f for i, f in folder.items() if i not in deleted]
                assert (a.new, a.saved) == (live.count("new"), live.count("saved"))
    assert len(played) == len(set(played)), "a message was played twice in one session"
    # new messages come before saved ones (as they were when the session started)
    order = {m.id: m.folder for m in msgs}
    kinds = [order[i] for i in played]
    assert kinds == sorted(kinds, key=lambda f: f != "new")


@settings(max_examples=200, deadline=None)
@given(msgs=messages, presses=keys)
def test_a_change_always_emits_mwi(msgs, presses):
    presses = list(PIN) + ["#"] + presses
    for _k, _s, actions in run(msgs, presses):
        changes = [a for a in actions if isinstance(a, vm.DeleteMessage)]
        if changes:
            assert any(isinstance(a, vm.Mwi) for a in actions)


def test_walk_through_listen_save_delete_exit():
    msgs = [vm.MessageRef("a", "saved", "a.wav", 1.0), vm.MessageRef("b", "new", "b.wav", 2.0),
            vm.MessageRef("c", "new", "c.wav", 3.0)]
    state, actions = vm.start("1001", PIN_HASH, msgs)
    assert actions == [vm.Play(vm.PROMPTS["enter_pin"])]
    for k in "4711":
        state, _ = vm.step(state, vm.Digit(k))
    state, actions = vm.step(state, vm.Digit("#"))
    assert actions == [vm.PinChecked(True), vm.Mwi(2, 1), vm.Play(vm.PROMPTS["menu"])]
    state, actions = vm.step(state, vm.Digit("1"))
    assert actions == [vm.PlayMessage("b", "b.wav")]
    state, actions = vm.step(state, vm.Digit("9"))
    assert actions == [vm.SaveMessage("b"), vm.Mwi(1, 2), vm.Play(vm.PROMPTS["saved"])]
    state, actions = vm.step(state, vm.Digit("1"))
    assert actions == [vm.PlayMessage("c", "c.wav")]
    state, actions = vm.step(state, vm.Digit("7"))
    assert actions == [vm.DeleteMessage("c"), vm.Mwi(0, 2), vm.Play(vm.PROMPTS["deleted"])]
    state, actions = vm.step(state, vm.Digit("7"))  # nothing current any more
    assert actions == [vm.Play(vm.PROMPTS["menu"])]
    state, actions = vm.step(state, vm.Digit("1"))
    assert actions == [vm.PlayMessage("a", "a.wav")]
    state, actions = vm.step(state, vm.Digit("1"))
    assert actions == [vm.Play(vm.PROMPTS["no_more"])]
    state, actions = vm.step(state, vm.Digit("#"))
    assert actions[-1] == vm.HangUp("exit") and state.phase == "done"


def test_pin_hash_never_holds_the_pin_and_checks():
    h = vm.hash_pin("123456", SALT)
    assert "123456" not in h and h.startswith("pbkdf2_sha256$")
    assert vm.check_pin("123456", h) and not vm.check_pin("123457", h)
    assert not vm.check_pin("123456", "garbage") and not vm.check_pin("1", "pbkdf2_sha256$x$zz$00")
    for bad in ("12", "abcd", "1234567890123", "１２３４"):
        with pytest.raises(vm.BadPin):
            vm.hash_pin(bad, SALT)


def test_mwi_headers_as_freeswitch_fires_them():
    assert vm.mwi_headers("1001@acme.example", 2, 1) == {
        "MWI-Messages-Waiting": "yes", "MWI-Message-Account": "sip:1001@acme.example",
        "MWI-Voice-Message": "2/1 (0/0)"}
    assert vm.mwi_headers("1001@d", 0, 3)["MWI-Messages-Waiting"] == "no"
    assert vm.expires_at(100.0, 0) is None and vm.expires_at(100.0, 2) == 100.0 + 2 * 86400


@settings(max_examples=300, deadline=None)
@given(msgs=messages, presses=pin_keys, max_attempts=st.integers(1, 4))
def test_every_pin_entered_is_reported_once_right_or_wrong(msgs, presses, max_attempts):
    entered = ""
    for k, state, actions in run(msgs, presses, max_attempts)[1:]:
        checked = [a for a in actions if isinstance(a, vm.PinChecked)]
        if k == "#" and (checked or entered):
            assert len(checked) == 1 and checked[0].ok == (entered == PIN) == (state.phase == "menu")
        else:
            assert not checked
        if k == "#":
            entered = ""
            if state.phase != "pin":
                break
        elif len(entered) < 12:
            entered += k


@settings(max_examples=300, deadline=None)
@given(results=st.lists(st.tuples(st.booleans(), st.floats(0, 400)), max_size=40),
       max_failures=st.integers(1, 6))
def test_lockout_counts_wrong_pins_across_calls(results, max_failures):
    current, t, wrong_in_a_row = vm.Lockout(), 0.0, 0
    for ok, dt in results:
        t += dt
        locked_before = vm.is_locked(current, t)
        new = vm.lockout(current, ok, t, max_failures=max_failures, lock_s=900.0)
        if locked_before:
            assert new == current  # a PIN during the lock changes nothing
            continue
        if ok:
            assert new == vm.Lockout()
            wrong_in_a_row = 0
        else:
            wrong_in_a_row += 1
            if wrong_in_a_row >= max_failures:
                assert new.locked_until == t + 900.0 and vm.is_locked(new, t) and new.failures == 0
                wrong_in_a_row = 0
            else:
                assert not vm.is_locked(new, t) and new.failures == wrong_in_a_row
        current = new
