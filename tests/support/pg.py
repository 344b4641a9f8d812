"""Real PostgreSQL for the tests (pgserver, unix socket only), shared per test session.

``pg_server()`` starts one embedded server per session (in a temporary directory, deleted at
exit); each test asks ``fresh_dsn()`` for a new, empty database on it, so tests do not see each
other's rows. Tests that stop the server (outage, crash) start their own ``EmbeddedPostgres``.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import subprocess
import tempfile
import warnings

from adapters.postgres.embedded import EmbeddedPostgres

_server: EmbeddedPostgres | None = None
_counter = itertools.count(1)

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def pg_server() -> EmbeddedPostgres:
    global _server
    if _server is None:
        root = tempfile.mkdtemp(prefix="callengine-pg-")
        server = EmbeddedPostgres(f"{root}/pg", cleanup_mode="delete")
        server.start()
        _server = server

        def stop() -> None:
            server.cleanup()
            shutil.rmtree(root, ignore_errors=True)

        atexit.register(stop)
    return _server


def fresh_dsn(prefix: str = "t") -> str:
    """A new empty database on the session server; returns its DSN."""
    server = pg_server()
    name = f"{prefix}_{next(_counter)}"
    from pgserver._commands import POSTGRES_BIN_PATH

    subprocess.run([str(POSTGRES_BIN_PATH / "psql"), server.dsn, "-q", "-c", f'CREATE DATABASE "{name}"'],
                   check=True, capture_output=True)
    return server.dsn_for(name)
