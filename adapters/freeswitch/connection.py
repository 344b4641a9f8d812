"""One ESL connection on trio: the codec's parser on a stream, replies matched to commands.

Rules
-----
* A thin wrapper (STYLE.md §5): bytes go through :class:`~adapters.freeswitch.codec.EslParser`;
  this file only owns the stream, the order of replies and the write buffer.
* FreeSWITCH answers commands in order (PROTOCOL.md §3), so replies are matched FIFO: every command
  written appends one slot to ``_pending``. A caller that gave up (timeout) leaves its slot, so the
  reply that arrives later is discarded instead of being handed to the next caller.
* ``bgapi`` results (BACKGROUND_JOB) are matched by the Job-UUID we put on the command.
* Writes never block the caller: ``command_nowait`` appends to a buffer that one writer task
  flushes with one ``send_all`` per batch.
* Everything the peer can do wrong surfaces as one exception from ``serve``: ``RemoteProtocolError``
  (bad bytes), :class:`ConnectionLost` (EOF, disconnect notice, socket error). The owner resets.
"""

from __future__ import annotations

import logging
import uuid as _uuid
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from adapters.freeswitch import codec
from adapters.freeswitch.codec import EslEvent, EslParser, Frame

__all__ = ["ConnectionLost", "EslConnection", "EslError", "EslTimeout"]

log = logging.getLogger("callengine.freeswitch")


class EslError(Exception):
    """Something went wrong talking to FreeSWITCH (never carries the password)."""


class EslTimeout(EslError):
    pass


class ConnectionLost(EslError):
    pass


_REPLY_TYPES = ("command/reply", "api/response")


class _Waiter:
    __slots__ = ("event", "frame", "what")

    def __init__(self, what: str) -> None:
        self.event = trio.Event()
        self.frame: Frame | None = None
        self.what = what


EventHandler = Callable[[EslEvent], Awaitable[None]]


class EslConnection:
    def __init__(self, stream: trio.abc.Stream, *, name: str = "", max_frame: int | None = None,
                 receive_size: int = 65536) -> None:
        self.stream = stream
        self.name = name
        self.parser = (EslParser() if max_frame is None
                       else EslParser(max_header_bytes=max_frame, max_body_bytes=max_frame))
        self.receive_size = receive_size
        self._pending: deque[_Waiter | str] = deque()
        self._jobs: dict[str, _Waiter] = {}
        self._out: list[bytes] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._preamble: deque[Frame] = deque()
        #: set by the owner before ``serve``: receives every event frame's event
        self.on_event: EventHandler | None = None
        #: called (sync) with every disconnect-notice frame
        self.on_notice: Callable[[Frame], None] | None = None
        self.remote_errors = 0
        self.replies = 0
        self.events = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ low level
    async def read_frame(self) -> Frame:
        """Next frame, reading as needed (used before ``serve`` runs: handshake)."""
        while True:
            f = self.parser.next_frame()
            if f is not None:
                return f
            data = await self._receive()
            self.parser.receive_data(data)
            if not data:
                f = self.parser.next_frame()
                if f is not None:
                    return f
                raise ConnectionLost(f"{self.name}: connection closed by FreeSWITCH")

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(self.receive_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"{self.name}: {type(exc).__name__}: {exc}") from None

    async def send_now(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"{self.name}: {type(exc).__name__}: {exc}") from None

    async def handshake_command(self, data: bytes) -> Frame:
        """Send one command and read its reply before ``serve`` runs (auth, connect...)."""
        await self.send_now(data)
        while True:
            f = await self.read_frame()
            if f.content_type in _REPLY_TYPES:
                return f
            if f.content_type in ("text/disconnect-notice", "text/rude-rejection"):
                raise ConnectionLost(f"{self.name}: {f.content_type} during handshake")
            self._preamble.append(f)  # events already flowing: handled once serve starts

    # ------------------------------------------------------------------ commands
    def command_nowait(self, data: bytes, what: str = "") -> None:
        """Queue a command; its reply is only counted (``-ERR`` -> ``remote_errors``)."""
        if self._closed:
            raise ConnectionLost(f"{self.name}: connection is closed")
        self._out.append(data)
        self._pending.append(what or _what(data))
        if len(self._out) == 1:
            self._lot.unpark()

    def _queue_waiter(self, data: bytes) -> _Waiter:
        if self._closed:
            raise ConnectionLost(f"{self.name}: connection is closed")
        w = _Waiter(_what(data))
        self._out.append(data)
        self._pending.append(w)
        if len(self._out) == 1:
            self._lot.unpark()
        return w

    async def _wait(self, w: _Waiter, timeout: float) -> Frame:
        with trio.move_on_after(timeout):
            await w.event.wait()
        if w.frame is None:
            if self._closed:
                raise ConnectionLost(f"{self.name}: connection lost waiting for {w.what!r}")
            raise EslTimeout(f"{self.name}: no reply to {w.what!r} within {timeout:g} s")
        return w.frame

    async def command(self, data: bytes, timeout: float = 5.0) -> Frame:
        return await self._wait(self._queue_waiter(data), timeout)

    async def api(self, cmd: str, timeout: float = 5.0) -> str:
        """``api <cmd>``; returns the body text (``-ERR ...`` bodies are returned, not raised)."""
        f = await self.command(codec.api(cmd), timeout)
        if f.content_type != "api/response":
            raise EslError(f"{self.name}: api {cmd.split(' ', 1)[0]}: {f.reply_text}")
        return f.body.decode("utf-8", "replace")

    async def api_many(self, cmds: list[str], timeout: float = 5.0) -> list[str]:
        """Pipelined api commands (all written at once, replies in order)."""
        waiters = [self._queue_waiter(codec.api(c)) for c in cmds]
        out = []
        with trio.fail_after(timeout) if waiters else trio.CancelScope():
            for w in waiters:
                f = await self._wait(w, timeout)
                out.append(f.body.decode("utf-8", "replace"))
        return out

    async def bgapi(self, cmd: str, timeout: float = 30.0, job_uuid: str | None = None) -> str:
        """``bgapi <cmd>``: waits for the BACKGROUND_JOB with our Job-UUID; returns its body."""
        job = job_uuid or str(_uuid.uuid4())
        w = _Waiter(f"bgapi {cmd.split(' ', 1)[0]}")
        self._jobs[job] = w
        try:
            reply = await self.command(codec.bgapi(cmd, job_uuid=job), min(timeout, 5.0))
            if not reply.ok:
                raise EslError(f"{self.name}: bgapi {cmd.split(' ', 1)[0]}: {reply.reply_text}")
            with trio.move_on_after(timeout):
                await w.event.wait()
            if w.frame is None:
                if self._closed:
                    raise ConnectionLost(f"{self.name}: connection lost waiting for job {job}")
                raise EslTimeout(f"{self.name}: job {job} ({w.what}) not done within {timeout:g} s")
            body = w.frame.event.body if w.frame.event is not None else ""
            return body if isinstance(body, str) else body.decode("utf-8", "replace")
        finally:
            self._jobs.pop(job, None)

    # ------------------------------------------------------------------ serving
    async def serve(self) -> None:
        """Read frames and write commands until the connection ends (raises why)."""
        errors: list[Exception] = []

        async def guard(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped from the group
                errors.append(exc)
            finally:
                nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard, self._writer)
                nursery.start_soon(guard, self._reader)
        finally:
            self.close()
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._pending:
            if isinstance(w, _Waiter):
                w.event.set()
        for w in self._jobs.values():
            w.event.set()
        self._pending.clear()
        self._lot.unpark_all()

    async def aclose(self) -> None:
        self.close()
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(1):
                    await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _writer(self) -> None:
        out = self._out
        while True:
            if not out:
                await self._lot.park()
                if self._closed:
                    return
                continue
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            self.bytes_out += len(data)
            await self.send_now(data)

    async def _reader(self) -> None:
        parser = self.parser
        while self._preamble:
            await self._dispatch(self._preamble.popleft())
        while True:
            while True:
                f = parser.next_frame()  # RemoteProtocolError propagates: the owner resets
                if f is None:
                    break
                await self._dispatch(f)
            data = await self._receive()
            if not data:
                parser.receive_data(b"")
                for f in parser:
                    await self._dispatch(f)
                raise ConnectionLost(f"{self.name}: connection closed by FreeSWITCH")
            parser.receive_data(data)

    async def _dispatch(self, f: Frame) -> None:
        ev = f.event
        ct = f.content_type
        if ev is not None and ct != "command/reply":
            self.events += 1
            if ev.name == "BACKGROUND_JOB":
                job = ev.get("Job-UUID")
                w = self._jobs.get(job) if isinstance(job, str) else None
                if w is not None:
                    w.frame = f
                    w.event.set()
            if self.on_event is not None:
                await self.on_event(ev)
            return
        if ct in _REPLY_TYPES:
            self.replies += 1
            if not self._pending:
                log.warning("%s: unexpected reply %r", self.name, f)
                return
            w = self._pending.popleft()
            if isinstance(w, _Waiter):
                w.frame = f
                w.event.set()
            elif not f.ok:
                self.remote_errors += 1
                text = f.reply_text if ct == "command/reply" else f.body[:120].decode(
                    "utf-8", "replace").strip()
                log.debug("%s: %s -> %s", self.name, w, text)
            return
        if ct in ("text/disconnect-notice", "text/rude-rejection"):
            if self.on_notice is not None:
                self.on_notice(f)
            if f.headers.get("Content-Disposition") == "linger":
                return  # the channel is gone, events keep coming until we exit
            raise ConnectionLost(f"{self.name}: {ct} from FreeSWITCH")
        # log/data, auth/request and friends: nothing to do


def _what(data: bytes) -> str:
    """A short, password-free description of a command for logs: its first two words."""
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    words = line.split(" ", 2)
    if words[0] == "auth":
        return "auth"
    return " ".join(words[:2])
