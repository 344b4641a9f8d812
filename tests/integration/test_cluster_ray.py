"""Distribution on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, 2 nodes, one machine).

One Ray cluster per module; each test starts its own shard hosts (own namespace) and kills them.
A fake FreeSWITCH in the test process plays callers and agents' phones and checks, from the
switch's side, that no agent's phone ever has two live legs (never reserved/rung twice).
"""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster as RayCluster  # noqa: E402

from engine.cluster.clock import now  # noqa: E402
from engine.cluster.cluster import Cluster  # noqa: E402
from engine.cluster.fakeswitch import FakeSwitch, FileChannelSource  # noqa: E402
from engine.cluster.host import HostConfig  # noqa: E402
from engine.cluster.natsio import EmbeddedNatsThread, NatsKvSnapshotStore  # noqa: E402
from engine.cluster.recovery import RESTORE_SEQ_JUMP  # noqa: E402
from engine.cluster.snapshots import FileSnapshotStore  # noqa: E402
from engine.fsm.agent import AgentState  # noqa: E402
from engine.fsm.queue import QueueConfig  # noqa: E402
from engine.messages import AgentLogin  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MB = 1024 * 1024


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 80 * MB, "include_dashboard": False})
    cluster.add_node(num_cpus=2, object_store_memory=80 * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def nats_url():
    with EmbeddedNatsThread() as server:
        yield server.url


@pytest.fixture
def make(ray_cluster, tmp_path):
    made: list[Cluster] = []

    def factory(shards: int, *, queues, agents, routes, snapshot_interval_s: float = 0.05, talk_s: float = 0.2,
                store=None):
        ns = f"t{uuid.uuid4().hex[:8]}"
        channel_file = str(tmp_path / "channels")
        config = HostConfig(namespace=ns, store=store or FileSnapshotStore(tmp_path / "snap"),
                            channel_sources=(FileChannelSource(channel_file),), routes=routes,
                            snapshot_interval_s=snapshot_interval_s)
        cl = Cluster(shards=shards, config=config, host_cpus=0.5, ray_address=ray_cluster.address).start()
        made.append(cl)
        cl.add_entities(queues, [(a, "default") for a in agents])
        switch = FakeSwitch(channel_file=channel_file, talk_s=talk_s,
                            ext_to_agent={f"x-{a}": a for a in agents})
        return cl, switch

    yield factory
    for cl in made:
        cl.shutdown()


def login(cl: Cluster, agents, queues) -> None:
    cl.send([AgentLogin(agent_id=a, at=now(), extension=f"x-{a}", queues=tuple(queues), ready=True)
             for a in agents], wait=True)


def pump(cl: Cluster, sw: FakeSwitch) -> None:
    events = sw.tick()
    if events:
        cl.send(events)
    media, _ = cl.drain()
    for m in media:
        sw.on_media(m)


def run_until(cl: Cluster, sw: FakeSwitch, done, timeout: float, feed=None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if feed is not None:
            feed()
        pump(cl, sw)
        if done():
            return True
        time.sleep(0.01)
    return False


def all_available(cl: Cluster, agents) -> dict[str, str]:
    states = {a.agent_id: a.state for a in cl.states("agent")}
    assert set(states) == set(agents), f"agents lost or duplicated: {sorted(states)}"
    return {a: s.name for a, s in states.items() if s is not AgentState.AVAILABLE}


def settled(cl: Cluster, sw: FakeSwitch, agents) -> bool:
    """Every agent AVAILABLE once the last messages have gone round (bounded wait)."""
    if run_until(cl, sw, lambda: all_available(cl, agents) == {}, 15):
        return True
    raise AssertionError(f"agents stuck: {all_available(cl, agents)}")


def test_routing_and_media_affinity(make):
    agents = [f"r{i}" for i in range(6)]
    cl, sw = make(3, queues=[QueueConfig(queue_id="sales")], agents=agents, routes={"100": "sales"})
    login(cl, agents, ["sales"])
    calls = [sw.new_call("100") for _ in range(30)]
    assert run_until(cl, sw, lambda: sw.ended >= set(calls), 30), (len(sw.ended), cl.statistics())
    assert sw.bridged >= set(calls)
    stats = cl.statistics()
    # every call was created on the shard the directory names, and its events reached it there
    expected: dict[str, int] = {}
    for c in calls:
        owner = cl.directory.owner("call", c)
        expected[owner] = expected.get(owner, 0) + 1
    assert {s: st["calls_created"] for s, st in stats.items() if st["calls_created"]} == expected
    assert all(st["media_dropped"] == 0 and st["dead_letters"] == 0 for st in stats.values()), stats
    # the reservation protocol crossed shards, in batches
    assert sum(st["forwarded"] for st in stats.values()) > 0
    assert len({cl.directory.owner("agent", a) for a in agents} | {cl.directory.owner("queue", "sales")}) > 1
    assert not sw.violations
    assert settled(cl, sw, agents)


def test_cross_shard_offers_never_reserve_an_agent_twice(make):
    # three ring-all queues, on different shards, offering the same few agents at the same time
    queue_ids = _ids_on_distinct_shards(["q"], 3)
    agents = [f"m{i}" for i in range(3)]
    queues = [QueueConfig(queue_id=q, strategy="ring-all", ring_timeout_s=3, offer_grace_s=1) for q in queue_ids]
    cl, sw = make(3, queues=queues, agents=agents, routes={f"1{i}": q for i, q in enumerate(queue_ids)},
                  talk_s=0.05)
    assert len({cl.directory.owner("queue", q) for q in queue_ids}) == 3
    login(cl, agents, queue_ids)
    calls = [sw.new_call(f"1{i % 3}") for i in range(45)]
    peak = 0

    def feed():
        nonlocal peak
        peak = max(peak, sum(len(legs) for legs in sw.busy_extensions().values()))

    assert run_until(cl, sw, lambda: sw.ended >= set(calls), 60, feed), (len(sw.ended), cl.statistics())
    assert not sw.violations, sw.violations[:5]
    assert peak >= 2  # offers really were concurrent
    assert sw.bridged >= set(calls)
    assert settled(cl, sw, agents)


def _ids_on_distinct_shards(prefixes, n):
    from engine.cluster.placement import Directory

    d = Directory(shards=("s0", "s1", "s2"))
    out: dict[str, str] = {}
    i = 0
    while len(out) < n and i < 1000:
        qid = f"{prefixes[0]}{i}"
        shard = d.place("queue", qid)
        out.setdefault(shard, qid)
        i += 1
    return sorted(out.values())


def test_shard_killed_mid_traffic_no_call_lost_no_agent_stuck(make):
    agents = [f"k{i}" for i in range(8)]
    queues = [QueueConfig(queue_id="support", ring_timeout_s=2, offer_grace_s=1)]
    cl, sw = make(3, queues=queues, agents=agents, routes={"200": "support"})
    login(cl, agents, ["support"])
    victim = cl.directory.owner("queue", "support")  # the shard holding the queue: the worst case
    calls: list[str] = []
    start = time.monotonic()
    killed_at: list[float] = []

    def feed():
        if len(calls) < 80 and time.monotonic() - start > len(calls) * 0.03:
            calls.append(sw.new_call("200"))
        if not killed_at and len(calls) >= 40:
            killed_at.append(time.monotonic())
            cl.kill(victim)

    assert run_until(cl, sw, lambda: len(calls) == 80 and sw.ended >= set(calls), 90, feed), (
        len(calls), len(sw.ended), sorted(sw.live_calls())[:5], cl.statistics())
    ready = cl.wait_ready(victim)
    assert ready["restarted"] and ready["recovery"]["images"] >= 1, ready
    assert sw.bridged >= set(calls), f"{len(set(calls) - sw.bridged)} callers never reached an agent"
    assert not sw.violations, (sw.violations[:5], _diagnose(cl, sw, victim, killed_at[0]))
    # reservations time out: nobody stays RESERVED / ON_CALL once the switch is quiet
    assert run_until(cl, sw, lambda: all_available(cl, agents) == {}, 15), all_available(cl, agents)


def _diagnose(cl: Cluster, sw: FakeSwitch, victim: str, killed_at: float) -> dict:
    """Who owns what, and each double-rung phone's legs in time order (relative to the kill)."""
    exts = {v.split(" ")[0] for v in sw.violations}
    t0 = killed_at - time.monotonic() + sw.clock()
    out = {"victim": victim, "recovery": cl.wait_ready(victim).get("recovery")}
    for ext in sorted(exts):
        agent = ext[2:]
        hist = sw.history.get(ext, [])
        out[ext] = {"agent_owner": cl.directory.owner("agent", agent),
                    "legs": [(round(t - t0, 3), cid[:6], cl.directory.owner("call", cid), leg[-2:], what)
                             for t, cid, leg, what in hist if t - t0 > -5]}
    print("diagnosis:", out)  # shown whole under "Captured stdout" (the assertion text is cut)
    return out


def test_add_and_remove_shards_at_run_time(make):
    agents = [f"h{i}" for i in range(8)]
    queues = [QueueConfig(queue_id=f"hq{i}") for i in range(4)]
    cl, sw = make(2, queues=queues, agents=agents, routes={"300": "hq0", "301": "hq1", "302": "hq2", "303": "hq3"})
    login(cl, agents, [q.queue_id for q in queues])
    calls: list[str] = []
    phase: list[str] = []
    start = time.monotonic()

    def feed():
        if len(calls) < 60 and time.monotonic() - start > len(calls) * 0.03:
            calls.append(sw.new_call(f"30{len(calls) % 4}"))
        if not phase and len(calls) >= 20:
            phase.append("added")
            cl.add_shard("s2")
        elif phase == ["added"] and len(calls) >= 40:
            phase.append("removed")
            cl.remove_shard("s0")

    assert run_until(cl, sw, lambda: len(calls) == 60 and sw.ended >= set(calls), 90, feed), (
        phase, len(sw.ended), cl.statistics())
    assert phase == ["added", "removed"]
    assert sw.bridged >= set(calls) and not sw.violations
    assert set(cl.hosts) == {"s1", "s2"}
    owners = {cl.directory.owner("agent", a) for a in agents} | {cl.directory.owner("queue", q.queue_id) for q in queues}
    assert owners <= {"s1", "s2"} and "s2" in owners
    stats = cl.statistics()
    assert all(st["dead_letters"] == 0 for st in stats.values()), {s: st["dead_letters"] for s, st in stats.items()}
    assert settled(cl, sw, agents)


def test_a_removed_shard_loses_nothing_it_produced_or_was_sent(make):
    """The cause of the old flake of the test above: a removed host was killed with media commands
    (and CDRs) it had produced since the last drain, so their calls hung. Now ``remove_shard``
    waits until every batch sent to it was applied, keeps its undrained outputs for the next
    ``drain``, and kills it only once its last forwards were applied by its peers."""
    agents = [f"d{i}" for i in range(4)]
    cl, sw = make(2, queues=[QueueConfig(queue_id="dq")], agents=agents, routes={"500": "dq"})
    login(cl, agents, ["dq"])
    on_s0 = [c for c in (uuid.uuid4().hex for _ in range(200)) if cl.directory.owner("call", c) == "s0"][:4]
    for c in on_s0:
        sw.new_call("500", call_id=c)
    cl.send(sw.tick(), wait=True)
    # s0 routes the calls and rings the agents; nobody drains it
    end = time.monotonic() + 15
    while sum(st["media"] for st in cl.statistics().values()) < 2 * len(on_s0) and time.monotonic() < end:
        time.sleep(0.02)
    cl.remove_shard("s0")
    media, _ = cl.drain()
    assert {m.call_id for m in media} >= set(on_s0), "media commands of the removed shard were lost"
    for m in media:
        sw.on_media(m)
    # well inside the queue's ring timeout: the calls finish because nothing was lost, not because
    # an offer timed out and was made again
    assert run_until(cl, sw, lambda: sw.ended >= set(on_s0), 10), (len(sw.ended), cl.statistics())
    assert sw.bridged >= set(on_s0) and not sw.violations
    assert all(st["dead_letters"] == 0 for st in cl.statistics().values())
    assert settled(cl, sw, agents)


def test_killed_host_rebuilds_agents_and_queues_from_nats_kv(make, nats_url):
    """The snapshot store is a JetStream KV bucket: a host killed with ``ray.kill`` comes back with
    the same agents and the same queue (its waiting callers in their places, not re-announced)."""
    agents = [f"n{i}" for i in range(6)]
    store = NatsKvSnapshotStore(nats_url, bucket=f"snap-{uuid.uuid4().hex[:8]}")
    cl, sw = make(2, queues=[QueueConfig(queue_id="nq")], agents=agents, routes={"400": "nq"},
                  snapshot_interval_s=0.05, store=store)
    victim = cl.directory.owner("queue", "nq")
    cl.send([AgentLogin(agent_id=a, at=now(), extension=f"x-{a}", queues=("nq",), ready=False) for a in agents],
            wait=True)
    calls = [sw.new_call("400") for _ in range(5)]  # nobody is ready: they wait in the queue
    assert run_until(cl, sw, lambda: len(_queue(cl, "nq").waiting) == 5, 15)
    mine = sorted(a for a in agents if cl.directory.owner("agent", a) == victim)
    before = {a.agent_id: a for a in cl.states("agent") if a.agent_id in mine}
    queue_before = _queue(cl, "nq")
    # Every host writes its images now (not on its own timer, which a loaded CI host may delay).
    assert all(n >= 0 for n in ray.get([h.snapshot_now.remote() for h in cl.hosts.values()], timeout=30))
    keys = store.load()
    assert sum(k.startswith(("agent.", "queue.")) for k in keys) == len(agents) + 1  # all in NATS KV
    cl.kill(victim)
    ready = _wait_restarted(cl, victim, 60)
    assert ready["recovery"]["images"] == len(mine) + 1, ready
    after = {a.agent_id: a for a in cl.states("agent") if a.agent_id in mine}
    # the same agents, but for the status numbers, moved past the lost incarnation (recovery.py Rule 8)
    assert {a: msgspec.structs.replace(s, status_seq=0) for a, s in after.items()} == {
        a: msgspec.structs.replace(s, status_seq=0) for a, s in before.items()}
    assert all(after[a].status_seq == before[a].status_seq + RESTORE_SEQ_JUMP for a in mine)
    queue_after = _queue(cl, "nq")
    assert [(w.call_id, w.seq, w.enqueued_at) for w in queue_after.waiting] == [
        (w.call_id, w.seq, w.enqueued_at) for w in queue_before.waiting]
    assert {w.call_id for w in queue_after.waiting} == set(calls)
    assert set(queue_after.members) == set(agents)


def _queue(cl: Cluster, queue_id: str):
    return next(q for q in cl.states("queue") if q.queue_id == queue_id)


def _wait_restarted(cl: Cluster, shard: str, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            info = cl.wait_ready(shard, timeout=max(1.0, end - time.monotonic()))
            if info["restarted"]:
                return info
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{shard} did not come back in {timeout}s")
