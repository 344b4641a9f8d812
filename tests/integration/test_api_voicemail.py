"""The Voicemail API (docs/voicemail.md) over real HTTP on 127.0.0.1 (the Connect transport) into
a node whose voicemail service stores in embedded PostgreSQL: roles, tenant isolation, the PIN
never in a reply or the audit log, typed errors, MWI after deletions, GDPR erasure."""

from __future__ import annotations

import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.migrate import apply_migrations
from adapters.postgres.voicemail import VoicemailService, VoicemailStore
from engine.messages import CtiEvent
from tests.support.nats import api_stack, http_call, token
from tests.support.pg import fresh_dsn

ADMIN = token(tenant="t1", sub="root1", roles=("admin",))
SUP = token(tenant="t1", sub="sup1", roles=("supervisor",))
AGENT = token(tenant="t1", sub="a1", roles=("agent",))
ADMIN2 = token(tenant="t2", sub="root2", roles=("admin",))


def run(body, timeout: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            async with open_postgres(fresh_dsn("vmapi")) as pg, api_stack(nats=False, ws=False, micro=False) as stack:
                await pg.run(apply_migrations)

                async def rows(conn):
                    for tenant in ("t1", "t2"):
                        await conn.execute("INSERT INTO tenants (tenant) VALUES ($1)", tenant)
                        await conn.execute("INSERT INTO extensions (tenant, extension) VALUES ($1, '1001')", tenant)

                await pg.run(rows)
                sent: list[dict[str, str]] = []

                async def mwi(headers):
                    sent.append(headers)

                service = VoicemailService(VoicemailStore(pg), mwi)
                stack.api.voicemail = service
                await body(stack, service, sent)

    trio.run(main)


async def call(stack, method, params, tok):
    status, body = await http_call(stack, f"Voicemail/{method}", params, tok)
    return "ok" if status == 200 else body["code"], body


def test_roles_tenants_pin_and_erasure():
    async def body(stack, service, sent):
        assert (await call(stack, "SetMailbox", {"box": "1001"}, ADMIN))[0] == "invalid_argument"  # PIN first
        assert (await call(stack, "SetPin", {"box": "1001", "pin": "4711"}, SUP))[0] == "permission_denied"
        assert (await call(stack, "SetPin", {"box": "1001", "pin": "12"}, ADMIN))[0] == "invalid_argument"
        assert (await call(stack, "SetPin", {"box": "9999", "pin": "4711"}, ADMIN))[0] == "failed_precondition"
        code, info = await call(stack, "SetPin", {"box": "1001", "pin": "4711"}, ADMIN)
        assert code == "ok" and "4711" not in str(info) and info["retention_days"] == 30
        code, info = await call(stack, "SetMailbox", {"box": "1001", "greeting": "hi.wav", "retention_days": 7}, ADMIN)
        assert code == "ok" and (info["greeting"], info["retention_days"]) == ("hi.wav", 7)
        assert await service.store.check_pin("t1", "1001", "4711")  # SetMailbox kept the PIN
        # the PIN never reaches the audit log (SetPin is not audited with its body)
        assert not [r for r in stack.api.audit.records if "4711" in r.request]
        audited = [(r.method.rsplit("/", 1)[1], r.outcome, r.request) for r in stack.api.audit.records
                   if "Voicemail" in r.method]
        assert [(m, o) for m, o, _ in audited if m == "SetMailbox"] == [("SetMailbox", "INVALID_ARGUMENT"),
                                                                         ("SetMailbox", "OK")]
        # SetPin: only its refusals are recorded (as every denial is), and without the body
        assert {(m, req) for m, o, req in audited if m == "SetPin"} == {("SetPin", "")}
        # another tenant: NOT_FOUND; an agent may not read mailboxes
        assert (await call(stack, "GetMailbox", {"box": "1001"}, ADMIN2))[0] == "not_found"
        assert (await call(stack, "ListMessages", {"box": "1001"}, AGENT))[0] == "permission_denied"
        for i, caller in enumerate(("+4930111", "+4930222", "+4930111")):
            await service.on_new(CtiEvent(name="VOICEMAIL_NEW", tenant="t1", at=1.7e9 + i, call_id=f"c{i}",
                                          data={"box": "1001", "caller_id": caller, "duration_s": 5.0,
                                                "path": f"voicemail/1001/c{i}.wav"}))
        code, listed = await call(stack, "ListMessages", {"box": "1001"}, SUP)
        assert code == "ok" and [m["message_id"] for m in listed["items"]] == ["c0", "c1", "c2"]
        assert (await call(stack, "ListMessages", {"box": "1001"}, ADMIN2))[0] == "not_found"
        assert (await call(stack, "SaveMessage", {"box": "1001", "message_id": "c1"}, ADMIN))[0] == "ok"
        code, info = await call(stack, "GetMailbox", {"box": "1001"}, SUP)
        assert (info["new"], info["saved"]) == (2, 1)
        sent.clear()
        assert (await call(stack, "DeleteMessage", {"box": "1001", "message_id": "c0"}, ADMIN))[1] == {"erased": 1}
        assert (await call(stack, "DeleteMessage", {"box": "1001", "message_id": "c0"}, ADMIN))[0] == "not_found"
        assert (await call(stack, "DeleteMessage", {"box": "1001", "message_id": "c2"}, ADMIN2))[0] == "not_found"
        # GDPR by caller: the remaining message of +4930111
        assert (await call(stack, "EraseCaller", {"caller_id": "+4930111"}, ADMIN))[1] == {"erased": 1}
        assert (await call(stack, "EraseCaller", {"caller_id": "+4930111"}, SUP))[0] == "permission_denied"
        assert [h["MWI-Voice-Message"] for h in sent] == ["1/1 (0/0)", "0/1 (0/0)"]
        assert (await call(stack, "EraseMailbox", {"box": "1001"}, ADMIN))[1] == {"erased": 1}
        assert (await call(stack, "DeleteMailbox", {"box": "1001"}, ADMIN))[1] == {"erased": 0}
        assert (await call(stack, "GetMailbox", {"box": "1001"}, ADMIN))[0] == "not_found"
        assert sent[-1]["MWI-Voice-Message"] == "0/0 (0/0)"
        assert len(await service.store.files_to_remove()) == 3

    run(body)


def test_without_a_voicemail_service_the_methods_are_unimplemented():
    async def main() -> None:
        async with api_stack(nats=False, ws=False, micro=False) as stack:
            status, body = await http_call(stack, "Voicemail/GetMailbox", {"box": "1001"}, ADMIN)
            assert status != 200 and body["code"] == "unimplemented"

    trio.run(main)
