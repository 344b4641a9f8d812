"""``callengine run --in-process``: Admin API writes over the real HTTP API land in PostgreSQL.

In process, ``open_engine`` has PostgreSQL (asyncpg, on a trio-asyncio loop) and the NATS bridge
(nats-py, on a trio-asyncio loop) in one trio process. An Admin write runs in an API request task:
if that task used another asyncio loop than the one PostgreSQL's pool was made on, asyncpg fails
with "attached to a different loop" (INTERNAL to the client). Embedded PostgreSQL and NATS, the
real HTTP API on loopback; every record is read back from PostgreSQL, and NOTIFY brings the new
queue and agent to the node."""

from __future__ import annotations

import http.client
import json
import pathlib
import tempfile
from urllib.parse import urlsplit

import pytest
import trio

from api.auth import issue_token
from engine.run import EpochClock, RunOptions, open_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SECRET = "s" * 32


def _post(url: str, method: str, params: dict, tok: str) -> tuple[int, dict]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.request("POST", f"/callengine.v1.{method}", body=json.dumps(params).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {tok}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_admin_writes_over_http_reach_postgresql_in_process(monkeypatch) -> None:
    from adapters.postgres.config import AgentDef, Extension, QueueDef
    from adapters.postgres.embedded import EmbeddedPostgres

    state = pathlib.Path(tempfile.mkdtemp(prefix="callengine-admin-inproc-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(state))  # the embedded PostgreSQL lives there
    monkeypatch.delenv("CALLENGINE_PG_DSN", raising=False)
    out: dict = {}

    async def main() -> None:
        from adapters.freeswitch.config import EslNodeConfig
        from sim.freeswitch import FreeSwitchEmulator

        emu = FreeSwitchEmulator(heartbeat=1.0)
        async with trio.open_nursery() as outer:
            port = await outer.start(emu.run)
            options = RunOptions(secret=SECRET, state_dir=str(state), esl_nodes=[EslNodeConfig(name="fs1", port=port)],
                                 esl_heartbeat_s=1.0, in_process=True, node_name="t")
            await exercise(options)
            outer.cancel_scope.cancel()

    async def exercise(options: RunOptions) -> None:
        async with open_engine(options) as engine:
            url = engine.stack.http_url
            admin = issue_token(SECRET, tenant="acme", sub="root", roles=("admin",))

            async def call(method: str, params: dict) -> dict:
                status, body = await trio.to_thread.run_sync(_post, url, method, params, admin)
                assert status == 200, (method, status, body)
                return body

            with trio.fail_after(60):
                await call("Admin/CreateQueue", {"id": "sales", "ring_timeout_s": 20})
                await call("Admin/CreateAgent", {"id": "a1", "extension": "7001", "queues": ["sales"]})
                await call("Admin/CreateExtension", {"id": "7001", "name": "Desk 1", "sip_user": "7001"})
                await call("Admin/UpdateQueue", {"id": "sales", "ring_timeout_s": 25})
                # read back from PostgreSQL (not the adapter's cache)
                out["queue"] = await engine.store.get(QueueDef, "acme", "sales")
                out["agent"] = await engine.store.get(AgentDef, "acme", "a1")
                out["extension"] = await engine.store.get(Extension, "acme", "7001")
                # NOTIFY -> ConfigWatcher -> NodeConfig: the node has them now
                while engine.node.state_of("queue", "sales", "acme") is None \
                        or engine.node.state_of("agent", "a1", "acme") is None:
                    await trio.sleep(0.05)
                out["node_queue"] = engine.node.state_of("queue", "sales", "acme").config.ring_timeout_s

    try:
        trio.run(main, clock=EpochClock())
    finally:
        EmbeddedPostgres(state / "pg").stop()
    assert out["queue"].ring_timeout_s == 25
    assert out["agent"].extension == "7001"
    assert out["extension"].name == "Desk 1"
