"""ESL events -> the engine's media events, and media commands -> ESL commands.

Rules
-----
* Pure and table-driven: no I/O, no trio, no clock reads. Time (``now``, the host's clock) and the
  node name come in as arguments; whatever the caller knows about channels (which FreeSWITCH UUID
  holds which leg, whether it is bridged) comes in as a read-only lookup.
* Two tables decide everything: ``EVENT_TABLE`` (Event-Name, or ``CUSTOM::<subclass>`` -> one
  converter) and ``COMMAND_TABLE`` (media command type -> one encoder). An event with no entry, or
  one whose converter finds it irrelevant, maps to ``None``; :class:`EventMapper` counts those by
  name so that a silent drop is still visible in ``statistics()``.
* Values are URL-decoded by the codec (``DTMF-Digit: %23`` -> ``#``).

Which call and leg a channel belongs to (``identify``)
------------------------------------------------------
1. ``variable_callengine_call_id`` / ``variable_callengine_leg``: a leg the engine originated.
2. no such variable and ``Call-Direction: inbound``: the caller's channel of a new call; the call
   id is the channel's ``Unique-ID`` and the leg is ``"a"``.
3. anything else (an outbound channel someone else created, e.g. the B leg of a dialplan
   ``bridge``) is *foreign*: it maps to ``None``. Treating it as a leg of some call would make the
   call machine hang up a leg it never asked for (an unknown leg that answers is LOSE_RACE).

Commands
--------
Applications that must run *on* a channel go through ``sendmsg`` (answer, playback,
play_and_get_digits); everything that manipulates channels from outside uses ``api`` (uuid_kill,
uuid_bridge, uuid_transfer, uuid_hold, uuid_record, uuid_broadcast, uuid_send_dtmf, uuid_break):
those run at once in FreeSWITCH, while a sendmsg hangup waits for the session thread's next 20 ms
tick (README timings). ``originate`` always goes through ``bgapi`` so that a ringing phone never
blocks the socket; its Job-UUID is supplied by the caller, and the BACKGROUND_JOB result is mapped
back to the leg from the ``callengine_*`` variables echoed in ``Job-Command-Arg``, so the mapping
stays stateless.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgspec

from adapters.freeswitch import codec
from adapters.freeswitch.codec import EslEvent
from engine.messages import (
    ApplicationCompleted,
    ApplicationExecuted,
    ChannelAnswered,
    ChannelBridged,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelHangupComplete,
    ChannelHeld,
    ChannelProgress,
    ChannelUnbridged,
    ChannelUnheld,
    ConferenceMaintenance,
    DtmfReceived,
    HangupCause,
    MediaAdopt,
    MediaAnswer,
    MediaBridge,
    MediaBroadcast,
    MediaCollectDigits,
    MediaCommand,
    MediaConference,
    MediaConferenceMember,
    MediaEvent,
    MediaHangup,
    MediaHold,
    MediaIntercept,
    MediaOriginate,
    MediaPark,
    MediaPlay,
    MediaRecordMask,
    MediaRecordStart,
    MediaRecordStop,
    MediaSendDtmf,
    MediaStopPlayback,
    MediaTransfer,
    MediaUnhold,
    PlaybackFinished,
    PlaybackStarted,
    RecordingStarted,
    RecordingStopped,
)
from engine.tracecontext import TRACEPARENT_VARIABLES

__all__ = [
    "COMMAND_TABLE",
    "EVENT_TABLE",
    "CALL_VAR",
    "LEG_VAR",
    "ChannelId",
    "CommandError",
    "DeviceEvent",
    "EventMapper",
    "OriginateSettings",
    "Target",
    "identify",
    "map_channel_data",
    "map_command",
    "map_event",
]

CALL_VAR = "callengine_call_id"
LEG_VAR = "callengine_leg"


class DeviceEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A phone registered (``registered=True``) or went away (unregister / expire)."""

    extension: str
    registered: bool
    at: float
    contact: str = ""
    #: SIP Call-ID of the registration: one extension may have several phones
    registration_id: str = ""
    reason: str = "register"
    node: str = ""
    realm: str = ""


class ChannelId(NamedTuple):
    call_id: str
    leg: str


class Target(NamedTuple):
    """What the caller knows about the channel behind (call_id, leg)."""

    uuid: str
    bridged: bool = False


class CommandError(ValueError):
    """A media command that cannot be expressed as ESL (bad argument, unknown leg...)."""


# ---------------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------------

LegLookup = Mapping[str, ChannelId]


_CALL_ID_HEADER = "variable_" + CALL_VAR
_LEG_HEADER = "variable_" + LEG_VAR


def identify(ev: EslEvent) -> ChannelId | None:
    """(call_id, leg) of the channel an event is about, or None for foreign / no channel."""
    call_id = ev.get(_CALL_ID_HEADER)
    if call_id:
        leg = ev.get(_LEG_HEADER) or ev.get("Unique-ID") or ""
        return ChannelId(str(call_id), str(leg))
    uid = ev.get("Unique-ID")
    if not uid:
        return None
    if ev.get("Call-Direction") == "inbound":
        return ChannelId(str(uid), "a")
    return None


def _base(ev: EslEvent, now: float, node: str) -> dict[str, Any] | None:
    ident = identify(ev)
    if ident is None:
        return None
    return {"call_id": ident.call_id, "leg": ident.leg, "at": now, "node": node}


def _s(ev: EslEvent, name: str, default: str = "") -> str:
    v = ev.get(name)
    if v is None or v == "_undef_":
        return default
    return v if isinstance(v, str) else str(v)


#: channel variables a ChannelCreated carries: the SIP hosts/users, and an incoming trace context
_CREATED_VARIABLES = ("variable_sip_from_host", "variable_sip_to_user",
                      *(f"variable_{name}" for name in TRACEPARENT_VARIABLES))


def _created(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    if b is None:
        return None
    direction = "outbound" if _s(ev, "Call-Direction") == "outbound" else "inbound"
    variables = {}
    tenant = _s(ev, "variable_callengine_tenant") or _s(ev, "variable_domain_name") or "default"
    for key in _CREATED_VARIABLES:
        v = _s(ev, key)
        if v:
            variables[key[9:]] = v
    return ChannelCreated(**b, direction=direction,
                          caller_id=_s(ev, "Caller-Caller-ID-Number"),
                          caller_name=_s(ev, "Caller-Caller-ID-Name"),
                          destination=_s(ev, "Caller-Destination-Number"),
                          tenant=tenant, variables=variables)


def _simple(cls: type) -> Callable[..., MediaEvent | None]:
    def conv(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
        b = _base(ev, now, node)
        return None if b is None else cls(**b)
    conv.__name__ = f"_to_{cls.__name__}"
    return conv


def _progress(media: bool) -> Callable[..., MediaEvent | None]:
    def conv(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
        b = _base(ev, now, node)
        return None if b is None else ChannelProgress(**b, early_media=media)
    return conv


def _other_leg(ev: EslEvent, legs: LegLookup | None) -> str:
    me = _s(ev, "Unique-ID")
    a, b = _s(ev, "Bridge-A-Unique-ID"), _s(ev, "Bridge-B-Unique-ID")
    other = b if a == me or not a else a
    if not other:
        other = _s(ev, "Other-Leg-Unique-ID")
    if legs is not None and other in legs:
        return legs[other].leg
    return other


def _bridge(cls: type) -> Callable[..., MediaEvent | None]:
    def conv(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
        b = _base(ev, now, node)
        return None if b is None else cls(**b, other_leg=_other_leg(ev, legs))
    return conv


def _hangup(cls: type) -> Callable[..., MediaEvent | None]:
    def conv(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
        b = _base(ev, now, node)
        if b is None:
            return None
        cause = _s(ev, "Hangup-Cause") or _s(ev, "variable_hangup_cause") \
            or HangupCause.NORMAL_CLEARING
        return cls(**b, cause=cause)
    return conv


def _dtmf(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    digit = _s(ev, "DTMF-Digit")
    if b is None or not digit:
        return None
    dur = _s(ev, "DTMF-Duration")
    # DTMF-Duration is in samples at 8 kHz (2000 = 250 ms)
    ms = int(dur) // 8 if dur.isdigit() else 0
    return DtmfReceived(**b, digit=digit, duration_ms=ms)


def _execute(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    if b is None:
        return None
    return ApplicationExecuted(**b, app=_s(ev, "Application"), arg=_s(ev, "Application-Data"),
                               app_uuid=_s(ev, "Application-UUID"))


def _execute_complete(ev: EslEvent, now: float, node: str,
                      legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    if b is None:
        return None
    resp = _s(ev, "Application-Response")
    return ApplicationCompleted(**b, app=_s(ev, "Application"), arg=_s(ev, "Application-Data"),
                                app_uuid=_s(ev, "Application-UUID"),
                                response="" if resp == "_none_" else resp)


def _playback_start(ev: EslEvent, now: float, node: str,
                    legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    return None if b is None else PlaybackStarted(**b, file=_s(ev, "Playback-File-Path"))


def _playback_stop(ev: EslEvent, now: float, node: str,
                   legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    if b is None:
        return None
    return PlaybackFinished(**b, file=_s(ev, "Playback-File-Path"),
                            status=_s(ev, "Playback-Status", "done"))


def _record_start(ev: EslEvent, now: float, node: str,
                  legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    return None if b is None else RecordingStarted(**b, path=_s(ev, "Record-File-Path"))


def _record_stop(ev: EslEvent, now: float, node: str,
                 legs: LegLookup | None) -> MediaEvent | None:
    b = _base(ev, now, node)
    if b is None:
        return None
    return RecordingStopped(**b, path=_s(ev, "Record-File-Path"),
                            cause=_s(ev, "Record-Completion-Cause"))


_ORIG_VARS = re.compile(r"(?:^|[{,\[])(callengine_call_id|callengine_leg)=([^,}\]\s]*)")


def _background_job(ev: EslEvent, now: float, node: str,
                    legs: LegLookup | None) -> MediaEvent | None:
    """A failed ``originate`` of ours becomes the hangup of the leg that never was."""
    if _s(ev, "Job-Command") != "originate":
        return None
    body = ev.body if isinstance(ev.body, str) else ev.body.decode("utf-8", "replace")
    if not body.startswith("-ERR"):
        return None  # +OK <uuid>: the channel's own events tell the story
    found = dict(_ORIG_VARS.findall(_s(ev, "Job-Command-Arg")))
    call_id = found.get(CALL_VAR)
    leg = found.get(LEG_VAR)
    if not call_id or not leg:
        return None
    cause = body[4:].strip().split()[0] if body[4:].strip() else "NORMAL_TEMPORARY_FAILURE"
    return ChannelHangup(call_id=codec.url_decode(call_id), leg=codec.url_decode(leg), at=now,
                         node=node, cause=cause)


def _conference(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> MediaEvent | None:
    """Members joining / leaving a conference (the engine has no conference event type yet:
    joining is reported as the ``conference`` application running, leaving as it completing)."""
    action = _s(ev, "Action")
    if action not in ("add-member", "del-member"):
        return None
    b = _base(ev, now, node)
    if b is None:
        return None
    room = _s(ev, "Conference-Name")
    member = _s(ev, "Member-ID")
    if action == "add-member":
        return ApplicationExecuted(**b, app="conference", arg=room, app_uuid=member)
    return ApplicationCompleted(**b, app="conference", arg=room, app_uuid=member,
                                response="del-member")


#: the conference::maintenance actions the room machine follows (play-file, start-talking, ... are not)
CONFERENCE_ACTIONS = frozenset({"conference-create", "conference-destroy", "add-member",
                                "del-member", "mute-member", "unmute-member", "kick-member",
                                "floor-change", "dtmf"})


def _int(value: str) -> int:
    return int(value) if value.isdigit() else 0


def map_conference(ev: EslEvent, now: float, node: str = "") -> ConferenceMaintenance | None:
    """A CUSTOM conference::maintenance event -> the room machine's input (#10 part 3), or None for
    the actions it does not follow. Header names as FreeSWITCH 1.10.12 sends them (capture
    04_conference): Conference-Name, Conference-Unique-ID, Conference-Size, Member-ID, Member-Type
    ("moderator" | "member"), Unique-ID, Caller-Caller-ID-Number, floor-change's New-ID ("none")."""
    if event_key(ev) != "CUSTOM::conference::maintenance":
        return None
    action = _s(ev, "Action")
    room = _s(ev, "Conference-Name")
    if action not in CONFERENCE_ACTIONS or not room:
        return None
    ident = identify(ev)  # callengine_call_id when the profile sends verbose events
    size = _s(ev, "Conference-Size")
    return ConferenceMaintenance(
        room=room, action=action, at=now, node=node,  # type: ignore[arg-type]
        room_uuid=_s(ev, "Conference-Unique-ID"), member_id=_int(_s(ev, "Member-ID")),
        channel=_s(ev, "Unique-ID"), call_id=ident.call_id if ident is not None else "",
        caller_id=_s(ev, "Caller-Caller-ID-Number"),
        moderator=_s(ev, "Member-Type") == "moderator",
        size=int(size) if size.isdigit() else -1, floor=_int(_s(ev, "New-ID")),
        key=_s(ev, "DTMF-Key"))


def conference_command(cmd: MediaConferenceMember) -> str:
    """``conference <room> mute|unmute|kick <member id>`` (the api command's text)."""
    if cmd.action not in ("mute", "unmute", "kick") or cmd.member_id <= 0:
        raise CommandError(f"not a conference member command: {cmd.action} {cmd.member_id}")
    return f"conference {_word(cmd.room, 'room')} {cmd.action} {cmd.member_id}"


def _contact_uri(contact: str) -> str:
    lt, gt = contact.find("<"), contact.rfind(">")
    return contact[lt + 1:gt] if 0 <= lt < gt else contact


def _device(registered: bool, reason: str) -> Callable[..., DeviceEvent | None]:
    def conv(ev: EslEvent, now: float, node: str, legs: LegLookup | None) -> DeviceEvent | None:
        ext = _s(ev, "username") or _s(ev, "from-user")
        if not ext:
            return None
        return DeviceEvent(extension=ext, registered=registered, at=now, node=node,
                           contact=_contact_uri(_s(ev, "contact")),
                           registration_id=_s(ev, "call-id"), reason=reason,
                           realm=_s(ev, "realm") or _s(ev, "from-host"))
    return conv


Converter = Callable[[EslEvent, float, str, "LegLookup | None"], "MediaEvent | DeviceEvent | None"]

#: Event-Name (or CUSTOM::<subclass>) -> converter. Everything else maps to None.
EVENT_TABLE: dict[str, Converter] = {
    "CHANNEL_CREATE": _created,
    "CHANNEL_PROGRESS": _progress(False),
    "CHANNEL_PROGRESS_MEDIA": _progress(True),
    "CHANNEL_ANSWER": _simple(ChannelAnswered),
    "CHANNEL_BRIDGE": _bridge(ChannelBridged),
    "CHANNEL_UNBRIDGE": _bridge(ChannelUnbridged),
    "CHANNEL_HOLD": _simple(ChannelHeld),
    "CHANNEL_UNHOLD": _simple(ChannelUnheld),
    "DTMF": _dtmf,
    "CHANNEL_EXECUTE": _execute,
    "CHANNEL_EXECUTE_COMPLETE": _execute_complete,
    "PLAYBACK_START": _playback_start,
    "PLAYBACK_STOP": _playback_stop,
    "RECORD_START": _record_start,
    "RECORD_STOP": _record_stop,
    "CHANNEL_HANGUP": _hangup(ChannelHangup),
    "CHANNEL_HANGUP_COMPLETE": _hangup(ChannelHangupComplete),
    "CHANNEL_DESTROY": _simple(ChannelDestroyed),
    "BACKGROUND_JOB": _background_job,
    "CUSTOM::conference::maintenance": _conference,
    "CUSTOM::sofia::register": _device(True, "register"),
    "CUSTOM::sofia::unregister": _device(False, "unregister"),
    "CUSTOM::sofia::expire": _device(False, "expire"),
}

#: Event names the link subscribes to (``event plain ...``): the table's, plus HEARTBEAT.
SUBSCRIBE_EVENTS: tuple[str, ...] = tuple(
    sorted({k for k in EVENT_TABLE if not k.startswith("CUSTOM::")} | {"HEARTBEAT"})
) + ("CUSTOM",) + tuple(sorted(k[8:] for k in EVENT_TABLE if k.startswith("CUSTOM::")))


def map_channel_data(ev: EslEvent, now: float, node: str = "") -> ChannelCreated | None:
    """The CHANNEL_DATA of an outbound ``connect`` reply, reported as the channel's creation
    (its CHANNEL_CREATE was fired before the socket existed)."""
    out = _created(ev, now, node, None)
    return out if isinstance(out, ChannelCreated) else None


def event_key(ev: EslEvent) -> str:
    name = ev.name or ""
    if name == "CUSTOM":
        return f"CUSTOM::{ev.subclass or ''}"
    return name


def map_event(ev: EslEvent, *, now: float, node: str = "",
              legs: LegLookup | None = None) -> MediaEvent | DeviceEvent | None:
    """One ESL event -> one engine event, or None (unknown, irrelevant or foreign)."""
    conv = EVENT_TABLE.get(event_key(ev))
    if conv is None:
        return None
    return conv(ev, now, node, legs)


class EventMapper:
    """``map_event`` plus counters: what was mapped and what was dropped, by event name."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.mapped = 0
        self.ignored: Counter[str] = Counter()

    def __call__(self, ev: EslEvent, now: float,
                 legs: LegLookup | None = None) -> MediaEvent | DeviceEvent | None:
        key = event_key(ev)
        conv = EVENT_TABLE.get(key)
        out = conv(ev, now, self.node, legs) if conv is not None else None
        if out is None:
            self.ignored[key] += 1
        else:
            self.mapped += 1
        return out


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


class OriginateSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How a destination becomes a dial string, and what every originate carries."""

    #: ``{dest}`` is replaced; destinations containing '/' are dial strings already
    dial_template: str = "user/{dest}"
    #: application the new leg runs until the engine bridges it
    park_app: str = "&park()"
    #: hold music for MediaHold without its own
    hold_music: str = "local_stream://moh"
    #: context of ``park+<slot>`` extensions (valet parking, see docs/freeswitch.md)
    park_context: str = "callengine_park"


DEFAULT_SETTINGS = OriginateSettings()

Resolver = Callable[[str, str], Target]


def _word(value: str, what: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise CommandError(f"{what} must be one non-empty word without spaces: {value!r}")
    return value


def _var_value(v: str) -> str:
    if "\n" in v or "\r" in v:
        raise CommandError(f"channel variable value contains CR/LF: {v[:40]!r}")
    v = v.replace(",", "\\,")
    if " " in v or "'" in v:
        return "'" + v.replace("'", "\\'") + "'"
    return v


_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_GATEWAY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")


def originate_line(cmd: MediaOriginate, settings: OriginateSettings = DEFAULT_SETTINGS) -> str:
    """``originate {vars}<dial string> &park()`` for leg ``cmd.leg`` of ``cmd.call_id``."""
    leg_uuid = cmd.call_id if cmd.leg == "a" else cmd.leg
    variables: dict[str, str] = {
        "origination_uuid": leg_uuid,
        CALL_VAR: cmd.call_id,
        LEG_VAR: cmd.leg,
        "originate_timeout": str(max(1, int(round(cmd.timeout_s)))),
        "hangup_after_bridge": "true",
    }
    if cmd.caller_id:
        variables["origination_caller_id_number"] = cmd.caller_id
    for k, v in cmd.variables.items():
        if not _VAR_NAME.match(k):
            raise CommandError(f"invalid channel variable name {k!r}")
        if k not in (CALL_VAR, LEG_VAR, "origination_uuid"):
            variables[k] = v
    dest = _word(cmd.destination, "destination")
    if cmd.gateway:
        # a trunk leg: the number through the SIP gateway of the trunk
        if not _GATEWAY.match(cmd.gateway):
            raise CommandError(f"gateway name must be letters, digits, '.', '_' or '-': {cmd.gateway!r}")
        if not _NUMBER.match(dest):
            raise CommandError(f"a trunk destination must be a number (digits, * # +): {dest!r}")
        dial = f"sofia/gateway/{cmd.gateway}/{dest}"
    else:
        dial = dest if "/" in dest else settings.dial_template.format(dest=dest)
    vars_text = ",".join(f"{k}={_var_value(str(v))}" for k, v in variables.items())
    return f"originate {{{vars_text}}}{dial} {settings.park_app}"


def _answer(cmd: MediaAnswer, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    return [codec.sendmsg(t.uuid, app="answer")]


def _hangup_cmd(cmd: MediaHangup, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    return [codec.api(f"uuid_kill {t.uuid} {_word(cmd.cause, 'cause')}")]


def _originate(cmd: MediaOriginate, t: Target, s: OriginateSettings,
               job: str | None) -> list[bytes]:
    return [codec.bgapi(originate_line(cmd, s), job_uuid=job)]


def _bridge_cmd(cmd: MediaBridge, t: Target, s: OriginateSettings, job: str | None,
                other: Target | None = None) -> list[bytes]:
    assert other is not None
    return [codec.api(f"uuid_bridge {t.uuid} {other.uuid}")]


def _hold(cmd: MediaHold, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    music = _word(cmd.music or s.hold_music, "music")
    return [codec.api(f"uuid_setvar {t.uuid} hold_music {music}"),
            codec.api(f"uuid_hold {t.uuid}")]


def _unhold(cmd: MediaUnhold, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    return [codec.api(f"uuid_hold off {t.uuid}")]


def _play(cmd: MediaPlay, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    f = _word(cmd.file, "file")
    if t.bridged:
        # a bridged channel runs no queued application: broadcast plays into the bridge
        return [codec.api(f"uuid_broadcast {t.uuid} {f} aleg")]
    return [codec.sendmsg(t.uuid, app="playback", arg=f, loops=max(1, cmd.loops))]


def _stop_playback(cmd: MediaStopPlayback, t: Target, s: OriginateSettings,
                   job: str | None) -> list[bytes]:
    return [codec.api(f"uuid_break {t.uuid} all")]


def _collect(cmd: MediaCollectDigits, t: Target, s: OriginateSettings,
             job: str | None) -> list[bytes]:
    # min max tries timeout_ms terminators file invalid_file var_name regexp digit_timeout_ms
    term = cmd.terminators or "none"
    _word(term, "terminators")
    timeout_ms = max(1, int(cmd.timeout_s * 1000))
    arg = (f"{cmd.min_digits} {cmd.max_digits} 1 {timeout_ms} {term} "
           f"{_word(cmd.prompt, 'prompt')} silence_stream://250 callengine_digits "
           f"\\d{{{cmd.min_digits},{cmd.max_digits}}} {timeout_ms}")
    return [codec.sendmsg(t.uuid, app="play_and_get_digits", arg=arg)]


def _transfer(cmd: MediaTransfer, t: Target, s: OriginateSettings,
              job: str | None) -> list[bytes]:
    return [codec.api(f"uuid_transfer {t.uuid} {_word(cmd.destination, 'destination')}")]


def _park(cmd: MediaPark, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    if cmd.slot:
        slot = _word(cmd.slot, "slot")
        return [codec.api(f"uuid_transfer {t.uuid} park+{slot} XML {s.park_context}")]
    return [codec.api(f"uuid_transfer {t.uuid} park inline")]


def _conference_cmd(cmd: MediaConference, t: Target, s: OriginateSettings,
                    job: str | None) -> list[bytes]:
    room = _word(cmd.room, "room")
    flags = ""
    if cmd.flags:  # mod_conference: <room>@<profile>+flags{a|b}
        if not all(re.fullmatch(r"[a-z][a-z0-9_-]*", f) for f in cmd.flags):
            raise CommandError(f"bad conference member flags: {cmd.flags!r}")
        flags = "+flags{" + "|".join(cmd.flags) + "}"
    return [codec.api(f"uuid_transfer {t.uuid} conference:{room}@default{flags} inline")]


def _send_dtmf(cmd: MediaSendDtmf, t: Target, s: OriginateSettings,
               job: str | None) -> list[bytes]:
    digits = _word(cmd.digits, "digits")
    if not re.fullmatch(r"[0-9A-Da-d*#wW@]+", digits):
        raise CommandError(f"not DTMF digits: {digits!r}")
    return [codec.api(f"uuid_send_dtmf {t.uuid} {digits}")]


def _record_start_cmd(cmd: MediaRecordStart, t: Target, s: OriginateSettings,
                      job: str | None) -> list[bytes]:
    path = _word(cmd.path, "path")
    if cmd.limit_s > 0:
        # a voicemail message (docs/voicemail.md): mod_dptools ``record <path> <time_limit_secs>
        # <silence_thresh> <silence_hits>`` runs on the channel and ends by itself (RECORD_STOP)
        limit = max(1, round(cmd.limit_s))
        arg = f"{path} {limit}"
        if cmd.silence_hits > 0:
            arg += f" {max(0, cmd.silence_threshold)} {cmd.silence_hits}"
        return [codec.sendmsg(t.uuid, app="record", arg=arg)]
    return [codec.api(f"uuid_record {t.uuid} start {path}")]


def _record_stop_cmd(cmd: MediaRecordStop, t: Target, s: OriginateSettings,
                     job: str | None) -> list[bytes]:
    path = _word(cmd.path, "path") if cmd.path else "all"
    return [codec.api(f"uuid_record {t.uuid} stop {path}")]


def _record_mask_cmd(cmd: MediaRecordMask, t: Target, s: OriginateSettings,
                     job: str | None) -> list[bytes]:
    # FreeSWITCH fires no event for mask/unmask (switch_ivr_record_session_mask only flags the
    # media bug): the engine's CTI event is the only record of a pause (docs/recordings.md)
    action = "mask" if cmd.mask else "unmask"
    return [codec.api(f"uuid_record {t.uuid} {action} {_word(cmd.path, 'path')}")]


def _broadcast_cmd(cmd: MediaBroadcast, t: Target, s: OriginateSettings,
                   job: str | None) -> list[bytes]:
    # "both": the caller and, when bridged, its partner hear it (a consent announcement); each
    # channel reports its own PLAYBACK_STOP
    return [codec.api(f"uuid_broadcast {t.uuid} {_word(cmd.file, 'file')} both")]


def _intercept(cmd: MediaIntercept, t: Target, s: OriginateSettings, job: str | None,
               other: Target | None = None) -> list[bytes]:
    """The picker's channel runs ``intercept <target uuid>`` (inline, as a dialplan would)."""
    assert other is not None
    return [codec.api(f"uuid_transfer {t.uuid} intercept:{_word(other.uuid, 'intercept target')} inline")]


def _adopt(cmd: MediaAdopt, t: Target, s: OriginateSettings, job: str | None) -> list[bytes]:
    """The channel's variables name its new call and leg, so its next events identify it so."""
    call_id = _word(cmd.call_id, "call id")
    return [codec.api(f"uuid_setvar {t.uuid} {CALL_VAR} {call_id}"),
            codec.api(f"uuid_setvar {t.uuid} {LEG_VAR} {t.uuid}")]


#: media command type -> encoder(command, target, settings, job_uuid) -> ESL commands
COMMAND_TABLE: dict[type, Callable[..., list[bytes]]] = {
    MediaAnswer: _answer,
    MediaHangup: _hangup_cmd,
    MediaOriginate: _originate,
    MediaBridge: _bridge_cmd,
    MediaHold: _hold,
    MediaUnhold: _unhold,
    MediaPlay: _play,
    MediaStopPlayback: _stop_playback,
    MediaCollectDigits: _collect,
    MediaTransfer: _transfer,
    MediaPark: _park,
    MediaIntercept: _intercept,
    MediaAdopt: _adopt,
    MediaConference: _conference_cmd,
    MediaSendDtmf: _send_dtmf,
    MediaRecordStart: _record_start_cmd,
    MediaRecordStop: _record_stop_cmd,
    MediaRecordMask: _record_mask_cmd,
    MediaBroadcast: _broadcast_cmd,
}


def default_target(call_id: str, leg: str) -> Target:
    """Without better knowledge: the caller's channel is the call id, an originated leg's UUID is
    its leg id (we originate it with ``origination_uuid`` = leg id)."""
    return Target(call_id if leg == "a" else leg)


def map_command(cmd: MediaCommand, resolve: Resolver = default_target, *,
                settings: OriginateSettings = DEFAULT_SETTINGS,
                job_uuid: str | None = None) -> list[bytes]:
    """One media command -> the ESL commands (bytes) that perform it.

    Raises :class:`CommandError` for arguments ESL cannot carry (spaces in a path, CR/LF...).
    """
    enc = COMMAND_TABLE.get(type(cmd))
    if enc is None:
        raise CommandError(f"no ESL mapping for {type(cmd).__name__}")
    try:
        if isinstance(cmd, MediaOriginate):
            return enc(cmd, Target(""), settings, job_uuid)
        target = resolve(cmd.call_id, cmd.leg)
        if isinstance(cmd, MediaBridge):
            return _bridge_cmd(cmd, target, settings, job_uuid,
                               other=resolve(cmd.call_id, cmd.other_leg))
        if isinstance(cmd, MediaIntercept):
            return _intercept(cmd, target, settings, job_uuid,
                              other=resolve(cmd.other_call_id, cmd.other_leg))
        return enc(cmd, target, settings, job_uuid)
    except CommandError:
        raise
    except ValueError as exc:  # the codec refusing header injection
        raise CommandError(str(exc)) from None
