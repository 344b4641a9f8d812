"""RS256 bearer tokens (the IdP signs with its private key; the engine holds only the public key):
a valid token works over HTTP (Connect) and WebSocket; a token signed by another key, an expired
one, an HS256 token (even one whose HMAC secret is the public key: the algorithm-confusion attack),
an ``alg: none`` token and a tampered one are all UNAUTHENTICATED, on both transports."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionRejected

from api.auth import issue_token
from tests.support.nats import api_stack, http_call, ws_client


def _pem_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


PRIVATE, PUBLIC = _pem_pair()
OTHER_PRIVATE, _ = _pem_pair()
CLAIMS = dict(tenant="t1", sub="sup1", roles=("supervisor",))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade(alg: str, key: bytes | None) -> str:
    """A token built by hand (PyJWT refuses to make these two on purpose)."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"tenant": "t1", "sub": "sup1", "roles": ["supervisor"], "iat": now,
                               "exp": now + 600, "iss": "callengine", "aud": "callengine"}).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(key, signing_input, hashlib.sha256).digest()) if key else ""
    return f"{header}.{payload}.{signature}"


def _tampered() -> str:
    header, payload, signature = issue_token(PRIVATE, algorithm="RS256", **CLAIMS).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


BAD = {
    "signed by another key": lambda: issue_token(OTHER_PRIVATE, algorithm="RS256", **CLAIMS),
    "expired": lambda: issue_token(PRIVATE, algorithm="RS256", ttl_s=-120, **CLAIMS),
    "HS256 with a shared secret": lambda: issue_token("some-shared-secret-0123456789-abcdef", **CLAIMS),
    "HS256 keyed with the public key": lambda: _handmade("HS256", PUBLIC),
    "alg none": lambda: _handmade("none", None),
    "tampered claims": _tampered,
}


def run(fn, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def rs256_stack():
    return api_stack(secret=PUBLIC, jwt_algorithms=("RS256",), nats=False, micro=False)


def test_a_valid_rs256_token_is_accepted_over_http_and_websocket():
    async def main():
        good = issue_token(PRIVATE, algorithm="RS256", **CLAIMS)
        async with rs256_stack() as stack:
            status, body = await http_call(stack, "Queues/List", {}, good)
            assert status == 200, body
            async with ws_client(stack, good) as ws:  # the handshake's Authorization header
                assert "result" in await ws.call("Queues/List")
            async with ws_client(stack) as ws:  # the auth frame
                reply = await ws.call("auth", {"token": good})
                assert reply["result"] == {"tenant": "t1", "subject": "sup1", "roles": ["supervisor"]}
                assert "result" in await ws.call("Queues/List")

    run(main)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tokens_are_unauthenticated_over_http_and_websocket(case):
    async def main():
        bad = BAD[case]()
        async with rs256_stack() as stack:
            status, body = await http_call(stack, "Queues/List", {}, bad)
            assert (status, body["code"]) == (401, "unauthenticated"), body
            with pytest.raises(ConnectionRejected) as rejected:
                async with ws_client(stack, bad):
                    pass
            assert rejected.value.status_code == 401
            async with ws_client(stack) as ws:
                reply = await ws.call("auth", {"token": bad})
                assert reply["error"]["code"] == "UNAUTHENTICATED", reply
                # still nobody: the next call is refused too
                assert (await ws.call("Queues/List"))["error"]["code"] == "UNAUTHENTICATED"
            denied = [r for r in stack.api.audit.records if r.outcome == "UNAUTHENTICATED"]
            assert len(denied) >= 3  # every refusal is audited

    run(main)
