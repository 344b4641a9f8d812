"""The reorder buffer of a shard host's links (engine/cluster/links.py): per-link FIFO, exactly once,
bounded, with a timeout and an epoch rule so a lost batch never blocks a link for ever."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cluster.links import LinkInbox

INC = 1_000


def _arrivals(n_max: int = 40):
    """A batch sequence 1..n, permuted, with copies of some batches mixed in."""

    @st.composite
    def build(draw):
        n = draw(st.integers(1, n_max))
        extra = draw(st.lists(st.integers(1, n), max_size=n))
        return n, draw(st.permutations([*range(1, n + 1), *extra]))

    return build()


@settings(max_examples=300, deadline=None)
@given(_arrivals())
def test_any_permutation_with_copies_is_delivered_exactly_once_in_order(case):
    n, arrivals = case
    inbox: LinkInbox[int] = LinkInbox(max_held=n, hold_s=10.0)
    out: list[int] = []
    for seq in arrivals:
        out += inbox.offer("s0", INC, seq, seq, now=0.0)
    assert out == list(range(1, n + 1))
    assert inbox.held() == 0 and inbox.next_deadline() is None
    assert inbox.duplicates == len(arrivals) - n
    assert inbox.gaps_skipped == 0 and inbox.late == 0


@settings(max_examples=300, deadline=None)
@given(_arrivals(), st.integers(1, 8), st.lists(st.floats(0, 3), min_size=1, max_size=60))
def test_bounded_and_timed_out_gaps_still_deliver_every_batch_once(case, max_held, gaps):
    """Whatever the bound and whenever time passes: never a batch twice, never a batch lost, and in
    order as long as no gap had to be given up."""
    n, arrivals = case
    inbox: LinkInbox[int] = LinkInbox(max_held=max_held, hold_s=1.0)
    out: list[int] = []
    now = 0.0
    for i, seq in enumerate(arrivals):
        now += gaps[i % len(gaps)]
        out += inbox.expire(now)
        out += inbox.offer("s0", INC, seq, seq, now=now)
        assert inbox.held() <= max_held
    out += inbox.expire(now + 1.0)
    assert sorted(out) == list(range(1, n + 1))
    assert inbox.held() == 0
    if inbox.gaps_skipped == 0:
        assert out == list(range(1, n + 1))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 15), st.integers(1, 15), st.data())
def test_a_new_incarnation_releases_the_old_one_and_keeps_its_own_order(n_old, n_new, data):
    """The sender restarted (a new incarnation; some batches of the old one were lost with it): the
    old incarnation's held batches are applied without waiting for the timeout, its stragglers are
    applied once, and the new incarnation is in order."""
    old = [("old", s) for s in data.draw(st.permutations(range(1, n_old + 1)))]
    new = [("new", s) for s in data.draw(st.permutations(range(1, n_new + 1)))]
    # some of the old incarnation's batches died with it
    lost = data.draw(st.sets(st.sampled_from(old[1:]))) if n_old > 1 else set()
    old = [b for b in old if b not in lost]
    # the new incarnation starts after the old one sent its first batch; the rest interleave
    rest = data.draw(st.permutations(old[1:] + new))
    inbox: LinkInbox[tuple[str, int]] = LinkInbox(max_held=64, hold_s=10.0)
    out: list[tuple[str, int]] = []
    sealed_at = -1
    for tag, seq in [old[0], *rest]:
        out += inbox.offer("s0", INC if tag == "old" else INC + 1, seq, (tag, seq), now=0.0)
        if tag == "new" and sealed_at < 0:
            sealed_at = len(out)
    # the dead incarnation never waits for a timeout: all of it is applied by now
    assert set(old) <= set(out)
    out += inbox.expire(100.0)
    assert sorted(out) == sorted(old + new)  # exactly once
    assert [s for tag, s in out if tag == "new"] == list(range(1, n_new + 1))
    # up to the new incarnation's first batch (which releases what the old one held), the old
    # incarnation was in order; its stragglers after that are applied as they come
    before = [s for tag, s in out[:sealed_at] if tag == "old"]
    assert before == sorted(before)


def test_a_gap_is_held_until_filled_then_released_in_order():
    inbox: LinkInbox[str] = LinkInbox(hold_s=0.5)
    assert inbox.offer("s0", INC, 1, "a", now=0.0) == ["a"]
    assert inbox.offer("s0", INC, 3, "c", now=0.1) == []
    assert inbox.offer("s0", INC, 4, "d", now=0.2) == []
    assert inbox.held() == 2 and inbox.next_deadline() == pytest.approx(0.6)
    assert inbox.offer("s0", INC, 3, "c", now=0.3) == []  # a copy of a held batch
    assert inbox.offer("s0", INC, 2, "b", now=0.3) == ["b", "c", "d"]
    assert inbox.held() == 0 and inbox.reordered == 2 and inbox.duplicates == 1
    assert inbox.offer("s1", INC, 1, "other link", now=0.3) == ["other link"]  # links are independent
    assert inbox.offer("ingress", 0, 0, "unsequenced", now=0.3) == ["unsequenced"]


def test_a_lost_batch_blocks_the_link_only_until_the_timeout():
    inbox: LinkInbox[int] = LinkInbox(hold_s=0.5)
    inbox.offer("s0", INC, 1, 1, now=0.0)
    assert inbox.offer("s0", INC, 3, 3, now=1.0) == [] and inbox.offer("s0", INC, 4, 4, now=1.2) == []
    assert inbox.expire(1.49) == []
    assert inbox.expire(1.5) == [3, 4]
    assert inbox.gaps_skipped == 1 and inbox.next_deadline() is None
    assert inbox.offer("s0", INC, 5, 5, now=1.6) == [5]
    # the given-up batch still arrives (late): applied once, not lost and not twice
    assert inbox.offer("s0", INC, 2, 2, now=2.0) == [2]
    assert inbox.offer("s0", INC, 2, 2, now=2.0) == []
    assert inbox.late == 1


def test_the_bound_gives_the_oldest_gap_up():
    inbox: LinkInbox[int] = LinkInbox(max_held=3, hold_s=100.0)
    inbox.offer("s0", INC, 1, 1, now=0.0)
    for seq in (3, 5, 6):
        assert inbox.offer("s0", INC, seq, seq, now=0.0) == []
    assert inbox.offer("s0", INC, 7, 7, now=0.0) == [3]  # gap 2 given up; gap 4 still held
    assert inbox.held() == 3
    assert inbox.offer("s0", INC, 4, 4, now=0.0) == [4, 5, 6, 7]


def test_a_receiver_that_joins_mid_stream_starts_there_without_losing_what_came_before():
    inbox: LinkInbox[int] = LinkInbox(join_slack=64)
    assert inbox.offer("s0", INC, 500, 500, now=0.0) == [500]
    assert inbox.offer("s0", INC, 499, 499, now=0.0) == [499]  # overtaken: applied late, once
    assert inbox.offer("s0", INC, 500, 500, now=0.0) == []
    assert inbox.offer("s0", INC, 501, 501, now=0.0) == [501]
    assert inbox.joined == 1
    # a new sender starts at 1: 2 before 1 is held, not taken for a join
    assert inbox.offer("s9", INC, 2, 2, now=0.0) == [] and inbox.offer("s9", INC, 1, 1, now=0.0) == [1, 2]


def test_marks_survive_a_restart_but_held_batches_are_not_marks():
    inbox: LinkInbox[int] = LinkInbox(hold_s=0.5)
    for seq in (1, 2, 4):
        inbox.offer("s0", INC, seq, seq, now=0.0)
    inbox.offer("s0", INC + 1, 1, 1, now=0.0)  # a newer incarnation seals the first; 4 applied, 3 given up
    inbox.offer("s1", INC, 1, 1, now=0.0)
    inbox.offer("s1", INC, 3, 3, now=0.0)  # held: not applied, so not in the marks
    restored: LinkInbox[int] = LinkInbox(hold_s=0.5)
    restored.restore(inbox.export())
    assert restored.offer("s0", INC, 2, 2, now=0.0) == []  # applied before the restart
    assert restored.offer("s0", INC, 3, 3, now=0.0) == [3]  # given up before: applied late, once
    assert restored.offer("s0", INC + 1, 2, 2, now=0.0) == [2]
    assert restored.offer("s1", INC, 3, 3, now=0.0) == []  # held again: 2 is still missing
    with pytest.raises(RuntimeError):
        restored.restore(inbox.export())  # only before batches are held
    assert restored.offer("s1", INC, 2, 2, now=0.0) == [2, 3]
    assert inbox.duplicates == 0 and restored.duplicates == 1


def test_a_restored_link_waits_only_briefly_for_its_first_gap():
    """Right after a restart, the batches applied after the last snapshot pass do not come again:
    a restored link gives its first gap up after ``restored_hold_s``, later gaps after ``hold_s``."""
    before: LinkInbox[int] = LinkInbox()
    for seq in (1, 2):
        before.offer("s0", INC, seq, seq, now=0.0)
    inbox: LinkInbox[int] = LinkInbox(hold_s=0.5, restored_hold_s=0.05)
    inbox.restore(before.export())
    assert inbox.offer("s0", INC, 4, 4, now=10.0) == []  # 3 was applied after the snapshot: gone
    assert inbox.next_deadline() == pytest.approx(10.05)
    assert inbox.expire(10.05) == [4]
    assert inbox.offer("s0", INC, 6, 6, now=11.0) == []  # a later gap is an ordinary one
    assert inbox.expire(11.1) == [] and inbox.expire(11.5) == [6]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        LinkInbox(max_held=0)
    with pytest.raises(ValueError):
        LinkInbox(hold_s=0)
