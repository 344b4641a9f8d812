"""Voicemail methods (#10 part 1, docs/voicemail.md), registered in ``api.services.METHODS``.

Rules
1. Tenant isolation as everywhere (``api.services`` rule 3): the tenant comes from the token, so
   another tenant's mailbox is NOT_FOUND.
2. Admins manage mailboxes, PINs, deletions and GDPR erasure; staff (admin, supervisor) may read a
   mailbox and list its messages.
3. A PIN enters only through SetPin, which is not audited with its body (the audit log keeps
   request bodies of audited methods): the PIN is never stored, logged or returned, only its hash
   is kept. Every other changing method is audited.
4. ``ctx.api.voicemail`` is the node's ``adapters.postgres.voicemail.VoicemailService``; without one
   the Voicemail service answers UNIMPLEMENTED. The store's typed errors become the API's codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from api import types as t
from api.errors import ApiError

if TYPE_CHECKING:
    from api.dispatch import Context
    from api.services import Method

__all__ = ["voicemail_methods"]

R = TypeVar("R")


def _service(ctx: Context) -> Any:
    service = getattr(ctx.api, "voicemail", None)
    if service is None:
        raise ApiError("UNIMPLEMENTED", "voicemail is not stored on this node")
    return service


async def _store_call(fn: Callable[[], Awaitable[R]]) -> R:
    from adapters.postgres.errors import StoreError

    try:
        return await fn()
    except StoreError as error:
        raise ApiError(error.code, str(error)[:300]) from None


async def _info(service: Any, tenant: str, box: str) -> t.MailboxInfo:
    mb = await service.store.get_mailbox(tenant, box)
    new, saved = await service.store.counts(tenant, box)
    return t.MailboxInfo(box=box, greeting=mb.greeting, max_length_s=mb.max_length_s,
                         retention_days=mb.retention_days, new=new, saved=saved, pin_failures=mb.pin_failures,
                         locked_until=mb.locked_until)


async def set_mailbox(ctx: Context, req: t.SetMailboxRequest) -> t.MailboxInfo:
    service, tenant = _service(ctx), ctx.principal.tenant

    async def go() -> t.MailboxInfo:
        await service.store.set_mailbox(tenant, req.box, greeting=req.greeting, max_length_s=req.max_length_s,
                                        retention_days=req.retention_days)
        return await _info(service, tenant, req.box)

    return await _store_call(go)


async def set_pin(ctx: Context, req: t.SetPinRequest) -> t.MailboxInfo:
    service, tenant = _service(ctx), ctx.principal.tenant

    async def go() -> t.MailboxInfo:
        await service.store.set_pin(tenant, req.box, req.pin)
        return await _info(service, tenant, req.box)

    return await _store_call(go)


async def get_mailbox(ctx: Context, req: t.MailboxRequest) -> t.MailboxInfo:
    service = _service(ctx)
    return await _store_call(lambda: _info(service, ctx.principal.tenant, req.box))


async def delete_mailbox(ctx: Context, req: t.MailboxRequest) -> t.ErasedResponse:
    service, tenant = _service(ctx), ctx.principal.tenant

    async def go() -> t.ErasedResponse:
        erased = await service.store.delete_mailbox(tenant, req.box)
        await service.notify(tenant, req.box)  # the lamp goes off
        return t.ErasedResponse(erased=erased)

    return await _store_call(go)


async def list_messages(ctx: Context, req: t.ListMessagesRequest) -> t.VoicemailMessageList:
    service, tenant = _service(ctx), ctx.principal.tenant

    async def go() -> t.VoicemailMessageList:
        await service.store.get_mailbox(tenant, req.box)  # NOT_FOUND for an unknown box
        rows = await service.store.messages(tenant, req.box, req.folder or None)
        return t.VoicemailMessageList(items=[t.VoicemailMessageInfo(
            message_id=m.id, box=m.box, caller_id=m.caller_id, created_at=m.created_at, duration_s=m.duration_s,
            path=m.path, folder=m.folder, expires_at=m.expires_at) for m in rows])

    return await _store_call(go)


async def delete_message(ctx: Context, req: t.MessageRequest) -> t.ErasedResponse:
    service, tenant = _service(ctx), ctx.principal.tenant

    async def go() -> t.ErasedResponse:
        if not await service.delete(tenant, req.box, req.message_id):
            raise ApiError("NOT_FOUND", f"voicemail message {req.message_id} not found")
        return t.ErasedResponse(erased=1)

    return await _store_call(go)


async def save_message(ctx: Context, req: t.MessageRequest) -> t.ErasedResponse:
    service = _service(ctx)

    async def go() -> t.ErasedResponse:
        await service.save(ctx.principal.tenant, req.box, req.message_id)
        return t.ErasedResponse(erased=0)

    return await _store_call(go)


async def erase_mailbox(ctx: Context, req: t.MailboxRequest) -> t.ErasedResponse:
    service = _service(ctx)
    return await _store_call(lambda: _erased(service.erase_box(ctx.principal.tenant, req.box)))


async def erase_caller(ctx: Context, req: t.EraseCallerRequest) -> t.ErasedResponse:
    service = _service(ctx)
    return await _store_call(lambda: _erased(service.erase_caller(ctx.principal.tenant, req.caller_id)))


async def _erased(n: Awaitable[int]) -> t.ErasedResponse:
    return t.ErasedResponse(erased=await n)


def voicemail_methods() -> list[Method]:
    from api.services import ADMIN, STAFF, Method

    return [
        Method("Voicemail", "SetMailbox", t.SetMailboxRequest, t.MailboxInfo, set_mailbox, ADMIN, audited=True,
               doc="create (after SetPin) or update an extension's mailbox: greeting, max length, retention"),
        Method("Voicemail", "SetPin", t.SetPinRequest, t.MailboxInfo, set_pin, ADMIN,
               doc="set a mailbox's PIN (creates the mailbox with defaults); stored as a hash, never audited"),
        Method("Voicemail", "GetMailbox", t.MailboxRequest, t.MailboxInfo, get_mailbox, STAFF,
               doc="a mailbox's settings and its new/saved counts"),
        Method("Voicemail", "DeleteMailbox", t.MailboxRequest, t.ErasedResponse, delete_mailbox, ADMIN,
               audited=True, doc="remove a mailbox and erase its messages"),
        Method("Voicemail", "ListMessages", t.ListMessagesRequest, t.VoicemailMessageList, list_messages, STAFF,
               doc="a mailbox's messages, oldest first"),
        Method("Voicemail", "SaveMessage", t.MessageRequest, t.ErasedResponse, save_message, ADMIN,
               audited=True, doc="move a message to the saved folder (MWI follows)"),
        Method("Voicemail", "DeleteMessage", t.MessageRequest, t.ErasedResponse, delete_message, ADMIN,
               audited=True, doc="delete a message (MWI follows; the audio file is listed for removal)"),
        Method("Voicemail", "EraseMailbox", t.MailboxRequest, t.ErasedResponse, erase_mailbox, ADMIN,
               audited=True, doc="GDPR: delete every message of a mailbox"),
        Method("Voicemail", "EraseCaller", t.EraseCallerRequest, t.ErasedResponse, erase_caller, ADMIN,
               audited=True, doc="GDPR: delete every message a number left in the tenant's mailboxes"),
    ]
