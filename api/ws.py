"""WebSocket transport (trio-websocket): commands and event subscriptions on one connection.

Frames (JSON text; binary frames are parsed the same way)::

    -> {"id": 1, "method": "CallControl/Hold", "params": {"call_id": "..."}}
    <- {"id": 1, "result": {...}}            or {"id": 1, "error": {"code": "NOT_FOUND", "message": "..."}}
    -> {"id": 2, "method": "Events/Watch", "params": {"from_seq": 41, "types": ["CALL_HELD"]}}
    <- {"id": 2, "result": {"watching": true}}
    <- {"event": {"type": "CALL_HELD", "tenant": "acme", "seq": 42, ...}}
    -> {"id": 3, "method": "Events/Unwatch"}

Rules
1. Authentication at the handshake (``Authorization: Bearer``, or ``?token=`` for browsers) or with
   a first ``{"method": "auth", "params": {"token": ...}}`` frame. Every later frame goes through
   the same dispatcher as HTTP and NATS (rate limit, RBAC, audit).
2. Robustness: malformed JSON gets an error frame (the connection stays); messages larger than
   ``max_message_size`` close the connection (1009, trio-websocket); the server pings every
   ``ping_interval_s`` and drops a peer that does not answer within ``ping_timeout_s``.
3. A bounded outgoing queue per client: when it is full the client is slow; it gets one
   RESOURCE_EXHAUSTED error frame naming the seq to resume from and is closed (1013). The engine
   and the other clients never wait for it. On reconnect, Watch with ``from_seq`` replays the
   missed events from JetStream and continues live.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from api.auth import Principal
from api.dispatch import Api
from api.errors import ApiError

__all__ = ["WsServer", "serve_ws"]

log = logging.getLogger("callengine.api.ws")
_encoder = msgspec.json.Encoder()


class Frame(msgspec.Struct, kw_only=True):
    id: int | str | None = None
    method: str = ""
    params: msgspec.Raw = msgspec.Raw(b"{}")


_frame_decoder = msgspec.json.Decoder(Frame)


class _Token(msgspec.Struct, kw_only=True):
    token: str = ""


class WsServer:
    def __init__(self, api: Api, *, max_message_size: int = 64 * 1024, out_queue: int = 1000,
                 ping_interval_s: float = 20.0, ping_timeout_s: float = 10.0,
                 max_in_flight: int = 16) -> None:
        self.api = api
        self.max_message_size = max_message_size
        self.out_queue = out_queue
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.max_in_flight = max_in_flight
        self.connections = 0
        self.dropped_slow = 0
        self.dropped_unresponsive = 0

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: serve_websocket(
                self.handle, host, port, None, max_message_size=self.max_message_size,
                task_status=task_status))
            task_status.started(server.port)

    async def handle(self, request: WebSocketRequest) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        token = _bearer(headers.get("authorization", "")) or _query_token(request.path)
        principal: Principal | None = None
        if token:
            try:
                principal = self.api.authenticate(token, "ws.connect", "ws")
            except ApiError:
                await request.reject(401, body=b'{"code":"UNAUTHENTICATED","message":"invalid token"}')
                return
        ws = await request.accept()
        self.connections += 1
        try:
            await _Connection(self, ws, principal).run()
        except Exception:  # one connection's bug must never take the server (and its peers) down
            log.exception("websocket connection failed")
        finally:
            self.connections -= 1


class _Connection:
    def __init__(self, server: WsServer, ws: WebSocketConnection, principal: Principal | None) -> None:
        self.server = server
        self.api = server.api
        self.ws = ws
        self.principal = principal
        self.out_send, self.out_recv = trio.open_memory_channel[str](server.out_queue)
        self.watch_scope: trio.CancelScope | None = None
        self.last_seq = 0
        self.in_flight = trio.Semaphore(server.max_in_flight)
        self.closing = False

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._heartbeat)
                await self._reader()
                nursery.cancel_scope.cancel()
        except* ConnectionClosed:
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.ws.aclose()

    # ---------------------------------------------------------------- output

    def push(self, frame: str) -> None:
        """Queue a frame; a full queue means a slow client: tell it and drop it."""
        if self.closing:
            return
        try:
            self.out_send.send_nowait(frame)
        except trio.WouldBlock:
            self.nursery.start_soon(self._drop_slow)

    async def _drop_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.server.dropped_slow += 1
        self.nursery.cancel_scope.cancel()
        frame = _encoder.encode({"id": None, "error": {
            "code": "RESOURCE_EXHAUSTED",
            "message": f"slow consumer dropped: reconnect and Watch with from_seq={self.last_seq + 1}"}}).decode()
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self.ws.send_message(frame)
                await self.ws.aclose(1013, "slow consumer")
            except ConnectionClosed:
                pass

    async def _writer(self) -> None:
        async for frame in self.out_recv:
            await self.ws.send_message(frame)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.server.ping_interval_s)
            with trio.move_on_after(self.server.ping_timeout_s) as scope:
                await self.ws.ping()
            if scope.cancelled_caught:
                self.server.dropped_unresponsive += 1
                self.closing = True
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.ws.aclose(1011, "ping timeout")
                self.nursery.cancel_scope.cancel()
                return

    def reply(self, frame_id: Any, result: Any = None, error: ApiError | None = None) -> None:
        if error is not None:
            self.push(_encoder.encode({"id": frame_id, "error": error.to_dict()}).decode())
        else:
            self.push(_encoder.encode({"id": frame_id, "result": result}).decode())

    # ---------------------------------------------------------------- input

    async def _reader(self) -> None:
        while True:
            message = await self.ws.get_message()
            try:
                frame = _frame_decoder.decode(message)
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                self.reply(None, error=ApiError("INVALID_ARGUMENT", f"malformed frame: {str(error)[:200]}"))
                continue
            if not frame.method:
                self.reply(frame.id, error=ApiError("INVALID_ARGUMENT", "a frame needs a method"))
                continue
            if frame.method == "auth":
                self._auth(frame)
                continue
            if self.principal is None:
                self.reply(frame.id, error=ApiError("UNAUTHENTICATED", "authenticate first (auth frame)"))
                continue
            name = frame.method.removeprefix("callengine.v1.").replace(".", "/")
            if name == "Events/Watch":
                self._watch(frame)
            elif name == "Events/Unwatch":
                if self.watch_scope is not None:
                    self.watch_scope.cancel()
                    self.watch_scope = None
                self.reply(frame.id, {"watching": False})
            else:
                await self.in_flight.acquire()
                self.nursery.start_soon(self._call, frame, name)

    def _auth(self, frame: Frame) -> None:
        try:
            token = msgspec.json.decode(frame.params, type=_Token).token
            self.principal = self.api.authenticate(token, "ws.auth", "ws")
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.reply(frame.id, error=ApiError("INVALID_ARGUMENT", "auth params: {\"token\": \"...\"}"))
            return
        except ApiError as error:
            self.reply(frame.id, error=error)
            return
        self.reply(frame.id, {"tenant": self.principal.tenant, "subject": self.principal.subject,
                              "roles": sorted(self.principal.roles)})

    async def _call(self, frame: Frame, name: str) -> None:
        try:
            assert self.principal is not None
            result = await self.api.invoke(self.principal, name, frame.params, "ws")
            self.reply(frame.id, result)
        except ApiError as error:
            self.reply(frame.id, error=error)
        finally:
            self.in_flight.release()

    def _watch(self, frame: Frame) -> None:
        assert self.principal is not None
        try:
            req = self.api.authorize_watch(self.principal, frame.params, "ws")
        except ApiError as error:
            self.reply(frame.id, error=error)
            return
        if self.watch_scope is not None:
            self.watch_scope.cancel()
        scope = self.watch_scope = trio.CancelScope()
        self.reply(frame.id, {"watching": True})
        self.nursery.start_soon(self._pump_events, frame.id, req, scope)

    async def _pump_events(self, frame_id: Any, req: Any, scope: trio.CancelScope) -> None:
        assert self.principal is not None
        sent = 0
        with scope:
            if req.timeout_s:
                scope.deadline = trio.current_time() + req.timeout_s
            try:
                async for batch in self.api.watch(self.principal, req):
                    for seq, event_json in batch:
                        self.push('{"event":' + event_json + "}")
                        self.last_seq = seq
                        sent += 1
                        if req.max_events and sent >= req.max_events:
                            return
                    if self.closing:
                        return
            except ApiError as error:
                self.reply(frame_id, error=error)
                if error.code == "RESOURCE_EXHAUSTED":
                    self.nursery.start_soon(self._drop_slow)


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _query_token(path: str) -> str | None:
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


async def serve_ws(api: Api, host: str = "127.0.0.1", port: int = 0, *,
                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED, **options: Any) -> None:
    await WsServer(api, **options).serve(host, port, task_status=task_status)
