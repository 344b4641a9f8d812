"""An append-only spool file: what was accepted but is not yet known to be in PostgreSQL.

Rules
1. One record per line (JSON, msgspec-encoded). ``append`` writes a batch and fsyncs it before
   returning: once ``append`` returned, the batch survives a crash of the process or the host.
2. Records are acknowledged by byte offset, in file order: ``ack(offset)`` says everything before
   ``offset`` is committed. When everything is acknowledged the file is truncated to zero (the
   compaction: O(1), no copy). Until then acknowledged records stay in the file, which is safe
   because the store's writes are idempotent: replaying them inserts nothing twice.
3. Opening a spool recovers it: a torn last line (a crash in the middle of a write that was never
   fsynced, hence never acknowledged to anyone) is cut off; everything else is pending and
   replayed from offset 0.
4. ``append``/``truncate`` hold a lock, so an emergency append from the engine's thread and the
   pump's append from a worker thread never interleave inside a batch.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading

__all__ = ["Spool"]

log = logging.getLogger("callengine.postgres.spool")


class Spool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.acked = 0
        self.appends = 0
        self.fsyncs = 0
        self.torn_bytes = self._recover()

    # ------------------------------------------------------------------ state

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def snapshot(self) -> tuple[int, int]:
        """(size, acked), consistent (not in the middle of an append or a truncation)."""
        with self._lock:
            return self.size, self.acked

    def _recover(self) -> int:
        size = self.size
        if size == 0:
            return 0
        # find the last newline; anything after it is a torn write
        tail = min(size, 1 << 20)
        pos = size
        while pos > 0:
            start = max(0, pos - tail)
            os.lseek(self._fd, start, os.SEEK_SET)
            chunk = os.read(self._fd, pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                good = start + nl + 1
                break
            pos = start
        else:
            good = 0
        torn = size - good
        if torn:
            log.warning("spool %s: cut %d bytes of a torn last record (never acknowledged)", self.path, torn)
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        return torn

    # ------------------------------------------------------------------ writing

    def append(self, data: bytes) -> tuple[int, int]:
        """Append complete lines and fsync. Returns the (start, end) byte offsets of the batch."""
        if not data:
            size = self.size
            return size, size
        assert data.endswith(b"\n")
        with self._lock:
            start = self.size
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
            self.appends += 1
            self.fsyncs += 1
            return start, start + len(data)

    def ack(self, offset: int) -> bool:
        """Everything before ``offset`` is committed. Truncates (returns True) when nothing is left."""
        with self._lock:
            if offset > self.acked:
                self.acked = offset
            if self.acked >= self.size:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                self.fsyncs += 1
                self.acked = 0
                return True
            return False

    # ------------------------------------------------------------------ reading

    def read(self, offset: int, max_records: int, max_bytes: int = 4 << 20) -> tuple[list[bytes], int]:
        """Up to ``max_records`` complete lines from ``offset``: (lines without newline, end offset)."""
        lines: list[bytes] = []
        pos = offset
        size = self.size
        while pos < size and len(lines) < max_records:
            chunk = os.pread(self._fd, min(max_bytes, size - pos), pos)
            if not chunk:
                break
            last_nl = chunk.rfind(b"\n")
            if last_nl < 0:
                if len(chunk) >= max_bytes:  # one line longer than max_bytes: read it whole
                    max_bytes *= 2
                    continue
                break
            used = 0
            for line in chunk[: last_nl + 1].split(b"\n")[:-1]:
                if len(lines) >= max_records:
                    break
                lines.append(line)
                used += len(line) + 1
            pos += used
        return lines, pos

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
