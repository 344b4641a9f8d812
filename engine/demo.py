"""``callengine demo``: the whole engine, end to end, against the FreeSWITCH emulator, for a bounded time.

What runs (all on loopback):

* the FreeSWITCH ESL emulator (``sim.freeswitch``), with the agents' phones registered;
* ``engine.run.open_engine``: embedded PostgreSQL (config, CDRs, queue events), embedded NATS
  (JetStream CTI stream), the gateway with its ESL link to the emulator and the HTTP/WebSocket/NATS
  API, the actors in Ray shard hosts (one per core; ``in_process=True`` keeps them in this process);
* a contact-centre configuration written into PostgreSQL: a bilingual IVR (language, then topic
  menus) on DID 5000 feeding three skills-based / longest-idle queues, a VIP DID 5099;
* simulated agent desktops, one WebSocket each: log in with their skills (``Agents/Login``), watch
  their own events, hang up after a talk time (``CallControl/Hangup``), set themselves ready again
  after missed offers (``Agents/SetReady``);
* callers: Poisson arrivals placing inbound calls on the emulator, pressing IVR digits, hanging up
  when their patience runs out;
* live progress on the terminal every second; then a drain, checks and a summary: calls placed,
  CDRs in PostgreSQL (exactly one per call), CTI events on NATS, agents not stuck, service level,
  and where the CDRs, traces and report are.

Traces: unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, the demo writes its spans as JSON lines to
``<state>/traces.jsonl`` (one trace per call, routing decisions on the ``agent.offer`` spans).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["DemoResult", "add_parser", "main", "run_demo"]

TENANT = "default"
QUEUES = [
    {"queue_id": "billing", "strategy": "skills-based", "wrap_up_s": 1.0, "sl_threshold_s": 10.0,
     "ring_timeout_s": 6.0},
    {"queue_id": "tech", "strategy": "skills-based", "wrap_up_s": 1.0, "sl_threshold_s": 10.0,
     "ring_timeout_s": 6.0},
    {"queue_id": "sales", "strategy": "longest-idle", "wrap_up_s": 0.5, "sl_threshold_s": 10.0,
     "ring_timeout_s": 6.0},
]
#: (prefix, queues, skills): the agent groups, assigned round-robin
GROUPS = [
    ("bill", ["billing", "sales"], {"billing": 80, "sales": 40, "english": 90}),
    ("tech", ["tech"], {"tech": 85, "english": 90}),
    ("bi", ["billing", "tech", "sales"], {"billing": 60, "tech": 60, "sales": 50, "english": 80, "spanish": 95}),
    ("sale", ["sales", "billing"], {"sales": 85, "billing": 35, "english": 90}),
]
FLOW = {
    "id": "cc", "start": "welcome",
    "nodes": {
        "welcome": {"type": "play", "prompt": "cc_welcome.wav", "next": "language"},
        "language": {"type": "menu", "prompt": "cc_language.wav", "options": {"1": "topic_en", "2": "topic_es"},
                     "timeout_s": 1.5, "retries": 0, "on_timeout": "topic_en", "on_invalid": "topic_en"},
        "topic_en": {"type": "menu", "prompt": "cc_topic.wav", "options": {"1": "billing_en", "2": "tech_en", "3": "sales_en"},
                     "timeout_s": 1.5, "retries": 0, "on_timeout": "billing_en", "on_invalid": "billing_en"},
        "topic_es": {"type": "menu", "prompt": "cc_topic.wav", "options": {"1": "billing_es", "2": "tech_es", "3": "sales_es"},
                     "timeout_s": 1.5, "retries": 0, "on_timeout": "billing_es", "on_invalid": "billing_es"},
        "billing_en": {"type": "queue", "queue": "billing", "skills": {"billing": 30, "english": 50}},
        "billing_es": {"type": "queue", "queue": "billing", "skills": {"billing": 30, "spanish": 50}},
        "tech_en": {"type": "queue", "queue": "tech", "skills": {"tech": 40, "english": 50}},
        "tech_es": {"type": "queue", "queue": "tech", "skills": {"tech": 40, "spanish": 50}},
        "sales_en": {"type": "queue", "queue": "sales", "skills": {"sales": 30}},
        "sales_es": {"type": "queue", "queue": "sales", "skills": {"sales": 30, "spanish": 50}},
    },
}
DID_IVR, DID_SALES = "5000", "5099"


@dataclass
class DemoResult:
    seconds: float = 0.0
    placed: int = 0
    emulator_calls: list[str] = field(default_factory=list)
    bridged: int = 0
    abandoned_by_caller: int = 0
    cdrs_in_pg: int = 0
    calls_with_one_cdr: int = 0
    calls_without_cdr: list[str] = field(default_factory=list)
    calls_with_duplicate_cdrs: list[str] = field(default_factory=list)
    nats_calls_with_events: int = 0
    #: CTI events of the tenant read back from JetStream (all subjects), their distinct per-tenant
    #: sequence numbers and the highest: no loss and no duplicate <=> all three are equal
    nats_events: int = 0
    nats_distinct_seqs: int = 0
    nats_max_seq: int = 0
    calls_without_nats_events: list[str] = field(default_factory=list)
    agents_stuck: list[str] = field(default_factory=list)
    agents: int = 0
    dispositions: dict[str, int] = field(default_factory=dict)
    service_level: dict[str, float] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    state_dir: str = ""
    traces: str = ""
    report: str = ""
    pg_dsn: str = ""
    peak_setups_per_s: float = 0.0
    where: str = ""
    #: what the stuck agents (and queues with callers left) look like at the end
    stuck_detail: list[str] = field(default_factory=list)
    #: error codes the agent desktops got from the API, counted
    api_errors: dict[str, int] = field(default_factory=dict)
    #: CallControl/Hangup requests the desktops sent
    desktop_hangups: int = 0
    #: CTI events the desktops received over their WebSocket watch
    desktop_events: int = 0
    #: the gateway's counters (Ray path)
    gateway: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.placed > 0 and not self.calls_without_cdr and not self.calls_with_duplicate_cdrs
                and not self.calls_without_nats_events and not self.agents_stuck)


def _jsonl_exporter(path: pathlib.Path) -> Any:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at exit by the SDK shutdown
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")


async def _seed(state: pathlib.Path, agents: list[tuple[str, str, list[str], dict[str, int]]]) -> str:
    from adapters.postgres import open_database
    from adapters.postgres.config import AgentDef, Did, Flow, PgConfigStore, QueueDef, Tenant
    from adapters.postgres.embedded import redact

    async with open_database() as pg:
        store = PgConfigStore(pg)
        await store.put(Tenant(tenant=TENANT, name="Demo contact centre"), actor="demo")
        for q in QUEUES:
            await store.put(QueueDef(tenant=TENANT, **q), actor="demo")  # type: ignore[arg-type]
        for agent_id, ext, _queues, _skills in agents:
            await store.put(AgentDef(tenant=TENANT, agent_id=agent_id, extension=ext, max_missed_offers=3), actor="demo")
        await store.put(Flow(tenant=TENANT, flow_id="cc", document=FLOW), actor="demo")
        await store.put(Did(tenant=TENANT, number=DID_IVR, destination="flow:cc"), actor="demo")
        await store.put(Did(tenant=TENANT, number=DID_SALES, destination="queue:sales"), actor="demo")
        return redact(pg.dsn)


class _Desktop:
    """One simulated agent desktop on the WebSocket API."""

    def __init__(self, url: str, token: str, agent_id: str, ext: str, queues: list[str], skills: dict[str, int],
                 talk_s: tuple[float, float], rng: random.Random) -> None:
        self.url, self.token, self.agent_id, self.ext = url, token, agent_id, ext
        self.queues, self.skills, self.talk_s, self.rng = queues, skills, talk_s, rng
        self.ids = 0
        self.hangups = 0
        self.errors: Counter[str] = Counter()
        self.logged_in = trio.Event()
        self.events_seen = 0

    async def run(self) -> None:
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

        for _attempt in range(1000):  # reconnect (bounded) if the socket breaks
            try:
                async with open_websocket_url(self.url + "/", extra_headers=[(b"Authorization", f"Bearer {self.token}".encode())]) as ws:
                    await self._session(ws)
                return
            except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
                self.errors["reconnect"] += 1
                await trio.sleep(0.5)

    async def _send(self, ws: Any, method: str, params: dict[str, Any]) -> None:
        self.ids += 1
        await ws.send_message(json.dumps({"id": self.ids, "method": method, "params": params}))

    async def _session(self, ws: Any) -> None:
        await self._send(ws, "Agents/Login", {"extension": self.ext, "queues": self.queues,
                                              "skills": self.skills, "ready": True})
        await self._send(ws, "Events/Watch", {"batch": True})
        async with trio.open_nursery() as n:
            while True:
                msg = json.loads(await ws.get_message())
                if "result" in msg and msg.get("id") == 1:
                    self.logged_in.set()
                if msg.get("error"):
                    self.errors[msg["error"].get("code", "?")] += 1
                    if msg.get("id") == 1:
                        await trio.sleep(0.2)
                        await self._send(ws, "Agents/Login", {"extension": self.ext, "queues": self.queues,
                                                              "skills": self.skills, "ready": True})
                events = msg.get("events") or ([msg["event"]] if "event" in msg else [])
                self.events_seen += len(events)
                for ev in events:
                    if ev.get("agent_id") != self.agent_id:
                        continue
                    if ev["type"] == "CALL_ANSWERED":
                        n.start_soon(self._talk, ws, ev["call_id"])
                    elif ev["type"] == "AGENT_STATE_CHANGED" and ev.get("data", {}).get("state") == "NOT_READY":
                        n.start_soon(self._ready_again, ws)

    async def _talk(self, ws: Any, call_id: str) -> None:
        await trio.sleep(self.rng.uniform(*self.talk_s))
        self.hangups += 1
        await self._send(ws, "CallControl/Hangup", {"call_id": call_id})

    async def _ready_again(self, ws: Any) -> None:
        await trio.sleep(1.0)
        await self._send(ws, "Agents/SetReady", {})


async def run_demo(*, seconds: float = 60.0, rate: float = 3.0, agents: int = 16, state_dir: str = "",
                   seed: int = 1, talk_s: tuple[float, float] = (2.0, 6.0), patience_s: float = 25.0,
                   progress: bool = True, faults: bool = False, telemetry: Any = None,
                   drain_s: float = 30.0, print_fn: Any = print, in_process: bool = False,
                   ray_address: str | None = None, shards: int | None = None) -> DemoResult:
    from adapters.freeswitch.config import EslNodeConfig
    from api.auth import issue_token
    from engine.flows.loader import parse_flows
    from engine.run import RunOptions, open_engine
    from engine.telemetry import Telemetry
    from sim.freeswitch import FreeSwitchEmulator

    rng = random.Random(seed)
    state = pathlib.Path(state_dir or os.environ.get("CALLENGINE_STATE_DIR") or ".state/demo").resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.environ["CALLENGINE_STATE_DIR"] = str(state)  # where the embedded PostgreSQL lives
    result = DemoResult(state_dir=str(state))
    roster = []
    for i in range(agents):
        prefix, queues, skills = GROUPS[i % len(GROUPS)]
        roster.append((f"{prefix}{i:03d}", f"{7000 + i}", queues, skills))
    result.agents = agents
    result.pg_dsn = await _seed(state, roster)
    if telemetry is None:
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            telemetry = Telemetry.from_env()
            result.traces = "exported over OTLP to " + (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                                        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""))
        else:
            traces = state / "traces.jsonl"
            traces.write_text("")
            telemetry = Telemetry.from_env(span_exporter=_jsonl_exporter(traces))
            result.traces = str(traces)
    emu = FreeSwitchEmulator(heartbeat=1.0, answer_delay=0.4, ring_delay=0.05, playback_seconds=0.3)
    secret = "demo-" + os.urandom(16).hex()
    flows = {f.id: f for f in parse_flows(FLOW, "demo-flow")}
    created: list[str] = []
    setups: list[float] = []
    async with trio.open_nursery() as outer:
        port = await outer.start(emu.run)
        for _agent, ext, _q, _s in roster:
            emu.register_phone(ext)
        options = RunOptions(secret=secret, state_dir=str(state), esl_nodes=[EslNodeConfig(name="fs1", port=port)],
                             esl_heartbeat_s=1.0, flows=flows, telemetry=telemetry, node_name="demo",
                             in_process=in_process, ray_address=ray_address, shards=shards)
        if not in_process:
            print_fn("starting the Ray shard hosts (a few seconds)...")
        async with open_engine(options) as engine:
            node = engine.node
            result.where = ("in process" if engine.cluster is None
                            else f"{len(engine.cluster.names)} Ray shard host(s)")
            with trio.fail_after(15):
                await engine.links.wait_all_up()
            desktops = [_Desktop(engine.stack.ws_url, issue_token(secret, tenant=TENANT, sub=a, roles=("agent",), agent_id=a),
                                 a, ext, q, s, talk_s, random.Random(rng.random())) for a, ext, q, s in roster]
            async with trio.open_nursery() as n:
                for d in desktops:
                    n.start_soon(d.run)
                with trio.fail_after(20):
                    for d in desktops:
                        await d.logged_in.wait()
                t0 = trio.current_time()
                stop_at = t0 + seconds
                calls: dict[str, Any] = {}

                async def caller(i: int) -> None:
                    did = DID_SALES if i % 10 == 9 else DID_IVR
                    ch = await emu.place_inbound_call(f"+1555{i:07d}", did)
                    created.append(ch.uuid)
                    calls[ch.uuid] = ch
                    patience = rng.expovariate(1.0 / patience_s)
                    if did == DID_IVR:
                        await trio.sleep(0.45)
                        await emu.send_dtmf(ch.uuid, rng.choice("1112"))
                        await trio.sleep(0.45)
                        await emu.send_dtmf(ch.uuid, rng.choice("1223"))
                    t_in = trio.current_time()
                    with trio.move_on_at(t_in + patience):
                        while ch.up and not ch.peer:
                            await trio.sleep(0.05)
                    if ch.peer:
                        result.bridged += 1
                        setups.append(trio.current_time())
                        with trio.move_on_after(120):  # the agent's desktop hangs up
                            while ch.up:
                                await trio.sleep(0.1)
                    if ch.up:
                        if not ch.peer:
                            result.abandoned_by_caller += 1
                        await emu.hangup(ch.uuid)

                async def traffic() -> None:
                    i = 0
                    async with trio.open_nursery() as cn:
                        nxt = trio.current_time()
                        while nxt < stop_at and i < 1_000_000:
                            await trio.sleep_until(nxt)
                            cn.start_soon(caller, i)
                            i += 1
                            nxt += rng.expovariate(rate)
                        result.placed = i

                async def show() -> None:
                    last_calls = 0
                    while True:
                        await trio.sleep(1.0)
                        el = trio.current_time() - t0
                        now_calls = node.calls_created
                        rate_now = now_calls - last_calls
                        last_calls = now_calls
                        result.peak_setups_per_s = max(result.peak_setups_per_s, rate_now)
                        states = Counter(a.state.name for a in node.runtime.states("agent"))
                        sl = _service_levels(node)
                        waiting = sum(len(q.waiting) for q in node.runtime.states("queue"))
                        if progress:
                            print_fn(f"[{el:5.1f}s] active {len(node.runtime.ids('call')):4d}  setups/s {rate_now:3d}  "
                                     f"calls {now_calls:5d}  waiting {waiting:3d}  "
                                     f"agents {dict(sorted(states.items()))}  "
                                     f"SL {' '.join(f'{k}={v:.0%}' for k, v in sorted(sl.items()))}  "
                                     f"CDRs pending {len(engine.cdr_writer)}")

                async def fault_injector() -> None:
                    await _inject_faults(engine, emu, t0, seconds, result, print_fn)

                async with trio.open_nursery() as run_n:
                    run_n.start_soon(show)
                    if faults:
                        run_n.start_soon(fault_injector)
                    await traffic()  # returns when every caller has finished (bounded by patience/talk)
                    run_n.cancel_scope.cancel()
                # drain: every call ended, no agent on a call
                with trio.move_on_after(drain_s):
                    while node.runtime.ids("call") or any(
                            a.state.name in ("RESERVED", "ON_CALL") for a in node.runtime.states("agent")):
                        await trio.sleep(0.1)
                await trio.sleep(1.5)  # wrap-up timers
                result.agents_stuck = sorted(
                    a.agent_id for a in node.runtime.states("agent") if a.state.name in ("RESERVED", "ON_CALL"))
                for a in node.runtime.states("agent"):
                    if a.agent_id in result.agents_stuck:
                        call = node.runtime.state_of("call", a.call_id)
                        result.stuck_detail.append(
                            f"{a.agent_id} {a.state.name} call {a.call_id} "
                            f"({'absent' if call is None else call.state.name}, caller channel "
                            f"{'up' if a.call_id in calls and calls[a.call_id].up else 'gone'}) "
                            f"offer {a.offer_id} of {a.offer_queue} timers {sorted(a.timers)}")
                for q in node.runtime.states("queue"):
                    if q.waiting:
                        result.stuck_detail.append(f"queue {q.queue_id} waiting {[str(w)[:120] for w in q.waiting]}")
                result.service_level = {k: round(v, 3) for k, v in _service_levels(node).items()}
                n.cancel_scope.cancel()
            result.api_errors = dict(sum((d.errors for d in desktops), Counter()))
            result.desktop_hangups = sum(d.hangups for d in desktops)
            result.desktop_events = sum(d.events_seen for d in desktops)
            # CTI on NATS: everything published and acknowledged, then read back from JetStream
            with trio.move_on_after(15):
                while len(engine.stack.publisher):
                    await trio.sleep(0.05)
            result.emulator_calls = list(created)
            await _check_nats(engine, created, result)
            await engine.cdr_writer.wait_settled(15)
            if engine.gateway is not None:
                result.gateway = engine.gateway.statistics()
            result.gateway["cdr_writer"] = _plain(engine.cdr_writer.statistics())
        outer.cancel_scope.cancel()
    await _check_pg(created, result, state)
    result.seconds = round(seconds, 1)
    return result


def _service_levels(node: Any) -> dict[str, float]:
    out = {}
    for q in node.runtime.states("queue"):
        s = q.stats
        base = s.offered - s.short_abandoned
        if base > 0:
            out[q.queue_id] = s.answered_within_sl / base
    return out


async def _inject_faults(engine: Any, emu: Any, t0: float, seconds: float, result: DemoResult, print_fn: Any) -> None:
    """ESL drop at 20 %, NATS restart at 40 %, PostgreSQL stopped 10 s at 60 %, a shard host killed at
    80 % of the run (Ray restarts it; it rebuilds from its snapshots and the switch's channels)."""
    await trio.sleep_until(t0 + 0.2 * seconds)
    n = emu.drop_connections()
    result.faults.append(f"esl drop ({n} connections) at {trio.current_time() - t0:.1f}s")
    print_fn(f"FAULT: dropped {n} ESL connection(s)")
    await trio.sleep_until(t0 + 0.4 * seconds)
    server = engine.nats_server
    if server is not None:
        print_fn("FAULT: restarting NATS (same port and store)")
        await server.restart(down_s=1.0)
        result.faults.append(f"nats restart at {trio.current_time() - t0:.1f}s")
        print_fn("FAULT: NATS is back")
    else:
        result.faults.append("nats restart: not available (CALLENGINE_NATS_URL names an external server)")
    await trio.sleep_until(t0 + 0.6 * seconds)
    from adapters.postgres.embedded import EmbeddedPostgres, state_dir

    pgdir = state_dir() / "pg"
    emb = EmbeddedPostgres(pgdir)
    await trio.to_thread.run_sync(emb.start)  # attach to the running server (so start() restarts it)
    print_fn("FAULT: stopping PostgreSQL for 10 s")
    await trio.to_thread.run_sync(emb.stop)
    await trio.sleep(10)
    await trio.to_thread.run_sync(emb.start)
    result.faults.append(f"postgres stopped 10 s at {trio.current_time() - t0 - 10:.1f}s")
    print_fn("FAULT: PostgreSQL is back")
    cluster = engine.cluster
    if cluster is None:
        result.faults.append("shard kill: not available (the actors run in process)")
        return
    await trio.sleep_until(t0 + 0.8 * seconds)
    victim = cluster.names[0]
    before = await trio.to_thread.run_sync(cluster.wait_ready, victim, 30.0)
    print_fn(f"FAULT: killing shard host {victim} (pid {before['pid']})")
    t_kill = trio.current_time()
    await trio.to_thread.run_sync(cluster.kill, victim)
    info = before
    with trio.move_on_after(90):
        while info["pid"] == before["pid"]:  # until Ray's new instance answers (the old may still)
            await trio.sleep(0.2)
            try:
                info = await trio.to_thread.run_sync(cluster.wait_ready, victim, 30.0)
            except Exception as exc:  # noqa: BLE001 - the actor is being restarted
                print_fn(f"shard host {victim} not ready yet ({type(exc).__name__})")
    if info["pid"] == before["pid"]:
        result.faults.append(f"shard kill {victim}: Ray did not restart it within 90 s")
        return
    result.faults.append(f"shard kill {victim} at {t_kill - t0:.1f}s (back after "
                         f"{trio.current_time() - t_kill:.1f}s, recovery {info.get('recovery')})")
    print_fn(f"FAULT: shard host {victim} is back: {info.get('recovery')}")


async def _check_nats(engine: Any, created: list[str], result: DemoResult) -> None:
    bridge = engine.stack.bridge
    per_call: dict[str, set[str]] = {}
    if bridge is not None:
        seqs: set[int] = set()
        async for batch in bridge.replay(TENANT, limit=2_000_000, idle_timeout_s=1.0):
            for m in batch:
                result.nats_events += 1
                seqs.add(m.seq)
                parts = m.subject.split(".")  # cti.<tenant>.call.<id>.<EVENT>
                if len(parts) >= 5 and parts[2] == "call":
                    per_call.setdefault(".".join(parts[3:-1]), set()).add(parts[-1])
        result.nats_distinct_seqs = len(seqs)
        result.nats_max_seq = max(seqs, default=0)
    wanted = ("CALL_CREATED", "CALL_ENDED")
    result.calls_without_nats_events = [c for c in created if not all(w in per_call.get(c, ()) for w in wanted)]
    result.nats_calls_with_events = len(created) - len(result.calls_without_nats_events)


async def _check_pg(created: list[str], result: DemoResult, state: pathlib.Path) -> None:
    from adapters.postgres import open_database

    async def q(conn: Any) -> list[Any]:
        return await conn.fetch("SELECT call_id, count(*) AS n, min(disposition) AS d FROM cdrs "
                                "WHERE call_id = ANY($1::text[]) GROUP BY call_id", created)

    async with open_database() as pg:
        rows = await pg.run(q)
        report_path = state / "report.txt"
        try:
            from adapters.postgres import stats

            start = time.time() - 24 * 3600
            kpis = await stats.queue_kpis(pg, start, time.time() + 60, interval_s=24 * 3600)
            report_path.write_text("\n".join(json.dumps(_plain(k)) for k in kpis) + "\n")
            result.report = str(report_path)
        except Exception as exc:  # noqa: BLE001 - the summary still prints
            result.report = f"(report failed: {exc!r}; run `callengine report queues`)"
    counts = {r["call_id"]: r["n"] for r in rows}
    result.cdrs_in_pg = sum(counts.values())
    result.calls_with_one_cdr = sum(1 for c in created if counts.get(c) == 1)
    result.calls_without_cdr = [c for c in created if c not in counts]
    result.calls_with_duplicate_cdrs = [c for c in created if counts.get(c, 0) > 1]
    result.dispositions = dict(Counter(r["d"] for r in rows))


def _plain(obj: Any) -> Any:
    import msgspec

    try:
        return msgspec.to_builtins(obj)
    except TypeError:
        return obj if isinstance(obj, (dict, list, str, int, float)) else repr(obj)


def summary(r: DemoResult) -> str:
    lines = [
        "",
        f"demo finished: {'OK' if r.ok else 'PROBLEMS FOUND'}  (actors: {r.where})",
        f"  calls placed by the emulator   {r.placed}  (bridged to an agent {r.bridged}, callers gave up {r.abandoned_by_caller})",
        f"  CDRs in PostgreSQL             {r.cdrs_in_pg}  (exactly one: {r.calls_with_one_cdr}, none: {len(r.calls_without_cdr)}, "
        f"duplicates: {len(r.calls_with_duplicate_cdrs)})",
        f"  calls with CTI events on NATS  {r.nats_calls_with_events}  (missing: {len(r.calls_without_nats_events)}; "
        f"events {r.nats_events}, distinct seqs {r.nats_distinct_seqs}, highest seq {r.nats_max_seq})",
        f"  agents stuck                   {len(r.agents_stuck)} of {r.agents}"
        + "".join(f"\n      {d}" for d in r.stuck_detail),
        f"  dispositions                   {r.dispositions}",
        f"  service level per queue        {r.service_level}",
        f"  peak setups/s (1 s window)     {r.peak_setups_per_s:.0f}",
    ]
    if r.faults:
        lines.append(f"  faults injected                {r.faults}")
    if r.gateway:
        g = r.gateway
        lines.append(f"  gateway (Ray path)             {g.get('sent', 0)} messages in {g.get('batches', 0)} batches, "
                     f"{g.get('drains', 0)} drains; after faults: {g.get('orphans_hung_up', 0)} orphan calls hung up, "
                     f"{g.get('waiters_removed', 0)} gone waiters removed, {g.get('rerouted', 0)} rebuilt calls "
                     f"routed again, recovered {g.get('recovered_cti', 0)} "
                     f"CTI events / {g.get('recovered_cdrs', 0)} CDRs")
    lines += [
        f"  CDRs:    PostgreSQL {r.pg_dsn}, table cdrs (`CALLENGINE_STATE_DIR={r.state_dir} callengine report queues`)",
        f"  traces:  {r.traces}",
        f"  report:  {r.report}",
        f"  state:   {r.state_dir} (embedded PostgreSQL keeps running; `callengine db stop` stops it)",
    ]
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the whole engine against the FreeSWITCH emulator for a bounded time",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="traffic duration (default 60; a drain follows)")
    p.add_argument("--rate", type=float, default=3.0, help="new calls per second (default 3)")
    p.add_argument("--agents", type=int, default=16, help="agent desktops (default 16)")
    p.add_argument("--state-dir", default="", help="default .state/demo")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", action="store_true", help="drop ESL, restart NATS, stop PostgreSQL 10 s during the run")
    p.add_argument("--quiet", action="store_true", help="no per-second progress")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    from engine.run import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    import logging

    from engine.run import EpochClock

    logging.basicConfig(level=os.environ.get("CALLENGINE_LOG", "ERROR"))
    if not math.isfinite(args.seconds) or args.seconds <= 0:
        raise SystemExit("--seconds must be > 0")
    from engine.run import RunOptions, cluster_options

    where = cluster_options(RunOptions(), args)
    result = trio.run(lambda: run_demo(seconds=args.seconds, rate=args.rate, agents=args.agents,
                                       state_dir=args.state_dir, seed=args.seed, faults=args.faults,
                                       progress=not args.quiet, in_process=where.in_process,
                                       ray_address=where.ray_address, shards=where.shards),
                      clock=EpochClock())
    print(summary(result))
    if args.json:
        import dataclasses

        print(json.dumps(dataclasses.asdict(result)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m engine.demo")
    _sub = _p.add_subparsers()
    add_parser(_sub)
    import sys

    raise SystemExit(main(_p.parse_args(["demo", *sys.argv[1:]])))
