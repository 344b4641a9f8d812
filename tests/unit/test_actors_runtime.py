"""Runtime: delivery, effects, crash semantics, backpressure, ask, late messages, statistics."""

from __future__ import annotations

import enum

import msgspec
import pytest
import trio
import trio.testing

from engine.actors import (
    CALL,
    ActorCrashed,
    ActorExists,
    AskTimeout,
    Behaviour,
    MailboxFull,
    Ports,
    Runtime,
    RuntimeClosed,
    open_runtime,
)
from engine.fsm import IllegalTransition
from engine.fsm import call as call_fsm
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ConnectAgent,
    CtiEvent,
    Hold,
    PublishCti,
    Reply,
    Send,
    Stop,
)

replace = msgspec.structs.replace


class Counter(msgspec.Struct, frozen=True):
    n: int = 0
    seen: tuple[str, ...] = ()


class Inc(msgspec.Struct, frozen=True):
    tag: str = ""
    request_id: str = ""


class Boom(msgspec.Struct, frozen=True):
    request_id: str = ""


class Finish(msgspec.Struct, frozen=True):
    pass


class Forward(msgspec.Struct, frozen=True):
    to_id: str


class Silent(msgspec.Struct, frozen=True):
    request_id: str = ""


class _Unknown:
    """A message type outside the counter's table."""


def counter_step(state: Counter, msg: object) -> tuple[Counter, list]:
    if isinstance(msg, Inc):
        new = replace(state, n=state.n + 1, seen=state.seen + (msg.tag,))
        effects: list = [PublishCti(event=CtiEvent(name="INC", tenant="t", at=0.0, data={"n": new.n}))]
        if msg.request_id:
            effects.append(Reply(request_id=msg.request_id, data={"n": new.n}))
        return new, effects
    if isinstance(msg, Boom):
        raise RuntimeError("boom")
    if isinstance(msg, Finish):
        return state, [PublishCti(event=CtiEvent(name="BYE", tenant="t", at=0.0)), Stop(reason="done")]
    if isinstance(msg, Forward):
        return state, [Send(to="counter", to_id=msg.to_id, message=Inc(tag="fwd"))]  # type: ignore[arg-type]
    if isinstance(msg, Silent):
        return state, []
    raise IllegalTransition(_State.ONLY, msg, "counter")


class _State(enum.Enum):
    ONLY = "only"


COUNTER = Behaviour("counter", counter_step)


def run(fn, **kw):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0), **kw)


async def settle() -> None:
    await trio.sleep(0.001)


def test_tell_steps_in_order_and_performs_effects_through_ports():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            for tag in "abc":
                ref.tell_nowait(Inc(tag=tag))
            await ref.tell(Inc(tag="d"))
            await settle()
            assert ref.state == Counter(n=4, seen=("a", "b", "c", "d"))
            assert [e.data["n"] for e in rt.ports.cti.named("INC")] == [1, 2, 3, 4]
            stats = ref.statistics()
            assert stats.processed == 4 and stats.mailbox_depth == 0 and stats.restarts == 0

    run(main)


def test_spawn_twice_is_a_typed_error():
    async def main():
        async with open_runtime() as rt:
            rt.spawn(COUNTER, "c1", Counter())
            with pytest.raises(ActorExists):
                rt.spawn(COUNTER, "c1", Counter())

    run(main)


def test_crash_keeps_last_good_state_dead_letters_and_publishes_actor_error():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            ref.tell_nowait(Inc(tag="a"))
            ref.tell_nowait(Boom())
            ref.tell_nowait(_Unknown())  # outside the table: IllegalTransition, also a crash
            ref.tell_nowait(Inc(tag="b"))
            await settle()
            assert ref.state == Counter(n=2, seen=("a", "b"))
            assert [type(d.message) for d in rt.dead_letters] == [Boom, _Unknown]
            assert "boom" in rt.dead_letters[0].reason
            assert "IllegalTransition" in rt.dead_letters[1].reason
            errors = rt.ports.cti.named("ACTOR_ERROR")
            assert [e.data["message"] for e in errors] == ["Boom", "_Unknown"]
            assert errors[0].data["kind"] == "counter" and errors[0].data["id"] == "c1"
            stats = rt.statistics()
            assert (stats.crashes, stats.restarts, stats.dead_letters, stats.processed) == (2, 2, 2, 2)
            assert ref.statistics().restarts == 2

    run(main)


def test_unsupervised_actor_past_its_intensity_resumes_and_counts_an_escalation():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            for _ in range(5):
                ref.tell_nowait(Boom())
            ref.tell_nowait(Inc())
            await settle()
            assert ref.state.n == 1
            assert rt.statistics().escalations == 1  # 4th crash within the window (max 3)

    run(main)


def test_stop_removes_the_actor_after_its_other_effects():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            ref.tell_nowait(Finish())
            ref.tell_nowait(Inc())  # queued behind the Stop: no tombstone for counters -> dead letter
            await settle()
            assert not ref.alive and rt.ids("counter") == []
            assert [e.name for e in rt.ports.cti.items] == ["BYE"]
            assert [d.reason for d in rt.dead_letters] == ["stopped"]
            assert rt.statistics().stopped == 1

    run(main)


def test_send_effect_delivers_between_actors_and_unknown_target_is_dead_lettered():
    async def main():
        async with open_runtime() as rt:
            a = rt.spawn(COUNTER, "a", Counter())
            b = rt.spawn(COUNTER, "b", Counter())
            a.tell_nowait(Forward(to_id="b"))
            a.tell_nowait(Forward(to_id="nobody"))
            await settle()
            assert b.state.seen == ("fwd",)
            assert [(d.actor_id, d.reason) for d in rt.dead_letters] == [("nobody", "no_such_actor")]

    run(main)


def test_full_mailbox_tell_nowait_raises_and_tell_waits_for_room():
    async def main():
        async with open_runtime(mailbox_capacity=4) as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            for i in range(4):
                ref.tell_nowait(Inc(tag=str(i)))
            with pytest.raises(MailboxFull) as info:
                ref.tell_nowait(Inc(tag="x"))
            assert (info.value.kind, info.value.actor_id, info.value.capacity) == ("counter", "c1", 4)
            # nothing has run yet (no checkpoint); a tell now must wait for the worker
            await ref.tell(Inc(tag="4"))
            await settle()
            assert ref.state.seen == ("0", "1", "2", "3", "4")

    run(main)


def test_tell_waiting_on_a_full_mailbox_blocks_only_its_own_sender():
    async def main():
        async with open_runtime(mailbox_capacity=2) as rt:
            slow = rt.spawn(COUNTER, "slow", Counter())
            other = rt.spawn(COUNTER, "other", Counter())
            rt._suspend(rt._cell("counter", "slow"))  # an actor that is not draining
            slow.tell_nowait(Inc())
            slow.tell_nowait(Inc())
            blocked = trio.Event()
            done = trio.Event()

            async def sender():
                blocked.set()
                await slow.tell(Inc(tag="late"))
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await blocked.wait()
                await settle()
                assert not done.is_set()
                await other.tell(Inc(tag="ok"))
                await settle()
                assert other.state.seen == ("ok",)  # not stalled by its neighbour
                rt._unsuspend(rt._cell("counter", "slow"))
                with trio.fail_after(1):
                    await done.wait()
            await settle()
            assert slow.state.n == 3

    run(main)


def test_a_flooded_actor_does_not_starve_the_others():
    order: list[str] = []

    def recording(state: Counter, msg: object):
        assert isinstance(msg, Inc)
        order.append(msg.tag)
        return state, []

    async def main():
        async with open_runtime(mailbox_capacity=10_000, throughput=8) as rt:
            busy = rt.spawn(Behaviour("counter", recording), "busy", Counter())
            quiet = rt.spawn(Behaviour("counter", recording), "quiet", Counter())
            for _ in range(1000):
                busy.tell_nowait(Inc(tag="busy"))
            quiet.tell_nowait(Inc(tag="quiet"))
            await settle()
            assert len(order) == 1001
            assert order.index("quiet") <= 8  # after at most one turn of the busy actor

    run(main)


def test_ask_replies_times_out_and_fails_fast_on_crash():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            reply = await ref.ask(Inc(), timeout=1)
            assert reply.ok and reply.data == {"n": 1} and reply.request_id.startswith("shard-0-ask-")
            start = trio.current_time()
            with pytest.raises(AskTimeout):
                await ref.ask(Silent(), timeout=2.5)
            assert trio.current_time() == pytest.approx(start + 2.5)
            with pytest.raises(ActorCrashed, match="boom"):
                await ref.ask(Boom(), timeout=10)
            assert trio.current_time() == pytest.approx(start + 2.5)  # no waiting for the timeout
            with pytest.raises(TypeError):
                await ref.ask(Finish())
            missing = await rt.ref("counter", "nope").ask(Inc(request_id="r9"))
            assert (missing.ok, missing.code, missing.request_id) == (False, "NOT_FOUND", "r9")
            assert rt.statistics().pending_asks == 0

    run(main)


def test_late_messages_for_a_stopped_call_go_to_its_tombstone():
    async def main():
        async with open_runtime() as rt:
            event = ChannelCreated(call_id="c1", at=0.0)
            state, effects = call_fsm.new_call(event)
            ref = rt.spawn(CALL, "c1", state, effects)
            ref.tell_nowait(call_fsm.Hangup(call_id="c1", at=1.0))
            await settle()
            assert not ref.alive and len(rt.ports.cdr.items) == 1
            # a late media event: dropped quietly, counted
            rt.tell_nowait("call", "c1", ChannelAnswered(call_id="c1", at=2.0))
            # a late command: answered as the ended call would
            rt.tell_nowait("call", "c1", Hold(call_id="c1", at=2.0, request_id="h1"))
            # a ConnectAgent racing the hangup: the reservation is released
            rt.tell_nowait("call", "c1", ConnectAgent(call_id="c1", at=2.0, queue_id="q", offer_id="o1",
                                                      agent_id="a1", extension="201"))
            await settle()
            stats = rt.statistics()
            assert (stats.late_dropped, stats.late_handled) == (1, 2)
            [hold] = rt.ports.replies.for_request("h1")
            assert hold.code == "FAILED_PRECONDITION"
            # the OfferFailed(caller_gone) to queue q and agent a1 were sent (no such actors here)
            assert sorted((d.kind, d.message.reason) for d in rt.dead_letters) == [
                ("agent", "caller_gone"), ("queue", "caller_gone")]
            assert len(rt.ports.cdr.items) == 1

    run(main)


def test_recently_stopped_set_is_bounded():
    async def main():
        async with open_runtime(recently_stopped=3) as rt:
            for i in range(5):
                state, _ = call_fsm.new_call(ChannelCreated(call_id=f"c{i}", at=0.0))
                rt.spawn(CALL, f"c{i}", state).tell_nowait(call_fsm.Hangup(call_id=f"c{i}", at=1.0))
            await settle()
            assert [rt.recently_stopped("call", f"c{i}") for i in range(5)] == [False, False, True, True, True]

    run(main)


def test_effect_failure_in_a_port_is_counted_not_fatal():
    class BrokenCti:
        def publish(self, event):
            raise OSError("bus down")

    async def main():
        base = Ports.in_memory()
        ports = Ports(base.media, BrokenCti(), base.cdr, base.replies)  # type: ignore[arg-type]
        async with open_runtime(ports=ports) as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            reply = await ref.ask(Inc())  # CTI effect fails, the Reply after it still happens
            assert reply.data == {"n": 1} and ref.state.n == 1
            assert rt.statistics().effect_errors == 1

    run(main)


def test_statistics_report_depth_and_counts():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(COUNTER, "c1", Counter())
            rt.spawn(COUNTER, "c2", Counter())
            for _ in range(7):
                ref.tell_nowait(Inc())
            stats = rt.statistics()
            assert stats.actors == {"counter": 2}
            assert (stats.mailbox_depth, stats.max_mailbox_depth, stats.run_queue) == (7, 7, 1)
            await settle()
            stats = rt.statistics()
            assert (stats.mailbox_depth, stats.processed, stats.spawned) == (0, 7, 2)

    run(main)


def test_shutdown_drains_then_refuses_new_mail():
    async def main():
        async with trio.open_nursery() as nursery:
            rt = Runtime()
            await nursery.start(rt.run)
            ref = rt.spawn(COUNTER, "c1", Counter())
            for _ in range(100):
                ref.tell_nowait(Inc())
            report = await rt.shutdown(deadline_s=1)
            assert report.drained and report.undrained == 0 and report.stopped == 1
            assert rt.processed == 100
            with pytest.raises(RuntimeClosed):
                rt.tell_nowait("counter", "c1", Inc())
            assert await rt.shutdown() is report  # idempotent

    run(main)
