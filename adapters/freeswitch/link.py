"""Inbound ESL: one supervised link per FreeSWITCH node, and what the adapter knows of that node.

Rules
-----
* :class:`MediaNode` is the adapter's view of ONE FreeSWITCH node: its channels (``ChannelTable``:
  UUID <-> (call id, leg), answered, bridged), its pending originates, its health. Every event from
  that node, whether it came over the inbound link or an outbound ``socket`` session, goes through
  ``MediaNode.handle``: map (pure, ``mapping.py``), update the table, deliver to the engine.
* :class:`EslLink` owns the inbound connection and never gives up: connect, ``auth``, subscribe,
  reconcile, serve; on any failure (socket error, ``RemoteProtocolError`` from bad bytes, missed
  heartbeats, EOF) it closes the connection, waits a backoff with full jitter
  (``uniform(0, min(cap, base * 2**attempt))``) and starts over. The engine keeps running.
* Health: connected and a HEARTBEAT seen within ``heartbeat_s * missed_heartbeats`` (the watchdog
  kills the connection past that). A node whose last heartbeat is older than 1.5 intervals is still
  connected but not *healthy*: originates go elsewhere.
* Reconcile after every (re)connect, after subscribing (so nothing is missed in between):
  ``show channels as json`` is the truth.
    - a channel FreeSWITCH has and we do not: ask its ``callengine_*`` variables (``uuid_getvar``),
      then emit ``ChannelCreated`` (+ ``ChannelAnswered`` when it is up), so no live call is
      forgotten;
    - a channel we knew before the reconnect that FreeSWITCH no longer has, and a call the engine
      believes live on this node (``live_calls(node)``) with no channel and no originate in flight:
      emit ``ChannelHangup(cause=vanished_cause)`` (default ``LOSE_RACE``, see docs/freeswitch.md),
      so no call actor is orphaned and each still writes its one CDR.
  Registrations are re-read too (``show registrations``) so device presence cannot go stale.
* The password is only revealed to the auth encoder; errors name the node, never the secret.
"""

from __future__ import annotations

import json
import logging
import random
import uuid as _uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec
import trio

from adapters.freeswitch import codec
from adapters.freeswitch.codec import EslEvent, RemoteProtocolError
from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.connection import ConnectionLost, EslConnection, EslError, EslTimeout
from adapters.freeswitch.mapping import (
    CALL_VAR,
    LEG_VAR,
    SUBSCRIBE_EVENTS,
    ChannelId,
    CommandError,
    DeviceEvent,
    EventMapper,
    OriginateSettings,
    Target,
    map_command,
)
from adapters.freeswitch.presence import DeviceRegistry, parse_show_registrations
from engine.actors.errors import MailboxFull
from engine.messages import (
    ChannelAnswered,
    ChannelBridged,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelUnbridged,
    HangupCause,
    MediaCommand,
    MediaOriginate,
)

__all__ = [
    "ChannelTable",
    "channel_rows",
    "EslAuthError",
    "EslLink",
    "HeartbeatLost",
    "MediaNode",
    "NodeHealth",
    "Sink",
    "open_authenticated",
    "row_answered",
    "var_value",
]

log = logging.getLogger("callengine.freeswitch")


class EslAuthError(EslError):
    """FreeSWITCH refused our password (the message never contains it)."""


class HeartbeatLost(EslError):
    pass


class Sink(Protocol):
    """Where media events go: ``engine.actors.Node`` is one."""

    def deliver_nowait(self, message: Any) -> None: ...

    async def deliver(self, message: Any) -> None: ...


class NodeHealth(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    connected: bool
    healthy: bool
    heartbeat_age_s: float
    channels: int
    reconnects: int
    last_error: str = ""


# ---------------------------------------------------------------------------------------------
# channels of one node
# ---------------------------------------------------------------------------------------------


class ChannelInfo:
    __slots__ = ("answered", "bridged", "call_id", "hungup", "leg", "uuid")

    def __init__(self, uuid: str, call_id: str, leg: str) -> None:
        self.uuid = uuid
        self.call_id = call_id
        self.leg = leg
        self.answered = False
        self.bridged = False
        self.hungup = False


class ChannelTable:
    """UUID <-> (call id, leg) for the channels of one node, plus recently removed UUIDs."""

    def __init__(self, remember_gone: int = 10_000) -> None:
        self.by_uuid: dict[str, ChannelInfo] = {}
        self.by_leg: dict[tuple[str, str], str] = {}
        self._gone: deque[str] = deque()
        self._gone_set: set[str] = set()
        self._cap = remember_gone

    def __len__(self) -> int:
        return len(self.by_uuid)

    def add(self, uuid: str, call_id: str, leg: str) -> ChannelInfo:
        info = self.by_uuid.get(uuid)
        if info is None:
            info = self.by_uuid[uuid] = ChannelInfo(uuid, call_id, leg)
            self.by_leg[(call_id, leg)] = uuid
        return info

    def remove(self, uuid: str) -> ChannelInfo | None:
        info = self.by_uuid.pop(uuid, None)
        if info is not None and self.by_leg.get((info.call_id, info.leg)) == uuid:
            del self.by_leg[(info.call_id, info.leg)]
        if uuid not in self._gone_set:
            self._gone.append(uuid)
            self._gone_set.add(uuid)
            if len(self._gone) > self._cap:
                self._gone_set.discard(self._gone.popleft())
        return info

    def gone(self, uuid: str) -> bool:
        return uuid in self._gone_set

    def has_leg(self, call_id: str, leg: str) -> bool:
        return (call_id, leg) in self.by_leg

    def resolve(self, call_id: str, leg: str) -> Target:
        uuid = self.by_leg.get((call_id, leg))
        if uuid is None:
            return Target(call_id if leg == "a" else leg)
        return Target(uuid, self.by_uuid[uuid].bridged)

    def calls(self) -> set[str]:
        return {info.call_id for info in self.by_uuid.values()}


Clock = Callable[[], float]
#: ("event:<MediaEvent type>" | "command:<MediaCommand type>", call id, host clock)
Trace = Callable[[str, str, float], None]


class MediaNode:
    """The adapter's state for one FreeSWITCH node (see the module rules)."""

    def __init__(self, name: str, sink: Sink | None = None, *,
                 registry: DeviceRegistry | None = None,
                 settings: OriginateSettings | None = None,
                 clock: Clock = trio.current_time,
                 bind: Callable[[str, str], None] | None = None,
                 trace: Trace | None = None,
                 pending_originate_factor: float = 2.0) -> None:
        self.name = name
        self.sink = sink
        self.registry = registry if registry is not None else DeviceRegistry()
        self.settings = settings or OriginateSettings()
        self.clock = clock
        self.bind = bind
        self.trace = trace
        self.table = ChannelTable()
        self.mapper = EventMapper(name)
        #: Job-UUID -> the leg an originate in flight will create
        self.jobs: dict[str, ChannelId] = {}
        #: Job-UUID -> when we stop waiting for its BACKGROUND_JOB (sent + factor x timeout):
        #: a result lost with a connection would otherwise keep the call "in flight" forever
        self.job_deadlines: dict[str, float] = {}
        self.pending_originate_factor = pending_originate_factor
        self.jobs_expired = 0
        self.link: EslLink | None = None
        #: call id -> outbound socket session controlling its caller's channel
        self.sessions: dict[str, Any] = {}
        self.last_heartbeat = -float("inf")
        self.heartbeats = 0
        self.delivered = 0
        self.commands = 0
        self.commands_dropped = 0
        self.command_errors = 0

    # ------------------------------------------------------------------ events in
    async def deliver(self, message: Any) -> None:
        sink = self.sink
        if sink is None:
            return
        self.delivered += 1
        try:
            sink.deliver_nowait(message)
        except MailboxFull:
            await sink.deliver(message)

    async def handle(self, ev: EslEvent) -> None:
        """One event from this node (any connection): map, update the table, deliver."""
        if ev.name == "HEARTBEAT":
            self.last_heartbeat = self.clock()
            self.heartbeats += 1
            return
        now = self.clock()
        m = self.mapper(ev, now, self.table.by_uuid)
        if ev.name == "BACKGROUND_JOB":
            job_uuid = ev.get("Job-UUID")
            job = self.jobs.pop(job_uuid, None)  # type: ignore[arg-type]
            self.job_deadlines.pop(job_uuid, None)  # type: ignore[arg-type]
            if job is None and m is not None:
                return  # not an originate of this node's (or already reported)
        if m is None:
            return
        if isinstance(m, DeviceEvent):
            for state in self.registry.apply(m):
                await self.deliver(state)
            return
        if not self._track(ev, m):
            return
        if self.trace is not None:
            self.trace("event:" + type(m).__name__, m.call_id, now)
        await self.deliver(m)

    def _track(self, ev: EslEvent, m: Any) -> bool:
        """Keep the channel table in step; False when the event must not be delivered."""
        t = type(m)
        table = self.table
        if t is ChannelCreated:
            uid = ev.get("Unique-ID")
            if isinstance(uid, str) and not table.gone(uid):
                table.add(uid, m.call_id, m.leg)
            if m.leg == "a" and self.bind is not None:
                self.bind(m.call_id, self.name)
        elif t is ChannelAnswered:
            info = table.by_uuid.get(ev.get("Unique-ID"))  # type: ignore[arg-type]
            if info is not None:
                info.answered = True
        elif t is ChannelBridged or t is ChannelUnbridged:
            for h in ("Bridge-A-Unique-ID", "Bridge-B-Unique-ID"):
                info = table.by_uuid.get(ev.get(h))  # type: ignore[arg-type]
                if info is not None:
                    info.bridged = t is ChannelBridged
        elif t is ChannelHangup:
            if ev.name == "BACKGROUND_JOB":
                # a channel was created (and will report its own hangup): do not say it twice
                return not table.has_leg(m.call_id, m.leg)
            info = table.by_uuid.get(ev.get("Unique-ID"))  # type: ignore[arg-type]
            if info is not None:
                info.hungup = True
        elif t is ChannelDestroyed:
            uid = ev.get("Unique-ID")
            if isinstance(uid, str):
                table.remove(uid)
        return True

    # ------------------------------------------------------------------ commands out
    def connection_for(self, call_id: str) -> EslConnection | None:
        session = self.sessions.get(call_id)
        if session is not None and session.conn is not None and not session.closed:
            return session.conn
        link = self.link
        if link is not None and link.conn is not None and link.up:
            return link.conn
        return None

    def send(self, cmd: MediaCommand) -> bool:
        """Encode and queue one media command on the right connection (never blocks)."""
        conn = self.connection_for(cmd.call_id)
        if conn is None:
            self.commands_dropped += 1
            log.debug("%s: down, dropped %s for %s", self.name, type(cmd).__name__, cmd.call_id)
            return False
        job = None
        if type(cmd) is MediaOriginate:
            job = str(_uuid.uuid4())
        try:
            datas = map_command(cmd, self.table.resolve, settings=self.settings, job_uuid=job)
        except CommandError as exc:
            self.command_errors += 1
            log.warning("%s: cannot send %s for call %s: %s", self.name, type(cmd).__name__,
                        cmd.call_id, exc)
            return False
        if job is not None:
            self.jobs[job] = ChannelId(cmd.call_id, cmd.leg)
            timeout = max(1.0, float(cmd.timeout_s))  # type: ignore[attr-defined]
            self.job_deadlines[job] = self.clock() + self.pending_originate_factor * timeout
        try:
            for data in datas:
                conn.command_nowait(data)
        except ConnectionLost:
            self.commands_dropped += 1
            return False
        self.commands += 1
        if self.trace is not None:
            self.trace("command:" + type(cmd).__name__, cmd.call_id, self.clock())
        return True

    def expire_jobs(self, now: float) -> list[ChannelId]:
        """Forget originates whose BACKGROUND_JOB is overdue; returns their legs."""
        deadlines = self.job_deadlines
        if not deadlines:
            return []
        gone = [job for job, t in deadlines.items() if t <= now]
        out = []
        for job in gone:
            del deadlines[job]
            leg = self.jobs.pop(job, None)
            if leg is not None:
                out.append(leg)
        self.jobs_expired += len(out)
        return out

    def overdue_originates(self, now: float,
                           live_calls: Callable[[str], Iterable[str]] | None,
                           cause: str) -> list[ChannelHangup]:
        """Hangups for originates given up on (see :meth:`expire_jobs`): the leg, when no
        channel of it exists, and the call (leg ``a``) when the engine still believes it live
        here with no channel and nothing else in flight: as reconcile does for vanished calls."""
        expired = self.expire_jobs(now)
        if not expired:
            return []
        table = self.table
        out = [ChannelHangup(call_id=c, leg=leg, at=now, node=self.name, cause=cause)
               for c, leg in expired if not table.has_leg(c, leg)]
        if live_calls is not None:
            pending = {cid for cid, _ in self.jobs.values()}
            have = table.calls()
            mine = {c for c, _ in expired}
            for call_id in list(live_calls(self.name)):
                if call_id in mine and call_id not in have and call_id not in pending:
                    mine.discard(call_id)
                    if not any(m.call_id == call_id and m.leg == "a" for m in out):
                        out.append(ChannelHangup(call_id=call_id, leg="a", at=now,
                                                 node=self.name, cause=cause))
        return out

    # ------------------------------------------------------------------ health
    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.up

    def heartbeat_age(self) -> float:
        return self.clock() - self.last_heartbeat

    def healthy(self) -> bool:
        link = self.link
        if link is None or not link.up:
            return False
        return self.heartbeat_age() <= link.heartbeat_s * 1.5

    def health(self) -> NodeHealth:
        link = self.link
        return NodeHealth(name=self.name, connected=self.connected, healthy=self.healthy(),
                          heartbeat_age_s=round(self.heartbeat_age(), 3),
                          channels=len(self.table),
                          reconnects=link.reconnects if link is not None else 0,
                          last_error=link.last_error if link is not None else "")

    def statistics(self) -> dict[str, Any]:
        return {"node": self.name, "delivered": self.delivered, "mapped": self.mapper.mapped,
                "ignored": dict(self.mapper.ignored), "commands": self.commands,
                "commands_dropped": self.commands_dropped, "command_errors": self.command_errors,
                "heartbeats": self.heartbeats, "channels": len(self.table),
                "jobs_in_flight": len(self.jobs), "jobs_expired": self.jobs_expired}


# ---------------------------------------------------------------------------------------------
# the inbound link
# ---------------------------------------------------------------------------------------------

_ANSWERED_CALLSTATES = ("ACTIVE", "HELD", "UNHELD")


class EslLink:
    """Inbound ESL to one node: connect, auth, subscribe, reconcile, serve; reconnect forever."""

    def __init__(self, config: EslNodeConfig, node: MediaNode, *,
                 heartbeat_s: float = 20.0, missed_heartbeats: int = 3,
                 backoff_base_s: float = 0.1, backoff_cap_s: float = 5.0,
                 connect_timeout_s: float = 5.0, api_timeout_s: float = 5.0,
                 live_calls: Callable[[str], Iterable[str]] | None = None,
                 vanished_cause: str = HangupCause.LOSE_RACE,
                 max_frame_bytes: int | None = None,
                 job_sweep_s: float = 1.0,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.node = node
        node.link = self
        self.heartbeat_s = heartbeat_s
        self.missed_heartbeats = missed_heartbeats
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.connect_timeout_s = connect_timeout_s
        self.api_timeout_s = api_timeout_s
        self.live_calls = live_calls
        self.vanished_cause = vanished_cause
        self.max_frame_bytes = max_frame_bytes
        self.job_sweep_s = job_sweep_s
        self.rng = rng or random.Random()
        self.conn: EslConnection | None = None
        self.up = False
        self.state = "down"
        self.connects = 0
        self.reconnects = 0
        self.failures = 0
        self.last_error = ""
        self.last_backoff_s = 0.0
        self.backoffs: list[float] = []
        self.reconciled_created = 0
        self.reconciled_hangups = 0
        self._up_event = trio.Event()
        self._down_event = trio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        c = self.config
        return f"EslLink(name={c.name!r}, host={c.host!r}, port={c.port}, state={self.state!r})"

    # ------------------------------------------------------------------ public
    async def wait_up(self) -> None:
        await self._up_event.wait()

    async def wait_down(self) -> None:
        await self._down_event.wait()

    async def api(self, cmd: str, timeout: float | None = None) -> str:
        conn = self.conn
        if conn is None or not self.up:
            raise EslError(f"node {self.name!r} is not connected")
        return await conn.api(cmd, self.api_timeout_s if timeout is None else timeout)

    async def bgapi(self, cmd: str, timeout: float = 30.0) -> str:
        conn = self.conn
        if conn is None or not self.up:
            raise EslError(f"node {self.name!r} is not connected")
        return await conn.bgapi(cmd, timeout)

    # ------------------------------------------------------------------ the loop
    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**attempt))."""
        return self.rng.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** attempt))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  max_attempts: int | None = None) -> None:
        """Run until cancelled (or ``max_attempts`` failed connections in a row)."""
        task_status.started()  # never hold the engine's start-up hostage to a switch
        attempt = 0
        while max_attempts is None or attempt < max_attempts:
            reason: BaseException | None = None
            try:
                await self._session()
            except (OSError, trio.TooSlowError, EslError, RemoteProtocolError,
                    trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = exc
            was_up = self.up
            self._mark_down(reason)
            if was_up:
                attempt = 0
            delay = self.backoff(attempt)
            attempt += 1
            self.last_backoff_s = delay
            self.backoffs.append(delay)
            del self.backoffs[:-100]
            await trio.sleep(delay)

    def _mark_down(self, reason: BaseException | None) -> None:
        self.failures += 1
        self.last_error = _describe(reason) if reason is not None else "connection ended"
        if isinstance(reason, EslAuthError):
            self.state = "auth_failed"
            log.error("%s", self.last_error)
        else:
            self.state = "down"
            log.warning("FreeSWITCH node %r: link down: %s", self.name, self.last_error)
        if self.up:
            self.up = False
            self._down_event.set()
            self._up_event = trio.Event()
        self.conn = None

    async def _connect(self) -> EslConnection:
        self.state = "connecting"
        conn = await open_authenticated(self.config, timeout_s=self.connect_timeout_s,
                                        max_frame=self.max_frame_bytes)
        try:
            with trio.fail_after(self.connect_timeout_s):
                reply = await conn.handshake_command(codec.event("plain", *SUBSCRIBE_EVENTS))
                if not reply.ok:
                    raise EslError(f"FreeSWITCH node {self.config.name!r}: subscribe failed: "
                                   f"{reply.reply_text}")
        except BaseException:
            await conn.aclose()
            raise
        return conn

    async def _session(self) -> None:
        conn = await self._connect()
        self.conn = conn
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        node = self.node
        node.last_heartbeat = node.clock()  # the watchdog counts from the connection
        conn.on_event = node.handle
        failure: list[BaseException] = []

        async def guarded(fn: Callable[[], Any]) -> None:
            try:
                await fn()
            except (OSError, EslError, RemoteProtocolError, trio.TooSlowError,
                    trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure.append(exc)
            finally:
                nursery.cancel_scope.cancel()

        async def start() -> None:
            await self._reconcile(conn)
            self.up = True
            self.state = "up"
            self._down_event = trio.Event()
            self._up_event.set()
            log.info("FreeSWITCH node %r: link up (%s:%d)", self.name, self.config.host,
                     self.config.port)
            await trio.sleep_forever()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guarded, conn.serve)
                nursery.start_soon(guarded, self._watchdog)
                nursery.start_soon(guarded, self._sweep_jobs)
                nursery.start_soon(guarded, start)
        finally:
            await conn.aclose()
        if failure:
            raise failure[0]

    async def _watchdog(self) -> None:
        limit = self.heartbeat_s * self.missed_heartbeats
        node = self.node
        while True:
            age = node.clock() - node.last_heartbeat
            if age > limit:
                raise HeartbeatLost(f"no HEARTBEAT from node {self.name!r} for {age:.2f} s "
                                    f"({self.missed_heartbeats} missed)")
            await trio.sleep(max(0.001, limit - age + 1e-3))

    async def _sweep_jobs(self) -> None:
        """Give up on overdue originates while connected, so a call whose originate result was
        lost (with a previous connection) is ended even when no further reconnect comes."""
        node = self.node
        while True:
            await trio.sleep(self.job_sweep_s)
            if not self.up:
                continue  # reconcile runs first after a connect
            for m in node.overdue_originates(node.clock(), self.live_calls, self.vanished_cause):
                self.reconciled_hangups += 1
                await node.deliver(m)

    # ------------------------------------------------------------------ reconcile
    async def _reconcile(self, conn: EslConnection) -> None:
        node = self.node
        table = node.table
        known_before = set(table.by_uuid)
        timeout = self.api_timeout_s
        body = await conn.api("show channels as json", timeout)
        rows = channel_rows(body)
        fs = {r["uuid"]: r for r in rows if isinstance(r, dict) and r.get("uuid")}
        now = node.clock()
        out: list[Any] = []
        # 1. channels we knew that FreeSWITCH no longer has
        for uuid in known_before:
            if uuid in fs:
                continue
            info = table.remove(uuid)
            if info is not None and not info.hungup:
                out.append(ChannelHangup(call_id=info.call_id, leg=info.leg, at=now,
                                         node=node.name, cause=self.vanished_cause))
        # 2. channels FreeSWITCH has that we do not know (or whose answer we missed)
        unknown = [u for u in fs if u not in table.by_uuid and not table.gone(u)]
        for uuid, row in fs.items():
            info = table.by_uuid.get(uuid)
            if info is not None and not info.answered and row_answered(row):
                info.answered = True
                out.append(ChannelAnswered(call_id=info.call_id, leg=info.leg, at=now,
                                           node=node.name))
        if unknown:
            cmds = []
            for u in unknown:
                cmds += [f"uuid_getvar {u} {CALL_VAR}", f"uuid_getvar {u} {LEG_VAR}"]
            answers = await conn.api_many(cmds, timeout)
            for i, u in enumerate(unknown):
                row = fs[u]
                call_id, leg = (var_value(answers[2 * i]), var_value(answers[2 * i + 1]))
                if table.gone(u) or u in table.by_uuid:
                    continue  # its events arrived meanwhile
                if not call_id:
                    if row.get("direction") != "inbound":
                        continue  # foreign
                    call_id, leg = u, "a"
                leg = leg or u
                info = table.add(u, call_id, leg)
                if leg == "a" and node.bind is not None:
                    node.bind(call_id, node.name)
                out.append(ChannelCreated(
                    call_id=call_id, leg=leg, at=now, node=node.name,
                    direction="outbound" if row.get("direction") == "outbound" else "inbound",
                    caller_id=row.get("cid_num", ""), caller_name=row.get("cid_name", ""),
                    destination=row.get("dest", "")))
                self.reconciled_created += 1
                if row_answered(row):
                    info.answered = True
                    out.append(ChannelAnswered(call_id=call_id, leg=leg, at=now, node=node.name))
        # 3. calls the engine believes live here, with no channel and no originate in flight;
        #    an originate older than its age limit counts as gone (its result may have been
        #    lost with the old connection, and would otherwise shield the call forever)
        out += node.overdue_originates(now, self.live_calls, self.vanished_cause)
        if self.live_calls is not None:
            pending = {cid for cid, _ in node.jobs.values()}
            have = table.calls()
            said = {m.call_id for m in out if type(m) is ChannelHangup and m.leg == "a"}
            for call_id in list(self.live_calls(node.name)):
                if call_id not in have and call_id not in pending and call_id not in said:
                    out.append(ChannelHangup(call_id=call_id, leg="a", at=now, node=node.name,
                                             cause=self.vanished_cause))
        self.reconciled_hangups += sum(1 for m in out if type(m) is ChannelHangup)
        for m in out:
            await node.deliver(m)
        # 4. phones: registrations may have changed while we were away
        try:
            regs = parse_show_registrations(await conn.api("show registrations", timeout),
                                            node.name)
        except EslTimeout:
            regs = None
        if regs is not None:
            for state in node.registry.sync(regs, node.clock(), node=node.name):
                await node.deliver(state)


async def open_authenticated(c: EslNodeConfig, *, timeout_s: float = 5.0,
                             max_frame: int | None = None) -> EslConnection:
    """A new inbound connection to node ``c``, authenticated, not subscribed to anything (the link
    subscribes next; ``channels.EslChannelSource`` only asks). Each step is bounded by ``timeout_s``;
    a refused password is :class:`EslAuthError`; the connection is closed on any failure."""
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(c.host, c.port)
    conn = EslConnection(stream, name=f"node {c.name!r} ({c.host}:{c.port})", max_frame=max_frame)
    try:
        with trio.fail_after(timeout_s):
            first = await conn.read_frame()
            if first.content_type == "text/rude-rejection":
                raise EslError(f"FreeSWITCH node {c.name!r} at {c.host}:{c.port} refused the "
                               "connection (event_socket ACL)")
            if first.content_type != "auth/request":
                raise EslError(f"FreeSWITCH node {c.name!r}: expected auth/request, got "
                               f"{first.content_type!r}")
            try:
                auth = codec.auth(c.password.reveal())
            except ValueError:
                raise EslAuthError(f"the ESL password for node {c.name!r} contains CR/LF"
                                   ) from None
            try:
                reply = await conn.handshake_command(auth)
            except ConnectionLost:
                reply = None
            if reply is None or not reply.ok:
                text = reply.reply_text if reply is not None else "connection closed"
                raise EslAuthError(
                    f"FreeSWITCH node {c.name!r} at {c.host}:{c.port} rejected the ESL "
                    f"password ({text}); check CALLENGINE_ESL_PASSWORD and "
                    "event_socket.conf.xml")
    except BaseException:
        await conn.aclose()
        raise
    return conn


def channel_rows(body: str) -> list[Any]:
    body = body.strip()
    if not body.startswith("{"):
        if body.startswith("-ERR"):
            raise EslError(f"show channels failed: {body[:80]}")
        return []
    try:
        return list(json.loads(body).get("rows", []))
    except (ValueError, AttributeError, TypeError) as exc:
        raise RemoteProtocolError(f"show channels as json: undecodable body: {exc}") from None


def row_answered(row: dict) -> bool:
    return row.get("callstate") in _ANSWERED_CALLSTATES


def var_value(text: str) -> str:
    t = text.strip()
    if not t or t == "_undef_" or t.startswith("-ERR") or t.startswith("-USAGE"):
        return ""
    return t


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
