"""Where PostgreSQL is: ``CALLENGINE_PG_DSN``, or an embedded server from the ``pgserver`` package.

Rules
1. ``CALLENGINE_PG_DSN`` set: connect to that server, start nothing.
2. Unset: start (or reuse) the PostgreSQL that ships inside the ``pgserver`` wheel, with its data
   in ``<state>/pg``; ``<state>`` is ``CALLENGINE_STATE_DIR`` or ``.state`` under the current
   directory. It listens on a unix socket only (no TCP port at all), so nothing leaves the host.
3. Running as root: PostgreSQL refuses to run as root, so ``pgserver`` creates a system user
   ``pgserver`` (``useradd``) and runs the server as that user; it also makes the data directory's
   parents traversable (o+x) for that user. That is pgserver's supported way and it works here; a
   container without ``useradd`` must run callengine as a non-root user instead.
4. The embedded server is left running when the process exits (``cleanup_mode=None``): the next
   start reuses it in milliseconds, and a crash of the engine does not take the database with it.
   ``stop()`` stops it explicitly (``callengine db stop``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

__all__ = ["state_dir", "resolve_dsn", "EmbeddedPostgres", "redact"]

DSN_ENV = "CALLENGINE_PG_DSN"
STATE_ENV = "CALLENGINE_STATE_DIR"


def state_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(STATE_ENV) or ".state").absolute()


def redact(dsn: str) -> str:
    """The DSN without its password, for log lines."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


class EmbeddedPostgres:
    """The pgserver-managed PostgreSQL in ``datadir``: ``start()`` -> DSN, ``stop()``, ``pid``."""

    def __init__(self, datadir: str | os.PathLike[str], *, cleanup_mode: str | None = None) -> None:
        self.datadir = pathlib.Path(datadir).absolute()
        self.cleanup_mode = cleanup_mode
        self._server: Any = None

    def start(self) -> str:
        import logging

        import pgserver

        # pgserver logs every pg_ctl call at INFO; that is noise at our level
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        if self._server is None:
            self._server = pgserver.get_server(self.datadir, cleanup_mode=self.cleanup_mode)
        else:
            # started before and stopped since (tests stop and restart it to simulate an outage)
            with self._server._lock:
                self._server.ensure_postgres_running()
        return self.dsn

    @property
    def dsn(self) -> str:
        assert self._server is not None, "not started"
        return self._server.get_uri()

    def dsn_for(self, database: str) -> str:
        assert self._server is not None, "not started"
        return self._server.get_uri(database)

    @property
    def pid(self) -> int | None:
        return None if self._server is None else self._server.get_pid()

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>`` (``fast`` disconnects clients; ``immediate`` is a crash)."""
        import pgserver

        if self._server is not None:
            user = self._server.system_user
        else:  # stopping a server started by another process (``callengine db stop``)
            if not (self.datadir / "postmaster.pid").exists():
                return
            user = "pgserver" if os.geteuid() == 0 else None
        try:
            pgserver.pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.datadir, user=user)
        except subprocess.CalledProcessError:
            pass  # not running

    def cleanup(self) -> None:
        """Stop the server (and delete the data when ``cleanup_mode='delete'``)."""
        if self._server is not None:
            self._server.cleanup()


def resolve_dsn(*, start_embedded: bool = True) -> str:
    """The DSN to use: ``CALLENGINE_PG_DSN`` or the embedded server (started if need be)."""
    dsn = os.environ.get(DSN_ENV, "").strip()
    if dsn:
        return dsn
    if not start_embedded:
        raise RuntimeError(f"{DSN_ENV} is not set and the embedded server was not asked for")
    return EmbeddedPostgres(state_dir() / "pg").start()
