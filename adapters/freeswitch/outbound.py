"""Outbound ESL: FreeSWITCH's ``socket`` application connects to us, once per call.

Rules
-----
* One listener (127.0.0.1 by default); each accepted connection is one :class:`OutboundSession`
  for one caller channel: ``connect`` (the reply is the channel's CHANNEL_DATA), ``myevents``
  (this channel's events, and BACKGROUND_JOBs it owns), ``linger`` (so CHANNEL_HANGUP_COMPLETE
  still arrives after the hangup), then events flow into the node's ``MediaNode.handle`` exactly
  as over an inbound link, and the node sends that call's commands over this socket.
* FreeSWITCH fired CHANNEL_CREATE before the socket app ran, so the session reports the channel
  from CHANNEL_DATA: ``ChannelCreated`` (+ ``ChannelAnswered`` if it is already up).
* The session ends when FreeSWITCH closes the socket (after the linger notice we send ``exit``);
  a protocol error ends that one session, never the server.
* Limitation (documented in docs/freeswitch.md): ``myevents`` only carries this channel's events.
  Legs the engine originates from an outbound-only deployment report failures (BACKGROUND_JOB) but
  not their answer; run an inbound link to the same node as well ("hybrid", duplicates are
  harmless: the call machine treats repeated media events as no-ops).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from adapters.freeswitch import codec
from adapters.freeswitch.codec import EslEvent, RemoteProtocolError
from adapters.freeswitch.connection import ConnectionLost, EslConnection, EslError
from adapters.freeswitch.link import MediaNode
from adapters.freeswitch.mapping import identify, map_channel_data
from engine.messages import ChannelAnswered

__all__ = ["OutboundServer", "OutboundSession"]

log = logging.getLogger("callengine.freeswitch")

NodeChooser = Callable[[EslEvent], MediaNode]


class OutboundSession:
    def __init__(self, server: OutboundServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.conn: EslConnection | None = EslConnection(stream, name="outbound session")
        self.closed = False
        self.call_id = ""
        self.uuid = ""
        self.node: MediaNode | None = None
        self.linger_notice = False

    async def serve(self) -> None:
        conn = self.conn
        assert conn is not None
        srv = self.server
        try:
            with trio.fail_after(srv.handshake_timeout_s):
                reply = await conn.handshake_command(codec.connect())
            ev = reply.event
            if ev is None or not reply.ok:
                raise EslError(f"outbound connect: unexpected reply {reply!r}")
            node = self.node = srv.choose(ev)
            ident = identify(ev)
            uid = ev.unique_id or ""
            if ident is None or not uid:
                raise EslError("outbound connect: channel data names no usable channel")
            self.call_id, self.uuid = ident.call_id, uid
            conn.name = f"outbound session {uid} (node {node.name!r})"
            with trio.fail_after(srv.handshake_timeout_s):
                r = await conn.handshake_command(codec.myevents())
                if not r.ok:
                    raise EslError(f"myevents refused: {r.reply_text}")
                if srv.linger:
                    r = await conn.handshake_command(codec.linger())
                    if not r.ok:
                        raise EslError(f"linger refused: {r.reply_text}")
            node.sessions[self.call_id] = self
            now = node.clock()
            created = map_channel_data(ev, now, node.name)
            if created is not None:
                node.table.add(uid, created.call_id, created.leg)
                if created.leg == "a" and node.bind is not None:
                    node.bind(created.call_id, node.name)
                if node.trace is not None:
                    node.trace("event:ChannelCreated", created.call_id, now)
                await node.deliver(created)
                if ev.get("Answer-State") == "answered":
                    node.table.by_uuid[uid].answered = True
                    await node.deliver(ChannelAnswered(call_id=created.call_id, leg=created.leg,
                                                       at=now, node=node.name))
            conn.on_event = self._on_event
            conn.on_notice = self._on_notice
            srv.sessions_started += 1
            await conn.serve()
        except ConnectionLost:
            pass  # FreeSWITCH hung up and closed: the normal end
        except (RemoteProtocolError, EslError, trio.TooSlowError, OSError,
                trio.BrokenResourceError) as exc:
            srv.session_errors += 1
            log.warning("outbound session %s: %s: %s", self.uuid or "?", type(exc).__name__, exc)
        finally:
            self.closed = True
            node = self.node
            if node is not None and node.sessions.get(self.call_id) is self:
                del node.sessions[self.call_id]
                info = node.table.by_uuid.get(self.uuid)
                # CHANNEL_DESTROY never reaches an outbound socket: forget the channel here
                if info is not None and info.hungup and (node.link is None or not node.link.up):
                    node.table.remove(self.uuid)
            await conn.aclose()
            self.conn = None

    async def _on_event(self, ev: EslEvent) -> None:
        node = self.node
        assert node is not None
        await node.handle(ev)
        if ev.name == "CHANNEL_HANGUP_COMPLETE" and ev.unique_id == self.uuid:
            self._exit()

    def _on_notice(self, frame: codec.Frame) -> None:
        if frame.headers.get("Content-Disposition") == "linger":
            self.linger_notice = True
            self._exit()

    def _exit(self) -> None:
        conn = self.conn
        if conn is not None and not self.closed:
            try:
                conn.command_nowait(codec.exit())
            except ConnectionLost:
                pass


class OutboundServer:
    """Listens for FreeSWITCH ``socket`` connections and runs one session per call."""

    def __init__(self, choose: NodeChooser | MediaNode, *, host: str = "127.0.0.1",
                 port: int = 0, linger: bool = True, handshake_timeout_s: float = 5.0) -> None:
        if isinstance(choose, MediaNode):
            node = choose
            self.choose: NodeChooser = lambda ev: node
        else:
            self.choose = choose
        self.host = host
        self.requested_port = port
        self.port = 0
        self.linger = linger
        self.handshake_timeout_s = handshake_timeout_s
        self.sessions_started = 0
        self.session_errors = 0

    @classmethod
    def for_links(cls, links, **options) -> OutboundServer:
        """Sessions go to the node whose name matches the channel's FreeSWITCH-Switchname
        (else FreeSWITCH-Hostname, else the first node)."""
        nodes = links.nodes
        first = next(iter(nodes.values()))

        def choose(ev: EslEvent) -> MediaNode:
            for h in ("FreeSWITCH-Switchname", "FreeSWITCH-Hostname"):
                name = ev.get(h)
                if isinstance(name, str) and name in nodes:
                    return nodes[name]
            return first

        return cls(choose, **options)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.requested_port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        await OutboundSession(self, stream).serve()
