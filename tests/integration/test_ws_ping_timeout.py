"""WebSocket heartbeat: a client that stops answering pings is dropped within
``ping_interval_s + ping_timeout_s`` (+ the 1 s close grace), and the server goes on serving the
others. The silent client is a raw TCP socket that does the opening handshake and then never reads
again (so it can never answer a ping); the healthy one is trio-websocket (answers pings itself)."""

from __future__ import annotations

import base64
import os

import trio

from tests.support.nats import SUP1, api_stack, token, ws_client

INTERVAL, TIMEOUT = 0.3, 0.4


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


async def silent_client(port: int, tok: str) -> trio.SocketStream:
    """Open a WebSocket by hand, read the 101, and return the stream (never read from it again)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET /?token={tok} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return stream


async def until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the TCP connection (reads only after the drop)."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_peer_that_stops_answering_pings_is_dropped_in_time_and_others_keep_being_served():
    async def main():
        options = {"ping_interval_s": INTERVAL, "ping_timeout_s": TIMEOUT}
        async with api_stack(nats=False, micro=False, http=False, ws_options=options) as stack:
            assert stack.ws is not None
            port = int(stack.ws_url.rsplit(":", 1)[1])
            tok = token(**SUP1)
            async with ws_client(stack, tok) as healthy:
                silent = await silent_client(port, tok)
                started = trio.current_time()
                with trio.fail_after(INTERVAL + TIMEOUT + 3):
                    while stack.ws.dropped_unresponsive == 0:
                        await trio.sleep(0.02)
                dropped_after = trio.current_time() - started
                # the server closed the socket (ping, close 1011, then TCP close), bounded in time
                with trio.fail_after(3):
                    received = await until_closed(silent)
                await silent.aclose()
                assert b"\x89" in received  # at least one ping was sent to it
                assert b"\x88\x0e\x03\xf3ping timeout" in received  # close frame, code 1011
                assert dropped_after <= INTERVAL + TIMEOUT + 1.5, dropped_after
                # the healthy client answered every ping meanwhile and is still served
                await trio.sleep(3 * INTERVAL)
                assert "result" in await healthy.call("Queues/List")
                assert stack.ws.dropped_unresponsive == 1
                assert stack.ws.connections == 1

    run(main)
