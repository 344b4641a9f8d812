"""The ASGI pieces every HTTP endpoint of the engine needs the same way (the Connect API in
api/http.py, mod_xml_curl's endpoint in adapters/freeswitch/xml_curl.py): the lifespan handshake
and reading a request body with a size limit. Each endpoint maps the two errors to its own reply."""

from __future__ import annotations

from typing import Any

__all__ = ["BodyTooLarge", "ClientGone", "lifespan", "read_body"]

Receive = Any
Send = Any


class BodyTooLarge(Exception):
    """The request body passed the endpoint's limit."""


class ClientGone(Exception):
    """The client disconnected before the body was complete."""


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's startup and shutdown messages until shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body (chunked or not); ``BodyTooLarge`` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
