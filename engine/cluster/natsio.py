"""NATS for the cluster: the snapshot KV store, a shard link over NATS (measured, not chosen), and
an embedded nats-server for tests and the local default.

Rules
1. nats-py is an asyncio library and the shard host's runtime is trio. The shard never awaits NATS:
   a process gets ONE asyncio loop in its own daemon thread (``NatsLoop``, one connection per URL),
   and the cluster talks to it with ``run_coroutine_threadsafe``. The snapshot store's methods are
   called from a worker thread (``trio.to_thread``) or the driver, and block on a bounded future;
   a link's publish is fire-and-forget (one ``call_soon_threadsafe`` per *batch*, never per message).
2. Everything is picklable as its URL and names only (a Ray actor restarted in a new process
   reconnects lazily on first use).
3. Every wait is bounded (``timeout_s``); a store call that times out raises, and the snapshot loop
   tries again on its next pass.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["EmbeddedNatsThread", "NatsKvSnapshotStore", "NatsLink", "NatsLoop"]


class NatsLoop:
    """One asyncio loop thread per process, one nats connection per URL on it."""

    _lock = threading.Lock()
    _instance: NatsLoop | None = None

    def __init__(self) -> None:
        # a plain selector loop, not asyncio.new_event_loop(): trio-asyncio (used by the NATS and
        # PostgreSQL adapters in the same process) installs a global loop policy whose loops are
        # bound to the thread that created them and cannot run in this thread
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()
        self._conns: dict[str, Any] = {}
        self._conn_lock: asyncio.Lock | None = None
        self.last_error = ""
        self.thread = threading.Thread(target=self._run, name="nats-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _error(self, exc: Exception) -> None:
        self.last_error = repr(exc)  # a closed server at shutdown, a reconnect: counted, not printed

    async def _quiet(self) -> None:
        pass

    @classmethod
    def get(cls) -> NatsLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = NatsLoop()
            return cls._instance

    def run(self, coro: Any, timeout_s: float) -> Any:
        """Run ``coro`` on the loop and wait for it (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def connection(self, url: str) -> Any:
        import nats

        if self._conn_lock is None:
            self._conn_lock = asyncio.Lock()
        async with self._conn_lock:
            nc = self._conns.get(url)
            if nc is None or nc.is_closed:
                nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=60,
                                        reconnect_time_wait=0.5, allow_reconnect=True,
                                        error_cb=self._error, disconnected_cb=self._quiet)
                self._conns[url] = nc
            return nc


class NatsKvSnapshotStore:
    """``SnapshotStore`` on a JetStream key-value bucket (``snapshots.SnapshotStore``).

    ``put_many`` publishes every key at once and waits for all acks (pipelined, not one round trip
    per key); ``load`` reads the newest value of every key through one ordered watcher (no
    ``keys()`` + N ``get``); ``delete_many`` writes tombstones. ``replicas=3`` on a NATS cluster
    makes a snapshot outlive a machine.
    """

    def __init__(self, url: str, bucket: str = "callengine-snapshots", *, replicas: int = 1,
                 timeout_s: float = 10.0) -> None:
        self.url = url
        self.bucket = bucket
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._kv: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "bucket": self.bucket, "replicas": self.replicas, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    async def _bucket(self) -> Any:
        if self._kv is None:
            from nats.js.api import KeyValueConfig
            from nats.js.errors import BucketNotFoundError

            nc = await NatsLoop.get().connection(self.url)
            js = nc.jetstream(timeout=self.timeout_s)
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(KeyValueConfig(bucket=self.bucket, history=1,
                                                                    replicas=self.replicas))
        return self._kv

    def _run(self, coro: Any) -> Any:
        return NatsLoop.get().run(coro, self.timeout_s + 1)

    def put_many(self, items: dict[str, bytes]) -> None:
        if items:
            self._run(self._put_many(items))

    async def _put_many(self, items: dict[str, bytes]) -> None:
        kv = await self._bucket()
        await asyncio.gather(*(kv.put(key, value) for key, value in items.items()))

    def load(self, prefix: str = "") -> dict[str, bytes]:
        return self._run(self._load(prefix))

    async def _load(self, prefix: str) -> dict[str, bytes]:
        from nats.js.kv import KV_DEL, KV_PURGE

        kv = await self._bucket()
        # a key that is a whole dotted token ("cluster.directory") or a kind ("agent.") narrows the
        # watcher to its subject; any other prefix filters client side
        if prefix.endswith("."):
            pattern = prefix + ">"
        elif prefix and "." in prefix:
            pattern = prefix
        else:
            pattern = ">"
        out: dict[str, bytes] = {}
        watcher = await kv.watch(pattern, ignore_deletes=True)
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    entry = await watcher.updates(timeout=self.timeout_s)
                    if entry is None:  # the initial values are done
                        break
                    if entry.operation in (KV_DEL, KV_PURGE) or entry.value is None:
                        out.pop(entry.key, None)
                    elif entry.key.startswith(prefix):
                        out[entry.key] = entry.value
        finally:
            await watcher.stop()
        return out

    def delete_many(self, keys: list[str]) -> None:
        if keys:
            self._run(self._delete_many(keys))

    async def _delete_many(self, keys: list[str]) -> None:
        kv = await self._bucket()
        await asyncio.gather(*(kv.delete(key) for key in keys))


class NatsLink:
    """Shard-to-shard batches over NATS: a subject per destination shard (``<prefix>.<shard>``).

    Measured against batched Ray calls in bench/cluster.py; Ray was chosen (docs/cluster.md). Kept
    because the benchmark runs the same shard pipeline over it. Order per link: one publisher's
    messages on one subject arrive in order. No redelivery: core NATS, at most once.
    """

    def __init__(self, url: str, prefix: str = "callengine.shard") -> None:
        self.url = url
        self.prefix = prefix
        self._nc: Any = None
        self._sub: Any = None

    def subject(self, shard: str) -> str:
        return f"{self.prefix}.{shard}"

    def start(self, shard: str, deliver: Callable[[bytes], Any], timeout_s: float = 10.0) -> None:
        """Connect and subscribe to this shard's subject; ``deliver(payload)`` runs on the loop
        thread (the host hands the batch to trio from there, as Ray's thread does)."""
        loop = NatsLoop.get()

        async def go() -> None:
            self._nc = await loop.connection(self.url)

            async def cb(msg: Any) -> None:
                deliver(msg.data)

            self._sub = await self._nc.subscribe(self.subject(shard), cb=cb, pending_msgs_limit=1_000_000,
                                                 pending_bytes_limit=1 << 30)
            await self._nc.flush(timeout=timeout_s)

        loop.run(go(), timeout_s)

    def send(self, dest: str, payload: bytes) -> None:
        nc = self._nc
        loop = NatsLoop.get().loop
        subject = self.subject(dest)
        loop.call_soon_threadsafe(lambda: loop.create_task(nc.publish(subject, payload)))


class EmbeddedNatsThread:
    """``adapters.nats.server.open_embedded_nats`` kept running in a background trio thread, for
    synchronous callers (pytest fixtures, the ``callengine cluster`` command, the benchmark)."""

    def __init__(self, start_timeout_s: float = 15.0) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: Any = None
        self._stop: Any = None
        self._thread = threading.Thread(target=self._main, name="embedded-nats", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s) or self._error is not None:
            raise RuntimeError(f"embedded nats-server did not start: {self._error!r}")

    def _main(self) -> None:
        import trio

        from adapters.nats.server import open_embedded_nats

        async def run() -> None:
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            async with open_embedded_nats() as server:
                self.url = server.url
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(run)
        except BaseException as exc:  # reported by __init__
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        import trio

        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(10)

    def __enter__(self) -> EmbeddedNatsThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
