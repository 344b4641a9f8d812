"""End-to-end ESL benchmark: emulator -> ESL -> engine -> ESL -> emulator, over loopback.

The FreeSWITCH emulator runs in a child process (its own core): it places inbound calls at a
target rate, and hangs each one up ``--hold`` seconds after it was bridged. The engine (this
process, one trio thread = one core) runs ``MediaLinks`` + a ``Node`` with one queue and
``--agents`` agents whose phones are registered on the emulator: every call is routed to the queue,
answered, an agent leg is originated (``bgapi originate``), and bridged (``uuid_bridge``).

Figures (last line, JSON):
* ``call_setups_per_s``: calls bridged by the engine (MediaBridge commands written) per second of
  the measured window.
* ``p99_event_to_command_ms`` (and p50): for every media command, the time from the arrival of the
  latest event of the same call (parsed, before mapping) to the command being queued on the socket,
  i.e. adapter mapping + engine routing + actor step + encoding, on the engine's own core.
Goal (issue): >= 1,000 setups/s per engine core with p99 <= 5 ms.

Usage: python bench/esl_e2e.py [--rate 400] [--seconds 5] [--agents 600] [--hold 0.3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402


async def emulator_main(args: argparse.Namespace) -> None:
    from sim.freeswitch import FreeSwitchEmulator

    emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.005, ring_delay=0.001)
    async with trio.open_nursery() as n:
        port = await n.start(emu.run)
        for i in range(args.agents):
            emu.register_phone(f"{10000 + i}")
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        placed = bridged = 0
        t0 = trio.current_time()

        async def call(i: int) -> None:
            nonlocal bridged
            ch = await emu.place_inbound_call(f"2{i:06d}", "5000")
            with trio.move_on_after(10):
                while not ch.peer and ch.up:
                    await trio.sleep(0.01)
            if ch.peer:
                bridged += 1
                await trio.sleep(args.hold)
            await emu.hangup(ch.uuid)

        async with trio.open_nursery() as calls:
            interval = 1.0 / args.rate
            while trio.current_time() - t0 < args.seconds:
                calls.start_soon(call, placed)
                placed += 1
                await trio.sleep_until(t0 + placed * interval)
        print(json.dumps({"placed": placed, "bridged": bridged,
                          "emulator_s": round(trio.current_time() - t0, 3)}), flush=True)
        n.cancel_scope.cancel()


async def engine_main(args: argparse.Namespace, port: int, child: subprocess.Popen) -> dict:
    from adapters.freeswitch.config import EslNodeConfig
    from adapters.freeswitch.nodes import MediaLinks, engine_live_calls
    from adapters.freeswitch.presence import DeviceRegistry
    from engine.actors import Ports, TaskSpec, open_node, route_by_destination
    from engine.actors.ports import InMemoryCdrs, InMemoryCti, InMemoryReplies
    from engine.fsm.queue import QueueConfig
    from engine.messages import AgentLogin

    last_event: dict[tuple[str, str], float] = {}
    lat: list[float] = []
    cmd_times: list[float] = []
    # the commands an event of the same call triggers directly (a queued call's originate is
    # triggered by an agent freeing up, i.e. by another call: not an event->command pair)
    trigger = {"command:MediaAnswer": "event:ChannelCreated",
               "command:MediaBridge": "event:ChannelAnswered"}

    def trace(kind: str, call_id: str, t: float) -> None:
        if kind.startswith("event:"):
            last_event[(kind, call_id)] = t
        else:
            t0 = last_event.pop((trigger.get(kind, ""), call_id), None)
            if t0 is not None:
                lat.append(t - t0)
            cmd_times.append(t)

    agents = {f"{10000 + i}": f"agent{i}" for i in range(args.agents)}
    registry = DeviceRegistry(agents.get)
    links = MediaLinks([EslNodeConfig(name="fs1", port=port)], registry=registry,
                       heartbeat_s=1.0, trace=trace)
    cdrs = InMemoryCdrs(keep=True)
    ports = Ports(links, InMemoryCti(keep=False), cdrs, InMemoryReplies(keep=False))
    bridges = []
    orig_send = links.send

    def send(cmd):
        if type(cmd).__name__ == "MediaBridge":
            bridges.append(trio.current_time())
        orig_send(cmd)

    ports.media = links
    links.send = send  # type: ignore[method-assign]
    async with open_node(ports=ports, queues=[QueueConfig(queue_id="sales")],
                         agents=list(agents.values()),
                         router=route_by_destination({"5000": "sales"}),
                         media_links=[TaskSpec("esl", links.run)]) as node:
        links.attach(node, engine_live_calls(node, links))
        with trio.fail_after(10):
            await links.wait_all_up()
        for ext, agent in agents.items():
            r = await node.ask(AgentLogin(agent_id=agent, at=trio.current_time(), extension=ext,
                                          queues=("sales",), ready=True))
            assert r.ok
        gc.collect()
        gc.freeze()
        t_start = trio.current_time()
        cpu0 = time.process_time()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = await trio.to_thread.run_sync(child.stdout.readline)
        emu_report = json.loads(line)
        # let the last calls finish
        with trio.move_on_after(5):
            while len(cdrs.items) < emu_report["placed"]:
                await trio.sleep(0.05)
        t_end = trio.current_time()
        cpu = time.process_time() - cpu0
    window = [t for t in bridges if t_start <= t <= t_end]
    span = (max(window) - min(window)) if len(window) > 1 else 1.0
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0

    counts = cdrs.by_call()
    return {
        "bench": "esl_e2e", "target_rate": args.rate, "seconds": args.seconds,
        "agents": args.agents, "hold_s": args.hold, **emu_report,
        "engine_bridges": len(window), "cdrs": len(counts),
        "calls_with_one_cdr": sum(1 for v in counts.values() if v == 1),
        "call_setups_per_s": round(len(window) / span, 1),
        "p50_event_to_command_ms": pct(0.50), "p99_event_to_command_ms": pct(0.99),
        "latency_samples": len(lat), "commands": len(cmd_times),
        # what one engine core could sustain: bridged calls per CPU second the engine used
        "engine_cpu_s": round(cpu, 3),
        "engine_cpu_ms_per_call": round(cpu * 1000 / max(1, len(window)), 3),
        "setups_per_engine_cpu_s": round(len(window) / cpu, 1) if cpu else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=300.0, help="calls/s the emulator places")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--agents", type=int, default=400)
    ap.add_argument("--hold", type=float, default=0.3, help="talk time after the bridge, s")
    ap.add_argument("--emulator", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.emulator:
        trio.run(emulator_main, args)
        return
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--emulator", "--rate", str(args.rate),
         "--seconds", str(args.seconds), "--agents", str(args.agents), "--hold", str(args.hold)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        t0 = time.perf_counter()
        result = trio.run(engine_main, args, port, child)
        result["wall_s"] = round(time.perf_counter() - t0, 2)
    finally:
        child.kill()
        child.wait(timeout=5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
