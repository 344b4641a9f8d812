"""Snapshots of agents and queues, so a restarted shard host can rebuild them.

Rules
1. ``SnapshotStore`` is a small key/value interface (``put_many``, ``load``, ``delete_many``)
   called from a worker thread (``trio.to_thread``), never from the shard's worker. Values are
   ``wire.Image`` bytes; the newest image (``taken_at``) of an actor wins, so it does not matter
   which shard wrote it last (after a hand-over both old and new owner may have written one).
2. Shards write only what changed: states are immutable, so "changed" is ``state is not
   last_written`` (no hot-path hook, no per-message cost). The loss window is the snapshot interval;
   what happened inside it is repaired from the switch (recovery.py) and by re-announcing
   (``resync``) from the live shards.
3. Keys are ``<kind>.<hex id>`` (NATS KV allows only ``[-/_=.a-zA-Z0-9]``), plus ``cluster.directory``.
4. Calls are not snapshotted: they change on every event and FreeSWITCH knows which exist.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

__all__ = ["DIRECTORY_KEY", "FileSnapshotStore", "MemorySnapshotStore", "SnapshotStore", "entity_key",
           "parse_key"]

DIRECTORY_KEY = "cluster.directory"


def entity_key(kind: str, actor_id: str) -> str:
    return f"{kind}.{actor_id.encode().hex()}"


def parse_key(key: str) -> tuple[str, str]:
    kind, _, hexid = key.partition(".")
    return kind, bytes.fromhex(hexid).decode()


class SnapshotStore(Protocol):
    def put_many(self, items: dict[str, bytes]) -> None: ...

    def load(self, prefix: str = "") -> dict[str, bytes]: ...

    def delete_many(self, keys: list[str]) -> None: ...


class MemorySnapshotStore:
    """In-process store (unit tests, a single-process demo)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.writes = 0

    def put_many(self, items: dict[str, bytes]) -> None:
        with self._lock:
            self._data.update(items)
            self.writes += len(items)

    def load(self, prefix: str = "") -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    def delete_many(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)


class FileSnapshotStore:
    """One file per key in a directory, replaced atomically (write a temp file, rename).

    Shared by the processes of one machine (tests, the local default). Picklable: it is only a path,
    so a Ray actor restarted in a new process opens the same store.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        Path(self.path).mkdir(parents=True, exist_ok=True)

    def put_many(self, items: dict[str, bytes]) -> None:
        for key, value in items.items():
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            os.replace(tmp, os.path.join(self.path, key))

    def load(self, prefix: str = "") -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name in os.listdir(self.path):
            if name.startswith(".tmp-") or not name.startswith(prefix):
                continue
            try:
                with open(os.path.join(self.path, name), "rb") as f:
                    out[name] = f.read()
            except FileNotFoundError:
                continue
        return out

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            try:
                os.remove(os.path.join(self.path, key))
            except FileNotFoundError:
                pass
