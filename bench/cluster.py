"""Cluster benchmark: scaling of shard hosts, cross-shard message rate, shard recovery time.

Prints figures and, on its last line, one JSON object:
  scale_2_vs_1           completed calls/s with two shard hosts over one (same per-host load and
                         entities per host; ~half of the reservation protocol crosses shards with two).
                         Each host generates its own load (loadgen.LocalSwitch, in its trio thread);
                         the driver only reads statistics. Where the CPU went, from /proc:
                         host_cores_N (cores the hosts got), host_cpu_ms_per_call_N, other_cores_2
                         (the rest of the machine), and scale_2_vs_1 = cores_ratio_2_vs_1 *
                         cpu_efficiency_2_vs_1 exactly
  scale_2_vs_1_no_cross_shard  the same two hosts when no message crosses shards (each host's calls
                         dial queues on that host, whose agents live with them): the box's ceiling
  cross_shard_msgs_per_s routing messages/s from one host to another, batched (outbox -> Ray call)
  cross_shard_nats_msgs_per_s  the same flood, same batch size, carried over NATS (embedded
                         nats-server, a subject per shard) instead of Ray calls
  shard_recovery_s       SIGKILL of a host process -> Ray restarted it and it rebuilt its agents,
                         queues and calls (ready() answers again)
Keep Ray lean: one local Ray, no dashboard, small object store; other suites share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec  # noqa: E402
import ray  # noqa: E402

from engine.cluster.cluster import Cluster, runtime_key  # noqa: E402
from engine.cluster.fakeswitch import FakeSwitch, FileChannelSource  # noqa: E402
from engine.cluster.host import HostConfig  # noqa: E402
from engine.cluster.loadgen import local_switch  # noqa: E402
from engine.cluster.placement import Directory  # noqa: E402
from engine.cluster.snapshots import FileSnapshotStore  # noqa: E402
from engine.cluster.wire import Envelope  # noqa: E402
from engine.fsm.queue import QueueConfig  # noqa: E402
from engine.messages import AgentLogin, AgentStatus  # noqa: E402

MB = 1024 * 1024


def ensure_ray(cpus: int) -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=100 * MB, log_to_driver=False,
                 namespace="bench-cluster")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all processes, all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def throughput(shards: int, *, agents_per_shard: int, queues_per_shard: int, concurrency: int,
               warmup_s: float, measure_s: float, max_delay_s: float, transport: str = "ray", nats_url: str = "",
               max_batch: int = 1024, tenants: bool = False, local_queues: bool = False) -> dict:
    """Completed calls/s with ``shards`` hosts, each generating its own load (loadgen.LocalSwitch,
    in the host's trio thread: the driver only reads statistics twice). Also where the CPU went:
    the hosts' own CPU seconds (from /proc), per completed call, and the rest of the machine."""
    n_queues = queues_per_shard * shards
    queues = [QueueConfig(queue_id=f"bq{i}") for i in range(n_queues)]
    routes = {f"9{i}": q.queue_id for i, q in enumerate(queues)}
    ns = f"bench{shards}{transport}{int(tenants)}{int(local_queues)}"
    # with tenants, queue i belongs to tenant t<i>, and so do the callers dialling it
    dest_tenant = {d: f"t{i}" for i, d in enumerate(routes)} if tenants else {}
    config = HostConfig(namespace=ns, prefix=f"{ns}-", routes=routes, snapshot_interval_s=0,
                        collect_outputs=False, max_delay_s=max_delay_s,
                        local_switch=local_switch(tuple(routes), concurrency, local_queues, dest_tenant),
                        transport=transport, nats_url=nats_url, max_batch=max_batch)
    if tenants:
        # one tenant per shard's worth of queues and agents, spread 1: a queue and its agents
        # live together, so the reservation protocol stays on one shard
        config.directory = Directory(tenant_spread={f"t{i}": 1 for i in range(n_queues)})
    cl = Cluster(shards=shards, config=config, host_cpus=1.0).start()
    try:
        agents = [f"ba{i}" for i in range(agents_per_shard * shards)]
        if tenants:
            queues = [msgspec.structs.replace(q, tenant=f"t{i}") for i, q in enumerate(queues)]
        cl.add_entities(queues, [(a, f"t{i % n_queues}" if tenants else "default") for i, a in enumerate(agents)])
        # each agent serves one queue (as in most contact centres): an agent's status then goes to
        # one queue, and queues do not compete for every agent
        # agents of a tenant are keyed "<tenant>/<id>" on the shards: their logins go as keyed envelopes
        logins = []
        for i, a in enumerate(agents):
            tenant = f"t{i % n_queues}" if tenants else "default"
            login = AgentLogin(agent_id=a, at=time.time(), extension=f"x{a}", queues=(queues[i % n_queues].queue_id,),
                               ready=True, tenant=tenant)
            logins.append(Envelope("agent", runtime_key("agent", tenant, a), login) if tenants else login)
        cl.send(logins, wait=True)
        time.sleep(0.5)
        ray.get([h.call.remote(lambda host: host.switch.start()) for h in cl.hosts.values()])
        time.sleep(warmup_s)

        pids = [s["pid"] for s in cl.statistics().values()]

        def snap():
            st = cl.statistics()
            return (time.perf_counter(), sum(s["switch"]["completed"] for s in st.values()),
                    sum(s["outbox"]["messages"] for s in st.values()),
                    sum(s["outbox"]["batches"] for s in st.values()),
                    sum(_cpu_s(p) for p in pids), _machine_busy_s())

        t0, c0, m0, b0, h0, w0 = snap()
        time.sleep(measure_s)
        t1, c1, m1, b1, h1, w1 = snap()
        ray.get([h.call.remote(lambda host: host.switch.stop()) for h in cl.hosts.values()])
        dt = t1 - t0
        calls = max(1, c1 - c0)
        return {"shards": shards, "calls_per_s": (c1 - c0) / dt, "cross_msgs_per_s": (m1 - m0) / dt,
                "mean_batch": (m1 - m0) / max(1, b1 - b0), "cross_per_call": (m1 - m0) / calls,
                # cores the shard hosts got, and CPU ms each completed call cost them
                "host_cores": (h1 - h0) / dt, "host_cpu_ms_per_call": 1000 * (h1 - h0) / calls,
                # cores busy on the whole machine, and the part that was not the shard hosts
                "machine_cores": (w1 - w0) / dt, "other_cores": ((w1 - w0) - (h1 - h0)) / dt}
    finally:
        for h in cl.hosts.values():
            ray.kill(h)


def cross_shard_rate(n: int, *, transport: str = "ray", nats_url: str = "", max_batch: int = 1024) -> dict:
    """Host s0 floods a queue on s1 with n AgentStatus messages through its outbox, carried by
    batched Ray calls or by NATS (a subject per shard): the same encode, batch size, decode, step."""
    ns = f"benchx{transport}{max_batch}"
    config = HostConfig(namespace=ns, prefix=f"{ns}-", snapshot_interval_s=0, collect_outputs=False,
                        transport=transport, nats_url=nats_url, max_batch=max_batch)
    cl = Cluster(shards=["s0", "s1"], config=config, host_cpus=1.0).start()
    try:
        qid = next(f"xq{i}" for i in range(1000) if cl.directory.place("queue", f"xq{i}") == "s1")
        cl.add_entities([QueueConfig(queue_id=qid)], [])
        before = cl.statistics()["s1"]["accepted"]

        def flood(host, qid=qid, n=n):
            import trio

            rt = host.node.runtime
            t = trio.current_time()
            from engine.messages import Send
            for i in range(n):
                rt.perform([Send(to="queue", to_id=qid, message=AgentStatus(
                    queue_id=qid, agent_id=f"a{i % 500}", at=t, logged_in=True, available=False))])
            return rt.forwarded

        t0 = time.perf_counter()
        ray.get(cl.hosts["s0"].call.remote(flood))
        end = time.monotonic() + 60
        while time.monotonic() < end:
            st = cl.statistics()["s1"]
            if st["accepted"] - before >= n:
                break
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        stats = cl.statistics()
        out = stats["s0"]["outbox"]
        got = stats["s1"]["accepted"] - before
        return {"transport": transport, "messages": n, "delivered": got, "seconds": dt, "msgs_per_s": got / dt,
                "mean_batch": out["mean_batch"], "duplicates_dropped": stats["s1"]["duplicates_dropped"],
                "reordered": stats["s1"]["reordered"],
                "send_errors": out["send_errors"], "last_error": out["last_error"][:200]}
    finally:
        for h in cl.hosts.values():
            ray.kill(h)


def recovery(agents_n: int, calls_n: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-cluster-")
    channel_file = os.path.join(tmp, "channels")
    queues = [QueueConfig(queue_id=f"rq{i}") for i in range(10)]
    config = HostConfig(namespace="benchr", prefix="benchr-", store=FileSnapshotStore(os.path.join(tmp, "snap")),
                        channel_sources=(FileChannelSource(channel_file),), routes={"500": "rq0"},
                        snapshot_interval_s=0.1)
    cl = Cluster(shards=["s0", "s1"], config=config, host_cpus=1.0).start()
    try:
        agents = [f"ra{i}" for i in range(agents_n)]
        cl.add_entities(queues, [(a, "default") for a in agents])
        cl.send([AgentLogin(agent_id=a, at=time.time(), extension=f"x{a}", queues=("rq0",), ready=False)
                 for a in agents], wait=True)
        sw = FakeSwitch(channel_file=channel_file)
        for _ in range(calls_n):  # callers waiting in a queue nobody serves (agents not ready)
            sw.new_call("500")
        cl.send(sw.tick(), wait=True)
        sw.write_channels()
        victim = "s0"
        ray.get(cl.hosts[victim].snapshot_now.remote())  # the snapshot loop would, within 0.1 s
        counts = cl.statistics()[victim]["actors"]
        pid = ray.get(cl.hosts[victim].ready.remote())["pid"]
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                info = ray.get(cl.hosts[victim].ready.remote(), timeout=60)
                if info["restarted"]:
                    break
            except ray.exceptions.RayActorError:
                time.sleep(0.05)
        dt = time.perf_counter() - t0
        after = cl.statistics()[victim]["actors"]
        return {"seconds": dt, "inside_host_s": info["recovery"]["recovery_s"], "before": counts, "after": after,
                "recovery": info["recovery"]}
    finally:
        for h in cl.hosts.values():
            ray.kill(h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--measure-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--agents-per-shard", type=int, default=200)
    ap.add_argument("--queues-per-shard", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=300, help="calls in flight per shard host")
    ap.add_argument("--max-delay-ms", type=float, default=2.0, help="outbox flush delay")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: scale,ceiling,cross,recovery")
    ap.add_argument("--cross-msgs", type=int, default=200_000)
    ap.add_argument("--cross-batches", default="64,1024", help="outbox batch sizes for the Ray/NATS comparison")
    ap.add_argument("--recovery-agents", type=int, default=2000)
    ap.add_argument("--recovery-calls", type=int, default=1000)
    args = ap.parse_args()
    ensure_ray(os.cpu_count() or 2)
    kw = dict(agents_per_shard=args.agents_per_shard, queues_per_shard=args.queues_per_shard,
              concurrency=args.concurrency, warmup_s=args.warmup_s, measure_s=args.measure_s,
              max_delay_s=args.max_delay_ms / 1000)
    skip = set(filter(None, args.skip.split(",")))
    nan_run = {k: float("nan") for k in ("calls_per_s", "cross_msgs_per_s", "mean_batch", "cross_per_call",
                                          "host_cores", "host_cpu_ms_per_call", "machine_cores", "other_cores")}
    one = two = ceiling = nan_run

    def show(label: str, res: dict) -> None:
        print(f"{label}: {res['calls_per_s']:7.0f} calls/s  hosts used {res['host_cores']:.2f} cores, "
              f"{res['host_cpu_ms_per_call']:.3f} CPU ms/call; rest of the machine {res['other_cores']:.2f} cores; "
              f"cross-shard {res['cross_msgs_per_s']:.0f} msg/s = {res['cross_per_call']:.1f}/call "
              f"(mean batch {res['mean_batch']:.0f})", flush=True)

    if "scale" not in skip:
        one = throughput(1, **kw)
        show("1 shard host ", one)
        two = throughput(2, **kw)
        show("2 shard hosts", two)
        if "ceiling" not in skip:
            # the same two hosts when no message crosses shards (each host's calls dial queues on
            # that host, and a queue's agents live with it): what the box allows at best
            ceiling = throughput(2, tenants=True, local_queues=True, **kw)
            show("2 hosts, no cross-shard traffic", ceiling)
    nan = {"msgs_per_s": float("nan"), "mean_batch": 0}
    cross, cross_nats = nan, nan
    table: list[dict] = []
    if "cross" not in skip:
        from engine.cluster.natsio import EmbeddedNatsThread

        with EmbeddedNatsThread() as server:
            for max_batch in [int(b) for b in args.cross_batches.split(",") if b]:
                for transport in ("ray", "nats"):
                    res = cross_shard_rate(args.cross_msgs, transport=transport, nats_url=server.url,
                                           max_batch=max_batch)
                    res["max_batch"] = max_batch
                    table.append(res)
                    print(f"cross-shard flood over {transport:4} (batch <= {max_batch:4}): {res['msgs_per_s']:8.0f} "
                          f"msg/s, mean batch {res['mean_batch']}, delivered {res['delivered']}/{res['messages']}",
                          flush=True)
        biggest = max(r["max_batch"] for r in table)
        cross = next(r for r in table if r["transport"] == "ray" and r["max_batch"] == biggest)
        cross_nats = next(r for r in table if r["transport"] == "nats" and r["max_batch"] == biggest)
    rec = ({"seconds": float("nan"), "inside_host_s": None, "before": {}, "after": {}} if "recovery" in skip
           else recovery(args.recovery_agents, args.recovery_calls))
    print(f"recovery: {rec['seconds']:.2f} s (inside host {rec['inside_host_s']} s) actors before {rec['before']} "
          f"after {rec['after']}", flush=True)
    def r(x, nd=0):
        return None if x != x else round(x, nd) if nd else round(x)

    result = {
        "scale_2_vs_1": r(two["calls_per_s"] / one["calls_per_s"], 3),
        "calls_per_s_1": r(one["calls_per_s"]),
        "calls_per_s_2": r(two["calls_per_s"]),
        # why: the cores the hosts got, the CPU each call cost them, and the no-cross-shard ceiling
        "host_cores_1": r(one["host_cores"], 2),
        "host_cores_2": r(two["host_cores"], 2),
        "host_cpu_ms_per_call_1": r(one["host_cpu_ms_per_call"], 3),
        "host_cpu_ms_per_call_2": r(two["host_cpu_ms_per_call"], 3),
        "other_cores_2": r(two["other_cores"], 2),
        "cross_per_call_2": r(two["cross_per_call"], 2),
        # scale_2_vs_1 = cores_ratio * cpu_efficiency exactly (calls/s = cores / CPU per call): on
        # dedicated cores the first factor would be 2
        "cores_ratio_2_vs_1": r(two["host_cores"] / one["host_cores"], 3),
        "cpu_efficiency_2_vs_1": r(one["host_cpu_ms_per_call"] / two["host_cpu_ms_per_call"], 3),
        "scale_2_vs_1_no_cross_shard": r(ceiling["calls_per_s"] / one["calls_per_s"], 3),
        "host_cores_2_no_cross_shard": r(ceiling["host_cores"], 2),
        "cross_shard_msgs_per_s": r(cross["msgs_per_s"]),
        "cross_shard_nats_msgs_per_s": r(cross_nats["msgs_per_s"]),
        "cross_shard_by_batch": {f"{t['transport']}@{t['max_batch']}": r(t["msgs_per_s"]) for t in table},
        "cross_shard_msgs_per_s_in_traffic": r(two["cross_msgs_per_s"]),
        "shard_recovery_s": r(rec["seconds"], 3),
        "shard_recovery_inside_host_s": rec["inside_host_s"],
        "load_avg_1m": os.getloadavg()[0],
    }
    ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
