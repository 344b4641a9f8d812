"""mod_xml_curl over real HTTP (hypercorn on trio, 127.0.0.1) with the directory in embedded
PostgreSQL: what FreeSWITCH would POST, Basic auth, typed refusals, a live change reaching the
endpoint through LISTEN/NOTIFY, and ``callengine run --xml-curl-port`` wiring."""

from __future__ import annotations

import base64
import http.client
import pathlib
import tempfile
import warnings
import xml.etree.ElementTree as ET
from urllib.parse import urlencode, urlsplit

import pytest
import trio

from adapters.freeswitch.xml_curl import XmlCurlApp, a1_hash, serve_xml_curl
from adapters.postgres.bridge import open_postgres
from adapters.postgres.config import (
    Extension,
    NodeConfig,
    PgConfigStore,
    SipCredential,
    SipDomain,
    Tenant,
    open_config_watcher,
)
from adapters.postgres.errors import InvalidArgument, NotFound
from adapters.postgres.migrate import apply_migrations
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

CREDS = "fs:gw-secret"
FORM = "application/x-www-form-urlencoded"


def _basic(creds: str) -> str:
    return "Basic " + base64.b64encode(creds.encode()).decode()


def _request(url: str, body: bytes | None, headers: dict[str, str], method: str = "POST",
             chunked: bool = False) -> tuple[int, str, dict]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        if chunked and body:  # no Content-Length: the bound must hold while reading
            data = body
            conn.request(method, u.path, body=iter([data[i:i + 16384] for i in range(0, len(data), 16384)]),
                         headers=headers, encode_chunked=True)
        else:
            conn.request(method, u.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


async def post(url: str, fields: dict[str, str], *, creds: str | None = CREDS, ctype: str = FORM,
               method: str = "POST", raw: bytes | None = None, chunked: bool = False) -> tuple[int, str, dict]:
    headers = {"Content-Type": ctype, "User-Agent": "freeswitch-xml/1.0"}
    if creds is not None:
        headers["Authorization"] = _basic(creds)
    body = raw if raw is not None else urlencode(fields).encode()
    return await trio.to_thread.run_sync(_request, url, body, headers, method, chunked)


def directory(user: str, domain: str) -> dict[str, str]:
    return {"hostname": "fs1", "section": "directory", "tag_name": "domain", "key_name": "name",
            "key_value": domain, "key": "id", "user": user, "domain": domain, "action": "sip_auth"}


def user_of(xml: str) -> ET.Element | None:
    return ET.fromstring(xml).find("section/domain/groups/group/users/user")


def not_found(xml: str) -> bool:
    doc = ET.fromstring(xml)
    return doc.find("section").get("name") == "result" and doc.find("section/result").get("status") == "not found"


async def seed(store: PgConfigStore) -> None:
    for t, dom, ext in (("acme", "acme.example", "1001"), ("globex", "globex.example", "2001")):
        await store.create(Tenant(tenant=t))
        await store.create(SipDomain(tenant=t, domain=dom))
        await store.create(Extension(tenant=t, extension=ext, name=f"User {ext}", voicemail=True))
        await store.create(SipCredential(tenant=t, extension=ext, realm=dom, a1_hash=a1_hash(ext, dom, "pw")))


def test_directory_and_dialplan_over_http_from_postgresql() -> None:
    out: dict = {}

    async def main() -> None:
        async with open_postgres(fresh_dsn()) as pg:
            await pg.run(apply_migrations)
            store = PgConfigStore(pg)
            await seed(store)
            # the database refuses what validation refuses (a hand-written row, rule 1 of config.py)
            with pytest.raises(InvalidArgument):
                await store.create(SipCredential(tenant="acme", extension="1001", realm="acme.example",
                                                 a1_hash="not-a-hash"))
            config = NodeConfig(await store.snapshot())
            async with open_config_watcher(store), trio.open_nursery() as nursery:
                store.subscribe(config.apply)
                app = XmlCurlApp(lambda: config.snapshot, credentials=CREDS)
                url = await nursery.start(serve_xml_curl, app, "127.0.0.1", 0)
                with trio.fail_after(20):
                    await exercise(url, store, config)
                out["stats"] = app.stats
                nursery.cancel_scope.cancel()

    async def exercise(url: str, store: PgConfigStore, config: NodeConfig) -> None:
        status, body, headers = await post(url, directory("1001", "acme.example"))
        assert status == 200 and headers["content-type"].startswith("text/xml"), (status, body)
        user = user_of(body)
        assert user is not None and user.get("id") == "1001"
        params = {p.get("name"): p.get("value") for p in user.iter("param")}
        assert params["a1-hash"] == a1_hash("1001", "acme.example", "pw")
        variables = {v.get("name"): v.get("value") for v in user.iter("variable")}
        assert variables["callengine_tenant"] == "acme" and variables["user_context"] == "acme"
        # tenant B's domain does not reveal tenant A's user, nor an unknown one
        for fields in (directory("1001", "globex.example"), directory("9999", "acme.example"),
                       directory("1001", "unknown.example")):
            status, body, _ = await post(url, fields)
            assert status == 200 and not_found(body), (fields, body)
        # the dialplan hands the call to the engine, with the tenant of the caller's domain
        status, body, _ = await post(url, {"section": "dialplan", "key_value": "public", "Hunt-Context": "public",
                                           "Caller-Destination-Number": "5000",
                                           "variable_domain_name": "globex.example"})
        assert status == 200, body
        acts = [(a.get("application"), a.get("data")) for a in ET.fromstring(body).iter("action")]
        assert acts == [("set", "callengine_tenant=globex"), ("park", None)]
        # Basic auth: none and wrong are refused with a challenge, right is accepted (above)
        for creds in (None, "fs:wrong", "fs:gw-secre"):
            status, body, headers = await post(url, directory("1001", "acme.example"), creds=creds)
            assert status == 401 and headers["www-authenticate"].startswith("Basic"), (creds, status)
            assert "a1-hash" not in body
        # bad requests: typed, with a reason
        status, body, _ = await post(url, {"user": "1001"})
        assert status == 400 and "section" in body
        status, body, _ = await post(url, directory("1001", "acme.example"), ctype="application/json")
        assert status == 400 and "x-www-form-urlencoded" in body
        status, _, headers = await post(url, {}, method="GET", raw=b"")
        assert status == 405 and headers["allow"] == "POST"
        big = b"section=directory&x=" + b"a" * (300 * 1024)
        status, _, _ = await post(url, {}, raw=big)
        assert status == 413
        status, _, _ = await post(url, {}, raw=big, chunked=True)
        assert status == 413
        # a change in PostgreSQL reaches the endpoint (NOTIFY -> NodeConfig.apply), no restart
        await store.delete(Extension, "acme", "1001")  # cascades to its credential
        with pytest.raises(NotFound):
            await store.get(SipCredential, "acme", "1001")
        with trio.fail_after(10):
            while config.snapshot.get(Extension, "acme", "1001") is not None:
                await trio.sleep(0.02)
        status, body, _ = await post(url, directory("1001", "acme.example"))
        assert status == 200 and not_found(body)

    trio.run(main)
    stats = out["stats"]
    assert stats.refused == {401: 3, 400: 2, 405: 1, 413: 2}
    assert stats.served == 6 and stats.not_found == 4


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_callengine_run_serves_xml_curl(monkeypatch) -> None:
    from engine.run import EpochClock, RunOptions, open_engine

    state = pathlib.Path(tempfile.mkdtemp(prefix="callengine-xmlcurl-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(state))
    monkeypatch.delenv("CALLENGINE_PG_DSN", raising=False)
    monkeypatch.setenv("CALLENGINE_XML_CURL_PORT", "0")
    monkeypatch.setenv("CALLENGINE_XML_CURL_CREDENTIALS", CREDS)
    out: dict = {}

    async def main() -> None:
        from adapters.freeswitch.config import EslNodeConfig
        from sim.freeswitch import FreeSwitchEmulator

        emu = FreeSwitchEmulator(heartbeat=1.0)
        async with trio.open_nursery() as outer:
            port = await outer.start(emu.run)
            options = RunOptions.from_env()
            assert options.xml_curl_port == 0 and options.xml_curl_credentials == CREDS
            options.secret = "s" * 32
            options.esl_nodes = [EslNodeConfig(name="fs1", port=port)]
            options.esl_heartbeat_s = 1.0
            options.in_process = True
            async with open_engine(options) as engine:
                url = engine.xml_curl_url
                out["url"] = url
                await seed(engine.store)
                with trio.fail_after(20):
                    while engine.config.snapshot.get(SipCredential, "acme", "1001") is None:
                        await trio.sleep(0.05)
                    out["found"] = await post(url, directory("1001", "acme.example"))
                    out["refused"] = await post(url, directory("1001", "acme.example"), creds=None)
            outer.cancel_scope.cancel()

    trio.run(main, clock=EpochClock())
    assert out["url"].startswith("http://127.0.0.1:") and out["url"].endswith("/freeswitch/xml")
    status, body, _ = out["found"]
    assert status == 200 and user_of(body).get("id") == "1001", body
    assert out["refused"][0] == 401
