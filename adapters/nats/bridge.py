"""trio <-> nats-py (asyncio) through trio-asyncio: one connection, batched crossings.

Rules
1. nats-py is an asyncio library. Every call into it crosses the trio/asyncio boundary, and a
   crossing costs ~250 µs of scheduling (ARCHITECTURE.md §3: 4k msg/s per-message vs 122k msg/s
   pumped). So the hot path (``publish_frames``) carries a whole batch per crossing, as ONE buffer
   of HPUB frames built by the publisher (nats-py's per-message header encoding was ~60% of the
   pump's time) plus one JetStream-acked message that closes the batch; replay fetches
   a batch per crossing; only rare control calls (stream setup, one lookup per tenant) cross alone.
2. The bridge owns the asyncio loop (``trio_asyncio.open_loop``) and the connection; it is an async
   context manager and closes both on exit, even on cancellation.
3. Credentials: ``creds`` (a .creds file: user JWT + nkey seed), ``nkey_seed`` (a file holding a
   user nkey seed), ``user``/``password`` or ``token`` when configured.
4. The first connection fails fast and typed, never hangs (nats-py, told to reconnect forever,
   would retry a refused login forever): a server that refuses the credentials is
   ``NatsAuthError``; one not reached within ``initial_connect_s`` is ``NatsUnreachable``; an
   unreadable ``creds``/``nkey_seed`` file is ``NatsAuthError``. Once connected, nats-py
   reconnects forever (a NATS restart must not stop the engine).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.aio.client
import trio
import trio_asyncio
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from adapters.nats.subjects import SEQ_HEADER, hpub_frame, tenant_events

__all__ = ["NatsBridge", "NatsSettings", "StreamSettings", "open_bridge", "ReplayedMessage", "Published",
           "NatsConnectError", "NatsAuthError", "NatsUnreachable"]

log = logging.getLogger("callengine.nats")


class NatsConnectError(RuntimeError):
    """The first connection to NATS failed (see the subclasses)."""


class NatsAuthError(NatsConnectError):
    """NATS refused our credentials (or they could not be read)."""


class NatsUnreachable(NatsConnectError):
    """No NATS server answered within ``NatsSettings.initial_connect_s``."""

T = TypeVar("T")

#: (subject, payload, headers)
Outgoing = tuple[str, bytes, dict[str, str]]


@dataclass(frozen=True)
class NatsSettings:
    url: str
    name: str = "callengine"
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    #: a file with a user nkey seed (``SU...``), for servers configured with ``nkey`` users
    nkey_seed: str | None = None
    connect_timeout_s: float = 5.0
    #: the first connection: give up (NatsUnreachable) after this long
    initial_connect_s: float = 10.0


@dataclass(frozen=True)
class StreamSettings:
    """The JetStream stream of CTI events: retention by age and by size."""

    name: str = "CTI"
    subjects: tuple[str, ...] = ("cti.>",)
    max_age_s: float = 7 * 24 * 3600
    max_bytes: int = 1 << 30
    #: how long a Nats-Msg-Id is remembered for dedupe
    duplicate_window_s: float = 120.0
    storage: str = "file"
    replicas: int = 1


@dataclass(frozen=True)
class Published:
    """The JetStream ack of a batch's last message."""

    stream_seq: int
    duplicate: bool


@dataclass(frozen=True)
class ReplayedMessage:
    subject: str
    data: bytes
    seq: int  #: per-tenant seq (from the Cti-Seq header)
    stream_seq: int


class NatsBridge:
    """A connected nats-py client driven from trio."""

    def __init__(self, nc: Any, stream: StreamSettings) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.jsm = nc.jsm()
        self.stream = stream
        self.batches = 0
        self.published = 0
        self.ack_timeout_s = 5.0
        #: nats-py exposes the protocol-level ``_send_command`` (checked once)
        self._raw = callable(getattr(nc, "_send_command", None))

    async def aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one asyncio coroutine function from trio (one crossing)."""
        return await trio_asyncio.aio_as_trio(fn)(*args)

    # ---------------------------------------------------------------- setup

    async def ensure_stream(self) -> None:
        s = self.stream
        config = StreamConfig(name=s.name, subjects=list(s.subjects), max_age=s.max_age_s,
                              max_bytes=s.max_bytes, duplicate_window=s.duplicate_window_s,
                              storage=StorageType(s.storage), num_replicas=s.replicas)

        async def create() -> None:
            try:
                await self.jsm.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self.jsm.update_stream(config)

        await self.aio(create)

    # ---------------------------------------------------------------- publish

    async def publish_batch(self, batch: Sequence[Outgoing]) -> Published | None:
        """Publish a batch into the stream's subjects (one crossing); dedupe by Nats-Msg-Id.

        Generic form of ``publish_frames`` (builds the frames here); returns the last message's ack."""
        if not batch:
            return None
        frames = b"".join(hpub_frame(subject, payload, headers) for subject, payload, headers in batch[:-1])
        return await self.publish_frames(frames, len(batch) - 1, batch[-1])

    async def publish_frames(self, frames: bytes, count: int, last: Outgoing) -> Published:
        """``send_frames`` then ``wait_ack``: one batch, acknowledged, in one crossing."""

        async def both() -> Published:
            future = await self._send(frames, count, last)
            return await self._ack(future)

        return await self.aio(both)

    async def send_frames(self, frames: bytes, count: int, last: Outgoing) -> Any:
        """Write ``count`` ready-made HPUB frames as one buffer, then publish ``last`` as an
        asynchronous JetStream publish (one crossing). Returns the ack's future: pass it to
        ``wait_ack``; more batches may be sent meanwhile (pipelining).

        The server handles one connection's messages in order, so the last message's ``PubAck`` is
        a barrier: when it arrives every frame before it has been processed by the stream (stored or
        deduplicated). That costs one ack per batch instead of one per message. The caller checks
        ``Published.stream_seq`` against the previous batch's to detect messages the stream did not
        store (``CtiPublisher``) and re-sends the batch (safe: ``Nats-Msg-Id`` dedupes)."""
        return await self.aio(self._send, frames, count, last)

    async def send_many(self, batches: Sequence[tuple[bytes, int, Outgoing]]) -> list[Any]:
        """``send_frames`` for several batches in one crossing (in order); their ack futures."""

        async def send() -> list[Any]:
            return [await self._send(frames, count, last) for frames, count, last in batches]

        return await self.aio(send)

    async def wait_acks(self, futures: Sequence[Any]) -> list[Published | BaseException]:
        """The acks (or errors) of several ``send_frames`` batches, in one crossing."""

        async def wait() -> list[Published | BaseException]:
            out: list[Published | BaseException] = []
            for future in futures:
                try:
                    out.append(await self._ack(future))
                except Exception as error:
                    out.append(error)
            return out

        return await self.aio(wait)

    async def wait_ack(self, future: Any) -> Published:
        """The ack of a ``send_frames`` batch (raises on error or after ``ack_timeout_s``)."""
        return await self.aio(self._ack, future)

    async def _send(self, frames: bytes, count: int, last: Outgoing) -> Any:
        nc = self.nc
        if count:
            if not self._raw:  # pragma: no cover - a nats-py without the internal API
                raise RuntimeError("nats-py lacks _send_command")
            # nats-py's own outgoing buffer: ordered with its other commands, kept across a
            # reconnect (up to its pending-size limit) and written by its flusher
            await nc._send_command(frames)
            nc.stats["out_msgs"] += count
            nc.stats["out_bytes"] += len(frames)
        subject, payload, headers = last
        future = await self.js.publish_async(subject, payload, wait_stall=self.ack_timeout_s,
                                             headers=dict(headers))
        self.batches += 1
        self.published += count + 1
        return future

    async def _ack(self, future: Any) -> Published:
        try:
            ack = await asyncio.wait_for(asyncio.shield(future), self.ack_timeout_s)
        except TimeoutError:
            future.cancel()
            raise
        return Published(stream_seq=int(ack.seq), duplicate=bool(ack.duplicate))

    # ---------------------------------------------------------------- core publish (Watch relays)

    async def publish_core(self, messages: Sequence[Outgoing]) -> None:
        """Publish plain (non-JetStream) messages in one crossing, in order (nats-py buffers them)."""
        if not messages:
            return

        async def send() -> None:
            for subject, payload, headers in messages:
                await self.nc.publish(subject, payload, headers=dict(headers) if headers else None)

        await self.aio(send)

    async def has_interest(self, subject: str, headers: dict[str, str] | None = None,
                           timeout_s: float = 0.5) -> bool:
        """Does anyone subscribe to ``subject``? A request to it: "no responders" (503) means no;
        a reply or a timeout (a subscriber that does not answer) means yes (one crossing)."""

        async def probe() -> bool:
            try:
                await self.nc.request(subject, b"", timeout=timeout_s, headers=headers)
            except nats.errors.NoRespondersError:
                return False
            except nats.errors.TimeoutError:
                return True
            return True

        return await self.aio(probe)

    # ---------------------------------------------------------------- lookups

    async def last_seqs(self, tenants: Sequence[str]) -> dict[str, int]:
        """The last per-tenant seq stored in the stream for each tenant (0 when none)."""

        async def look() -> dict[str, int]:
            found: dict[str, int] = {}
            for tenant in tenants:
                try:
                    msg = await self.jsm.get_msg(self.stream.name, subject=tenant_events(tenant))
                except NotFoundError:
                    found[tenant] = 0
                    continue
                found[tenant] = int((msg.headers or {}).get(SEQ_HEADER, 0))
            return found

        return await self.aio(look)

    async def stream_seq_for(self, tenant: str, from_seq: int) -> int:
        """The stream sequence of the tenant's first event with seq >= ``from_seq``, or 0.

        Binary search with ``next_by_subj`` lookups: O(log n) requests in one crossing.
        """
        filt = tenant_events(tenant)
        name = self.stream.name

        async def at_or_after(stream_seq: int) -> tuple[int, int] | None:
            try:
                msg = await self.jsm.get_msg(name, seq=stream_seq, subject=filt, next=True)
            except NotFoundError:
                return None
            return int(msg.seq or 0), int((msg.headers or {}).get(SEQ_HEADER, 0))

        async def search() -> int:
            info = await self.jsm.stream_info(name)
            lo, hi = max(info.state.first_seq, 1), info.state.last_seq
            if hi < lo:
                return 0
            first = await at_or_after(lo)
            if first is None:
                return 0
            if first[1] >= from_seq:
                return first[0]
            answer = 0
            while lo <= hi:
                mid = (lo + hi) // 2
                hit = await at_or_after(mid)
                if hit is None:
                    hi = mid - 1
                    continue
                stream_seq, seq = hit
                if seq >= from_seq:
                    answer = stream_seq
                    hi = mid - 1
                else:
                    lo = stream_seq + 1
            return answer

        return await self.aio(search)

    # ---------------------------------------------------------------- replay

    async def replay(self, tenant: str, *, from_seq: int = 0, since: float = 0.0, batch: int = 256,
                     limit: int = 100_000, idle_timeout_s: float = 0.5) -> AsyncIterator[list[ReplayedMessage]]:
        """Yield batches of the tenant's stored events from ``from_seq`` (per-tenant seq) or from
        ``since`` (unix time), until caught up with the stream or ``limit`` messages."""
        if from_seq > 0:
            start = await self.stream_seq_for(tenant, from_seq)
            if start == 0:
                return
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                                    ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True)
        elif since > 0:
            import datetime as _dt

            start_time = _dt.datetime.fromtimestamp(since, _dt.UTC).isoformat().replace("+00:00", "Z")
            # nats-py's hint says datetime, but it sends the field as is: the server wants RFC 3339
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                    opt_start_time=start_time,  # type: ignore[arg-type]
                                    ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                    inactive_threshold=30.0, mem_storage=True)
        filt = tenant_events(tenant)

        async def open_sub() -> Any:
            return await self.js.pull_subscribe(filt, stream=self.stream.name, config=config)

        sub = await self.aio(open_sub)

        async def fetch() -> tuple[list[ReplayedMessage], int]:
            try:
                msgs = await sub.fetch(batch, timeout=idle_timeout_s)
            except nats.errors.TimeoutError:
                return [], 0
            out = []
            pending = 0
            for m in msgs:
                meta = m.metadata
                pending = meta.num_pending
                out.append(ReplayedMessage(subject=m.subject, data=m.data,
                                           seq=int((m.headers or {}).get(SEQ_HEADER, 0)),
                                           stream_seq=meta.sequence.stream))
            return out, pending

        try:
            sent = 0
            while sent < limit:
                msgs, pending = await self.aio(fetch)
                if not msgs:
                    return
                sent += len(msgs)
                yield msgs
                if pending == 0:
                    return
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.aio(sub.unsubscribe)
                except Exception:
                    pass


_AUTH_ERRORS = ("authorization violation", "authentication", "authorization failed", "user authentication")


def _is_auth_error(error: BaseException) -> bool:
    return isinstance(error, nats.errors.AuthorizationError) or any(
        marker in str(error).lower() for marker in _AUTH_ERRORS)


async def _connect(settings: NatsSettings) -> Any:
    """Connect (rule 4): typed and bounded on the first connection, reconnecting forever after."""
    import os

    for path in (settings.creds, settings.nkey_seed):
        if path and not os.access(path, os.R_OK):
            raise NatsAuthError(f"NATS credentials file {path!r} cannot be read")
    refused: list[BaseException] = []
    connected = False

    async def on_error(error: Exception) -> None:
        if not connected and _is_auth_error(error):
            refused.append(error)
        log.warning("nats: %s", error)

    options: dict[str, Any] = {"servers": [settings.url], "name": settings.name,
                               "connect_timeout": settings.connect_timeout_s,
                               "max_reconnect_attempts": -1, "allow_reconnect": True,
                               "reconnect_time_wait": 0.5, "error_cb": on_error}
    if settings.creds:
        options["user_credentials"] = settings.creds
    if settings.nkey_seed:
        options["nkeys_seed"] = settings.nkey_seed
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password or ""
    if settings.token:
        options["token"] = settings.token
    nc = nats.aio.client.Client()
    attempt = asyncio.ensure_future(nc.connect(**options))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.initial_connect_s
    failure: NatsConnectError | None = None
    try:
        while not attempt.done():
            if refused:
                failure = NatsAuthError(f"NATS at {settings.url} refused the credentials: {refused[0]}")
                break
            if loop.time() >= deadline:
                failure = NatsUnreachable(f"NATS at {settings.url} not reached within "
                                          f"{settings.initial_connect_s:g} s")
                break
            await asyncio.wait({attempt}, timeout=0.05)
        if failure is None:
            try:
                attempt.result()
            except Exception as error:
                failure = (NatsAuthError if _is_auth_error(error) else NatsUnreachable)(
                    f"NATS at {settings.url}: {error}")
    finally:
        if failure is not None or not attempt.done():
            attempt.cancel()
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - closing a client that never connected
                pass
    if failure is not None:
        raise failure
    connected = True
    return nc


@asynccontextmanager
async def open_bridge(settings: NatsSettings, stream: StreamSettings | None = None) -> AsyncIterator[NatsBridge]:
    """Open the asyncio loop and the connection, make sure the CTI stream exists."""
    failure: NatsConnectError | None = None
    async with trio_asyncio.open_loop():
        try:
            nc = await trio_asyncio.aio_as_trio(_connect)(settings)
        except NatsConnectError as error:
            failure = error  # raised below, outside the loop's nursery: a plain typed error
        if failure is None:
            bridge = NatsBridge(nc, stream or StreamSettings())
            try:
                await bridge.ensure_stream()
                yield bridge
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await trio_asyncio.aio_as_trio(_drain)(nc)
                    except Exception:
                        pass
    if failure is not None:
        raise failure


async def _drain(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.drain(), 2.0)
    except Exception:
        await nc.close()
