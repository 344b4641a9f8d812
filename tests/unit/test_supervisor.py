"""Supervision: start order, strategies, restart types, intensity escalation, shutdown order."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing

from engine.actors import (
    ActorSpec,
    Behaviour,
    SupervisorEscalation,
    SupervisorSpec,
    TaskSpec,
    open_runtime,
)
from engine.messages import Stop


class Inc(msgspec.Struct, frozen=True):
    pass


class Boom(msgspec.Struct, frozen=True):
    pass


class Finish(msgspec.Struct, frozen=True):
    pass


def step(n: int, msg: object):
    if isinstance(msg, Inc):
        return n + 1, []
    if isinstance(msg, Finish):
        return n, [Stop()]
    raise RuntimeError(f"boom on {type(msg).__name__}")


COUNTER = Behaviour("counter", step)


def actor(name: str, *, restart="permanent", resume=False, max_crashes=0) -> ActorSpec:
    return ActorSpec(behaviour=COUNTER, id=name, init=lambda: (0, []), restart=restart,
                     resume=resume, max_crashes=max_crashes, crash_window_s=10)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[tuple[str, dict]] = []

    def observer(self, what: str, data: dict) -> None:
        self.events.append((what, data))

    def task(self, name: str, *, fail_times: int = 0, exit_normally: bool = False,
             restart="permanent") -> TaskSpec:
        state = {"runs": 0}

        async def fn(task_status=trio.TASK_STATUS_IGNORED):
            state["runs"] += 1
            self.lines.append(f"start {name}")
            try:
                task_status.started()
                await trio.sleep(0.01)
                if state["runs"] <= fail_times:
                    raise OSError(f"{name} link lost")
                if exit_normally:
                    return
                await trio.sleep_forever()
            finally:
                self.lines.append(f"stop {name}")

        return TaskSpec(id=name, fn=fn, restart=restart, shutdown_s=1)


def run(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


async def settle(t: float = 0.5) -> None:
    await trio.sleep(t)


def cell(rt, name):
    return rt._cell("counter", name)


def test_children_start_in_order_and_nested_trees_build():
    log = Log()
    tree = SupervisorSpec(id="node", children=(
        log.task("link1"),
        SupervisorSpec(id="queues", children=(actor("q1"), actor("q2"))),
        log.task("link2"),
        SupervisorSpec(id="calls", dynamic=ActorSpec(behaviour=COUNTER, restart="transient")),
    ))

    async def main():
        async with open_runtime(tree, observer=log.observer) as rt:
            started = [d["path"] for what, d in log.events if what == "child_started"]
            assert started == ["/node/link1", "/node/queues/q1", "/node/queues/q2", "/node/queues",
                               "/node/link2", "/node/calls"]
            assert log.lines == ["start link1", "start link2"]
            assert rt.root.find("queues").path == "/node/queues"
            calls = rt.root.find("calls")
            calls.start_child("c1", 5)
            assert rt.state_of("counter", "c1") == 5

    run(main)


@pytest.mark.parametrize(
    ("strategy", "restarted", "task_log"),
    [
        ("one_for_one", {"b"}, []),
        ("one_for_all", {"a", "b", "c"}, ["stop t2", "stop t1", "start t1", "start t2"]),
        ("rest_for_one", {"b", "c"}, ["stop t2", "start t2"]),
    ],
)
def test_strategies_restart_the_right_children_in_the_right_order(strategy, restarted, task_log):
    log = Log()
    tree = SupervisorSpec(id="root", strategy=strategy, children=(
        log.task("t1"), actor("a"), actor("b"), actor("c"), log.task("t2"),
    ))

    async def main():
        async with open_runtime(tree) as rt:
            for name in "abc":
                rt.tell_nowait("counter", name, Inc())
            await settle()
            log.lines.clear()
            rt.tell_nowait("counter", "b", Boom())  # max_crashes=0: the first crash is a failure
            await settle()
            states = {name: rt.state_of("counter", name) for name in "abc"}
            assert {name for name, n in states.items() if n == 0} == restarted  # back to init()
            assert log.lines == task_log
            assert rt.statistics().escalations == 1
            # every child works again
            for name in "abc":
                rt.tell_nowait("counter", name, Inc())
            await settle()
            assert all(rt.state_of("counter", name) >= 1 for name in "abc")

    run(main)


def test_resume_keeps_the_last_good_state_and_the_mailbox():
    async def main():
        tree = SupervisorSpec(id="root", children=(actor("a", resume=True),))
        async with open_runtime(tree) as rt:
            rt.tell_nowait("counter", "a", Inc())
            rt.tell_nowait("counter", "a", Inc())
            rt.tell_nowait("counter", "a", Boom())
            rt.tell_nowait("counter", "a", Inc())  # queued while the supervisor decides
            await settle()
            assert rt.state_of("counter", "a") == 3
            assert rt.actor_statistics("counter", "a").restarts == 2  # the crash + the restart

    run(main)


def test_permanent_actor_that_stops_is_restarted_from_init_transient_is_removed():
    async def main():
        tree = SupervisorSpec(id="root", children=(actor("p"), actor("t", restart="transient")))
        async with open_runtime(tree) as rt:
            for name in "pt":
                rt.tell_nowait("counter", name, Inc())
                rt.tell_nowait("counter", name, Finish())
            await settle()
            assert rt.state_of("counter", "p") == 0 and rt.exists("counter", "p")
            assert not rt.exists("counter", "t")

    run(main)


def test_temporary_actor_that_fails_is_removed_and_its_mail_dead_lettered():
    async def main():
        tree = SupervisorSpec(id="root", children=(actor("tmp", restart="temporary"), actor("x")))
        async with open_runtime(tree) as rt:
            rt.tell_nowait("counter", "tmp", Boom())
            rt.tell_nowait("counter", "tmp", Inc())
            await settle()
            assert not rt.exists("counter", "tmp") and rt.exists("counter", "x")
            assert [d.reason for d in rt.dead_letters][-1] == "failed"

    run(main)


@pytest.mark.parametrize(
    ("restart", "fail_times", "exit_normally", "expected_runs"),
    [
        ("permanent", 0, True, 3),  # returns -> restarted anyway (until intensity: 2 restarts)
        ("transient", 0, True, 1),  # normal exit -> not restarted
        ("transient", 1, False, 2),  # abnormal exit -> restarted once, then runs on
        ("temporary", 1, False, 1),  # never restarted
    ],
)
def test_restart_types_for_tasks(restart, fail_times, exit_normally, expected_runs):
    log = Log()
    link = log.task("link", fail_times=fail_times, exit_normally=exit_normally, restart=restart)
    inner = SupervisorSpec(id="media", intensity=2, period_s=100, children=(link,))
    tree = SupervisorSpec(id="root", intensity=0, period_s=100, children=(inner,))

    async def main():
        try:
            async with open_runtime(tree) as rt:
                await settle(1)
                assert log.lines.count("start link") == expected_runs
                assert rt.failure is None
        except BaseExceptionGroup as group:  # permanent + returning: exceeds both intensities
            assert restart == "permanent"
            assert group.subgroup(SupervisorEscalation) is not None
            assert log.lines.count("start link") == expected_runs

    run(main)


def test_intensity_escalates_to_the_parent_which_restarts_the_subtree():
    log = Log()
    # the link fails 3 times: media (intensity 1) gives up on the 2nd, node restarts media once
    link = log.task("link", fail_times=3)
    tree = SupervisorSpec(id="node", intensity=5, period_s=60, children=(
        SupervisorSpec(id="media", intensity=1, period_s=60, children=(link, actor("m", resume=False))),
        actor("q"),
    ))

    async def main():
        async with open_runtime(tree, observer=log.observer) as rt:
            rt.tell_nowait("counter", "m", Inc())
            rt.tell_nowait("counter", "q", Inc())
            await settle(2)
            escalated = [d["path"] for what, d in log.events if what == "escalated"]
            assert escalated == ["/node/media"]
            assert log.lines.count("start link") == 4  # 1 + 1 restart + subtree restart + 1 restart
            assert rt.state_of("counter", "m") == 0  # restarted with its subtree (from init)
            assert rt.state_of("counter", "q") == 1  # untouched sibling (one_for_one at node)
            assert rt.failure is None

    run(main)


def test_intensity_exceeded_at_the_root_fails_the_shard():
    log = Log()
    tree = SupervisorSpec(id="node", intensity=1, period_s=60, children=(
        SupervisorSpec(id="media", intensity=1, period_s=60, children=(log.task("link", fail_times=99),)),
    ))

    async def main():
        with pytest.raises(BaseExceptionGroup) as info:
            async with open_runtime(tree, observer=log.observer):
                await trio.sleep(100)
        assert info.value.subgroup(SupervisorEscalation) is not None
        assert [d["path"] for w, d in log.events if w == "escalated"] == ["/node/media", "/node/media", "/node"]

    run(main)


def test_dynamic_children_resume_after_failure_and_temporary_ones_are_removed():
    tree = SupervisorSpec(id="root", children=(
        SupervisorSpec(id="calls", dynamic=ActorSpec(behaviour=COUNTER, restart="transient", max_crashes=1)),
        SupervisorSpec(id="tmp", dynamic=ActorSpec(behaviour=Behaviour("tmp", step), restart="temporary",
                                                   max_crashes=0)),
    ))

    async def main():
        async with open_runtime(tree) as rt:
            calls, tmp = rt.root.find("calls"), rt.root.find("tmp")
            calls.start_child("c1", 10)
            tmp.start_child("x", 0)
            for msg in (Inc(), Boom(), Boom(), Inc()):
                rt.tell_nowait("counter", "c1", msg)
            rt.tell_nowait("tmp", "x", Boom())
            await settle()
            assert rt.state_of("counter", "c1") == 12 and list(calls.dynamic) == ["c1"]
            assert not rt.exists("tmp", "x") and tmp.dynamic == {}
            rt.tell_nowait("counter", "c1", Finish())  # transient + normal stop: removed
            await settle()
            assert calls.dynamic == {} and not rt.exists("counter", "c1")

    run(main)


def test_shutdown_stops_children_in_reverse_start_order():
    log = Log()
    tree = SupervisorSpec(id="node", children=(
        log.task("media"),
        SupervisorSpec(id="queues", children=(actor("q1"), actor("q2"))),
        SupervisorSpec(id="calls", dynamic=ActorSpec(behaviour=COUNTER, restart="transient")),
        log.task("api"),
    ))

    async def main():
        async with trio.open_nursery() as nursery:
            from engine.actors import Runtime

            rt = Runtime(observer=log.observer)
            await nursery.start(rt.run, tree)
            calls = rt.root.find("calls")
            for i in range(3):
                calls.start_child(f"c{i}", 0)
            report = await rt.shutdown(deadline_s=5)
            stopped = [d["id"] for w, d in log.events if w == "stopped"]
            assert stopped == ["/node/api", "c2", "c1", "c0", "q2", "q1", "/node/media"]
            assert log.lines[-2:] == ["stop api", "stop media"]
            assert report.drained and report.stopped == 5  # actors
            assert rt.statistics().actors == {"counter": 0}

    run(main)


def test_shutdown_respects_its_deadline_with_a_stubborn_task():
    async def stubborn(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(30)  # cleanup that takes far too long

    tree = SupervisorSpec(id="root", children=(TaskSpec(id="s", fn=stubborn, shutdown_s=60),))

    async def main():
        async with trio.open_nursery() as nursery:
            from engine.actors import Runtime

            rt = Runtime()
            await nursery.start(rt.run, tree)
            start = trio.current_time()
            report = await rt.shutdown(deadline_s=2)
            assert report.elapsed_s == pytest.approx(2)
            assert trio.current_time() - start == pytest.approx(2)

    run(main)
