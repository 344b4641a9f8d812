"""Call-flow documents: the declarative graphs an IVR is made of (in the spirit of Kazoo callflows).

Rules
1. A flow is data: frozen msgspec Structs, decoded from TOML or YAML at the edge (``loader``) and
   trusted inside. Nothing here does I/O or reads a clock; nothing here imports ``engine.messages``
   (messages carry flows, not the other way round).
2. A node is one of a closed set of types, tagged by ``type``. Every edge is a node id held in a
   field whose name says when it is taken (``next``, ``open``/``closed``, ``options``,
   ``on_timeout``, ...). ``Flow.edges`` is the one place that knows where those fields are, so the
   validator and the interpreter cannot disagree about the graph.
3. Terminal nodes (queue, transfer, voicemail, hangup) hand the call to routing and have no edges.

Theory of operation
A flow starts at ``start``. *Immediate* nodes (answer, set, time_condition, route) decide at once
and move on; *waiting* nodes (play, menu) send media and wait for the switch (PlaybackFinished,
DTMF) or a timer. A terminal node ends the flow with an outcome that the call machine turns into
its ordinary routing. ``engine.flows.interpreter`` runs the graph; ``engine.flows.loader``
decodes and validates it (missing targets, unreachable nodes, loops without exit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

__all__ = [
    "Node", "AnswerNode", "PlayNode", "MenuNode", "TimeConditionNode", "TimeRule", "RouteNode",
    "RouteRule", "QueueNode", "TransferNode", "VoicemailNode", "VoicemailAccessNode", "SetNode", "HangupNode",
    "Flow",
    "ConferenceNode", "TERMINAL_TYPES", "WAITING_TYPES", "DAYS", "TargetFlags", "fill_flow_targets", "fill_nodes",
]

#: weekday names as ``TimeRule.days`` spells them, Monday first (``datetime.weekday()`` order)
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Node(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    #: free text shown in reports and validation errors
    label: str = ""


class AnswerNode(_Node, tag="answer", frozen=True, kw_only=True):
    """Answer the caller's channel (a no-op when it is already answered)."""

    next: str


class PlayNode(_Node, tag="play", frozen=True, kw_only=True):
    """Play ``prompt`` to the caller and continue when it has finished."""

    prompt: str
    next: str


class MenuNode(_Node, tag="menu", frozen=True, kw_only=True):
    """Play ``prompt`` and collect up to ``max_digits`` DTMF digits.

    Input ends with the terminator, with ``max_digits`` digits, or after ``timeout_s`` without a new
    digit (counted from the end of the prompt). A known choice goes to ``options[digits]``; no input
    or an unknown choice replays the menu (after ``invalid_prompt`` for an unknown one) up to
    ``retries`` times, then goes to ``on_timeout`` / ``on_invalid`` ("" hangs up).
    """

    prompt: str
    options: dict[str, str]
    timeout_s: float = 5.0
    retries: int = 2
    max_digits: int = 1
    terminator: str = "#"
    invalid_prompt: str = ""
    on_invalid: str = ""
    on_timeout: str = ""


class TimeRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Open on ``days`` from ``start`` (inclusive) to ``end`` (exclusive), local "HH:MM" times."""

    days: tuple[str, ...] = DAYS[:5]
    start: str = "09:00"
    end: str = "17:00"


class TimeConditionNode(_Node, tag="time_condition", frozen=True, kw_only=True):
    """Business hours: ``open`` when local time (``timezone``) falls in a rule and is no holiday."""

    timezone: str = "UTC"
    rules: tuple[TimeRule, ...] = (TimeRule(),)
    #: local dates "YYYY-MM-DD" that are closed all day
    holidays: tuple[str, ...] = ()
    open: str
    closed: str


class RouteRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``match`` is a regular expression that must match the whole value."""

    match: str
    next: str


class RouteNode(_Node, tag="route", frozen=True, kw_only=True):
    """Choose the first rule whose pattern matches the DID, the caller id or a flow variable."""

    #: "did", "caller_id" or "var:<name>"
    by: str = "did"
    rules: tuple[RouteRule, ...] = ()
    default: str


class QueueNode(_Node, tag="queue", frozen=True, kw_only=True):
    """Terminal: put the caller in ``queue`` (the call machine's RouteToQueue)."""

    queue: str
    priority: int = 0
    #: required skill -> minimum proficiency
    skills: dict[str, int] = {}


class TransferNode(_Node, tag="transfer", frozen=True, kw_only=True):
    """Terminal: ring an extension or an external number (the call machine's RouteToExtension).

    ``record`` / ``record_consent`` / ``voicemail`` are the target extension's, as the DID router
    gives them for a direct call: ``callengine run`` fills them in from the ``extensions`` row when
    it hands the flow to a call (``fill_flow_targets``), so an always-on extension records a call a
    flow sends it (docs/recordings.md) and one with voicemail takes the message it does not answer
    (docs/voicemail.md). Written here they add to the row's: a flow cannot turn recording off."""

    target: str
    timeout_s: float = 30.0
    record: bool = False
    record_consent: str = ""
    #: the mailbox an unanswered (busy, no answer) caller leaves a message in ("": the call ends)
    voicemail: str = ""


class VoicemailNode(_Node, tag="voicemail", frozen=True, kw_only=True):
    """Terminal: leave a message in ``box``: greeting, beep, then the media server's ``record`` up
    to ``max_length_s`` that stops by itself after ``silence_hits`` seconds below
    ``silence_threshold`` (docs/voicemail.md). A recording shorter than ``min_length_s`` is no
    message (the caller hung up at the beep)."""

    box: str
    greeting: str = ""
    max_length_s: float = 120.0
    #: "" = no beep; FreeSWITCH tone_stream: 250 ms of 1 kHz
    beep: str = "tone_stream://%(250,0,1000)"
    #: the energy level below which audio counts as silence (FreeSWITCH ``record``'s 3rd argument)
    silence_threshold: int = 200
    #: seconds of silence that end the message; 0 = no silence detection
    silence_hits: int = 3
    min_length_s: float = 1.0
    #: take the greeting and the max length from the mailbox's row (the host answers
    #: VOICEMAIL_SETTINGS with a VoicemailBox; after ``SETTINGS_WAIT_S`` without one, the node's own)
    from_mailbox: bool = False


class VoicemailAccessNode(_Node, tag="voicemail_access", frozen=True, kw_only=True):
    """Terminal: the owner of mailbox ``box`` ("" = the caller's own extension, its caller id)
    listens to it: PIN then the menu of ``engine.voicemail`` (1 next, 9 save, 7 delete, # exit).
    The host loads the mailbox (VOICEMAIL_ACCESS -> VoicemailBox); no key for ``idle_timeout_s``
    hangs up."""

    box: str = ""
    max_pin_attempts: int = 3
    idle_timeout_s: float = 20.0


class SetNode(_Node, tag="set", frozen=True, kw_only=True):
    """Set the flow variable ``name`` to ``value`` (visible to ``route`` nodes as ``var:<name>``)."""

    name: str
    value: str
    next: str


class HangupNode(_Node, tag="hangup", frozen=True, kw_only=True):
    """Terminal: hang the caller up."""

    cause: str = "NORMAL_CLEARING"


class ConferenceNode(_Node, tag="conference", frozen=True, kw_only=True):
    """Terminal: put the caller into the tenant's conference room ``room`` (its number,
    docs/conferences.md). When the room has a PIN, ``prompt`` asks for it (digits, then the
    terminator or ``timeout_s``): the moderator PIN joins as moderator, the member PIN (or no
    digits, when the room has no member PIN) as member; a wrong PIN plays ``invalid_prompt`` and asks
    again, ``retries`` times, then hangs up. The PIN hashes and member flags are the room's:
    ``callengine run`` fills them in from the ``conference_rooms`` row when it hands the flow to
    the call (values written here win)."""

    room: str
    prompt: str = ""
    invalid_prompt: str = ""
    retries: int = 2
    timeout_s: float = 5.0
    max_digits: int = 12
    terminator: str = "#"
    moderator_pin_hash: str = ""
    member_pin_hash: str = ""
    flags: tuple[str, ...] = ()


Node = (
    AnswerNode | PlayNode | MenuNode | TimeConditionNode | RouteNode | QueueNode | TransferNode
    | VoicemailNode | VoicemailAccessNode | SetNode | HangupNode | ConferenceNode
)

TERMINAL_TYPES: tuple[type, ...] = (QueueNode, TransferNode, VoicemailNode, VoicemailAccessNode, HangupNode,
                                    ConferenceNode)
WAITING_TYPES: tuple[type, ...] = (PlayNode, MenuNode)


class Flow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    start: str
    nodes: dict[str, Node]
    description: str = ""

    def edges(self, node_id: str) -> list[tuple[str, str]]:
        """``(field path, target)`` for every edge leaving ``node_id``, in a stable order.

        An empty target means "hang up" where the node allows it (menu fallbacks).
        """
        node = self.nodes[node_id]
        match node:
            case AnswerNode() | PlayNode() | SetNode():
                return [("next", node.next)]
            case MenuNode():
                out = [(f"options.{k}", v) for k, v in node.options.items()]
                if node.on_invalid:
                    out.append(("on_invalid", node.on_invalid))
                if node.on_timeout:
                    out.append(("on_timeout", node.on_timeout))
                return out
            case TimeConditionNode():
                return [("open", node.open), ("closed", node.closed)]
            case RouteNode():
                rules = [(f"rules[{i}].next", r.next) for i, r in enumerate(node.rules)]
                return rules + [("default", node.default)]
        return []

    def is_terminal(self, node_id: str) -> bool:
        return isinstance(self.nodes[node_id], TERMINAL_TYPES)

    def can_hang_up(self, node_id: str) -> bool:
        """A menu without a fallback for timeout / invalid input hangs up: that is an exit."""
        node = self.nodes[node_id]
        return isinstance(node, MenuNode) and (not node.on_invalid or not node.on_timeout)


class TargetFlags(msgspec.Struct, frozen=True, kw_only=True):
    """What an extension says about the calls that ring it (its ``extensions`` row)."""

    record: bool = False
    record_consent: str = ""
    voicemail: str = ""


N = TypeVar("N")


def fill_nodes(flow: Flow, kind: type[N], fill: Callable[[N], N]) -> Flow:
    """The flow with ``fill(node)`` in place of each node of type ``kind`` (the engine completing
    a stored flow from configuration when it hands it to a call); the same flow object when no
    node changes."""
    changed: dict[str, Any] = {}
    for node_id, node in flow.nodes.items():
        if isinstance(node, kind):
            new = fill(node)
            if new != node:
                changed[node_id] = new
    return msgspec.structs.replace(flow, nodes={**flow.nodes, **changed}) if changed else flow


def fill_flow_targets(flow: Flow, flags_of: Callable[[str], TargetFlags | None]) -> Flow:
    """The flow with each transfer node's ``record`` / ``record_consent`` / ``voicemail`` taken
    from its target's flags (``flags_of(target)``: None for a number that is no extension) where
    the node does not set them itself; a node's ``record`` can only add recording."""

    def fill(node: TransferNode) -> TransferNode:
        flags = flags_of(node.target)
        if flags is None:
            return node
        record = node.record or flags.record
        return msgspec.structs.replace(
            node, record=record,
            record_consent=(node.record_consent or flags.record_consent) if record else node.record_consent,
            voicemail=node.voicemail or flags.voicemail)

    return fill_nodes(flow, TransferNode, fill)
