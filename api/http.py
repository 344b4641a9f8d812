"""HTTP transport: the Connect protocol (unary JSON, and server-streaming JSON for Events.Watch),
as an ASGI app served by hypercorn on trio.

Rules
1. ``POST /callengine.v1.<Service>/<Method>`` with ``Content-Type: application/json`` and
   ``Authorization: Bearer <jwt>``: 200 with the JSON response, or the Connect error JSON
   ``{"code": "not_found", "message": ...}`` with its HTTP status (api/errors.py).
2. Server streaming (Events.Watch): ``Content-Type: application/connect+json``; the request and
   each response message are enveloped (1 flag byte + 4-byte big-endian length + JSON); the last
   envelope has flag 0x02 and carries ``{}`` or ``{"error": {...}}``.
3. Bodies are bounded (``max_body``): larger is RESOURCE_EXHAUSTED before it is read entirely.
   Any other method, path or content type gets a typed error, never a stack trace.
   A ``traceparent`` header (W3C trace context) is handed to the method (``Context.traceparent``):
   a call that ``CallControl/Originate`` starts resumes the caller's trace.
4. HTTP is done by hypercorn (a well-kept server); this module only maps requests to ``Api``.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any

import msgspec
import trio

from api.asgi import BodyTooLarge, ClientGone, lifespan, read_body
from api.dispatch import Api
from api.errors import HTTP_STATUS, ApiError, connect_code

__all__ = ["ConnectApp", "serve_http"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_encoder = msgspec.json.Encoder()
HTTP_DEFAULT_MAX_EVENTS = 1000
HTTP_DEFAULT_TIMEOUT_S = 60.0


class ConnectApp:
    def __init__(self, api: Api, *, max_body: int = 1 << 20) -> None:
        self.api = api
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope.get("path", "")
        if path in ("/healthz", "/readyz") and scope["method"] == "GET":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        streaming = content_type == "application/connect+json"
        try:
            if scope["method"] != "POST":
                raise ApiError("UNIMPLEMENTED", "Connect calls are POST requests")
            if content_type != "application/json" and not streaming:
                await _respond(send, 415, _encoder.encode(
                    {"code": "invalid_argument", "message": "Content-Type must be application/json"}))
                return
            try:
                body = await read_body(receive, self.max_body)
            except BodyTooLarge:
                raise ApiError("RESOURCE_EXHAUSTED", f"request body larger than {self.max_body} bytes") from None
            except ClientGone:
                raise ApiError("CANCELED", "client went away") from None
            token = _bearer(headers.get("authorization", ""))
            method = path.lstrip("/")
            if streaming:
                await self._stream(send, token, method, body)
                return
            # a W3C trace context header is handed on: a call the request originates resumes it
            payload = await self.api.invoke_json(token, method, body, "http",
                                                 traceparent=headers.get("traceparent", ""))
        except ApiError as error:
            if streaming:
                await _respond(send, 200, _envelope(2, {"error": _connect_error(error)}),
                               "application/connect+json")
            else:
                await _respond(send, HTTP_STATUS.get(error.code, 500), _encoder.encode(_connect_error(error)))
            return
        await _respond(send, 200, payload)

    async def _stream(self, send: Send, token: str | None, method: str, body: bytes) -> None:
        if method.removeprefix("callengine.v1.") != "Events/Watch":
            raise ApiError("UNIMPLEMENTED", f"{method[:100]} is not a streaming method")
        message = _unenvelope(body)
        principal = self.api.authenticate(token, method, "http")
        req = self.api.authorize_watch(principal, message, "http")
        max_events = req.max_events or HTTP_DEFAULT_MAX_EVENTS
        timeout = req.timeout_s or HTTP_DEFAULT_TIMEOUT_S
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/connect+json")]})
        end: dict[str, Any] = {}
        sent = 0
        with trio.move_on_after(timeout):
            try:
                async with aclosing(self.api.watch(principal, req)) as stream:
                    async for batch in stream:
                        chunk = b"".join(_envelope_raw(0, b'{"event":' + j.encode() + b"}")
                                         for _, j in batch[:max_events - sent])
                        sent += min(len(batch), max_events - sent)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        if sent >= max_events:
                            break
            except ApiError as error:
                end = {"error": _connect_error(error)}
        await send({"type": "http.response.body", "body": _envelope(2, end), "more_body": False})


def _connect_error(error: ApiError) -> dict[str, str]:
    return {"code": connect_code(error.code), "message": error.message}


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _envelope_raw(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _envelope(flags: int, obj: Any) -> bytes:
    return _envelope_raw(flags, _encoder.encode(obj))


def _unenvelope(body: bytes) -> bytes:
    if len(body) < 5:
        raise ApiError("INVALID_ARGUMENT", "a Connect streaming request is one enveloped message")
    flags, length = struct.unpack(">BI", body[:5])
    if flags & 0x01:
        raise ApiError("UNIMPLEMENTED", "compressed messages are not supported")
    if length != len(body) - 5:
        raise ApiError("INVALID_ARGUMENT", "envelope length does not match the body")
    return body[5:]


async def _respond(send: Send, status: int, body: bytes, content_type: str = "application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_http(api: Api, host: str = "127.0.0.1", port: int = 0, *,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
                     max_body: int = 1 << 20) -> None:
    """Serve the Connect API with hypercorn on trio; ``task_status`` gets the base URL."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 30
    config.graceful_timeout = 1.0

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            task_status.started(binds[0] if binds else "")

    await serve(ConnectApp(api, max_body=max_body), config, task_status=_Status())  # type: ignore[arg-type]
