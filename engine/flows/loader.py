"""Load call flows from TOML or YAML, and validate them before anything runs.

Rules
1. Every problem with a file becomes one ``FlowError`` naming the file, the path inside the document
   (``$.nodes.menu.options.1``) and what was expected. No traceback ever reaches a user for a
   broken file.
2. Decoding is msgspec's (types are checked once, here, at the edge). Nodes are converted one at a
   time so that errors name the node id; msgspec on its own only says ``$.nodes[...]``.
3. A flow that decodes is then checked as a graph (``validate``): every edge points to a node,
   every node is reachable from ``start``, every node can reach an exit (a terminal node or a menu
   that hangs up) and no cycle consists of immediate nodes only (it would spin without waiting).

Theory of operation
``load_flows(path)`` reads one file holding either one flow (``id``, ``start``, ``nodes``) or many
(``flows: [...]``). ``decode_document`` and ``convert_at`` are shared with the simulator's scenario
loader so both report errors the same way.
"""

from __future__ import annotations

import pathlib
import re
import zoneinfo
from typing import Any, TypeVar

import msgspec
import msgspec.toml
import msgspec.yaml

from engine.flows.model import (
    DAYS,
    WAITING_TYPES,
    Flow,
    MenuNode,
    Node,
    RouteNode,
    TimeConditionNode,
)

__all__ = ["FlowError", "decode_document", "convert_at", "load_flows", "parse_flows", "validate"]

T = TypeVar("T")


class FlowError(Exception):
    """A flow or scenario file is wrong: ``file``, ``path`` inside the document, ``expected``."""

    def __init__(self, file: str, path: str, expected: str) -> None:
        self.file = file
        self.path = path
        self.expected = expected
        super().__init__(f"{file}: at {path}: {expected}")


def decode_document(data: bytes, file: str) -> Any:
    """Parse TOML (``.toml``) or YAML (anything else) into plain Python objects."""
    try:
        if file.endswith(".toml"):
            return msgspec.toml.decode(data)
        return msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        detail = " ".join(str(exc).split())
        raise FlowError(file, "$", f"valid {'TOML' if file.endswith('.toml') else 'YAML'} ({detail})") from None


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)


def convert_at(obj: Any, typ: type[T], file: str, path: str) -> T:
    """``msgspec.convert`` with errors rewritten to name ``file`` and the full document path."""
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as exc:
        m = _AT.match(str(exc))
        assert m is not None
        inner = m.group("path") or "$"
        msg = m.group("msg")
        # msgspec says "at `key` in `$.d`" for bad keys; keep that wording but make the path whole
        key_in = re.match(r"^(?P<msg>.*) - at `key` in `(?P<path>[^`]*)`$", str(exc))
        if key_in:
            msg, inner = key_in.group("msg") + " (as a key)", key_in.group("path")
        if "[...]" in inner:
            inner = _resolve_keys(obj, inner, msg)
        full = path + inner[1:] if inner.startswith("$") else f"{path}.{inner}"
        raise FlowError(file, full, msg) from None


_GOT = {"str": (str,), "int": (int,), "float": (float,), "bool": (bool,), "null": (type(None),),
        "array": (list, tuple), "object": (dict,)}
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _resolve_keys(obj: Any, inner: str, msg: str) -> str:
    """msgspec writes ``[...]`` for dict keys; find the key whose value has the type it complains
    about (``got `str` ``) so that the path names it. Falls back to ``[...]`` when unsure."""
    got = re.search(r"got `(\w+)`", msg)
    kinds = _GOT.get(got.group(1)) if got else None
    segments = [(m.group(1), m.group(2)) for m in _SEGMENT.finditer(inner[1:])]

    def walk(node: Any, i: int) -> str | None:
        if i == len(segments):
            if kinds is None:
                return ""
            ok = isinstance(node, kinds) and not (bool not in kinds and isinstance(node, bool))
            return "" if ok else None
        name, index = segments[i]
        if name is not None:
            if isinstance(node, dict) and name in node:
                rest = walk(node[name], i + 1)
                return None if rest is None else f".{name}{rest}"
            return None
        if index == "...":
            if not isinstance(node, dict) or kinds is None:
                return None
            for key, value in node.items():
                rest = walk(value, i + 1)
                if rest is not None:
                    return f".{key}{rest}"
            return None
        if isinstance(node, list | tuple) and int(index) < len(node):
            rest = walk(node[int(index)], i + 1)
            return None if rest is None else f"[{index}]{rest}"
        return None

    found = walk(obj, 0)
    return "$" + found if found is not None else inner


def _as_mapping(obj: Any, file: str, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise FlowError(file, path, f"a table/mapping, got {type(obj).__name__}")
    return obj


def _flow_from(obj: Any, file: str, path: str) -> Flow:
    doc = dict(_as_mapping(obj, file, path))
    nodes_raw = _as_mapping(doc.pop("nodes", None) or {}, file, f"{path}.nodes")
    shell = convert_at({**doc, "nodes": {}}, Flow, file, path)
    nodes: dict[str, Node] = {}
    for node_id, raw in nodes_raw.items():
        node_path = f"{path}.nodes.{node_id}"
        if isinstance(raw, dict) and isinstance(raw.get("options"), dict):
            # YAML reads `1: sales` as an integer key; digits are strings to us
            raw = {**raw, "options": {str(k): v for k, v in raw["options"].items()}}
        nodes[str(node_id)] = convert_at(raw, Node, file, node_path)  # type: ignore[arg-type]
    flow = msgspec.structs.replace(shell, nodes=nodes)
    validate(flow, file, path)
    return flow


def parse_flows(obj: Any, file: str, path: str = "$") -> list[Flow]:
    """One flow document or ``{flows: [...]}`` -> validated flows."""
    doc = _as_mapping(obj, file, path)
    if "flows" in doc:
        items = doc["flows"]
        if not isinstance(items, list):
            raise FlowError(file, f"{path}.flows", f"a list of flows, got {type(items).__name__}")
        flows = [_flow_from(item, file, f"{path}.flows[{i}]") for i, item in enumerate(items)]
    else:
        flows = [_flow_from(doc, file, path)]
    seen: set[str] = set()
    for i, flow in enumerate(flows):
        if flow.id in seen:
            raise FlowError(file, f"{path}.flows[{i}].id", f"a unique flow id, {flow.id!r} is used twice")
        seen.add(flow.id)
    return flows


def load_flows(path: str | pathlib.Path) -> list[Flow]:
    p = pathlib.Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise FlowError(str(p), "$", f"a readable file ({exc.strerror})") from None
    return parse_flows(decode_document(data, str(p)), str(p))


# ---- graph validation --------------------------------------------------------------------------

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def validate(flow: Flow, file: str = "<flow>", path: str = "$") -> None:
    """Raise ``FlowError`` for the first problem found, in a stable order."""
    if not flow.nodes:
        raise FlowError(file, f"{path}.nodes", "at least one node")
    if flow.start not in flow.nodes:
        raise FlowError(file, f"{path}.start", f"the id of a node, {flow.start!r} is not one")
    for node_id, node in flow.nodes.items():
        _check_node(node_id, node, file, f"{path}.nodes.{node_id}")
        for field, target in flow.edges(node_id):
            if target not in flow.nodes:
                raise FlowError(file, f"{path}.nodes.{node_id}.{field}",
                                f"the id of a node, {target!r} is not one (missing target)")
    # reachability from start
    reached = _reach(flow, [flow.start], forward=True)
    for node_id in flow.nodes:
        if node_id not in reached:
            raise FlowError(file, f"{path}.nodes.{node_id}", f"a node reachable from start {flow.start!r} (unreachable node)")
    # every node must be able to leave the flow
    exits = [n for n in flow.nodes if flow.is_terminal(n) or flow.can_hang_up(n)]
    can_exit = _reach(flow, exits, forward=False)
    for node_id in flow.nodes:
        if node_id not in can_exit:
            raise FlowError(file, f"{path}.nodes.{node_id}",
                            "a way out: this node is in a loop without exit (no queue, transfer, voicemail or hangup reachable)")
    # a cycle of immediate nodes would run forever in zero time
    immediate = {n for n, node in flow.nodes.items() if not isinstance(node, WAITING_TYPES) and not flow.is_terminal(n)}
    cycle = _immediate_cycle(flow, immediate)
    if cycle:
        raise FlowError(file, f"{path}.nodes.{cycle[0]}",
                        f"a play or menu node in the loop {' -> '.join(cycle)} (it would spin without waiting)")


def _check_node(node_id: str, node: Node, file: str, path: str) -> None:
    if isinstance(node, MenuNode):
        if node.max_digits < 1:
            raise FlowError(file, f"{path}.max_digits", "an integer >= 1")
        if node.retries < 0:
            raise FlowError(file, f"{path}.retries", "an integer >= 0")
        if node.timeout_s <= 0:
            raise FlowError(file, f"{path}.timeout_s", "a number of seconds > 0")
        for digits in node.options:
            if not digits or any(d not in "0123456789*#" for d in digits) or len(digits) > node.max_digits:
                raise FlowError(file, f"{path}.options.{digits}",
                                f"DTMF digits (0-9, *, #), at most max_digits={node.max_digits} long")
    elif isinstance(node, TimeConditionNode):
        try:
            zoneinfo.ZoneInfo(node.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise FlowError(file, f"{path}.timezone", f"an IANA time zone such as 'Europe/Paris', got {node.timezone!r}") from None
        for i, rule in enumerate(node.rules):
            for field in ("start", "end"):
                if not _HHMM.match(getattr(rule, field)):
                    raise FlowError(file, f"{path}.rules[{i}].{field}", f"a time 'HH:MM', got {getattr(rule, field)!r}")
            for day in rule.days:
                if day not in DAYS:
                    raise FlowError(file, f"{path}.rules[{i}].days", f"day names among {', '.join(DAYS)}, got {day!r}")
        for i, day in enumerate(node.holidays):
            if not _DATE.match(day):
                raise FlowError(file, f"{path}.holidays[{i}]", f"a date 'YYYY-MM-DD', got {day!r}")
    elif isinstance(node, RouteNode):
        if node.by not in ("did", "caller_id") and not (node.by.startswith("var:") and len(node.by) > 4):
            raise FlowError(file, f"{path}.by", f"'did', 'caller_id' or 'var:<name>', got {node.by!r}")
        for i, route_rule in enumerate(node.rules):
            try:
                re.compile(route_rule.match)
            except re.error as exc:
                raise FlowError(file, f"{path}.rules[{i}].match", f"a regular expression ({exc})") from None


def _reach(flow: Flow, roots: list[str], *, forward: bool) -> set[str]:
    if forward:
        adj = {n: [t for _, t in flow.edges(n)] for n in flow.nodes}
    else:
        adj = {n: [] for n in flow.nodes}
        for n in flow.nodes:
            for _, t in flow.edges(n):
                adj[t].append(n)
    seen = set(roots)
    stack = list(roots)
    while stack:
        for nxt in adj[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _immediate_cycle(flow: Flow, immediate: set[str]) -> list[str]:
    """A cycle among immediate nodes (as a path), or [] when there is none. Deterministic."""
    state: dict[str, int] = {}
    for root in flow.nodes:
        if root not in immediate or state.get(root):
            continue
        stack: list[tuple[str, list[str]]] = [(root, [t for _, t in flow.edges(root) if t in immediate])]
        path = [root]
        state[root] = 1
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = pending.pop(0)
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, [t for _, t in flow.edges(nxt) if t in immediate]))
    return []
