"""Conference rooms on the node (#10 part 3): room configuration, PIN checks, the live rooms' state
machines fed from FreeSWITCH, and mute/unmute/kick through ESL.

Rule 1: the decisions live in ``engine.fsm.conference`` (one pure machine per live room); this
        module only holds the machines, performs their effects and talks to the switch.
Rule 2: a PIN is never stored, logged or put on a CTI event: only ``hash_pin``'s PBKDF2 string.
Rule 3: rooms are per tenant; the name on the switch is ``<number>-<tenant>`` (mod_conference's
        names are switch-wide), so two tenants' room 3000 never meet. ``switch_room`` and
        ``parse_switch_room`` are the only places that know the format.
Rule 4: FreeSWITCH is the authority on membership: a mute/kick is confirmed by its ``+OK``
        reply (``-ERR`` becomes a failed reply) and shows in CTI only when its maintenance event
        arrives.

Theory of operation
``ConferenceService.observe(ConferenceMaintenance)`` steps the room's machine and publishes its CTI
events (tenant from the room name); ``control(...)`` steps the machine with a ``ConferenceControl``,
sends the ``MediaConferenceMember`` it asks for as ``api conference <room> <verb> <id>`` over the
room's node's connection and replies. ``join_check`` answers "may this caller enter this room with
this PIN, and with which flags" for the flow node, a transfer and the JoinConference API.
``ConferenceEsl`` is the ESL side: one connection per FreeSWITCH node subscribed to
``CUSTOM conference::maintenance`` only, so the call path's link is untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from engine.fsm import conference as fsm
from engine.fsm.conference import check_pin, parse_switch_room, switch_room
from engine.messages import (
    ConferenceControl,
    ConferenceMaintenance,
    CtiEvent,
    MediaConferenceMember,
    PublishCti,
    Reply,
)

__all__ = ["RoomConfig", "ConferenceError", "hash_pin", "check_pin", "switch_room", "rooms_from_rows",
           "fill_flow_rooms", "member_flags",
           "parse_switch_room", "JoinDecision", "ConferenceService", "ConferenceEsl"]

log = logging.getLogger(__name__)

PBKDF2_ROUNDS = 100_000


class ConferenceError(Exception):
    """A conference request that cannot be served; ``code`` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def hash_pin(pin: str, salt: bytes | None = None, rounds: int = PBKDF2_ROUNDS) -> str:
    """``pbkdf2_sha256$<rounds>$<salt hex>$<digest hex>`` of a 4..12 digit PIN."""
    if not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise ConferenceError("INVALID_ARGUMENT", "a conference PIN is 4 to 12 digits")
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, rounds)
    return f"pbkdf2_sha256${rounds}${salt.hex()}${digest.hex()}"


class RoomConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One conference room of a tenant (PostgreSQL ``conference_rooms``, migration 0011)."""

    tenant: str
    number: str  #: what callers dial / transfer to, digits
    name: str = ""
    moderator_pin_hash: str = ""  #: "" = no moderator PIN (nobody joins as moderator by PIN)
    member_pin_hash: str = ""  #: "" = members join without a PIN
    max_members: int = 0  #: 0 = no limit
    wait_for_moderator: bool = False
    #: extra mod_conference member flags for everyone (e.g. "mute": join muted)
    flags: tuple[str, ...] = ()


def member_flags(cfg: RoomConfig, *, moderator: bool) -> tuple[str, ...]:
    """mod_conference member flags for a member of ``cfg``: the room's own, ``wait-mod`` for a
    member of a room that waits for its moderator (FreeSWITCH plays it music until one comes),
    ``moderator`` for the moderator."""
    extra = ("moderator",) if moderator else (("wait-mod",) if cfg.wait_for_moderator else ())
    return tuple(dict.fromkeys((*cfg.flags, *extra)))


def rooms_from_rows(rows: Iterable[Any]) -> list[RoomConfig]:
    """``RoomConfig`` from ``conference_rooms`` rows (``adapters.postgres.config.ConferenceRoom``)."""
    return [RoomConfig(tenant=r.tenant, number=r.number, name=r.name,
                       moderator_pin_hash=r.moderator_pin_hash, member_pin_hash=r.member_pin_hash,
                       max_members=r.max_members, wait_for_moderator=r.wait_for_moderator,
                       flags=tuple(r.flags)) for r in rows]


def fill_flow_rooms(flow: Any, room_of: Callable[[str], RoomConfig | None]) -> Any:
    """The flow with each conference node's PIN hashes and flags taken from its room
    (``room_of(number)``) where the node does not set them itself; unchanged when there is none."""
    from engine.flows.model import ConferenceNode, fill_nodes

    def fill(node: ConferenceNode) -> ConferenceNode:
        cfg = room_of(node.room)
        if cfg is None:
            return node
        return msgspec.structs.replace(
            node, moderator_pin_hash=node.moderator_pin_hash or cfg.moderator_pin_hash,
            member_pin_hash=node.member_pin_hash or cfg.member_pin_hash,
            flags=node.flags or member_flags(cfg, moderator=False))

    return fill_nodes(flow, ConferenceNode, fill)


@dataclass(frozen=True)
class JoinDecision:
    room: str  #: the switch room name
    flags: tuple[str, ...]
    moderator: bool


class ConferenceService:
    """The node's live rooms (see the module docstring)."""

    def __init__(self, publish: Callable[[CtiEvent], None],
                 rooms: Iterable[RoomConfig] = (),
                 send_api: Callable[[str, str], Awaitable[str]] | None = None,
                 call_of: Callable[[str], str] | None = None,
                 source: Callable[[], tuple[Any, Iterable[RoomConfig]]] | None = None) -> None:
        self.publish = publish
        self._configs: dict[tuple[str, str], RoomConfig] = {}
        self.set_rooms(rooms)
        #: live configuration: () -> (version, rooms); re-read when the version changes (the
        #: snapshot that LISTEN/NOTIFY keeps current, in ``callengine run``)
        self.source = source
        self._version: Any = object()
        #: (node, "conference ...") -> the api reply body; None: no switch (tests of the machine)
        self.send_api = send_api
        #: channel uuid -> call id ("" unknown): when the events carry no callengine_call_id
        self.call_of = call_of
        self.live: dict[str, fsm.Room] = {}
        self.errors = 0

    # ------------------------------------------------------------------ configuration
    def set_rooms(self, rooms: Iterable[RoomConfig]) -> None:
        self._configs = {(r.tenant, r.number): r for r in rooms}

    @property
    def configs(self) -> dict[tuple[str, str], RoomConfig]:
        if self.source is not None:
            version, rooms = self.source()
            if version != self._version:
                self._version = version
                self.set_rooms(rooms)
        return self._configs

    def config(self, tenant: str, number: str) -> RoomConfig:
        cfg = self.configs.get((tenant, number))
        if cfg is None:
            raise ConferenceError("NOT_FOUND", f"no conference room {number} for tenant {tenant}")
        return cfg

    def needs_pin(self, tenant: str, number: str) -> bool:
        cfg = self.config(tenant, number)
        return bool(cfg.member_pin_hash or cfg.moderator_pin_hash)

    def join_check(self, tenant: str, number: str, pin: str = "", *,
                   moderator: bool = False, vouched: bool = False) -> JoinDecision:
        """May a caller enter ``number`` with ``pin``? The moderator PIN joins as moderator, the
        member PIN (or none when the room has no member PIN) as member; ``moderator=True`` is an
        API caller whose role already allows it; ``vouched=True`` (a blind transfer into the room)
        joins as member without a PIN. Raises ``ConferenceError``: NOT_FOUND,
        PERMISSION_DENIED (wrong PIN), RESOURCE_EXHAUSTED (room full)."""
        cfg = self.config(tenant, number)
        name = switch_room(tenant, number)
        if pin and cfg.moderator_pin_hash and check_pin(pin, cfg.moderator_pin_hash):
            moderator = True
        elif not moderator and not vouched:  # vouched: a blind transfer by someone in the call
            if cfg.member_pin_hash and not check_pin(pin, cfg.member_pin_hash):
                raise ConferenceError("PERMISSION_DENIED", f"wrong PIN for conference room {number}")
            if not cfg.member_pin_hash and pin and cfg.moderator_pin_hash:
                raise ConferenceError("PERMISSION_DENIED", f"wrong PIN for conference room {number}")
        room = self.live.get(name)
        if cfg.max_members and room is not None and len(room.members) >= cfg.max_members:
            raise ConferenceError("RESOURCE_EXHAUSTED",
                                  f"conference room {number} is full ({cfg.max_members} members)")
        return JoinDecision(room=name, flags=member_flags(cfg, moderator=moderator), moderator=moderator)

    # ------------------------------------------------------------------ the machines
    def _room(self, name: str) -> fsm.Room:
        room = self.live.get(name)
        tenant, number = parse_switch_room(name)
        cfg = self.configs.get((tenant, number))
        if room is None:
            return fsm.new_room(name, tenant, wait_for_moderator=bool(cfg and cfg.wait_for_moderator),
                                max_members=cfg.max_members if cfg else 0)
        limit = cfg.max_members if cfg else 0
        # a room's capacity follows its row while it runs (PutRoom); waiting for a moderator does not
        return room if room.max_members == limit else msgspec.structs.replace(room, max_members=limit)

    def _step(self, name: str, event: ConferenceMaintenance | ConferenceControl) -> list[Any]:
        room = self._room(name)
        room, effects = fsm.step(room, event)
        if room.state is fsm.RoomState.EMPTY:
            self.live.pop(name, None)
        else:
            self.live[name] = room
        for e in effects:
            if isinstance(e, PublishCti):
                self.publish(e.event)
        return effects

    def observe(self, ev: ConferenceMaintenance) -> list[MediaConferenceMember]:
        """One maintenance event from the switch (never raises: a bad event is counted). Returns
        what the machine asks the switch (a moderator's key): the caller sends it (``perform``)."""
        if not ev.call_id and ev.channel and self.call_of is not None:
            ev = msgspec.structs.replace(ev, call_id=self.call_of(ev.channel))
        try:
            effects = self._step(ev.room, ev)
        except Exception:  # noqa: BLE001 - one bad event must not stop the room's stream
            self.errors += 1
            log.exception("conference %s: event %s not applied", ev.room, ev.action)
            return []
        return [e for e in effects if isinstance(e, MediaConferenceMember)]

    async def perform(self, asks: list[MediaConferenceMember]) -> list[str]:
        """Send what a moderator's key asked, in order; returns the switch's replies (a ``-ERR``,
        e.g. the member left meanwhile, is logged: the maintenance events tell what happened)."""
        from adapters.freeswitch.mapping import conference_command

        out = []
        for e in asks:
            if self.send_api is None:
                break
            try:
                body = await self.send_api(e.node, conference_command(e))
            except Exception as exc:  # noqa: BLE001 - the switch unreachable: logged, not raised
                log.warning("conference %s: %s %s not sent: %s", e.room, e.action, e.member_id, exc)
                continue
            out.append(body)
            if not body.startswith("+OK"):
                log.info("conference %s: %s %s: %s", e.room, e.action, e.member_id, body.strip())
        return out

    def members(self, tenant: str, number: str) -> list[fsm.Member]:
        room = self.live.get(switch_room(tenant, number))
        return sorted(room.members.values(), key=lambda m: m.member_id) if room else []

    def member_of_call(self, tenant: str, number: str, call_id: str) -> int:
        """The member id of ``call_id`` in the room (0: not in it)."""
        return next((m.member_id for m in self.members(tenant, number) if m.call_id == call_id), 0)

    def request(self, tenant: str, number: str, action: str, member_id: int, *, at: float,
                by_member: int = 0, request_id: str = "r") -> tuple[Reply, list[MediaConferenceMember]]:
        """The machine's verdict on a mute/unmute/kick and what it asks the switch (nothing sent:
        ``control`` sends it over ESL, the simulator performs it itself)."""
        if action not in ("mute", "unmute", "kick"):
            return Reply(request_id=request_id, ok=False, code="INVALID_ARGUMENT",
                         message=f"unknown conference action {action!r}"), []
        name = switch_room(tenant, number)
        cmd = ConferenceControl(room=name, action=action, member_id=member_id, at=at,  # type: ignore[arg-type]
                                by_member=by_member, request_id=request_id)
        effects = self._step(name, cmd)
        reply = next(e for e in effects if isinstance(e, Reply))
        return reply, [e for e in effects if isinstance(e, MediaConferenceMember)]

    async def control(self, tenant: str, number: str, action: str, member_id: int, *,
                      at: float, by_member: int = 0, request_id: str = "r") -> Reply:
        """Mute/unmute/kick ``member_id`` of the tenant's room; the reply is the switch's verdict."""
        reply, asks = self.request(tenant, number, action, member_id, at=at, by_member=by_member,
                                   request_id=request_id)
        for e in asks:
            from adapters.freeswitch.mapping import conference_command

            if self.send_api is None:
                return Reply(request_id=request_id, ok=False, code="UNAVAILABLE",
                             message="no media node for conferences")
            try:
                body = await self.send_api(e.node, conference_command(e))
            except Exception as exc:  # noqa: BLE001 - the switch unreachable: a typed reply
                return Reply(request_id=request_id, ok=False, code="UNAVAILABLE",
                             message=f"conference {action}: {exc}")
            if not body.startswith("+OK"):
                return Reply(request_id=request_id, ok=False, code="FAILED_PRECONDITION",
                             message=f"conference {action}: {body.strip()}")
        return reply

    def statistics(self) -> dict[str, Any]:
        return {"rooms": len(self.live), "members": sum(len(r.members) for r in self.live.values()),
                "errors": self.errors}


class ConferenceEsl:
    """One ESL connection per FreeSWITCH node for conferences: maintenance events in, ``api
    conference ...`` out. Reconnects with a bounded backoff; ``run`` is a nursery task."""

    def __init__(self, configs: Iterable[Any], service: ConferenceService, *,
                 backoff_s: float = 0.5, max_backoff_s: float = 5.0) -> None:
        self.configs = {c.name: c for c in configs}
        self.service = service
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.conns: dict[str, Any] = {}
        self._nursery: Any = None
        self._up: dict[str, trio.Event] = {n: trio.Event() for n in self.configs}
        service.send_api = self.api

    async def api(self, node: str, cmd: str) -> str:
        name = node if node in self.conns else next(iter(self.conns), "")
        conn = self.conns.get(name)
        if conn is None:
            raise ConnectionError(f"no ESL connection for conferences on node {node!r}")
        body: str = await conn.api(cmd)
        return body

    async def wait_all_up(self) -> None:
        for ev in self._up.values():
            await ev.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            self._nursery = n
            for name in self.configs:
                n.start_soon(self._node, name)
            task_status.started()

    async def _node(self, name: str) -> None:
        from adapters.freeswitch import codec
        from adapters.freeswitch.link import open_authenticated
        from adapters.freeswitch.mapping import map_conference

        cfg = self.configs[name]
        delay = self.backoff_s
        while True:
            try:
                conn = await open_authenticated(cfg)
            except (OSError, trio.TooSlowError, Exception) as exc:  # noqa: BLE001 - retried
                log.warning("conference ESL %s: %s; retry in %.1f s", name, exc, delay)
                await trio.sleep(delay)
                delay = min(self.max_backoff_s, delay * 2)
                continue

            async def on_event(ev: Any, _name: str = name) -> None:
                m = map_conference(ev, trio.current_time(), _name)
                if m is not None:
                    asks = self.service.observe(m)
                    if asks:  # never awaited here: the reply would come through this very reader
                        self._nursery.start_soon(self.service.perform, asks)

            conn.on_event = on_event
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(conn.serve)
                    await conn.command(codec.event("plain", "CUSTOM", "conference::maintenance"))
                    self.conns[name] = conn
                    self._up[name].set()
                    delay = self.backoff_s
            except Exception as exc:  # noqa: BLE001 - reconnect
                log.warning("conference ESL %s lost: %s", name, exc)
            finally:
                self.conns.pop(name, None)
                self._up[name] = trio.Event()
                await conn.aclose()
            await trio.sleep(delay)
