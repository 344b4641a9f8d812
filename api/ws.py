"""WebSocket transport (trio-websocket): commands and event subscriptions on one connection.

Frames (JSON text; binary frames are parsed the same way)::

    -> {"id": 1, "method": "CallControl/Hold", "params": {"call_id": "..."}}
    <- {"id": 1, "result": {...}}            or {"id": 1, "error": {"code": "NOT_FOUND", "message": "..."}}
    -> {"id": 2, "method": "Events/Watch", "params": {"from_seq": 41, "types": ["CALL_HELD"]}}
    <- {"id": 2, "result": {"watching": true}}
    <- {"event": {"type": "CALL_HELD", "tenant": "acme", "seq": 42, ...}}
    -> {"id": 3, "method": "Events/Unwatch"}
    -> {"id": 4, "method": "Events/Watch", "params": {"batch": true}}       (opt-in batching)
    <- {"events": [{"type": "CALL_HELD", "seq": 43, ...}, {"type": "CALL_RETRIEVED", "seq": 44, ...}]}
    -> {"id": 5, "method": "CallControl/Originate", "params": {...}, "traceparent": "00-<trace>-<span>-01"}

Rules
1. Authentication at the handshake (``Authorization: Bearer``, or ``?token=`` for browsers) or with
   a first ``{"method": "auth", "params": {"token": ...}}`` frame. Every later frame goes through
   the same dispatcher as HTTP and NATS (rate limit, RBAC, audit).
2. Robustness: malformed JSON gets an error frame (the connection stays); messages larger than
   ``max_message_size`` close the connection (1009, trio-websocket); the server pings every
   ``ping_interval_s`` and drops a peer that does not answer within ``ping_timeout_s``.
3. Each event is encoded once (by the publisher) and every watcher gets the same JSON text; a
   connection only wraps it. A watcher that asked for ``batch`` gets every event queued while the
   previous message was being written in ONE message (``{"events": [...]}``, seq order, at most
   ``max_batch``): under load the messages grow instead of the latency; idle, each goes at once.
4. A bounded outgoing queue per client (counted in events): when it is full the client is slow; it gets one
   RESOURCE_EXHAUSTED error frame naming the seq to resume from and is closed (1013). The engine
   and the other clients never wait for it. On reconnect, Watch with ``from_seq`` replays the
   missed events from JetStream and continues live.
5. A request frame may carry ``traceparent`` (W3C trace context, as the HTTP header): the method
   gets it (``Context.traceparent``), so a click-to-call ``Originate`` continues the caller's trace.
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import aclosing
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
    #: the caller's W3C trace context, as the HTTP ``traceparent`` header (Rule 5)
    traceparent: str = ""


_frame_decoder = msgspec.json.Decoder(Frame)


class _Token(msgspec.Struct, kw_only=True):
    token: str = ""


class WsServer:
    def __init__(self, api: Api, *, max_message_size: int = 64 * 1024, out_queue: int = 1000,
                 ping_interval_s: float = 20.0, ping_timeout_s: float = 10.0,
                 max_in_flight: int = 16, max_batch: int = 512) -> None:
        self.api = api
        self.max_message_size = max_message_size
        self.out_queue = out_queue
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.max_in_flight = max_in_flight
        #: most events in one batched message
        self.max_batch = max(1, max_batch)
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
        #: outgoing: complete frames (str) and runs of (seq, event JSON)
        self.out: deque[str | list[tuple[int, str]]] = deque()
        #: first seq of the event message being written (None when none)
        self.sending_from: int | None = None
        #: frames + events queued (the slow-consumer bound counts events, batched or not)
        self.queued = 0
        self.batching = False
        self._wake = trio.lowlevel.ParkingLot()
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
        if self.queued >= self.server.out_queue:
            self.nursery.start_soon(self._drop_slow)
            return
        self.out.append(frame)
        self.queued += 1
        self._wake.unpark()

    def push_events(self, events: list[tuple[int, str]]) -> bool:
        """Queue (seq, event JSON)s (each encoded once, shared by every watcher); False when the
        client was found slow (queue full) and is being dropped."""
        if self.closing:
            return False
        if self.queued + len(events) > self.server.out_queue:
            self.nursery.start_soon(self._drop_slow)
            return False
        self.out.append(events)
        self.queued += len(events)
        self._wake.unpark()
        return True

    def resume_seq(self) -> int:
        """The seq a dropped client resumes from: the first event it may not have received."""
        if self.sending_from is not None:
            return self.sending_from
        for item in self.out:
            if not isinstance(item, str) and item:
                return item[0][0]
        return self.last_seq + 1

    async def _drop_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.server.dropped_slow += 1
        self.nursery.cancel_scope.cancel()
        frame = _encoder.encode({"id": None, "error": {
            "code": "RESOURCE_EXHAUSTED",
            "message": f"slow consumer dropped: reconnect and Watch with from_seq={self.resume_seq()}"}}).decode()
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self.ws.send_message(frame)
                await self.ws.aclose(1013, "slow consumer")
            except ConnectionClosed:
                pass

    async def _writer(self) -> None:
        """Send what is queued: control frames one by one; for a batching watcher, all the events
        queued back to back as one ``{"events": [...]}`` message (at most ``max_batch``)."""
        out = self.out
        limit = self.server.max_batch
        while True:
            while not out:
                await self._wake.park()
            item = out.popleft()
            if isinstance(item, str):
                self.queued -= 1
                await self.ws.send_message(item)
                continue
            if not self.batching:
                for seq, event_json in item:
                    self.sending_from = seq
                    await self.ws.send_message('{"event":' + event_json + "}")
                    self.queued -= 1
                self.sending_from = None
                continue
            if len(item) > limit:  # one run longer than a message may carry: the rest goes next
                out.appendleft(item[limit:])
                item = item[:limit]
            events = list(item)
            while out and not isinstance(out[0], str) and len(events) + len(out[0]) <= limit:
                more = out.popleft()
                assert not isinstance(more, str)
                events.extend(more)
            self.sending_from = events[0][0]
            await self.ws.send_message('{"events":[' + ",".join([j for _, j in events]) + "]}")
            self.sending_from = None
            self.queued -= len(events)

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
            result = await self.api.invoke(self.principal, name, frame.params, "ws",
                                           traceparent=frame.traceparent)
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
        self.batching = req.batch
        # "watching" is sent by the pump once the watch is in place (Api.watch's on_ready)
        self.nursery.start_soon(self._pump_events, frame.id, req, scope)

    async def _pump_events(self, frame_id: Any, req: Any, scope: trio.CancelScope) -> None:
        assert self.principal is not None
        sent = 0
        with scope:
            if req.timeout_s:
                scope.deadline = trio.current_time() + req.timeout_s
            try:
                def ready() -> None:
                    self.reply(frame_id, {"watching": True})

                async with aclosing(self.api.watch(self.principal, req, on_ready=ready)) as stream:
                    async for batch in stream:
                        if req.max_events and sent + len(batch) >= req.max_events:
                            batch = batch[:req.max_events - sent]
                        if batch and self.push_events(batch):
                            self.last_seq = batch[-1][0]
                            sent += len(batch)
                        if self.closing or (req.max_events and sent >= req.max_events):
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
