"""CTI benchmark: NATS publish throughput and engine -> WebSocket latency.

- nats_events_per_s: CtiEvents handed to the publisher (a CtiPort), sequenced, encoded and published
  into JetStream (embedded nats-server) in batches; timed until the last batch is flushed.
  Goal >= 100k/s per node.
- ws_p99_ms: 100 WebSocket clients (one tenant each, each watching its tenant) while the engine
  publishes 10k events/s in total; latency from CtiPort.publish to the client's receipt.
  Goal <= 50 ms. The clients run in their own process (``--same-process`` to share the engine's),
  watching with ``{"batch": true}`` (``--no-batch`` for one event per message). Latency uses
  ``time.monotonic()``, which is system-wide, so it is comparable across the two processes.

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time

import msgspec
import trio

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0] if "/bench/" in __file__ else ".")

from adapters.nats.bridge import NatsSettings, open_bridge  # noqa: E402
from adapters.nats.publisher import CtiPublisher  # noqa: E402
from adapters.nats.server import open_embedded_nats  # noqa: E402
from engine.messages import CtiEvent  # noqa: E402


async def nats_throughput(n: int, cpu: dict[str, float] | None = None) -> float:
    async with open_embedded_nats() as server, open_bridge(NatsSettings(url=server.url)) as bridge:
        publisher = CtiPublisher(bridge, None, batch=1024)
        events = [CtiEvent(name="AGENT_STATE_CHANGED", tenant=f"t{i % 10}", at=float(i), agent_id=f"a{i % 500}",
                           data={"state": "AVAILABLE", "previous": "NOT_READY", "reason": None})
                  for i in range(n)]
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            publisher.publish(events[0])
            await publisher.wait_idle()  # warm up: tenants' seqs looked up
            t0 = time.perf_counter()
            c0 = time.process_time()
            for i in range(1, n, 5000):
                for e in events[i:i + 5000]:
                    publisher.publish(e)
                await trio.lowlevel.checkpoint()
            await publisher.wait_idle()
            elapsed = time.perf_counter() - t0
            if cpu is not None:  # the engine side's CPU per event (robust on a shared machine)
                cpu["nats_cpu_us_per_event"] = round((time.process_time() - c0) / (n - 1) * 1e6, 2)
            nursery.cancel_scope.cancel()
        assert publisher.overflowed == 0
        return (n - 1) / elapsed


async def ws_clients(url: str, secret: str, clients: int, seconds: float, batch: bool) -> dict[str, float]:
    """The client side (its own process): ``clients`` watchers, one tenant each; latency is
    ``time.monotonic()`` at receipt minus the event's ``at`` (the engine stamps it with the same
    system-wide monotonic clock). Prints one JSON line with its figures."""
    from trio_websocket import open_websocket_url

    from api.auth import issue_token

    decoder = msgspec.json.Decoder()
    latencies: list[float] = []

    async def client(i: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        tok = issue_token(secret, tenant=f"t{i}", sub=f"s{i}", roles=["supervisor"])
        async with open_websocket_url(url + "/", extra_headers=[("Authorization", f"Bearer {tok}")],
                                      message_queue_size=10_000) as ws:
            await ws.send_message(json.dumps({"id": 1, "method": "Events/Watch", "params": {"batch": batch}}))
            await ws.get_message()
            task_status.started()
            while True:
                frame = decoder.decode(await ws.get_message())
                now = time.monotonic()
                for event in frame.get("events") or ([frame["event"]] if "event" in frame else []):
                    latencies.append(now - event["at"])

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            await nursery.start(client, i)
        print("READY", flush=True)
        c0 = time.process_time()
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    cpu = (time.process_time() - c0) / seconds
    latencies.sort()
    if not latencies:
        return {"ws_p50_ms": -1, "ws_p99_ms": -1, "ws_received": 0}
    return {"ws_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "ws_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "ws_max_ms": round(latencies[-1] * 1000, 2), "ws_received": len(latencies),
            "ws_clients_cpu": round(cpu, 2)}


async def ws_latency(clients: int, rate: float, seconds: float, batch: bool = True,
                     same_process: bool = False) -> dict[str, float]:
    """The engine side: the API stack (embedded NATS, JetStream, WebSocket server) publishing
    ``rate`` events/s spread over ``clients`` tenants; the clients run in another process."""
    from api.app import open_stack

    secret = "bench-secret-0123456789-0123456789"
    async with open_stack(secret=secret, rate=0, micro=False, http=False,
                          ws_options={"out_queue": 10_000}) as stack:
        async with trio.open_nursery() as nursery:
            results: dict[str, float] = {}
            ready = trio.Event()
            if same_process:
                async def local() -> None:
                    async def wait_ready() -> None:
                        await trio.sleep(0.5 + clients * 0.01)
                        ready.set()
                    nursery.start_soon(wait_ready)
                    results.update(await ws_clients(stack.ws_url, secret, clients, seconds + 2.0, batch))
                nursery.start_soon(local)
            else:
                args = [sys.executable, __file__, "--clients-only", stack.ws_url, "--secret", secret,
                        "--clients", str(clients), "--seconds", str(seconds + 2.0)]
                if not batch:
                    args.append("--no-batch")
                proc = await nursery.start(functools.partial(
                    trio.run_process, args, stdout=subprocess.PIPE, check=False))

                async def read() -> None:
                    buf = b""
                    async for chunk in proc.stdout:
                        buf += chunk
                        if b"READY" in buf and not ready.is_set():
                            ready.set()
                    lines = [ln for ln in buf.decode().splitlines() if ln.startswith("{")]
                    if lines:
                        results.update(json.loads(lines[-1]))

                nursery.start_soon(read)
            with trio.fail_after(60):
                await ready.wait()
            c0 = time.process_time()
            interval = 0.01
            per_tick = max(1, int(rate * interval))
            start = trio.current_time()
            ticks = int(seconds / interval)
            for k in range(ticks):
                now = time.monotonic()
                for j in range(per_tick):
                    n = k * per_tick + j
                    stack.publisher.publish(CtiEvent(name="CALL_HELD", tenant=f"t{n % clients}", at=now,
                                                     call_id=f"c{n}"))
                await trio.sleep_until(start + (k + 1) * interval)
            results["ws_engine_cpu"] = round((time.process_time() - c0) / seconds, 2)
    return {**results, "ws_expected": int(rate * seconds), "ws_batch": batch,
            "ws_clients_process": "same" if same_process else "separate"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-batch", action="store_true", help="WebSocket: one event per message")
    parser.add_argument("--same-process", action="store_true", help="clients share the engine's process")
    parser.add_argument("--clients-only", metavar="WS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_only:
        print(json.dumps(trio.run(ws_clients, args.clients_only, args.secret, args.clients, args.seconds,
                                  not args.no_batch)), flush=True)
        return
    cpu: dict[str, float] = {}
    rate = trio.run(nats_throughput, args.events, cpu)
    print(f"nats: {rate:,.0f} events/s published into JetStream (goal >= 100k/s); "
          f"{cpu['nats_cpu_us_per_event']} µs of engine CPU per event")
    ws = trio.run(ws_latency, args.clients, args.rate, args.seconds, not args.no_batch, args.same_process)
    print(f"ws: p50 {ws['ws_p50_ms']} ms, p99 {ws['ws_p99_ms']} ms over {ws['ws_received']} events "
          f"({args.clients} clients, {args.rate:,.0f} events/s; goal p99 <= 50 ms)")
    print(json.dumps({"nats_events_per_s": round(rate), **cpu, **ws,
                      "nats_goal_met": rate >= 100_000, "ws_goal_met": 0 <= ws["ws_p99_ms"] <= 50}))


if __name__ == "__main__":
    main()
