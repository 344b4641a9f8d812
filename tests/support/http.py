"""A tiny HTTP/1.1 server on 127.0.0.1 for webhook and CRM tests (h11 over trio): records every
request and answers with ``answer`` (override it, or pass ``script``). And a free port nobody
listens on (a receiver that is down)."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

__all__ = ["Request", "Answer", "HttpReceiver", "free_port"]

#: (status, headers, body, delay before answering)
Answer = tuple[int, list[tuple[str, str]], bytes, float]


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    #: trio time when it was read
    at: float


@dataclass
class HttpReceiver:
    """Answers the n-th request (n = 0, 1, ...) with ``script(n)`` unless a subclass overrides
    ``answer``."""

    script: Callable[[int], Answer] = lambda n: (200, [], b"ok", 0.0)
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    async def answer(self, request: Request, n: int) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, payload, delay = self.script(n)
        if delay:
            await trio.sleep(delay)
        return status, headers, payload

    async def serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                if request is None:
                    return
                req = Request(request.method.decode(), request.target.decode(),
                              {k.decode().lower(): v.decode() for k, v in request.headers}, body,
                              trio.current_time())
                n = len(self.requests)
                self.requests.append(req)
                status, extra, payload = await self.answer(req, n)
                await stream.send_all(conn.send(h11.Response(
                    status_code=status, headers=[("content-length", str(len(payload))), *extra])))
                await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    async def start(self, nursery: trio.Nursery) -> HttpReceiver:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), self.serve, 0)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_port() -> int:
    """A loopback port nothing listens on (just released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
