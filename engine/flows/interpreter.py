"""The flow interpreter: runs a ``Flow`` graph for one call, purely.

Rules
1. Pure: no I/O, no clock reads, no async library. Time arrives in events (``at``); wall-clock
   decisions (business hours) use ``at + FlowRun.clock_offset``, an offset the host supplies once
   when the flow starts (virtual epoch in the simulator, the real one in production).
2. ``start`` and ``handle`` return a ``FlowStep``: the new (frozen) ``FlowRun``, the effects to
   perform (``SendMedia`` and one timer, key ``FLOW_TIMER``) and, when the flow is over, an
   ``outcome`` that the call machine turns into its ordinary routing (RouteToQueue,
   RouteToExtension, hangup). The call machine owns the call; the interpreter only says what the
   flow wants.
3. Events the current node does not wait for are ignored (media is noisy: a late
   ``PlaybackFinished`` after a barge-in, DTMF while a plain prompt plays).

Theory of operation
Immediate nodes (answer, set, time_condition, route) are followed in a loop until a waiting node
(play, menu, voicemail) or a terminal node (queue, transfer, hangup) is reached. A guard of
``MAX_IMMEDIATE_STEPS`` turns a loop that never waits into a hangup (the loader rejects such flows;
the guard protects production from a flow that slipped through). Play, menu and voicemail
auto-answer the caller first, as Kazoo does: prompts need an answered channel.

Voicemail (docs/voicemail.md): greeting, beep, then FreeSWITCH's ``record`` with the node's time
limit and silence detection; the switch ends the recording (RECORD_STOP: silence, limit) or the
caller hangs up (the host calls ``hangup``). Either way the step carries a ``FlowEvent``
VOICEMAIL_NEW (message id = call id, box, caller, duration from the record command to its end), or
VOICEMAIL_ABANDONED when the caller left before ``min_length_s`` was recorded; the call machine
publishes it as a CTI event of its tenant. A flow timer at the limit plus ``RECORD_GRACE_S`` is
the safety net when the switch never reports the end.

A menu plays its prompt (DTMF barges in and stops it), then waits ``timeout_s`` for each digit.
Input ends with the terminator, ``max_digits`` digits or the timeout; a known choice follows its
option; no input / an unknown choice counts an attempt and replays (after ``invalid_prompt``),
and after ``retries`` replays goes to ``on_timeout`` / ``on_invalid`` or hangs up.
"""

from __future__ import annotations

import datetime as _dt
import re
import zoneinfo
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

import msgspec

from engine import voicemail as vm
from engine.flows.model import (
    DAYS,
    AnswerNode,
    ConferenceNode,
    Flow,
    HangupNode,
    MenuNode,
    Node,
    PlayNode,
    QueueNode,
    RouteNode,
    SetNode,
    TimeConditionNode,
    TransferNode,
    VoicemailAccessNode,
    VoicemailNode,
)
from engine.fsm.conference import check_pin
from engine.messages import (
    CancelTimer,
    DtmfReceived,
    Effect,
    MediaAnswer,
    MediaPlay,
    MediaRecordStart,
    MediaStopPlayback,
    PlaybackFinished,
    RecordingStopped,
    Scalar,
    SendMedia,
    StartTimer,
    TimerFired,
    VoicemailBox,
)

__all__ = [
    "FLOW_TIMER", "MAX_IMMEDIATE_STEPS", "FlowRun", "FlowStep", "ToQueue", "ToTarget", "ToHangup",
    "Outcome", "start", "handle", "is_open", "FlowEvent", "hangup", "RECORD_GRACE_S", "ToConference",
]

#: the one timer key a flow uses (menus' digit timeout, voicemail's max length)
FLOW_TIMER = "flow"
#: immediate nodes followed within one event before the flow is declared looping
MAX_IMMEDIATE_STEPS = 256
#: a voicemail recording the switch has not ended this long after its limit is ended by the flow
RECORD_GRACE_S = 5.0
#: a voicemail node taking its settings from the mailbox waits this long for them
SETTINGS_WAIT_S = 3.0
#: a voicemail_access node waits this long for the host to load the mailbox
ACCESS_LOAD_TIMEOUT_S = 10.0

Waiting = Literal["", "play", "prompt", "digits", "invalid", "greeting", "beep", "recording", "vm_loading",
                  "vm_menu", "conf_prompt", "conf_digits", "conf_invalid", "done"]


class FlowRun(msgspec.Struct, frozen=True, kw_only=True):
    """Where one call is in its flow."""

    flow_id: str
    call_id: str
    node: str = ""
    waiting: Waiting = ""
    #: digits collected by the current menu attempt
    digits: str = ""
    #: menu attempts that failed (no input or invalid) at the current menu
    failures: int = 0
    vars: dict[str, str] = {}
    did: str = ""
    caller_id: str = ""
    media_node: str = ""
    #: unix time = event ``at`` + clock_offset
    clock_offset: float = 0.0
    answered: bool = False
    #: when this flow answered the caller (None: it did not, or the call was answered before)
    answered_at: float | None = None
    #: the node ids visited, in order (for tests, CDR enrichment and reports)
    path: tuple[str, ...] = ()
    timer: bool = False
    #: voicemail: when the record command went out (the message's duration counts from here)
    rec_at: float = 0.0
    #: voicemail_access: the owner's session with the mailbox (engine.voicemail)
    access: vm.Access | None = None
    #: voicemail with ``from_mailbox``: the mailbox's greeting and max length, once loaded
    vm_greeting: str = ""
    vm_max_length_s: float = 0.0
    #: the graph being run (shared, immutable), so a call needs a single field for its flow
    graph: Flow | None = None


class ToQueue(msgspec.Struct, frozen=True, kw_only=True):
    queue: str
    priority: int = 0
    skills: dict[str, int] = {}


class ToTarget(msgspec.Struct, frozen=True, kw_only=True):
    target: str
    timeout_s: float = 30.0
    #: the target extension's (``TransferNode``): always-on recording, its consent, its mailbox
    record: bool = False
    record_consent: str = ""
    voicemail: str = ""


class ToHangup(msgspec.Struct, frozen=True, kw_only=True):
    cause: str = "NORMAL_CLEARING"
    #: why, for humans ("menu_timeout", "flow_loop", "voicemail_done", ...)
    reason: str = ""


class ToConference(msgspec.Struct, frozen=True, kw_only=True):
    """Into the tenant's conference room ``room`` (its number) with mod_conference member ``flags``."""

    room: str
    moderator: bool = False
    flags: tuple[str, ...] = ()


Outcome = ToQueue | ToTarget | ToHangup | ToConference


class FlowEvent(msgspec.Struct, frozen=True):
    """Something the flow reports (VOICEMAIL_NEW, ...); the call machine publishes it as a CTI
    event of the call's tenant."""

    name: str
    data: dict[str, Scalar]


class FlowStep(msgspec.Struct, frozen=True):
    run: FlowRun
    effects: list[Effect]
    outcome: Outcome | None = None
    events: tuple[FlowEvent, ...] = ()


replace = msgspec.structs.replace


class _Out:
    __slots__ = ("effects", "events", "run")

    def __init__(self, run: FlowRun) -> None:
        self.run = run
        self.effects: list[Effect] = []
        self.events: list[FlowEvent] = []

    def media(self, command: object) -> None:
        self.effects.append(SendMedia(command=command))  # type: ignore[arg-type]

    def timer(self, deadline: float) -> None:
        self.effects.append(StartTimer(key=FLOW_TIMER, deadline=deadline))
        self.run = replace(self.run, timer=True)

    def cancel_timer(self) -> None:
        if self.run.timer:
            self.effects.append(CancelTimer(key=FLOW_TIMER))
            self.run = replace(self.run, timer=False)


def start(flow: Flow, *, call_id: str, at: float, did: str = "", caller_id: str = "",
          media_node: str = "", clock_offset: float = 0.0, answered: bool = False,
          variables: dict[str, str] | None = None) -> FlowStep:
    """Begin ``flow`` for a call and run it until it waits or ends."""
    run = FlowRun(flow_id=flow.id, call_id=call_id, did=did, caller_id=caller_id, media_node=media_node,
                  clock_offset=clock_offset, answered=answered, vars=dict(variables or {}), graph=flow)
    out = _Out(run)
    outcome = _goto(flow, out, flow.start, at)
    return FlowStep(out.run, out.effects, outcome, tuple(out.events))


def handle(flow: Flow, run: FlowRun, event: object) -> FlowStep:
    """Apply a media event or the flow timer to a running flow."""
    out = _Out(run)
    outcome: Outcome | None = None
    if run.waiting in ("", "done"):
        return FlowStep(run, [])
    node = _effective(flow.nodes[run.node], run)
    match event:
        case PlaybackFinished(leg="a"):
            outcome = _on_playback(flow, out, node, event)
        case DtmfReceived(leg="a"):
            outcome = _on_dtmf(flow, out, node, event.digit, event.at)
        case RecordingStopped(leg="a"):
            outcome = _on_record_stop(out, node, event)
        case VoicemailBox():
            outcome = _on_mailbox(out, node, event)
        case TimerFired(key=key) if key == FLOW_TIMER:
            if run.timer:
                out.run = replace(out.run, timer=False)
                outcome = _on_timeout(flow, out, node, event.at)
    return FlowStep(out.run, out.effects, outcome, tuple(out.events))


def hangup(flow: Flow, run: FlowRun, at: float) -> FlowStep:
    """The caller hung up while the flow ran: a voicemail being recorded is kept (when long
    enough), one not yet recording is abandoned. No media (the channel is gone)."""
    out = _Out(run)
    node = flow.nodes.get(run.node)
    if isinstance(node, VoicemailNode) and run.waiting in ("vm_loading", "greeting", "beep", "recording"):
        vnode = _with_mailbox(node, run.vm_greeting, run.vm_max_length_s) if node.from_mailbox else node
        if run.waiting == "recording":
            _left(out, vnode, at, "hangup")
        else:
            _abandoned(out, vnode, 0.0, "hangup_" + ("greeting" if run.waiting == "vm_loading" else run.waiting))
    out.cancel_timer()
    out.run = replace(out.run, waiting="done")
    return FlowStep(out.run, out.effects, None, tuple(out.events))


# ---- node entry --------------------------------------------------------------------------------


def _answer(out: _Out, at: float) -> None:
    if not out.run.answered:
        out.media(MediaAnswer(call_id=out.run.call_id, leg="a", node=out.run.media_node))
        out.run = replace(out.run, answered=True, answered_at=at)


def _play(out: _Out, file: str) -> None:
    out.media(MediaPlay(call_id=out.run.call_id, leg="a", node=out.run.media_node, file=file))


def _goto(flow: Flow, out: _Out, node_id: str, at: float) -> Outcome | None:
    """Enter ``node_id`` and follow immediate nodes until something waits or the flow ends."""
    for _ in range(MAX_IMMEDIATE_STEPS):
        if not node_id:
            return _finish(out, ToHangup(reason="no_target"))
        node = flow.nodes.get(node_id)
        if node is None:  # the loader rejects this; never crash a live call over it
            return _finish(out, ToHangup(cause="NORMAL_TEMPORARY_FAILURE", reason=f"missing_node:{node_id}"))
        out.run = replace(out.run, node=node_id, waiting="", digits="", path=out.run.path + (node_id,))
        match node:
            case AnswerNode():
                _answer(out, at)
                node_id = node.next
            case SetNode():
                out.run = replace(out.run, vars={**out.run.vars, node.name: node.value})
                node_id = node.next
            case TimeConditionNode():
                node_id = node.open if is_open(node, at + out.run.clock_offset) else node.closed
            case RouteNode():
                node_id = _route(node, out.run)
            case PlayNode():
                _answer(out, at)
                _play(out, node.prompt)
                out.run = replace(out.run, waiting="play")
                return None
            case MenuNode():
                out.run = replace(out.run, failures=0)
                _menu_prompt(out, node, at)
                return None
            case VoicemailNode():
                _answer(out, at)
                if node.from_mailbox:
                    out.events.append(FlowEvent("VOICEMAIL_SETTINGS", {"box": node.box}))
                    out.run = replace(out.run, waiting="vm_loading")
                    out.timer(at + SETTINGS_WAIT_S)
                    return None
                _greet(out, node, at)
                return None
            case VoicemailAccessNode():
                _answer(out, at)
                box = node.box or out.run.caller_id
                out.events.append(FlowEvent("VOICEMAIL_ACCESS", {"box": box}))
                out.run = replace(out.run, waiting="vm_loading")
                out.timer(at + ACCESS_LOAD_TIMEOUT_S)
                return None
            case QueueNode():
                return _finish(out, ToQueue(queue=node.queue, priority=node.priority, skills=dict(node.skills)))
            case TransferNode():
                return _finish(out, ToTarget(target=node.target, timeout_s=node.timeout_s, record=node.record,
                                             record_consent=node.record_consent, voicemail=node.voicemail))
            case HangupNode():
                return _finish(out, ToHangup(cause=node.cause, reason="hangup_node"))
            case ConferenceNode():
                _answer(out, at)
                if not (node.moderator_pin_hash or node.member_pin_hash) or not node.prompt:
                    return _finish(out, _into_room(node, moderator=False))
                out.run = replace(out.run, failures=0)
                _pin_prompt(out, node)
                return None
    return _finish(out, ToHangup(cause="NORMAL_TEMPORARY_FAILURE", reason="flow_loop"))


# ---- conference: the PIN (docs/conferences.md) -------------------------------------------------


def _into_room(node: ConferenceNode, *, moderator: bool) -> ToConference:
    # the moderator never waits for a moderator (wait-mod is for the others)
    own = tuple(f for f in node.flags if not (moderator and f == "wait-mod"))
    flags = tuple(dict.fromkeys((*own, *(("moderator",) if moderator else ()))))
    return ToConference(room=node.room, moderator=moderator, flags=flags)


def _pin_prompt(out: _Out, node: ConferenceNode) -> None:
    _play(out, node.prompt)
    out.run = replace(out.run, waiting="conf_prompt", digits="")


def _pin_decide(flow: Flow, out: _Out, node: ConferenceNode, at: float) -> Outcome | None:
    """The moderator PIN, the member PIN, or nothing for a room without a member PIN; else again."""
    out.cancel_timer()
    pin = out.run.digits
    if pin and node.moderator_pin_hash and check_pin(pin, node.moderator_pin_hash):
        return _finish(out, _into_room(node, moderator=True))
    if (check_pin(pin, node.member_pin_hash) if node.member_pin_hash else not pin):
        return _finish(out, _into_room(node, moderator=False))
    failures = out.run.failures + 1
    out.run = replace(out.run, failures=failures, digits="")
    if failures > node.retries:
        return _finish(out, ToHangup(reason="conference_bad_pin"))
    if node.invalid_prompt:
        _play(out, node.invalid_prompt)
        out.run = replace(out.run, waiting="conf_invalid")
        return None
    _pin_prompt(out, node)
    return None


def _finish(out: _Out, outcome: Outcome) -> Outcome:
    out.cancel_timer()
    out.run = replace(out.run, waiting="done")
    return outcome


def _menu_prompt(out: _Out, node: MenuNode, at: float) -> None:
    _answer(out, at)
    _play(out, node.prompt)
    out.run = replace(out.run, waiting="prompt", digits="")


def _greet(out: _Out, node: VoicemailNode, at: float) -> None:
    if node.greeting:
        _play(out, node.greeting)
        out.run = replace(out.run, waiting="greeting")
    else:
        _beep(out, node, at)


def _effective(node: Node, run: FlowRun) -> Node:
    """A voicemail node with ``from_mailbox`` acts with the mailbox's settings once they came."""
    if isinstance(node, VoicemailNode) and node.from_mailbox and run.waiting != "vm_loading":
        return _with_mailbox(node, run.vm_greeting, run.vm_max_length_s)
    return node


def _with_mailbox(node: VoicemailNode, greeting: str, max_length_s: float) -> VoicemailNode:
    """The node as the mailbox's row sets it (an empty greeting / 0 keeps the node's own)."""
    return replace(node, greeting=greeting or node.greeting, max_length_s=max_length_s or node.max_length_s,
                   from_mailbox=False)


def _voicemail_path(node: VoicemailNode, call_id: str) -> str:
    return f"voicemail/{node.box}/{call_id}.wav"


def _beep(out: _Out, node: VoicemailNode, at: float) -> None:
    if node.beep:
        _play(out, node.beep)
        out.run = replace(out.run, waiting="beep")
    else:
        _record(out, node, at)


def _record(out: _Out, node: VoicemailNode, at: float) -> None:
    out.media(MediaRecordStart(call_id=out.run.call_id, leg="a", node=out.run.media_node,
                               path=_voicemail_path(node, out.run.call_id), limit_s=node.max_length_s,
                               silence_threshold=node.silence_threshold, silence_hits=node.silence_hits))
    out.run = replace(out.run, waiting="recording", rec_at=at)
    out.timer(at + node.max_length_s + RECORD_GRACE_S)


def _left(out: _Out, node: VoicemailNode, at: float, ended: str) -> None:
    """The recording is over: a message when long enough, else the caller abandoned."""
    duration = round(min(max(0.0, at - out.run.rec_at), node.max_length_s), 3)
    if duration < node.min_length_s:
        _abandoned(out, node, duration, "too_short")
        return
    out.events.append(FlowEvent("VOICEMAIL_NEW", {
        "box": node.box, "message_id": out.run.call_id, "caller_id": out.run.caller_id,
        "duration_s": duration, "path": _voicemail_path(node, out.run.call_id), "ended": ended}))


def _abandoned(out: _Out, node: VoicemailNode, duration: float, reason: str) -> None:
    out.events.append(FlowEvent("VOICEMAIL_ABANDONED", {
        "box": node.box, "caller_id": out.run.caller_id, "duration_s": duration, "reason": reason}))


def _route(node: RouteNode, run: FlowRun) -> str:
    if node.by == "did":
        value = run.did
    elif node.by == "caller_id":
        value = run.caller_id
    else:
        value = run.vars.get(node.by[4:], "")
    for rule in node.rules:
        if _pattern(rule.match).fullmatch(value):
            return rule.next
    return node.default


@lru_cache(maxsize=1024)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


@lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def is_open(node: TimeConditionNode, unix_time: float) -> bool:
    """Business hours at ``unix_time`` (seconds since the epoch) in the node's time zone."""
    local = _dt.datetime.fromtimestamp(unix_time, _zone(node.timezone))
    if local.date().isoformat() in node.holidays:
        return False
    day = DAYS[local.weekday()]
    hhmm = f"{local.hour:02d}:{local.minute:02d}"
    return any(day in rule.days and rule.start <= hhmm < rule.end for rule in node.rules)


# ---- events ------------------------------------------------------------------------------------


def _on_playback(flow: Flow, out: _Out, node: object, ev: PlaybackFinished) -> Outcome | None:
    run = out.run
    match node:
        case PlayNode() if run.waiting == "play" and ev.file in ("", node.prompt):
            return _goto(flow, out, node.next, ev.at)
        case MenuNode() if run.waiting == "prompt" and ev.file in ("", node.prompt):
            out.run = replace(run, waiting="digits")
            out.timer(ev.at + node.timeout_s)
        case MenuNode() if run.waiting == "invalid" and ev.file in ("", node.invalid_prompt):
            _menu_prompt(out, node, ev.at)
        case ConferenceNode() if run.waiting == "conf_prompt" and ev.file in ("", node.prompt):
            out.run = replace(run, waiting="conf_digits")
            out.timer(ev.at + node.timeout_s)
        case ConferenceNode() if run.waiting == "conf_invalid" and ev.file in ("", node.invalid_prompt):
            _pin_prompt(out, node)
        case VoicemailNode() if run.waiting == "greeting" and ev.file in ("", node.greeting):
            _beep(out, node, ev.at)
        case VoicemailNode() if run.waiting == "beep" and ev.file in ("", node.beep):
            _record(out, node, ev.at)
    return None


def _on_record_stop(out: _Out, node: object, ev: RecordingStopped) -> Outcome | None:
    """The switch ended the recording (silence, time limit, or the channel went)."""
    if not isinstance(node, VoicemailNode) or out.run.waiting != "recording":
        return None
    if ev.path and ev.path != _voicemail_path(node, out.run.call_id):
        return None  # another recording of this call
    _left(out, node, ev.at, ev.cause or "stopped")
    return _finish(out, ToHangup(reason="voicemail_done"))


def _on_mailbox(out: _Out, node: object, ev: VoicemailBox) -> Outcome | None:
    """The host loaded the mailbox: a message is left with its settings, or the owner's session
    starts (asks for the PIN)."""
    if isinstance(node, VoicemailNode) and node.from_mailbox and out.run.waiting == "vm_loading":
        out.run = replace(out.run, vm_greeting=ev.greeting, vm_max_length_s=ev.max_length_s)
        _greet(out, _with_mailbox(node, ev.greeting, ev.max_length_s), ev.at)
        return None
    if not isinstance(node, VoicemailAccessNode) or out.run.waiting != "vm_loading":
        return None
    refs = [vm.MessageRef(id=i, folder="saved" if f == "saved" else "new", path=p, created=c)
            for i, f, p, c in ev.messages]
    state, actions = vm.start(ev.box, ev.pin_hash, refs, max_pin_attempts=node.max_pin_attempts)
    out.run = replace(out.run, access=state, waiting="vm_menu")
    out.timer(ev.at + node.idle_timeout_s)
    return _access_actions(out, actions)


def _access_actions(out: _Out, actions: list[vm.Action]) -> Outcome | None:
    """Perform what the owner's menu decided: prompts and messages play in order; a save or a
    delete is reported (the host changes the store and sends MWI); the menu's own Mwi is left to
    the host, which counts from the store after the change."""
    run = out.run
    assert run.access is not None
    box = run.access.box
    for action in actions:
        match action:
            case vm.Play(prompt=file) | vm.PlayMessage(path=file):
                _play(out, file)
            case vm.SaveMessage(id=message_id):
                out.events.append(FlowEvent("VOICEMAIL_SAVED", {"box": box, "message_id": message_id}))
            case vm.DeleteMessage(id=message_id):
                out.events.append(FlowEvent("VOICEMAIL_DELETED", {"box": box, "message_id": message_id}))
            case vm.PinChecked(ok=ok):  # the host counts wrong PINs across calls (vm.lockout)
                out.events.append(FlowEvent("VOICEMAIL_PIN_OK" if ok else "VOICEMAIL_PIN_FAILED", {"box": box}))
            case vm.HangUp(reason=reason):
                return _finish(out, ToHangup(reason=f"voicemail_{reason}"))
    return None


def _on_dtmf(flow: Flow, out: _Out, node: object, digit: str, at: float) -> Outcome | None:
    if isinstance(node, VoicemailAccessNode) and out.run.waiting == "vm_menu" and out.run.access is not None:
        if out.run.access.phase == "menu":
            # a key in the menu cuts what is playing (the owner knows what they want)
            out.media(MediaStopPlayback(call_id=out.run.call_id, leg="a", node=out.run.media_node))
        state, actions = vm.step(out.run.access, vm.Digit(digit))
        out.run = replace(out.run, access=state)
        out.timer(at + node.idle_timeout_s)
        return _access_actions(out, actions)
    if isinstance(node, ConferenceNode) and out.run.waiting in ("conf_prompt", "conf_invalid", "conf_digits"):
        return _collect_digit(flow, out, node, digit, at, "conf_digits", _pin_decide)
    if not isinstance(node, MenuNode) or out.run.waiting not in ("prompt", "invalid", "digits"):
        return None  # plain prompts and voicemail do not take input
    return _collect_digit(flow, out, node, digit, at, "digits", _decide)


def _collect_digit(flow: Flow, out: _Out, node: Any, digit: str, at: float, collecting: Waiting,
                   decide: Callable[[Flow, _Out, Any, float], Outcome | None]) -> Outcome | None:
    """One digit for a node that takes input (a menu, a PIN prompt): the first one stops the prompt
    (barge-in: the caller knows what they want); the terminator or ``max_digits`` digits decide,
    else the next digit is awaited for ``timeout_s``."""
    if out.run.waiting != collecting:
        out.media(MediaStopPlayback(call_id=out.run.call_id, leg="a", node=out.run.media_node))
        out.run = replace(out.run, waiting=collecting, digits="")
    if digit == node.terminator:
        return decide(flow, out, node, at)
    out.run = replace(out.run, digits=out.run.digits + digit)
    if len(out.run.digits) >= node.max_digits:
        return decide(flow, out, node, at)
    out.timer(at + node.timeout_s)
    return None


def _on_timeout(flow: Flow, out: _Out, node: object, at: float) -> Outcome | None:
    match node:
        case MenuNode() if out.run.waiting == "digits":
            if out.run.digits:
                return _decide(flow, out, node, at)
            return _retry(flow, out, node, at, invalid=False)
        case ConferenceNode() if out.run.waiting == "conf_digits":
            return _pin_decide(flow, out, node, at)  # no more digits: what was typed (maybe none)
        case VoicemailNode() if out.run.waiting == "vm_loading":
            # the mailbox's settings did not come in time: the node's own
            _greet(out, replace(node, from_mailbox=False), at)
        case VoicemailAccessNode() if out.run.waiting in ("vm_loading", "vm_menu"):
            # the mailbox never came, or the owner stopped pressing keys
            return _finish(out, ToHangup(reason="voicemail_timeout"))
        case VoicemailNode() if out.run.waiting == "recording":
            # the switch should have ended it at the limit; the hang-up that follows ends the
            # ``record`` app (uuid_record stop does not apply to it); keep what was recorded
            _left(out, node, at, "timeout")
            return _finish(out, ToHangup(reason="voicemail_done"))
    return None


def _decide(flow: Flow, out: _Out, node: MenuNode, at: float) -> Outcome | None:
    out.cancel_timer()
    target = node.options.get(out.run.digits)
    if target is not None:
        return _goto(flow, out, target, at)
    return _retry(flow, out, node, at, invalid=True)


def _retry(flow: Flow, out: _Out, node: MenuNode, at: float, *, invalid: bool) -> Outcome | None:
    failures = out.run.failures + 1
    out.run = replace(out.run, failures=failures, digits="")
    if failures > node.retries:
        fallback = node.on_invalid if invalid else node.on_timeout
        if not fallback:
            return _finish(out, ToHangup(reason="menu_invalid" if invalid else "menu_timeout"))
        return _goto(flow, out, fallback, at)
    if invalid and node.invalid_prompt:
        _play(out, node.invalid_prompt)
        out.run = replace(out.run, waiting="invalid")
        return None
    _menu_prompt(out, node, at)
    return None
