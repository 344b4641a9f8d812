"""Simulation scenarios: what a simulated day looks like, decoded from TOML or YAML.

Rules
1. A scenario is data (frozen msgspec Structs) decoded at the edge; every problem with the file is
   one ``ScenarioError`` (a ``FlowError``) naming the file, the path in the document and what was
   expected. Cross references (a DID naming a flow, an agent naming a queue, a menu probability
   naming a node) are checked here, before anything runs.
2. Queues are the production ``QueueConfig`` (``engine.fsm.queue``), so the queue discipline that
   is simulated is the one that runs in production.
3. Flows come from files next to the scenario (``flows: [office_flow.yaml]``) or inline documents;
   both go through ``engine.flows.loader`` and its graph validation.

Theory of operation
``load_scenario(path)`` reads the file, converts each section separately (errors name the item:
``$.agents[3].skills``), loads referenced flow files relative to the scenario, expands agent
groups (``count: 50`` makes ``id001``..``id050`` with consecutive extensions) and checks the
references. ``Scenario`` then holds everything the simulator needs: tenants, queues, agents, flows,
DIDs, traffic (Poisson arrival rates per interval, handle time and patience distributions, DTMF
choice probabilities per menu node, caller priority mix), faults, duration and warm-up.
"""

from __future__ import annotations

import pathlib
from typing import Any, Literal

import msgspec

from engine.flows.loader import FlowError, convert_at, decode_document, parse_flows
from engine.flows.model import Flow, MenuNode
from engine.fsm.queue import QueueConfig
from engine.routing.outbound import (
    EmergencyNumbers,
    OutboundConfig,
    OutboundConfigError,
    OutboundRoute,
    Trunk,
)

__all__ = [
    "ScenarioError", "Dist", "PriorityShare", "Traffic", "AgentGroup", "AgentSpec", "Did", "Fault",
    "Tenant", "Scenario", "load_scenario", "parse_scenario", "expand_agents", "SimTrunk",
    "outbound_config",
]

ScenarioError = FlowError


class Dist(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A distribution of durations. ``none`` means "never" (infinite patience)."""

    dist: Literal["exponential", "lognormal", "fixed", "none"] = "exponential"
    mean_s: float = 180.0
    #: standard deviation, lognormal only
    sd_s: float = 0.0


class PriorityShare(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    priority: int
    share: float


class Traffic(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Callers dialling ``did``: a Poisson process whose rate is constant within each interval."""

    did: str
    #: calls per hour, every interval
    rate_per_hour: float = 0.0
    #: calls per hour per interval (the last value holds for later intervals); overrides rate_per_hour
    rates_per_hour: tuple[float, ...] = ()
    handle: Dist = Dist()
    patience: Dist = Dist(dist="none")
    #: "flow_id.node_id" -> {digits: probability}; "" is "presses nothing"
    dtmf: dict[str, dict[str, float]] = {}
    priorities: tuple[PriorityShare, ...] = ()
    #: caller ids are drawn from this pool; empty = "+1555" + 7 digits
    caller_ids: tuple[str, ...] = ()
    #: seconds between the end of a menu prompt and the caller's first digit
    think_s: float = 1.5


class AgentGroup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One agent, or ``count`` alike agents named ``id001``.. with consecutive extensions."""

    id: str
    count: int = 1
    #: first extension; default: 1000 + the agent's index in the scenario
    extension: int = 0
    tenant: str = "default"
    queues: tuple[str, ...] = ()
    #: skill -> proficiency (1..100)
    skills: dict[str, int] = {}
    login_s: float = 0.0
    #: None: stays logged in to the end
    logout_s: float | None = None
    #: probability that the agent lets an offer ring out
    no_answer_p: float = 0.0
    #: seconds from ringing to picking up
    answer_delay_s: float = 0.0
    #: after being set NOT_READY for missed offers, the agent comes back after this long
    recover_s: float = 60.0


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One expanded agent."""

    id: str
    extension: str
    tenant: str
    queues: tuple[str, ...]
    skills: dict[str, int]
    login_s: float
    logout_s: float | None
    no_answer_p: float
    answer_delay_s: float
    recover_s: float


class Did(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a dialled number does: run ``flow``, go straight to ``queue``, or (``outbound``) go out
    through the scenario's outbound routes and trunks (an internal phone dialling an outside
    number: the number itself is the dialled destination)."""

    tenant: str = "default"
    flow: str = ""
    queue: str = ""
    outbound: bool = False
    priority: int = 0
    skills: dict[str, int] = {}


class Fault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A scheduled fault.

    media_link_lost: every live call's channels are lost; new calls fail for ``duration_s``.
    agent_disconnect: agent ``target`` drops (its leg hangs up, it is logged out) for ``duration_s``.
    actor_crash: actor ``target`` ("queue:q1", "agent:a001", "call:*" for the next call message)
    crashes on its next message; the supervisor restarts it from its last good state and
    dead-letters that message.
    """

    at_s: float
    kind: Literal["media_link_lost", "agent_disconnect", "actor_crash"]
    target: str = ""
    duration_s: float = 60.0


class SimTrunk(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An emulated trunk: the engine's limit (``max_concurrent``) and how the carrier behind its
    gateway answers: busy or congested with these probabilities, refusing with congestion beyond
    ``carrier_max`` live calls (0 = no carrier limit), or ``down`` (GATEWAY_DOWN at once)."""

    id: str
    gateway: str = ""
    max_concurrent: int = 0
    enabled: bool = True
    busy_p: float = 0.0
    congestion_p: float = 0.0
    carrier_max: int = 0
    down: bool = False
    answer_delay_s: float = 3.0

    def trunk(self) -> Trunk:
        return Trunk(trunk_id=self.id, gateway=self.gateway or self.id, max_concurrent=self.max_concurrent,
                     enabled=self.enabled)


class Tenant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    seed: int = 1
    duration_s: float = 3600.0
    warmup_s: float = 0.0
    interval_s: float = 1800.0
    #: wall-clock time of t = 0 (ISO 8601 with offset); business hours are judged from it
    start: str = "2026-01-05T08:00:00+00:00"
    tenants: tuple[Tenant, ...] = (Tenant(id="default"),)
    queues: tuple[QueueConfig, ...] = ()
    agents: tuple[AgentGroup, ...] = ()
    #: flow files (relative to the scenario) or inline flow documents
    flows: tuple[Any, ...] = ()
    dids: dict[str, Did] = {}
    traffic: tuple[Traffic, ...] = ()
    faults: tuple[Fault, ...] = ()
    #: prompt file -> seconds it plays
    prompts: dict[str, float] = {}
    default_prompt_s: float = 3.0
    #: transfers to numbers that are not agents: answer probability and delay
    external_answer_p: float = 1.0
    external_answer_delay_s: float = 5.0
    #: outbound routing, the same for every tenant of the scenario (engine.routing.outbound)
    trunks: tuple[SimTrunk, ...] = ()
    outbound_routes: tuple[OutboundRoute, ...] = ()
    emergency_numbers: tuple[str, ...] = ("112", "911")
    #: set by the loader: decoded flows by id, the file and the epoch of ``start``
    flow_map: dict[str, Flow] = {}
    file: str = "<scenario>"
    epoch: float = 0.0


def expand_agents(scenario: Scenario) -> list[AgentSpec]:
    out: list[AgentSpec] = []
    for group in scenario.agents:
        for i in range(group.count):
            index = len(out)
            ident = group.id if group.count == 1 else f"{group.id}{i + 1:03d}"
            ext = str(group.extension + i if group.extension else 1000 + index)
            out.append(AgentSpec(id=ident, extension=ext, tenant=group.tenant, queues=group.queues,
                                 skills=dict(group.skills), login_s=group.login_s, logout_s=group.logout_s,
                                 no_answer_p=group.no_answer_p, answer_delay_s=group.answer_delay_s,
                                 recover_s=group.recover_s))
    return out


def _list(doc: dict[str, Any], key: str, file: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ScenarioError(file, f"$.{key}", f"a list, got {type(value).__name__}")
    return value


def parse_scenario(obj: Any, file: str, base: pathlib.Path | None = None) -> Scenario:
    """Plain decoded document -> checked ``Scenario``. Flow file names resolve against ``base``."""
    if not isinstance(obj, dict):
        raise ScenarioError(file, "$", f"a table/mapping, got {type(obj).__name__}")
    doc = dict(obj)
    sections: dict[str, Any] = {}
    for key, typ in (("queues", QueueConfig), ("agents", AgentGroup), ("traffic", Traffic),
                     ("faults", Fault), ("tenants", Tenant), ("trunks", SimTrunk),
                     ("outbound_routes", OutboundRoute)):
        if key in doc:
            sections[key] = tuple(convert_at(item, typ, file, f"$.{key}[{i}]")
                                  for i, item in enumerate(_list(doc, key, file)))
            doc.pop(key)
    if "dids" in doc:
        raw = doc.pop("dids")
        if not isinstance(raw, dict):
            raise ScenarioError(file, "$.dids", f"a mapping of number -> {{flow|queue}}, got {type(raw).__name__}")
        sections["dids"] = {str(k): convert_at(v, Did, file, f"$.dids.{k}") for k, v in raw.items()}
    flows_raw = _list(doc, "flows", file)
    doc.pop("flows", None)
    for reserved in ("flow_map", "file", "epoch"):
        if reserved in doc:
            raise ScenarioError(file, f"$.{reserved}", "no such field (it is computed by the loader)")
    scenario = convert_at({**doc, **{k: () for k in sections if k != "dids"}}, Scenario, file, "$")
    scenario = msgspec.structs.replace(scenario, **sections)
    flow_map: dict[str, Flow] = {}
    for i, item in enumerate(flows_raw):
        if isinstance(item, str):
            path = (base or pathlib.Path(".")) / item
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ScenarioError(file, f"$.flows[{i}]", f"a readable flow file ({path}: {exc.strerror})") from None
            flows = parse_flows(decode_document(data, str(path)), str(path))
        else:
            flows = parse_flows(item, file, f"$.flows[{i}]")
        for flow in flows:
            if flow.id in flow_map:
                raise ScenarioError(file, f"$.flows[{i}]", f"unique flow ids, {flow.id!r} is defined twice")
            flow_map[flow.id] = flow
    import datetime as _dt

    try:
        epoch = _dt.datetime.fromisoformat(scenario.start).timestamp()
    except ValueError:
        raise ScenarioError(file, "$.start", f"an ISO 8601 time such as 2026-01-05T08:00:00+00:00, got {scenario.start!r}") from None
    scenario = msgspec.structs.replace(scenario, flow_map=flow_map, file=file, epoch=epoch)
    _check(scenario)
    return scenario


def _check(sc: Scenario) -> None:
    f = sc.file
    if sc.duration_s <= 0:
        raise ScenarioError(f, "$.duration_s", "a duration in seconds > 0")
    if not 0 <= sc.warmup_s < sc.duration_s:
        raise ScenarioError(f, "$.warmup_s", "a warm-up >= 0 and shorter than duration_s")
    if sc.interval_s <= 0:
        raise ScenarioError(f, "$.interval_s", "an interval in seconds > 0")
    tenants = {t.id for t in sc.tenants}
    for where, items in (("queues", sc.queues), ("agents", sc.agents)):
        for i, item in enumerate(items):
            if item.tenant not in tenants:
                raise ScenarioError(f, f"$.{where}[{i}].tenant", f"a tenant listed in tenants, {item.tenant!r} is not one")
    for number, did in sc.dids.items():
        if did.tenant not in tenants:
            raise ScenarioError(f, f"$.dids.{number}.tenant", f"a tenant listed in tenants, {did.tenant!r} is not one")
    queue_ids = [q.queue_id for q in sc.queues]
    for i, q in enumerate(sc.queues):
        if queue_ids.index(q.queue_id) != i:
            raise ScenarioError(f, f"$.queues[{i}].queue_id", f"a unique queue id, {q.queue_id!r} is used twice")
        if q.overflow_target.startswith("queue:") and q.overflow_target[6:] not in queue_ids:
            raise ScenarioError(f, f"$.queues[{i}].overflow_target", f"an existing queue, {q.overflow_target[6:]!r} is not one")
    ids: set[str] = set()
    for i, g in enumerate(sc.agents):
        if g.count < 1:
            raise ScenarioError(f, f"$.agents[{i}].count", "an integer >= 1")
        if not 0 <= g.no_answer_p <= 1:
            raise ScenarioError(f, f"$.agents[{i}].no_answer_p", "a probability between 0 and 1")
        for j, q in enumerate(g.queues):
            if q not in queue_ids:
                raise ScenarioError(f, f"$.agents[{i}].queues[{j}]", f"an existing queue, {q!r} is not one")
    extensions: dict[str, str] = {}
    for a in expand_agents(sc):
        if a.id in ids:
            raise ScenarioError(f, "$.agents", f"unique agent ids, {a.id!r} is used twice")
        ids.add(a.id)
        if a.extension in extensions:
            raise ScenarioError(f, "$.agents", f"unique extensions, {a.extension} belongs to {extensions[a.extension]!r} and {a.id!r}")
        extensions[a.extension] = a.id
    for i, tk in enumerate(sc.trunks):
        if not (0 <= tk.busy_p and 0 <= tk.congestion_p and tk.busy_p + tk.congestion_p <= 1):
            raise ScenarioError(f, f"$.trunks[{i}]", "busy_p and congestion_p >= 0 with a sum <= 1")
    try:
        outbound_config(sc)
    except OutboundConfigError as exc:
        raise ScenarioError(f, "$.outbound_routes" if exc.what.startswith("route") else "$.trunks",
                            str(exc)) from None
    for number, did in sc.dids.items():
        if did.outbound:
            if did.flow or did.queue:
                raise ScenarioError(f, f"$.dids.{number}", "exactly one of 'flow', 'queue' or 'outbound'")
            if not sc.trunks:
                raise ScenarioError(f, f"$.dids.{number}.outbound", "trunks to dial (the scenario has none)")
            continue
        if bool(did.flow) == bool(did.queue):
            raise ScenarioError(f, f"$.dids.{number}", "exactly one of 'flow' or 'queue'")
        if did.flow and did.flow not in sc.flow_map:
            raise ScenarioError(f, f"$.dids.{number}.flow", f"a flow defined in flows, {did.flow!r} is not one")
        if did.queue and did.queue not in queue_ids:
            raise ScenarioError(f, f"$.dids.{number}.queue", f"an existing queue, {did.queue!r} is not one")
    for flow in sc.flow_map.values():
        for node_id, node in flow.nodes.items():
            if getattr(node, "queue", None) and node.queue not in queue_ids:  # type: ignore[union-attr]
                raise ScenarioError(f, "$.flows", f"flow {flow.id!r} node {node_id!r}: an existing queue, {node.queue!r} is not one")  # type: ignore[union-attr]
    for i, tr in enumerate(sc.traffic):
        path = f"$.traffic[{i}]"
        if tr.did not in sc.dids:
            raise ScenarioError(f, f"{path}.did", f"a number listed in dids, {tr.did!r} is not one")
        if tr.rate_per_hour < 0 or any(r < 0 for r in tr.rates_per_hour):
            raise ScenarioError(f, f"{path}.rate_per_hour", "arrival rates >= 0")
        for name, d in (("handle", tr.handle), ("patience", tr.patience)):
            if d.dist != "none" and d.mean_s <= 0:
                raise ScenarioError(f, f"{path}.{name}.mean_s", "a mean > 0")
            if d.dist == "lognormal" and d.sd_s <= 0:
                raise ScenarioError(f, f"{path}.{name}.sd_s", "a standard deviation > 0 for a lognormal")
        if tr.handle.dist == "none":
            raise ScenarioError(f, f"{path}.handle.dist", "exponential, lognormal or fixed (a call must end)")
        for key, choices in tr.dtmf.items():
            flow_id, _, node_id = key.partition(".")
            flow = sc.flow_map.get(flow_id)
            if flow is None or not isinstance(flow.nodes.get(node_id), MenuNode):
                raise ScenarioError(f, f"{path}.dtmf.{key}", "'flow_id.menu_node_id' naming a menu node")
            total = sum(choices.values())
            if any(p < 0 for p in choices.values()) or abs(total - 1.0) > 1e-6:
                raise ScenarioError(f, f"{path}.dtmf.{key}", f"probabilities >= 0 that sum to 1, they sum to {total:g}")
        if tr.priorities and abs(sum(p.share for p in tr.priorities) - 1.0) > 1e-6:
            raise ScenarioError(f, f"{path}.priorities", "shares that sum to 1")
    agent_ids = {a.id for a in expand_agents(sc)}
    for i, fault in enumerate(sc.faults):
        if fault.kind == "agent_disconnect" and fault.target not in agent_ids:
            raise ScenarioError(f, f"$.faults[{i}].target", f"an agent id, {fault.target!r} is not one")
        if fault.kind == "actor_crash":
            kind, _, ident = fault.target.partition(":")
            ok = (kind == "queue" and ident in queue_ids) or (kind == "agent" and ident in agent_ids) or fault.target == "call:*"
            if not ok:
                raise ScenarioError(f, f"$.faults[{i}].target", f"'queue:<id>', 'agent:<id>' or 'call:*', got {fault.target!r}")


def outbound_config(sc: Scenario) -> OutboundConfig:
    """The engine's outbound routing for this scenario (raises OutboundConfigError when bad)."""
    return OutboundConfig(routes=sc.outbound_routes, trunks=tuple(t.trunk() for t in sc.trunks),
                          emergency=EmergencyNumbers(numbers=frozenset(sc.emergency_numbers)))


def load_scenario(path: str | pathlib.Path) -> Scenario:
    p = pathlib.Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ScenarioError(str(p), "$", f"a readable scenario file ({exc.strerror})") from None
    return parse_scenario(decode_document(data, str(p)), str(p), p.parent)
