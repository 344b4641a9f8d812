"""A FreeSWITCH emulator speaking the Event Socket protocol (inbound and outbound), on trio.

Rules
-----
* Wire behaviour follows PROTOCOL.md and, where they differ, the real FreeSWITCH 1.10.12
  recordings: reply texts byte for byte (typos included), frame layouts via the codec's
  server-side serializers, event header names and order via ``templates.py`` (generated from the
  recordings).
* Binds to 127.0.0.1 by default; port 0 picks a free port (read ``emulator.port``).
* All time comes from trio's clock (``trio.current_time``/``trio.sleep``), so tests can run it
  under ``trio.testing.MockClock(autojump_threshold=0)``; wall-clock epoch is only an offset.
* Bad client input never crashes the server: a protocol error closes that one connection.
* Faults are explicit API calls (drop, stall, malformed frame, duplicate events).

Theory of operation
-------------------
:class:`FreeSwitchEmulator` owns the channels, phone registrations and the set of ESL
connections. Every change of channel state goes through ``_fire``, which renders one event
(base headers + template layout + channel values + Other-Leg block + a few variables) and hands
it to every connection; each connection decides (subscriptions, CUSTOM subclasses, filters,
myevents) and serializes it in its own format into its outbound queue. One writer task per
connection drains that queue, so replies and events leave in the order they were produced, as in
FreeSWITCH where both are written by the listener thread.

Each channel has an application queue served by one task (sendmsg execute, dialplan apps,
uuid_broadcast); ``hangup`` cancels the running app (which then reports its completion) and
emits CHANNEL_HANGUP, CHANNEL_UNBRIDGE, the peer's CHANNEL_HANGUP, CHANNEL_EXECUTE_COMPLETE,
CHANNEL_HANGUP_COMPLETE and CHANNEL_DESTROY in that order.
"""

from __future__ import annotations

import collections
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from adapters.freeswitch import codec
from adapters.freeswitch.codec import Command, CommandParser, RemoteProtocolError

from .channels import Channel, channel_values, new_uuid, other_leg_values, show_call_row, show_row
from .conference import EmuConferences
from .templates import TEMPLATES

VERSION = "1.10.12-release~64bit"
STATUS_VERSION = "FreeSWITCH (Version 1.10.12-release  64bit) is ready"

# Event names FreeSWITCH knows (subscription words that are not subclasses)
KNOWN_EVENTS = {
    "ALL", "CUSTOM", "CLONE", "CHANNEL_CREATE", "CHANNEL_DESTROY", "CHANNEL_STATE",
    "CHANNEL_CALLSTATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HOLD", "CHANNEL_UNHOLD",
    "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_OUTGOING", "CHANNEL_PARK", "CHANNEL_UNPARK", "CHANNEL_APPLICATION",
    "CHANNEL_ORIGINATE", "CHANNEL_UUID", "API", "LOG", "INBOUND_CHAN", "OUTBOUND_CHAN",
    "STARTUP", "SHUTDOWN", "PUBLISH", "UNPUBLISH", "TALK", "NOTALK", "SESSION_CRASH",
    "MODULE_LOAD", "MODULE_UNLOAD", "DTMF", "MESSAGE", "PRESENCE_IN", "NOTIFY_IN",
    "PRESENCE_OUT", "PRESENCE_PROBE", "MESSAGE_WAITING", "MESSAGE_QUERY", "ROSTER", "CODEC",
    "BACKGROUND_JOB", "DETECTED_SPEECH", "DETECTED_TONE", "PRIVATE_COMMAND", "HEARTBEAT",
    "TRAP", "ADD_SCHEDULE", "DEL_SCHEDULE", "EXE_SCHEDULE", "RE_SCHEDULE", "RELOADXML",
    "NOTIFY", "PHONE_FEATURE", "PHONE_FEATURE_SUBSCRIBE", "SEND_MESSAGE", "RECV_MESSAGE",
    "REQUEST_PARAMS", "CHANNEL_DATA", "GENERAL", "COMMAND", "SESSION_HEARTBEAT",
    "CLIENT_DISCONNECTED", "SERVER_DISCONNECTED", "SEND_INFO", "RECV_INFO", "RECV_RTCP_MESSAGE",
    "SEND_RTCP_MESSAGE", "CALL_SECURE", "NAT", "RECORD_START", "RECORD_STOP", "PLAYBACK_START",
    "PLAYBACK_STOP", "CALL_UPDATE", "FAILURE", "SOCKET_DATA", "MEDIA_BUG_START",
    "MEDIA_BUG_STOP", "CONFERENCE_DATA_QUERY", "CONFERENCE_DATA", "CALL_SETUP_REQ",
    "CALL_SETUP_RESULT", "CALL_DETAIL", "DEVICE_STATE", "TEXT", "SHUTDOWN_REQUESTED",
}

# Other-Leg block position/order as recorded in CHANNEL_BRIDGE
_OTHER_NAMES = [n for n, _ in TEMPLATES["CHANNEL_BRIDGE"] if n.startswith("Other-")]
_TEMPLATE_FALLBACK = {"CUSTOM::sofia::expire": "CUSTOM::sofia::unregister"}


@dataclass
class Endpoint:
    """How an originated destination behaves: answer after a delay, or fail with a cause."""

    answer_after: float | None = None   # None: use the emulator default
    outcome: str = "answer"              # answer | busy | no_answer | reject
    cause: str | None = None             # hangup cause for reject


#: gateway outcomes -> the hangup cause the far end gives
GATEWAY_CAUSES = {
    "busy": "USER_BUSY",
    "congestion": "NORMAL_CIRCUIT_CONGESTION",
    "no_route": "NO_ROUTE_DESTINATION",
    "no_answer": "NO_ANSWER",
}


@dataclass
class Gateway:
    """An emulated SIP trunk (``sofia/gateway/<name>/<number>``), scripted by a test.

    ``outcome``: answer | busy | congestion | no_route | no_answer | down. ``down`` fails the
    originate at once with GATEWAY_DOWN (no channel, as a gateway whose registration failed);
    ``max_calls`` > 0 makes the carrier refuse calls beyond it with NORMAL_CIRCUIT_CONGESTION.
    Unknown gateways fail with INVALID_GATEWAY, as in FreeSWITCH."""

    name: str
    outcome: str = "answer"
    answer_after: float | None = None
    max_calls: int = 0
    #: originates that reached this gateway, in order: (number, caller id number)
    dialled: list[tuple[str, str]] = field(default_factory=list)
    #: most simultaneous live legs seen
    peak: int = 0


@dataclass
class Registration:
    user: str
    domain: str
    contact: str
    call_id: str
    expires: int
    network_ip: str = "127.0.0.1"
    network_port: str = "5060"
    user_agent: str = "callengine-emulator"


@dataclass
class _AppRequest:
    app: str
    arg: str
    event_uuid: str | None
    loops: int = 1
    done: trio.Event = field(default_factory=trio.Event)


class FreeSwitchEmulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, password: str = "ClueCon",
                 heartbeat: float | None = 20.0, answer_delay: float = 0.02,
                 ring_delay: float = 0.005, playback_seconds: float = 1.0,
                 hostname: str = "emulator", originate_timeout: float = 60.0,
                 calls_per_second: float = 0.0, honour_origination_uuid: bool = True) -> None:
        self.host = host
        #: False emulates a switch that ignores origination_uuid (the adapter then learns the
        #: leg's UUID from its CHANNEL_CREATE); real FreeSWITCH honours it
        self.honour_origination_uuid = honour_origination_uuid
        self.requested_port = port
        self.password = password
        self.heartbeat = heartbeat
        self.answer_delay = answer_delay
        self.ring_delay = ring_delay
        self.playback_seconds = playback_seconds
        self.hostname = hostname
        self.originate_timeout = originate_timeout
        self.calls_per_second = calls_per_second
        self.core_uuid = new_uuid()
        #: mod_conference rooms, member ids and the maintenance log (sim/freeswitch/conference.py)
        self.conferences = EmuConferences(self)
        self.channels: dict[str, Channel] = {}
        self.registrations: dict[str, Registration] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.gateways: dict[str, Gateway] = {}
        #: every gateway originate in order: (gateway, number)
        self.gateway_log: list[tuple[str, str]] = []
        #: valet parking (mod_valet_parking): (lot, slot) -> uuid of the parked channel
        self.valet: dict[tuple[str, str], str] = {}
        #: every valet_parking::info Action in order: (action, lot, slot, uuid)
        self.valet_log: list[tuple[str, str, str, str]] = []
        #: every intercept in order: (picker uuid, target uuid, the leg the picker was bridged to)
        self.intercept_log: list[tuple[str, str, str]] = []
        #: every ``record`` app run: (uuid, path, time limit, silence threshold, silence hits)
        self.record_log: list[tuple[str, str, int, int, int]] = []
        #: every accepted uuid_record mask/unmask in order: (uuid, path, "mask" | "unmask")
        self.record_masks: list[tuple[str, str, str]] = []
        #: api/bgapi lines received over ESL, in arrival order (bounded: the oldest are dropped)
        self.command_log: collections.deque[str] = collections.deque(maxlen=10_000)
        self.playback_durations: dict[str, float] = {}
        self.global_vars: dict[str, str] = {}
        self.connections: set[EslConnection] = set()
        self.port: int = 0
        self.sessions_since_startup = 0
        self._seq = 0
        self._epoch0 = 0.0
        self._t0 = 0.0
        self._nursery: trio.Nursery | None = None
        self._queues: dict[str, trio.MemorySendChannel] = {}
        self._recvs: dict[str, trio.MemoryReceiveChannel] = {}
        # running app scopes per channel, innermost last (apps run nested inside park)
        self._scopes: dict[str, list[trio.CancelScope]] = {}
        self._duplicate = 0
        self._stall_until = -math.inf
        self.started = trio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. ``await nursery.start(emu.run)`` returns once listening."""
        self._t0 = trio.current_time()
        self._epoch0 = time.time() - self._t0
        listeners = await trio.open_tcp_listeners(self.requested_port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.heartbeat:
                nursery.start_soon(self._heartbeat_loop)
            if self.calls_per_second > 0:
                nursery.start_soon(self._traffic_loop)
            await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
            self.started.set()
            task_status.started(self.port)

    def open_client_stream(self) -> trio.abc.Stream:
        """An in-memory inbound ESL connection (no socket): for tests under MockClock, where a
        real socket wait would look idle to the autojumping clock."""
        import trio.testing

        client, server = trio.testing.memory_stream_pair()
        assert self._nursery is not None, "call after run() has started"
        self._nursery.start_soon(self._handle_inbound, server)
        return client

    async def _handle_inbound(self, stream: trio.abc.Stream) -> None:
        await EslConnection(self, stream).serve()

    def _now_us(self) -> int:
        return int((self._epoch0 + trio.current_time()) * 1_000_000)

    async def _heartbeat_loop(self) -> None:
        assert self.heartbeat
        while True:
            await trio.sleep(self.heartbeat)
            up = trio.current_time() - self._t0
            self._fire("HEARTBEAT", extra={
                "Event-Info": "System Ready",
                "Up-Time": _uptime_text(up),
                "FreeSWITCH-Version": VERSION,
                "Uptime-msec": str(int(up * 1000)),
                "Session-Count": str(len(self.channels)),
                "Max-Sessions": "1000", "Session-Per-Sec": "30", "Session-Per-Sec-Last": "0",
                "Session-Per-Sec-Max": "0", "Session-Per-Sec-FiveMin": "0",
                "Session-Since-Startup": str(self.sessions_since_startup),
                "Session-Peak-Max": "0", "Session-Peak-FiveMin": "0", "Idle-CPU": "99.000000"})

    async def _traffic_loop(self) -> None:
        n = 0
        while True:
            await trio.sleep(1.0 / self.calls_per_second)
            n += 1
            await self.place_inbound_call(f"1{n % 1000:03d}", "5000")

    # ------------------------------------------------------------------ events
    def _render(self, name: str, ch: Channel | None, extra: dict[str, str] | None,
                subclass: str | None) -> list[tuple[str, object]]:
        key = f"CUSTOM::{subclass}" if name == "CUSTOM" else name
        tpl = TEMPLATES.get(key) or TEMPLATES.get(_TEMPLATE_FALLBACK.get(key, "")) \
            or TEMPLATES["CHANNEL_STATE" if ch is not None else "API"]
        self._seq += 1
        now = self._now_us()
        lt = time.localtime(now / 1e6)
        base = {
            "Event-Name": name, "Core-UUID": self.core_uuid, "FreeSWITCH-Hostname": self.hostname,
            "FreeSWITCH-Switchname": self.hostname, "FreeSWITCH-IPv4": "127.0.0.1",
            "FreeSWITCH-IPv6": "::1", "Event-Date-Local": time.strftime("%Y-%m-%d %H:%M:%S", lt),
            "Event-Date-GMT": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now / 1e6)),
            "Event-Date-Timestamp": str(now), "Event-Sequence": str(self._seq),
        }
        if subclass:
            base["Event-Subclass"] = subclass
        vals: dict[str, str] = {}
        if ch is not None:
            vals = channel_values(ch)
        extra = extra or {}
        peer = self.channels.get(ch.peer) if ch is not None and ch.peer else None
        out: list[tuple[str, object]] = []
        other_done = peer is None
        seen_names = set()
        for hname, default in tpl:
            if hname.startswith("Other-"):
                if not other_done:
                    out += other_leg_values(peer, ch.originator is None)
                    other_done = True
                continue
            if hname in extra:
                v = extra[hname]
            elif hname in base:
                v = base[hname]
            elif hname in vals:
                v = vals[hname]
            elif default is not None:
                v = default
            else:
                v = ""
            if v == "" and hname in seen_names:
                continue
            seen_names.add(hname)
            out.append((hname, v))
            if hname == "Caller-Privacy-Hide-Number" and not other_done:
                out += other_leg_values(peer, ch.originator is None)
                other_done = True
        names = {n for n, _ in out}
        out += [(k, v) for k, v in extra.items() if k not in names]
        if ch is not None:
            out += [(f"variable_{k}", v) for k, v in ch.variables.items()]
        return out

    def _fire(self, name: str, ch: Channel | None = None, extra: dict[str, str] | None = None,
              subclass: str | None = None, body: str | None = None) -> None:
        # Rendering ~90 headers is most of the emulator's CPU: skip events no connection can
        # want (by name/subclass; myevents and filters still decide per event below). The
        # Event-Sequence counter advances anyway, as FreeSWITCH numbers every event it fires.
        conns = self.connections
        if not any(conn.may_want(name, subclass) for conn in conns):
            self._seq += 1
            return
        headers = self._render(name, ch, extra, subclass)
        ev = _Event(name, subclass, headers, body)
        times = 2 if self._duplicate > 0 else 1
        if self._duplicate > 0:
            self._duplicate -= 1
        for _ in range(times):
            for conn in list(self.connections):
                conn.deliver(ev)

    # ------------------------------------------------------------------ faults
    def drop_connections(self) -> int:
        """Close every ESL connection abruptly (no disconnect notice)."""
        n = 0
        for conn in list(self.connections):
            conn.abort()
            n += 1
        return n

    def stall(self, seconds: float) -> None:
        """Stop writing to every connection for ``seconds`` (reading continues)."""
        self._stall_until = trio.current_time() + seconds

    def send_malformed(self, data: bytes | None = None) -> None:
        """Write a malformed frame (default: a non-numeric Content-Length) to every connection."""
        raw = data if data is not None else (
            b"Content-Length: 12x\nContent-Type: text/event-plain\n\nEvent-Name: X\n\n")
        for conn in list(self.connections):
            conn.send_raw(raw)

    def duplicate_events(self, count: int) -> None:
        """Deliver each of the next ``count`` events twice."""
        self._duplicate = count

    # ------------------------------------------------------------------ traffic API
    def set_endpoint(self, destination: str, *, answer_after: float | None = None,
                     outcome: str = "answer", cause: str | None = None) -> None:
        if outcome not in ("answer", "busy", "no_answer", "reject"):
            raise ValueError(f"unknown outcome {outcome!r}")
        self.endpoints[destination] = Endpoint(answer_after, outcome, cause)

    def set_gateway(self, name: str, *, outcome: str = "answer", answer_after: float | None = None,
                    max_calls: int = 0) -> Gateway:
        """Create or re-script an emulated trunk gateway (see :class:`Gateway`)."""
        if outcome not in ("answer", "down", *GATEWAY_CAUSES):
            raise ValueError(f"unknown gateway outcome {outcome!r}")
        gw = self.gateways.get(name)
        if gw is None:
            gw = self.gateways[name] = Gateway(name)
        gw.outcome, gw.answer_after, gw.max_calls = outcome, answer_after, max_calls
        return gw

    def gateway_calls(self, name: str) -> int:
        """Live legs on gateway ``name`` now."""
        return sum(1 for ch in self.channels.values()
                   if ch.up and ch.variables.get("emulator_gateway") == name)

    def _new_channel(self, name: str, direction: str, caller: str, caller_name: str,
                     destination: str, context: str = "public",
                     uuid: str | None = None) -> Channel:
        ch = Channel(uuid=uuid or new_uuid(), name=name, direction=direction, caller_number=caller,
                     caller_name=caller_name, destination=destination,
                     created_us=self._now_us(), context=context)
        ch.variables.update({"direction": direction, "uuid": ch.uuid, "call_uuid": ch.uuid,
                             "channel_name": name, "caller_id_number": caller,
                             "caller_id_name": caller_name, "destination_number": destination})
        self.channels[ch.uuid] = ch
        self.sessions_since_startup += 1
        send, recv = trio.open_memory_channel[_AppRequest](math.inf)
        self._queues[ch.uuid] = send
        self._recvs[ch.uuid] = recv
        assert self._nursery is not None
        self._nursery.start_soon(self._app_worker, ch, recv)
        return ch

    async def place_inbound_call(self, caller: str, destination: str, caller_name: str | None = None,
                                 *, answer: bool = False, socket: tuple[str, int] | None = None,
                                 socket_async: bool = True, socket_full: bool = True,
                                 wait: bool = False, variables: dict[str, str] | None = None) -> Channel:
        """A call arriving from a SIP phone. Default dialplan: park (or ``socket`` out).
        ``variables``: channel variables it arrives with (e.g. ``sip_h_traceparent``)."""
        ch = self._new_channel(f"sofia/internal/{caller}@127.0.0.1", "inbound", caller,
                               caller_name or caller, destination)
        ch.variables.update(variables or {})
        ch.state = "CS_INIT"
        self._fire("CHANNEL_CREATE", ch)
        ch.state = "CS_ROUTING"
        self._fire("CHANNEL_STATE", ch)
        ch.state = "CS_EXECUTE"
        self._fire("CHANNEL_STATE", ch)
        if answer:
            self.queue_app(ch.uuid, "answer", "")
        if socket is not None:
            self.queue_app(ch.uuid, "socket",
                           f"{socket[0]}:{socket[1]}{' async' if socket_async else ''}"
                           f"{' full' if socket_full else ''}")
        else:
            self.queue_app(ch.uuid, "park", "")
        if wait:
            await trio.sleep(0)
        return ch

    def register_phone(self, user: str, domain: str = "127.0.0.1", expires: int = 3600,
                       contact: str | None = None) -> Registration:
        reg = Registration(user, domain, contact or f"sip:{user}@127.0.0.1:5070", new_uuid()[:16],
                           expires)
        self.registrations[user] = reg
        self._fire("CUSTOM", subclass="sofia::register", extra=self._reg_values(reg, "Registered"))
        return reg

    def unregister_phone(self, user: str, *, expired: bool = False) -> None:
        reg = self.registrations.pop(user, None)
        if reg is None:
            raise KeyError(f"{user} is not registered")
        sub = "sofia::expire" if expired else "sofia::unregister"
        vals = self._reg_values(reg, "Unregistered")
        for k in ("presence-hosts", "status", "to-user", "to-host"):  # not in FS's unregister
            vals.pop(k)
        self._fire("CUSTOM", subclass=sub, extra=vals)

    def _reg_values(self, reg: Registration, status: str) -> dict[str, str]:
        return {
            "profile-name": "internal", "from-user": reg.user, "from-host": reg.domain,
            "presence-hosts": reg.domain, "contact": f'"{reg.user}" <{reg.contact}>',
            "call-id": reg.call_id, "rpid": "unknown", "status": f"{status}(UDP)",
            "expires": str(reg.expires), "to-user": reg.user, "to-host": reg.domain,
            "network-ip": reg.network_ip, "network-port": reg.network_port,
            "username": reg.user, "realm": reg.domain, "user-agent": reg.user_agent,
            "sip_number_alias": reg.user, "sip_auth_username": reg.user,
            "sip_auth_realm": reg.domain, "number_alias": reg.user, "user_name": reg.user,
            "domain_name": reg.domain, "effective_caller_id_name": f"Extension {reg.user}",
            "effective_caller_id_number": reg.user, "outbound_caller_id_name": "FreeSWITCH",
            "outbound_caller_id_number": "0000000000",
        }

    async def send_dtmf(self, uuid: str, digits: str, duration_ms: int = 100,
                        gap: float = 0.02, source: str = "RTP") -> None:
        """DTMF arriving on a channel (as if the phone pressed keys)."""
        ch = self._get(uuid)
        for d in digits:
            if not ch.up:
                return
            ch.dtmf_buffer.append(d)
            self._fire("DTMF", ch, extra={"DTMF-Digit": d, "DTMF-Duration": str(duration_ms * 8),
                                          "DTMF-Source": source})
            if ch.conference:
                self.conferences.dtmf(ch, d)  # mod_conference's caller controls
            await trio.sleep(gap)

    def _get(self, uuid: str) -> Channel:
        ch = self.channels.get(uuid)
        if ch is None or not ch.up:
            raise KeyError(f"no such channel {uuid}")
        return ch

    # ------------------------------------------------------------------ channel behaviour
    def queue_app(self, uuid: str, app: str, arg: str, event_uuid: str | None = None,
                  loops: int = 1) -> _AppRequest:
        req = _AppRequest(app, arg, event_uuid, loops)
        q = self._queues.get(uuid)
        if q is not None:
            q.send_nowait(req)
        return req

    async def _app_worker(self, ch: Channel, recv: trio.MemoryReceiveChannel) -> None:
        async with recv:
            async for req in recv:
                if not ch.up:
                    req.done.set()
                    continue
                await self._run_app(ch, req)
                req.done.set()
                if not ch.alive:
                    break

    async def _run_app(self, ch: Channel, req: _AppRequest) -> None:
        app_uuid = req.event_uuid or new_uuid()
        ch.application, ch.application_data = req.app, req.arg
        info = {"Application": req.app, "Application-Data": req.arg, "Application-UUID": app_uuid}
        self._fire("CHANNEL_EXECUTE", ch, extra=info)
        response = "_none_"
        scope = trio.CancelScope()
        stack = self._scopes.setdefault(ch.uuid, [])
        stack.append(scope)
        try:
            with scope:
                for _ in range(max(1, req.loops)):
                    response = await self._app_body(ch, req.app, req.arg)
        finally:
            stack.remove(scope)
        self._fire("CHANNEL_EXECUTE_COMPLETE", ch,
                   extra={**info, "Application-Response": response or "_none_"})

    async def _app_body(self, ch: Channel, app: str, arg: str) -> str:
        if app == "answer":
            self._answer(ch)
            return "_none_"
        if app == "hangup":
            await self.hangup(ch.uuid, arg or "NORMAL_CLEARING")
            return "_none_"
        if app == "set":
            k, _, v = arg.partition("=")
            ch.variables[k] = v
            return "_none_"
        if app == "sleep":
            await trio.sleep(int(arg or "0") / 1000)
            return "_none_"
        if app == "park":
            return await self._park(ch)
        if app == "valet_park":
            return await self._valet_park(ch, arg)
        if app == "intercept":
            return await self._intercept(ch, arg)
        if app == "playback":
            return await self._playback(ch, arg)
        if app == "play_and_get_digits":
            return await self._play_and_get_digits(ch, arg)
        if app == "bridge":
            return await self._bridge_app(ch, arg)
        if app == "record_session":
            self._record_start(ch, arg)
            return "_none_"
        if app == "record":
            return await self._record_app(ch, arg)
        if app == "conference":
            return await self._conference(ch, arg)
        if app == "socket":
            return await self._socket_app(ch, arg)
        if app == "transfer":
            ch.destination = arg.split()[0] if arg else ch.destination
            ch.transfer_us = self._now_us()
            return "_none_"
        return "_none_"

    async def _park(self, ch: Channel) -> str:
        """switch_ivr_park: stay parked, running queued apps (sendmsg) from inside the park loop
        until hangup or transfer cancels us; then CHANNEL_UNPARK."""
        ch.parked = True
        self._fire("CHANNEL_PARK", ch)
        recv = self._recvs[ch.uuid]
        try:
            async for req in recv:
                if ch.up:
                    await self._run_app(ch, req)
                req.done.set()
        finally:
            ch.parked = False
            self._fire("CHANNEL_UNPARK", ch)
        return "_none_"

    #: music a valet-parked channel hears unless it has ``valet_hold_music`` / ``hold_music``
    VALET_MUSIC = "local_stream://moh"

    async def _valet_park(self, ch: Channel, arg: str) -> str:
        """mod_valet_parking's ``valet_park <lot> <slot>``: the first channel in a slot waits there
        on hold music (answered, parked: queued apps still run); the next one into the same slot is
        bridged to it and the slot is free again. ``valet_parking::info`` reports Action hold/bridge/exit."""
        words = arg.split()
        if len(words) < 2:
            return "_none_"  # FS: "Usage: <lot> <extension>"
        key = (words[0], words[1])
        parked = self.channels.get(self.valet.get(key, ""))
        self._answer(ch)
        if parked is not None and parked.up and parked.uuid != ch.uuid:
            self._valet_leave(parked, "bridge")
            ch.originator = parked.uuid
            self.bridge(parked, ch)
            return "_none_"
        self.valet[key] = ch.uuid
        ch.variables.update(valet_lot_name=key[0], valet_extension=key[1],
                            emulator_music=ch.variables.get("valet_hold_music")
                            or ch.variables.get("hold_music") or self.VALET_MUSIC)
        self._valet_event("hold", ch, *key)
        try:
            return await self._park(ch)
        finally:
            self._valet_leave(ch, "exit")

    def _valet_event(self, action: str, ch: Channel, lot: str, slot: str) -> None:
        self.valet_log.append((action, lot, slot, ch.uuid))
        self._fire("CUSTOM", ch, subclass="valet_parking::info",
                   extra={"Action": action, "Valet-Lot-Name": lot, "Valet-Extension": slot})

    def _valet_leave(self, ch: Channel, action: str) -> None:
        """The channel leaves its valet slot (bridged away, transferred or hung up); idempotent."""
        for key, uuid in list(self.valet.items()):
            if uuid == ch.uuid:
                del self.valet[key]
                ch.variables.pop("emulator_music", None)
                self._valet_event(action, ch, *key)

    async def _intercept(self, ch: Channel, arg: str) -> str:
        """mod_dptools ``intercept [-bleg] <uuid>``: ``ch`` (the picker) takes the call of ``uuid``.
        The target's partner (the caller it rings for, or its bridged peer) is bridged to the picker
        and the target is hung up with PICKED_OFF; a target with no partner (a leg the engine
        originated on its own and parked) is answered and bridged to the picker itself.
        ``intercept_unanswered_only=true`` on the picker refuses an answered target."""
        words = arg.split()
        bleg = bool(words) and words[0] == "-bleg"
        words = words[1:] if bleg else words
        target = self.channels.get(words[0]) if words else None
        if target is not None and bleg:
            target = self.channels.get(target.peer or "")
        if target is None or not target.up or target.uuid == ch.uuid:
            return "_none_"  # FS logs "Cannot locate channel" and the picker carries on
        if ch.variables.get("intercept_unanswered_only") == "true" and target.answer_state == "answered":
            return "_none_"
        partner = self.channels.get(target.peer or target.originator or "")
        self._answer(ch)
        if partner is not None and partner.up:
            if partner.peer:
                self._unbridge(partner)
            self._valet_leave(partner, "exit")
            self.bridge(partner, ch)
            self.intercept_log.append((ch.uuid, target.uuid, partner.uuid))
            await self.hangup(target.uuid, "PICKED_OFF")
            return "_none_"
        self._valet_leave(target, "exit")
        self._answer(target)
        self.bridge(target, ch)
        self.intercept_log.append((ch.uuid, target.uuid, target.uuid))
        return "_none_"

    def _answer(self, ch: Channel) -> None:
        if ch.answer_state == "answered":
            return
        ch.answered_us = self._now_us()
        ch.answer_state = "answered"
        ch.call_state = "ACTIVE"
        self._fire("CHANNEL_ANSWER", ch)
        self._fire("CHANNEL_CALLSTATE", ch, extra={"Original-Channel-Call-State": "RINGING"})

    def _playback_seconds(self, path: str) -> float:
        return self.playback_durations.get(path, self.playback_seconds)

    async def _playback(self, ch: Channel, path: str) -> str:
        info = {"Playback-File-Type": path.rsplit(".", 1)[-1] if "." in path else "",
                "Playback-File-Path": path}
        self._fire("PLAYBACK_START", ch, extra=info)
        status = "done"
        try:
            await trio.sleep(self._playback_seconds(path))
        except trio.Cancelled:
            status = "break"  # hangup/transfer interrupted it: FS reports Playback-Status break
            raise
        finally:
            with trio.CancelScope(shield=True):
                self._fire("PLAYBACK_STOP", ch, extra={**info, "Playback-Status": status})
        return "FILE PLAYED"

    async def _play_and_get_digits(self, ch: Channel, arg: str) -> str:
        # min max tries timeout terminators file invalid_file var_name regexp [digit_timeout]
        parts = arg.split()
        try:
            mn, mx, tries, timeout_ms = (int(x) for x in parts[:4])
        except ValueError:
            return "_none_"
        terminators = parts[4] if len(parts) > 4 else "#"
        file = parts[5] if len(parts) > 5 else ""
        var = parts[7] if len(parts) > 7 else "digits"
        regexp = parts[8] if len(parts) > 8 else r"\d+"
        for _ in range(max(tries, 1)):
            ch.dtmf_buffer.clear()
            if file:
                await self._playback(ch, file)
            digits = ""
            with trio.move_on_after(timeout_ms / 1000):
                while len(digits) < mx:
                    while not ch.dtmf_buffer:
                        await trio.sleep(0.01)
                    d = ch.dtmf_buffer.pop(0)
                    if d in terminators:
                        break
                    digits += d
            if len(digits) >= mn and re.fullmatch(regexp, digits or ""):
                ch.variables[var] = digits
                return "_none_"
        return "_none_"

    #: how long a caller talks into ``record`` before falling silent (None: until the time limit);
    #: a channel's ``emulator_record_talk_s`` variable overrides it
    RECORD_TALK_S: float | None = None

    async def _record_app(self, ch: Channel, arg: str) -> str:
        """mod_dptools ``record <path> [<time_limit_secs>] [<silence_thresh>] [<silence_hits>]``
        (a voicemail message): RECORD_START, then the caller talks ``emulator_record_talk_s``
        seconds and falls silent; ``silence_hits`` seconds of silence end it (Record-Completion-Cause
        success-silence), else the time limit does (success-maxtime); a hangup ends it too.
        Every run is in ``emu.record_log`` as (uuid, path, limit, threshold, hits)."""
        words = arg.split()
        path = words[0] if words else ""
        nums = [int(w) if w.isdigit() else 0 for w in words[1:4]] + [0, 0, 0]
        limit, thresh, hits = nums[0], nums[1], nums[2]
        self.record_log.append((ch.uuid, path, limit, thresh, hits))
        talk_var = ch.variables.get("emulator_record_talk_s")
        talk = float(talk_var) if talk_var else self.RECORD_TALK_S
        wait, cause = (float(limit) if limit > 0 else 3600.0), "success-maxtime"
        if talk is not None and hits > 0 and talk + hits < wait:
            wait, cause = talk + hits, "success-silence"
        self._record_start(ch, path)
        try:
            await trio.sleep(wait)
        finally:
            if ch.recording == path and ch.up:
                with trio.CancelScope(shield=True):
                    self._record_stop(ch, cause)
        return "_none_"

    def _record_start(self, ch: Channel, path: str) -> None:
        ch.recording = path
        self._fire("RECORD_START", ch, extra={"Record-File-Path": path})

    def _record_stop(self, ch: Channel, cause: str = "success") -> None:
        if ch.recording is None:
            return
        path, ch.recording, ch.record_masked = ch.recording, None, False
        self._fire("RECORD_STOP", ch, extra={"Record-File-Path": path,
                                            "Record-Completion-Cause": cause})

    async def _conference(self, ch: Channel, arg: str) -> str:
        """mod_conference's ``conference`` app: sim/freeswitch/conference.py."""
        return await self.conferences.join(ch, arg)

    # ------------------------------------------------------------------ originate / bridge
    def _parse_dial(self, dial: str) -> tuple[dict[str, str], str]:
        vars_: dict[str, str] = {}
        m = re.match(r"^\{([^}]*)\}(.*)$", dial)
        if m:
            for kv in m.group(1).split(","):
                k, _, v = kv.partition("=")
                if k:
                    vars_[k.strip()] = v
            dial = m.group(2)
        return vars_, dial

    async def originate(self, dial: str, caller: str = "0000000000", caller_name: str = "",
                        originator: Channel | None = None) -> tuple[Channel | None, str]:
        """Ring a leg; returns (channel, "") when answered or (None, cause) when it failed."""
        vars_, target = self._parse_dial(dial)
        caller = vars_.get("origination_caller_id_number", caller)
        caller_name = vars_.get("origination_caller_id_name", caller_name or caller)
        timeout = float(vars_.get("originate_timeout", self.originate_timeout))
        tech, _, rest = target.partition("/")
        if tech == "error":
            return None, rest or "NORMAL_CLEARING"
        if tech == "user":
            user = rest.split("@")[0]
            if user not in self.registrations:
                return None, "USER_NOT_REGISTERED"
            dest = user
        elif tech == "sofia" and rest.startswith("gateway/"):
            return await self._originate_gateway(vars_, rest, caller, caller_name, timeout,
                                                 originator)
        elif tech == "sofia":
            dest = rest.split("@")[0].rsplit("/", 1)[-1]  # sofia/<profile>/<user>@<host>
        else:
            dest = rest.split("@")[0].split("/")[0]       # loopback/<exten>[/<context>]
        if tech not in ("user", "sofia", "loopback"):
            return None, "CHAN_NOT_IMPLEMENTED"
        ep = self.endpoints.get(dest, Endpoint())
        name = f"{tech}/{rest}" if tech != "loopback" else f"loopback/{dest}-a"
        ch = self._new_outbound(name, dest, vars_, tech, caller, caller_name, originator)
        if ch is None:
            return None, "DESTINATION_OUT_OF_ORDER"
        gone = await self._announce_outbound(ch)
        if gone:
            return None, gone
        self._progress(ch)
        if ep.outcome == "answer":
            return await self._answer_after(ch, ep.answer_after, timeout)
        if ep.outcome == "no_answer":
            await trio.sleep(timeout)
            cause = "NO_ANSWER"
        elif ep.outcome == "busy":
            await trio.sleep(self.answer_delay)
            cause = "USER_BUSY"
        else:
            await trio.sleep(self.answer_delay)
            cause = ep.cause or "CALL_REJECTED"
        await self.hangup(ch.uuid, cause)
        return None, cause

    async def _originate_gateway(self, vars_: dict[str, str], rest: str, caller: str,
                                 caller_name: str, timeout: float,
                                 originator: Channel | None) -> tuple[Channel | None, str]:
        """``sofia/gateway/<gw>/<number>``: the scripted trunk decides (see :class:`Gateway`)."""
        _, gw_name, number = (rest.split("/", 2) + ["", ""])[:3]
        gw = self.gateways.get(gw_name)
        self.gateway_log.append((gw_name, number))
        if gw is None:
            return None, "INVALID_GATEWAY"
        gw.dialled.append((number, caller))
        if gw.outcome == "down":
            return None, "GATEWAY_DOWN"
        over = gw.max_calls > 0 and self.gateway_calls(gw.name) >= gw.max_calls
        ch = self._new_outbound(f"sofia/{rest}", number, vars_, "sofia", caller, caller_name or caller, originator)
        if ch is None:
            return None, "DESTINATION_OUT_OF_ORDER"
        ch.variables["emulator_gateway"] = gw.name
        if not over:  # a call the carrier refuses never counts towards its peak
            gw.peak = max(gw.peak, self.gateway_calls(gw.name))
        gone = await self._announce_outbound(ch)
        if gone:
            return None, gone
        if over or gw.outcome != "answer":
            cause = "NORMAL_CIRCUIT_CONGESTION" if over else GATEWAY_CAUSES[gw.outcome]
            await trio.sleep(timeout if cause == "NO_ANSWER" else self.answer_delay)
            await self.hangup(ch.uuid, cause)
            return None, cause
        self._progress(ch)
        return await self._answer_after(ch, gw.answer_after, timeout)

    # ---- one outbound leg, phones and trunk gateways alike ----------------------------------------

    def _new_outbound(self, name: str, dest: str, vars_: dict[str, str], endpoint: str, caller: str,
                      caller_name: str, originator: Channel | None) -> Channel | None:
        """The new leg in CS_INIT; None when its ``origination_uuid`` is taken (switch_ivr_originate:
        {origination_uuid=...} becomes the new channel's UUID, and switch_core_session_set_uuid
        refuses one in use; the cause the emulator reports for that is its own choice)."""
        want_uuid = vars_.get("origination_uuid") if self.honour_origination_uuid else None
        if want_uuid and want_uuid in self.channels:
            return None
        ch = self._new_channel(name, "outbound", caller, caller_name, dest, context="default",
                               uuid=want_uuid or None)
        ch.variables.update(vars_)
        ch.variables["originate_endpoint"] = endpoint
        if originator is not None:
            ch.originator = originator.uuid
        ch.state = "CS_INIT"
        return ch

    async def _announce_outbound(self, ch: Channel) -> str:
        """CHANNEL_CREATE/OUTGOING/ORIGINATE, then the ring delay; the cause if it was hung up
        meanwhile, else ""."""
        self._fire("CHANNEL_CREATE", ch)
        self._fire("CHANNEL_OUTGOING", ch)
        self._fire("CHANNEL_ORIGINATE", ch)
        await trio.sleep(self.ring_delay)
        return "" if ch.up else (ch.hangup_cause or "ORIGINATOR_CANCEL")

    def _progress(self, ch: Channel) -> None:
        ch.progress_us = self._now_us()
        ch.call_state = "RINGING"
        self._fire("CHANNEL_PROGRESS", ch)
        self._fire("CHANNEL_CALLSTATE", ch, extra={"Original-Channel-Call-State": "DOWN"})

    async def _answer_after(self, ch: Channel, answer_after: float | None,
                            timeout: float) -> tuple[Channel | None, str]:
        """Answer after ``answer_after`` (None: the emulator's answer delay), or time out first."""
        delay = self.answer_delay if answer_after is None else answer_after
        if delay > timeout:
            await trio.sleep(timeout)
            await self.hangup(ch.uuid, "NO_ANSWER")
            return None, "NO_ANSWER"
        await trio.sleep(delay)
        if not ch.up:
            return None, ch.hangup_cause or "ORIGINATOR_CANCEL"
        ch.state = "CS_EXECUTE"
        self._answer(ch)
        return ch, ""

    def bridge(self, a: Channel, b: Channel) -> None:
        now = self._now_us()
        a.peer, b.peer = b.uuid, a.uuid
        a.bridged_us = b.bridged_us = now
        for c in (a, b):
            c.variables["bridge_uuid"] = (b if c is a else a).uuid
        self._fire("CHANNEL_BRIDGE", a, extra={"Bridge-A-Unique-ID": a.uuid,
                                              "Bridge-B-Unique-ID": b.uuid})

    def _unbridge(self, ch: Channel) -> Channel | None:
        peer = self.channels.get(ch.peer) if ch.peer else None
        if peer is None:
            return None
        a, b = (peer, ch) if ch.originator == peer.uuid else (ch, peer)
        self._fire("CHANNEL_UNBRIDGE", a, extra={"Bridge-A-Unique-ID": a.uuid,
                                                "Bridge-B-Unique-ID": b.uuid})
        ch.peer = peer.peer = None
        return peer

    async def _bridge_app(self, ch: Channel, arg: str) -> str:
        leg, cause = await self.originate(arg, ch.caller_number, ch.caller_name, originator=ch)
        if leg is None:
            ch.variables["originate_disposition"] = cause
            return cause
        if not ch.up:
            await self.hangup(leg.uuid, "ORIGINATOR_CANCEL")
            return "_none_"
        self._answer(ch)
        self.bridge(ch, leg)
        while ch.up and ch.peer == leg.uuid and leg.up:
            await trio.sleep(0.05)
        return "_none_"

    async def _socket_app(self, ch: Channel, arg: str) -> str:
        words = arg.split()
        host, _, port = words[0].rpartition(":")
        try:
            conn_stream = await trio.open_tcp_stream(host or "127.0.0.1", int(port))
        except OSError:
            return "_none_"  # FS logs "Socket Error" and continues the dialplan
        conn = EslConnection(self, conn_stream, outbound_channel=ch,
                             socket_async="async" in words[1:], full="full" in words[1:])
        assert self._nursery is not None
        # the connection outlives this app (linger), so it runs in the emulator's nursery
        self._nursery.start_soon(conn.serve)
        # like park, the socket app runs the channel's queued messages (sendmsg) itself
        async with trio.open_nursery() as nursery:
            async def until_closed() -> None:
                await conn.closed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_closed)
            async for req in self._recvs[ch.uuid]:
                if ch.up:
                    await self._run_app(ch, req)
                req.done.set()
        return "_none_"

    # ------------------------------------------------------------------ hangup
    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> bool:
        ch = self.channels.get(uuid)
        if ch is None or not ch.up:
            return False
        self._hangup_sync(ch, cause)
        await trio.sleep(0)
        return True

    def _hangup_sync(self, ch: Channel, cause: str) -> None:
        now = self._now_us()
        ch.hangup_cause = cause
        ch.hangup_us = now
        ch.state, ch.call_state, ch.answer_state = "CS_HANGUP", "HANGUP", "hangup"
        ch.variables["hangup_cause"] = cause
        self._fire("CHANNEL_HANGUP", ch)
        for conn in list(self.connections):
            conn.channel_hungup(ch)
        peer = self._unbridge(ch)
        if peer is not None and peer.up:
            peer.hangup_cause = cause if cause != "NORMAL_CLEARING" else "NORMAL_CLEARING"
            peer.hangup_us = now
            peer.state, peer.call_state, peer.answer_state = "CS_HANGUP", "HANGUP", "hangup"
            peer.variables["hangup_cause"] = peer.hangup_cause
            self._fire("CHANNEL_HANGUP", peer)
            for conn in list(self.connections):
                conn.channel_hungup(peer)
        legs = [ch] + ([peer] if peer is not None and peer.alive else [])
        for leg in legs:
            self._record_stop(leg)
            if leg.conference:
                self.conferences.leave(leg)  # del-member before the hangup, as FreeSWITCH
            for scope in self._scopes.get(leg.uuid, []):
                scope.cancel()
        # the cancelled apps report CHANNEL_EXECUTE_COMPLETE from their own task; give them
        # one checkpoint to run before the completion events so the order matches FreeSWITCH
        assert self._nursery is not None
        self._nursery.start_soon(self._finish_hangup, legs)

    async def _finish_hangup(self, legs: list[Channel]) -> None:
        await trio.sleep(0)
        await trio.sleep(0)
        for leg in legs:
            leg.state = "CS_REPORTING"
            dur = max(0, (leg.hangup_us - leg.created_us) // 1_000_000)
            bill = max(0, (leg.hangup_us - leg.answered_us) // 1_000_000) if leg.answered_us else 0
            leg.variables.update({"duration": str(dur), "billsec": str(bill)})
            self._fire("CHANNEL_HANGUP_COMPLETE", leg)
        for leg in legs:
            for conn in list(self.connections):
                conn.channel_gone(leg)
        for leg in legs:
            leg.state = "CS_DESTROY"
            leg.alive = False
            self._fire("CHANNEL_DESTROY", leg)
            self.channels.pop(leg.uuid, None)
            q = self._queues.pop(leg.uuid, None)
            if q is not None:
                q.close()
            self._recvs.pop(leg.uuid, None)
            self._scopes.pop(leg.uuid, None)

    # ------------------------------------------------------------------ api
    async def api(self, line: str, conn: EslConnection | None = None) -> str:
        cmd, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        fn: Callable | None = getattr(self, f"_api_{cmd}", None)
        if fn is None:
            out = f"-ERR {cmd} Command not found!\n"
        else:
            try:
                out = await fn(arg)
            except (KeyError, ValueError, IndexError) as exc:
                out = f"-ERR {exc.args[0] if exc.args else 'invalid'}\n"
        return out or "-ERR no reply\n"

    def fire_api_event(self, line: str) -> None:
        """API events are created before the api runs but fired after it returns."""
        cmd, _, arg = line.strip().partition(" ")
        self._fire("API", extra={"API-Command": cmd, "API-Command-Argument": arg.strip()})

    async def _api_status(self, arg: str) -> str:
        up = trio.current_time() - self._t0
        return (f"UP {_uptime_text(up)}\n{STATUS_VERSION}\n"
                f"{self.sessions_since_startup} session(s) since startup\n"
                f"{len(self.channels)} session(s) - peak {len(self.channels)}, last 5min 0 \n"
                "0 session(s) per Sec out of max 30, peak 0, last 5min 0 \n"
                "1000 session(s) max\nmin idle cpu 0.00/99.00\n"
                "Current Stack Size/Max 240K/8192K\n")

    async def _api_version(self, arg: str) -> str:
        return "FreeSWITCH Version 1.10.12-release~64bit (-release 64bit)\n"

    async def _api_strepoch(self, arg: str) -> str:
        return str(self._now_us() // 1_000_000)

    async def _api_echo(self, arg: str) -> str:
        return arg

    async def _api_global_getvar(self, arg: str) -> str:
        return self.global_vars.get(arg, "")

    async def _api_show(self, arg: str) -> str:
        words = arg.split()
        what = words[0] if words else ""
        live = [c for c in self.channels.values() if c.alive]
        if what in ("channels", "calls") and words[1:] == ["as", "json"]:
            rows = [show_row(c, _local(c.created_us), self.hostname) for c in live]
            if what == "calls":
                by = {r["uuid"]: r for r in rows}
                out_rows = []
                for c in live:
                    if c.peer and c.originator == c.peer:
                        continue  # the B leg is shown as b_* of its A leg
                    out_rows.append(show_call_row(by[c.uuid], by.get(c.peer or "")))
                rows = out_rows
            if not rows:
                return '{"row_count":0}\n'
            return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":")) + "\n"
        if what in ("channels", "calls") and words[1:] == ["count"]:
            return f"\n{len(live)} total.\n"
        if what == "registrations":
            lines = ["reg_user,realm,token,url,expires,network_ip,network_port,network_proto,"
                     "hostname,metadata"]
            for r in self.registrations.values():
                lines.append(f"{r.user},{r.domain},{r.call_id},sofia/internal/{r.contact},"
                             f"{r.expires},{r.network_ip},{r.network_port},udp,"
                             f"{self.hostname},")
            return "\n".join(lines) + f"\n\n{len(self.registrations)} total.\n"
        return "-ERR Invalid command\n"

    def _uuid_arg(self, arg: str) -> tuple[Channel | None, list[str]]:
        words = arg.split()
        if not words:
            return None, []
        ch = self.channels.get(words[0])
        return (ch if ch is not None and ch.up else None), words[1:]

    async def _api_conference(self, arg: str) -> str:
        """``conference [<room>] list|mute|unmute|kick ...``: sim/freeswitch/conference.py."""
        return await self.conferences.api(arg)

    async def _api_uuid_kill(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None:
            return "-ERR No such channel!\n"
        await self.hangup(ch.uuid, rest[0] if rest else "NORMAL_CLEARING")
        return "+OK\n"

    async def _api_hupall(self, arg: str) -> str:
        cause = arg.split()[0] if arg else "NORMAL_CLEARING"
        for c in list(self.channels.values()):
            if c.up:
                self._hangup_sync(c, cause)
        return f"+OK hangup all channels with cause {cause}\n"

    async def _api_uuid_exists(self, arg: str) -> str:
        ch, _ = self._uuid_arg(arg)
        return "true" if ch else "false"

    async def _api_uuid_bridge(self, arg: str) -> str:
        words = arg.split()
        if len(words) < 2:
            return "-USAGE: <uuid> <other_uuid>\n"
        a, b = self.channels.get(words[0]), self.channels.get(words[1])
        if a is None or b is None or not a.up or not b.up:
            return f"-ERR Invalid uuid {words[0] if a is None else words[1]}\n"
        for c in (a, b):
            if c.peer:
                self._unbridge(c)
            self._valet_leave(c, "exit")
            self._answer(c)
        b.originator = a.uuid
        self.bridge(a, b)
        return f"+OK {b.uuid}\n"

    async def _api_uuid_transfer(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or not rest:
            return "-ERR No such channel!\n"
        legs = [ch]
        if rest[0] == "-both" and ch.peer:
            legs.append(self.channels[ch.peer])
            rest = rest[1:]
        elif rest[0] == "-bleg" and ch.peer:
            legs = [self.channels[ch.peer]]
            rest = rest[1:]
        dest = rest[0] if rest else ch.destination
        # the few destinations the emulator's built-in dialplan knows: the valet parking context of
        # docs/freeswitch.md (park+<slot> -> valet_park callengine <slot>) and inline intercept:<uuid>
        valet = re.fullmatch(r"park\+(\S+)", dest)
        inline_app = dest.partition(":") if len(rest) > 1 and rest[1] == "inline" else ("", "", "")
        for leg in legs:
            if leg.peer:
                self._unbridge(leg)
            for scope in self._scopes.get(leg.uuid, []):
                scope.cancel()
            leg.destination = dest
            leg.transfer_us = self._now_us()
            if valet:
                self.queue_app(leg.uuid, "valet_park", f"callengine {valet.group(1)}")
            elif inline_app[0] == "intercept" and inline_app[2]:
                self.queue_app(leg.uuid, "intercept", inline_app[2])
            elif inline_app[0] == "conference" and inline_app[2]:
                self.queue_app(leg.uuid, "conference", inline_app[2])
            else:
                self.queue_app(leg.uuid, "park", "")
        return "+OK\n"

    async def _api_uuid_hold(self, arg: str) -> str:
        words = arg.split()
        mode = ""
        if words and words[0] in ("off", "toggle"):
            mode = words.pop(0)
        ch = self.channels.get(words[0]) if words else None
        if ch is None or not ch.up:
            return "-ERR Operation failed\n"
        want = {"": True, "off": False, "toggle": not ch.held}[mode]
        if want == ch.held:
            return "-ERR Operation failed\n"
        now = self._now_us()
        legs = [ch] + ([self.channels[ch.peer]] if ch.peer in self.channels else [])
        for leg in legs:
            leg.held = want
            if want:
                leg.last_hold_us = now
                leg.call_state = "HELD"
                self._fire("CHANNEL_HOLD", leg)
            else:
                leg.hold_accum_us += now - leg.last_hold_us
                leg.call_state = "ACTIVE"
                self._fire("CHANNEL_UNHOLD", leg)
        return "+OK Success\n"

    async def _api_uuid_record(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or len(rest) < 2:
            return "-ERR Cannot locate session!\n" if ch is None else "-USAGE\n"
        action, path = rest[0], rest[1]
        if action == "start":
            self._record_start(ch, path)
            return "+OK Success\n"
        if action == "stop":
            if ch.recording is None:
                return "-ERR Cannot stop record session!\n"
            self._record_stop(ch)
            return "+OK Success\n"
        if action in ("mask", "unmask"):
            # switch_ivr_record_session_mask only flags the media bug of that file: no event fires,
            # the masked part is silence in the file; an unknown file is an error
            if ch.recording is None or path != ch.recording:
                return f"-ERR Cannot {action} recording session!\n"
            ch.record_masked = action == "mask"
            self.record_masks.append((ch.uuid, path, action))
            return "+OK Success\n"
        return "-ERR Invalid action\n"

    async def _api_uuid_broadcast(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or not rest:
            return "-ERR Invalid UUID\n"
        targets = [ch]
        if len(rest) > 1 and rest[-1] == "both" and ch.peer:
            targets.append(self.channels[ch.peer])
        app, _, appargs = rest[0].partition("::")
        for t in targets:
            if appargs:
                self.queue_app(t.uuid, app, appargs)
            else:
                self.queue_app(t.uuid, "playback", rest[0])
        return "+OK Message sent\n"

    async def _api_uuid_setvar(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or not rest:
            return "-ERR No such channel!\n"
        if len(rest) == 1:
            ch.variables.pop(rest[0], None)
        else:
            ch.variables[rest[0]] = " ".join(rest[1:])
        return "+OK\n"

    async def _api_uuid_getvar(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or not rest:
            return "-ERR No such channel!\n"
        return ch.variables.get(rest[0], "_undef_")

    async def _api_uuid_send_dtmf(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or not rest:
            return "-ERR No such channel!\n"
        target = self.channels.get(ch.peer) if ch.peer else ch
        assert self._nursery is not None
        self._nursery.start_soon(self.send_dtmf, (target or ch).uuid, rest[0])
        return f"+OK {ch.uuid} sent DTMF {rest[0]}.\n"

    async def _api_uuid_recv_dtmf(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None or not rest:
            return "-ERR No such channel!\n"
        assert self._nursery is not None
        self._nursery.start_soon(self.send_dtmf, ch.uuid, rest[0], 100, 0.02, "APP")
        return f"+OK {ch.uuid} received DTMF {rest[0]}.\n"

    async def _api_uuid_dump(self, arg: str) -> str:
        ch, rest = self._uuid_arg(arg)
        if ch is None:
            return "-ERR No such channel!\n"
        headers = self._render("CHANNEL_DATA", ch, None, None)
        self._seq -= 1  # a dump is not a fired event
        fmt = rest[0] if rest else "plain"
        if fmt == "json":
            return codec.serialize_event_json(headers).split(b"\n\n", 1)[1].decode()
        if fmt == "xml":
            return codec.serialize_event_xml(headers).split(b"\n\n", 1)[1].decode()
        return "".join(f"{k}: {v}\n" for k, v in headers)

    async def _api_originate(self, arg: str) -> str:
        words = arg.split()
        if len(words) < 2:
            return "-USAGE: <call url> <exten>|&<application_name>(<app_args>)\n"
        dial, app = words[0], " ".join(words[1:])
        ch, cause = await self.originate(dial)
        if ch is None:
            return f"-ERR {cause}\n"
        m = re.match(r"^&([A-Za-z_]+)(?:\((.*)\))?", app)
        if m:
            self.queue_app(ch.uuid, m.group(1), m.group(2) or "")
        else:
            ch.destination = app.split()[0]
            self.queue_app(ch.uuid, "park", "")
        return f"+OK {ch.uuid}\n"


@dataclass
class _Event:
    name: str
    subclass: str | None
    headers: list[tuple[str, object]]
    body: str | None
    _cache: dict[str, bytes] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return str(v)
        return None

    def wire(self, fmt: str) -> bytes:
        data = self._cache.get(fmt)
        if data is None:
            ser = {"plain": codec.serialize_event_plain, "json": codec.serialize_event_json,
                   "xml": codec.serialize_event_xml}[fmt]
            data = self._cache[fmt] = ser(self.headers, self.body)
        return data


class EslConnection:
    """One ESL socket: inbound (a client connected to us) or outbound (we connected out)."""

    def __init__(self, emu: FreeSwitchEmulator, stream: trio.abc.Stream,
                 outbound_channel: Channel | None = None, socket_async: bool = True,
                 full: bool = True) -> None:
        self.emu = emu
        self.stream = stream
        self.channel = outbound_channel
        self.outbound = outbound_channel is not None
        self.socket_async = socket_async
        self.full = full or not self.outbound
        self.authed = self.outbound
        self.connected = not self.outbound  # outbound: after 'connect'
        self.format = "plain"
        self.events: set[str] = set()
        self.subclasses: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.myevents: str | None = None
        self.linger: int | None = None
        self.closed = trio.Event()
        self._send, self._recv = trio.open_memory_channel[bytes | None](math.inf)
        self._cancel = trio.CancelScope()
        self._channel_gone = False

    # -- output
    def _put(self, data: bytes | None) -> None:
        try:
            self._send.send_nowait(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def send_raw(self, data: bytes) -> None:
        self._put(data)

    def abort(self) -> None:
        self._cancel.cancel()

    def may_want(self, name: str, subclass: str | None) -> bool:
        """Cheap pre-check of :meth:`wants` from the event name only (never a false no)."""
        if not self.connected:
            return False
        events = self.events
        if not events:
            return self.myevents is not None
        if "ALL" in events:
            return True
        if name not in events:
            return False
        return name != "CUSTOM" or subclass in self.subclasses

    def wants(self, ev: _Event) -> bool:
        if not self.connected:
            return False
        if self.channel is not None and ev.name == "CHANNEL_DESTROY" \
                and ev.get("Unique-ID") == self.channel.uuid:
            return False  # never seen on an outbound socket: the session is gone by then
        if self.myevents is not None:
            uid = ev.get("Unique-ID")
            if uid != self.myevents and not (
                    ev.name == "BACKGROUND_JOB" and ev.get("Job-Owner-UUID") == self.myevents):
                return False
        elif not self.events:
            return False
        if self.events and "ALL" not in self.events:
            if ev.name not in self.events:
                return False
            if ev.name == "CUSTOM" and ev.subclass not in self.subclasses:
                return False
        if self.filters:
            return any(ev.get(h) == v for h, v in self.filters)
        return True

    def deliver(self, ev: _Event) -> None:
        if self.wants(ev):
            self._put(ev.wire(self.format))

    def channel_hungup(self, ch: Channel) -> None:
        """Our controlled channel hung up: without linger FS says goodbye and closes right
        away, so CHANNEL_HANGUP_COMPLETE never reaches this socket (06b)."""
        if self.channel is None or ch.uuid != self.channel.uuid or self._channel_gone:
            return
        if self.linger is None:
            self._channel_gone = True
            self._put(codec.disconnect_notice(ch.uuid))
            self._put(None)

    def channel_gone(self, ch: Channel) -> None:
        """Our controlled channel reached HANGUP_COMPLETE: the linger notice (06a, 06c)."""
        if self.channel is None or ch.uuid != self.channel.uuid or self._channel_gone:
            return
        self._channel_gone = True
        if self.linger is not None:
            self._put(codec.linger_notice(ch.uuid, ch.name, self.linger))
            if self.linger >= 0:
                assert self.emu._nursery is not None
                self.emu._nursery.start_soon(self._linger_timeout, self.linger)

    async def _linger_timeout(self, seconds: int) -> None:
        await trio.sleep(seconds)
        self._put(codec.disconnect_notice(self.channel.uuid if self.channel else None))
        self._put(None)

    async def _writer(self) -> None:
        async for data in self._recv:
            while trio.current_time() < self.emu._stall_until:
                await trio.sleep(self.emu._stall_until - trio.current_time())
            if data is None:
                break
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                break  # the client went away (serve's except cannot see it inside the nursery's group)
        self._cancel.cancel()

    async def serve(self) -> None:
        self.emu.connections.add(self)
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    if not self.outbound:
                        self._put(codec.auth_request())
                    await self._reader()
                    # reader finished (EOF or exit): let the writer flush, then stop
                    await trio.sleep_forever()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.emu.connections.discard(self)
            self._send.close()
            with trio.CancelScope(shield=True):
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            self.closed.set()

    async def _reader(self) -> None:
        parser = CommandParser()
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            parser.receive_data(data)
            try:
                for cmd in parser:
                    if not await self._handle(cmd):
                        return
            except RemoteProtocolError:
                self._put(None)  # FS drops a peer that speaks garbage
                return
            if not data:
                self._cancel.cancel()
                return

    # -- commands
    def reply(self, text: str, extra: list[tuple[str, str]] | None = None) -> None:
        self._put(codec.command_reply(text, extra or []))

    async def _handle(self, cmd: Command) -> bool:
        name, args = cmd.name, cmd.args
        if self.outbound and not self.connected:
            if name != "connect":
                self.reply("-ERR command not found")
                return True
            self.connected = True
            assert self.channel is not None
            headers = self.emu._render("CHANNEL_DATA", self.channel, None, None)
            self._put(codec.connect_reply(headers, "async" if self.socket_async else "static",
                                          "full" if self.full else "single-channel"))
            return True
        if not self.authed:
            if name == "auth":
                if args == self.emu.password:
                    self.authed = True
                    self.reply("+OK accepted")
                    return True
                self.reply("-ERR invalid")
                self._put(codec.disconnect_notice())
                self._put(None)
                return False
            self.reply("-ERR command not found")
            return True
        restricted = {"api", "bgapi", "event", "linger", "log", "sendevent", "nixevent",
                      "noevents", "filter"}
        if self.outbound and not self.full and name in restricted:
            self.reply("-ERR command not found")
            return True
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            self.reply("-ERR command not found")
            return True
        return await handler(cmd, args)

    async def _cmd_exit(self, cmd: Command, args: str) -> bool:
        self.reply("+OK bye")
        self._put(codec.disconnect_notice(self.channel.uuid if self.channel else None))
        self._put(None)
        return False

    async def _cmd_event(self, cmd: Command, args: str) -> bool:
        words = args.split()
        if not words:
            self.reply("-ERR no keywords supplied")
            return True
        fmt = "plain"
        if words[0] in ("plain", "json", "xml"):
            fmt = words.pop(0)
        if not words:
            self.reply("-ERR no keywords supplied")
            return True
        self.format = fmt
        custom = False
        for w in words:
            if w == "CUSTOM":
                custom = True
                self.events.add(w)
            elif w in KNOWN_EVENTS:
                self.events.add(w)
            elif custom or "::" in w:
                self.subclasses.add(w)
                self.events.add("CUSTOM")
        self.reply(f"+OK event listener enabled {fmt}")
        return True

    async def _cmd_nixevent(self, cmd: Command, args: str) -> bool:
        for w in args.split():
            if w == "ALL":
                self.events.clear()
                self.subclasses.clear()
            self.events.discard(w)
            self.subclasses.discard(w)
        self.reply("+OK events nixed")
        return True

    async def _cmd_noevents(self, cmd: Command, args: str) -> bool:
        if not self.events and self.myevents is None:
            self.reply("-ERR not listening for events")
            return True
        self.events.clear()
        self.subclasses.clear()
        self.reply("+OK no longer listening for events")
        return True

    async def _cmd_filter(self, cmd: Command, args: str) -> bool:
        words = args.split(" ", 2)
        if words and words[0] == "delete":
            if len(words) < 2:
                self.reply("-ERR invalid syntax")
                return True
            h = words[1]
            v = words[2] if len(words) > 2 else ""
            self.filters = [(fh, fv) for fh, fv in self.filters
                            if not (fh == h and (not v or fv == v))]
            self.reply(f"+OK filter deleted. [{h}][{v}]")
            return True
        if len(words) < 2:
            self.reply("-ERR invalid syntax")
            return True
        h, v = words[0], " ".join(words[1:])
        self.filters.append((h, v))
        self.reply(f"+OK filter added. [{h}]=[{v}]")
        return True

    async def _cmd_api(self, cmd: Command, args: str) -> bool:
        self.emu.command_log.append("api " + args)
        out = await self.emu.api(args, self)
        self._put(codec.api_response(out))
        self.emu.fire_api_event(args)
        return True

    async def _cmd_bgapi(self, cmd: Command, args: str) -> bool:
        job = cmd.header("Job-UUID") or new_uuid()
        self.emu.command_log.append("bgapi " + args)
        self.reply(f"+OK Job-UUID: {job}", [("Job-UUID", job)])
        assert self.emu._nursery is not None
        self.emu._nursery.start_soon(self._bg_job, job, args)
        return True

    async def _bg_job(self, job: str, line: str) -> None:
        out = await self.emu.api(line, self)
        self.emu.fire_api_event(line)
        c, _, a = line.strip().partition(" ")
        extra = {"Job-UUID": job, "Job-Command": c, "Job-Command-Arg": a}
        if self.channel is not None:
            extra["Job-Owner-UUID"] = self.channel.uuid
        self.emu._fire("BACKGROUND_JOB", extra=extra, body=out)

    async def _cmd_sendmsg(self, cmd: Command, args: str) -> bool:
        uid = args.strip() or cmd.header("session-id") or (self.channel.uuid if self.channel else "")
        ch = self.emu.channels.get(uid)
        if ch is None or not ch.up:
            self.reply(f"-ERR invalid session id [{uid}]")
            return True
        call_command = (cmd.header("call-command") or "").lower()
        if call_command == "execute":
            app = cmd.header("execute-app-name") or ""
            arg = cmd.header("execute-app-arg")
            if arg is None and cmd.body:
                arg = cmd.body.decode("utf-8", "replace")
            loops = cmd.header("loops") or "1"
            req = self.emu.queue_app(ch.uuid, app, arg or "", cmd.header("Event-UUID"),
                                     int(loops) if loops.isdigit() else 1)
            if self.outbound and not self.socket_async and \
                    (cmd.header("async") or "").lower() != "true":
                await req.done.wait()  # static socket: +OK only once the app finished
        elif call_command == "hangup":
            # FS queues the message; the session thread hangs up on its next tick (~20 ms),
            # after this +OK has been written
            self.reply("+OK")
            assert self.emu._nursery is not None
            self.emu._nursery.start_soon(self.emu.hangup, ch.uuid,
                                         cmd.header("hangup-cause") or "NORMAL_CLEARING")
            return True
        elif call_command in ("unicast", "nomedia", "xferext"):
            pass
        else:
            self.reply("-ERR invalid command")
            return True
        self.reply("+OK")
        return True

    async def _cmd_sendevent(self, cmd: Command, args: str) -> bool:
        ev_uuid = new_uuid()
        name = args.split()[0] if args else "CUSTOM"
        sub = cmd.header("Event-Subclass")
        extra = {k: v for k, v in cmd.headers.items() if k.lower() != "content-length"}
        extra["Event-UUID"] = ev_uuid
        self.reply(f"+OK {ev_uuid}")
        self.emu._fire(name, extra=extra, subclass=sub,
                       body=cmd.body.decode("utf-8", "replace") if cmd.body else None)
        return True

    async def _cmd_myevents(self, cmd: Command, args: str) -> bool:
        words = args.split()
        fmt = None
        if words and words[-1] in ("plain", "json", "xml"):
            fmt = words.pop()
        uid = words[0] if words else (self.channel.uuid if self.channel else None)
        if uid is None:
            self.reply("-ERR invalid uuid")
            return True
        if fmt is not None and uid not in self.emu.channels:
            self.reply("-ERR invalid uuid")
            return True
        if self.myevents is not None:
            self.reply("-ERR aready enabled.")
            return True
        self.myevents = uid
        if fmt:
            self.format = fmt
        self.events.add("ALL")
        self.reply("+OK Events Enabled")
        return True

    async def _cmd_linger(self, cmd: Command, args: str) -> bool:
        if self.channel is None:
            self.reply("-ERR not controlling a session")
            return True
        secs = args.strip()
        if secs.lstrip("-").isdigit():
            self.linger = int(secs)
            self.reply(f"+OK will linger {self.linger} seconds")
        else:
            self.linger = -1
            self.reply("+OK will linger")
        return True

    async def _cmd_nolinger(self, cmd: Command, args: str) -> bool:
        if self.channel is None:
            self.reply("-ERR not controlling a session")
            return True
        self.linger = None
        self.reply("+OK will not linger")
        return True

    async def _cmd_resume(self, cmd: Command, args: str) -> bool:
        self.reply("+OK" if self.channel is not None else "-ERR not controlling a session")
        return True

    async def _cmd_getvar(self, cmd: Command, args: str) -> bool:
        if self.channel is None:
            self.reply("-ERR command not found")
            return True
        self.reply(self.channel.variables.get(args.strip(), ""))
        return True

    async def _cmd_divert_events(self, cmd: Command, args: str) -> bool:
        if self.channel is None:
            self.reply("-ERR not controlling a session.")
            return True
        self.reply(f"+OK events {'diverted' if args.strip() == 'on' else 'not diverted'}")
        return True

    async def _cmd_log(self, cmd: Command, args: str) -> bool:
        lvl = args.strip() or "7"
        self.reply(f"+OK log level {lvl} [{lvl}]")
        return True

    async def _cmd_nolog(self, cmd: Command, args: str) -> bool:
        self.reply("+OK no longer logging")
        return True


def _uptime_text(seconds: float) -> str:
    s = int(seconds)
    ms = int((seconds - s) * 1000)
    return (f"0 years, {s // 86400} days, {s // 3600 % 24} hours, {s // 60 % 60} minutes, "
            f"{s % 60} seconds, {ms} milliseconds, 0 microseconds")


def _local(us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us / 1e6))

