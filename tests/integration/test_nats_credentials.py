"""NATS credentials against a real nats-server configured for them (``open_embedded_nats(config=)``):
user/password, token, nkey, and a ``.creds`` file (operator/JWT mode, MEMORY resolver, accounts
and users signed here with nkeys). The right credentials connect, create the CTI stream, publish
events and serve API requests; wrong or missing ones fail fast with ``NatsAuthError`` (typed, no
hang); a server that is not there is ``NatsUnreachable``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import nkeys
import pytest
import trio

from adapters.nats.bridge import NatsAuthError, NatsSettings, NatsUnreachable, open_bridge
from adapters.nats.server import free_port, open_embedded_nats
from engine.messages import CtiEvent
from tests.support.nats import api_stack, nats_call, token

# ---------------------------------------------------------------- nkeys and NATS JWTs


def new_key(prefix: int) -> Any:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def nats_jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS v2 JWT (alg ed25519-nkey) signed by ``issuer``'s nkey."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode())
                                     .digest()).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
             "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


class Operator:
    """An operator, one account with JetStream, and users of that account (all in memory)."""

    def __init__(self) -> None:
        self.operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
        self.account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        #: JetStream in operator mode needs a system account
        self.system = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        op_pub, acct_pub = self.operator.public_key.decode(), self.account.public_key.decode()
        sys_pub = self.system.public_key.decode()
        self.operator_jwt = nats_jwt(self.operator, op_pub, "callengine-op",
                                     {"type": "operator", "system_account": sys_pub})
        self.account_jwt = nats_jwt(self.operator, acct_pub, "CE", {
            "type": "account", "limits": UNLIMITED, "default_permissions": {"pub": {}, "sub": {}}})
        self.system_jwt = nats_jwt(self.operator, sys_pub, "SYS", {
            "type": "account", "limits": {**UNLIMITED, "mem_storage": 0, "disk_storage": 0,
                                          "streams": 0, "consumer": 0}})

    def config(self) -> str:
        return (f"operator: {self.operator_jwt}\nsystem_account: {self.system.public_key.decode()}\n"
                f"resolver: MEMORY\nresolver_preload: {{\n"
                f"  {self.account.public_key.decode()}: {self.account_jwt}\n"
                f"  {self.system.public_key.decode()}: {self.system_jwt}\n}}\n")

    def creds(self, path: str, *, signer: Any | None = None) -> str:
        """A .creds file for a new user of the account (signed by ``signer``, default the account)."""
        user = new_key(nkeys.PREFIX_BYTE_USER)
        user_jwt = nats_jwt(signer or self.account, user.public_key.decode(), "engine", {
            "type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "issuer_account": self.account.public_key.decode()} if signer else {
            "type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
        with open(path, "w") as f:
            f.write(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                    f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
        return path


# ---------------------------------------------------------------- helpers


@contextmanager
def scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="callengine-creds-") as d:
        yield d


def run(fn, timeout: float = 60) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


async def refused(url: str, **settings: Any) -> NatsAuthError:
    """open_bridge with these settings must fail typed (NatsAuthError) and fast (no hang)."""
    started = trio.current_time()
    with pytest.raises(NatsAuthError) as caught:
        with trio.fail_after(8):
            async with open_bridge(NatsSettings(url=url, connect_timeout_s=2, **settings)):
                pass
    assert trio.current_time() - started < 8
    return caught.value


async def works(url: str, **settings: Any) -> None:
    """The full stack on these credentials: stream created, events published and stored, an API
    request served over NATS (micro services) by the engine."""
    async with api_stack(nats_url=url, nats_settings=settings) as stack:
        assert stack.bridge is not None
        for i in range(5):
            stack.publisher.publish(CtiEvent(name="CALL_HELD", tenant="t1", at=float(i), call_id=f"c{i}"))
        await stack.publisher.wait_idle()
        assert stack.publisher.acked == 5 and stack.publisher.errors == 0
        assert (await stack.bridge.last_seqs(["t1"])) == {"t1": 5}
        code, body = await nats_call_with(stack, settings, "Queues/List",
                                          token(tenant="t1", sub="s", roles=("supervisor",)))
        assert code == "OK", body


async def nats_call_with(stack: Any, settings: dict[str, Any], method: str, tok: str) -> tuple[str, Any]:
    """nats_call, but the requesting client uses the same credentials (the server demands them)."""
    import nats

    service, name = method.split("/")

    async def go() -> tuple[str, Any]:
        options: dict[str, Any] = {}
        if "user" in settings:
            options.update(user=settings["user"], password=settings["password"])
        if "token" in settings:
            options["token"] = settings["token"]
        if "creds" in settings:
            options["user_credentials"] = settings["creds"]
        if "nkey_seed" in settings:
            options["nkeys_seed"] = settings["nkey_seed"]
        nc = await nats.connect(stack.nats_url, allow_reconnect=False, **options)
        try:
            msg = await nc.request(f"api.t1.{service}.{name}", b"{}", timeout=5,
                                   headers={"Authorization": f"Bearer {tok}"})
            return (msg.headers or {}).get("Nats-Service-Error-Code", "OK"), json.loads(msg.data)
        finally:
            await nc.close()

    return await stack.bridge.aio(go)


# ---------------------------------------------------------------- tests


def test_user_and_password():
    async def main():
        config = 'authorization { user: "engine", password: "s3cret-pass" }\n'
        async with open_embedded_nats(config=config) as server:
            await works(server.url, user="engine", password="s3cret-pass")
            error = await refused(server.url, user="engine", password="wrong")
            assert "refused the credentials" in str(error)
            await refused(server.url)  # none at all

    run(main)


def test_token():
    async def main():
        async with open_embedded_nats(config='authorization { token: "tok-0123456789" }\n') as server:
            await works(server.url, token="tok-0123456789")
            await refused(server.url, token="tok-wrong")
            await refused(server.url)

    run(main)


def test_nkey():
    async def main():
        user, stranger = new_key(nkeys.PREFIX_BYTE_USER), new_key(nkeys.PREFIX_BYTE_USER)
        config = f"authorization {{ users: [ {{ nkey: {user.public_key.decode()} }} ] }}\n"
        with scratch() as d:
            good, bad = os.path.join(d, "user.nk"), os.path.join(d, "stranger.nk")
            for path, key in ((good, user), (bad, stranger)):
                with open(path, "w") as f:
                    f.write(key.seed.decode())
            async with open_embedded_nats(config=config) as server:
                await works(server.url, nkey_seed=good)
                await refused(server.url, nkey_seed=bad)
                await refused(server.url)

    run(main)


def test_creds_file_in_operator_mode():
    async def main():
        op = Operator()
        other = Operator()  # a different operator: its users mean nothing to this server
        with scratch() as d:
            good = op.creds(os.path.join(d, "engine.creds"))
            foreign = other.creds(os.path.join(d, "foreign.creds"))
            async with open_embedded_nats(config=op.config()) as server:
                await works(server.url, creds=good)
                await refused(server.url, creds=foreign)
                await refused(server.url)  # no credentials at all
                missing = await refused(server.url, creds=os.path.join(d, "absent.creds"))
                assert "cannot be read" in str(missing)

    run(main)


def test_no_server_is_unreachable_not_a_hang():
    async def main():
        url = f"nats://127.0.0.1:{free_port()}"
        with pytest.raises(NatsUnreachable):
            with trio.fail_after(8):
                async with open_bridge(NatsSettings(url=url, connect_timeout_s=1, initial_connect_s=2)):
                    pass

    run(main)


def test_open_server_still_accepts_no_credentials():
    """The default (no auth configured) is unchanged; nats_call (no credentials) still works."""

    async def main():
        async with api_stack() as stack:
            code, _ = await nats_call(stack, "Queues/List", {}, token(tenant="t1", sub="s", roles=("supervisor",)))
            assert code == "OK"

    run(main)
