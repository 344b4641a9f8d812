"""Conference methods (#10 part 3, docs/conferences.md), registered in ``api.services.METHODS``.

Rules
1. ``ctx.api.conferences`` is the node's ``engine.conference.ConferenceService``; without one,
   JoinConference moves the call into the named room as before (no room checks) and the
   Conferences service answers UNIMPLEMENTED.
2. Tenant isolation (``api.services`` rule 3): rooms are looked up in the caller's tenant only, so
   another tenant's room is NOT_FOUND; the call must be the caller's (an agent: its own call).
3. JoinConference: the room's PIN decides (moderator PIN: the moderator flag, member PIN: member);
   staff may set ``moderator`` without a PIN, an agent may not. The flags go to the leg the caller
   talks to (the agent or extension acting) when there is one, else to the caller's leg (a call
   alone in a flow); the room's own flags (e.g. ``mute``) go to both legs.
4. BlindTransfer to one of the tenant's room numbers (``transfer_into_room``): the caller alone
   goes into the room as a member, without a PIN (the transferring party vouches; a full room is
   RESOURCE_EXHAUSTED), and the party it talked to is released.
5. Mute/Unmute/Kick: admin and supervisor always; an agent only while one of its own calls is a
   moderator member of that room (the machine checks ``by_member`` again); anything else is
   PERMISSION_DENIED. The switch's ``-ERR`` is FAILED_PRECONDITION, an unreachable switch UNAVAILABLE.
6. PutRoom/DeleteRoom (admin, audited with the PIN fields masked): ``conference_rooms`` rows through the configuration store
   (``ctx.api.store.config``); the PINs are hashed here (``engine.conference.hash_pin``) and never
   stored or returned (``moderator_pin``/``member_pin`` in the answer say only whether one is set);
   a PIN field left out keeps the stored hash, "" removes it. Nodes see the change by NOTIFY.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from api import types as t
from api.errors import ApiError
from engine import messages as m

if TYPE_CHECKING:
    from api.dispatch import Context
    from api.services import Method

__all__ = ["conference_methods", "transfer_into_room"]


def _service(ctx: Context, *, required: bool = True) -> Any:
    service = getattr(ctx.api, "conferences", None)
    if service is None and required:
        raise ApiError("UNIMPLEMENTED", "conferences are not enabled on this node")
    return service


def _checked(fn: Any, *args: Any, **kw: Any) -> Any:
    from engine.conference import ConferenceError

    try:
        return fn(*args, **kw)
    except ConferenceError as exc:
        raise ApiError(exc.code, str(exc)) from None


async def join_conference(ctx: Context, req: t.JoinConferenceRequest) -> t.CallResponse:
    from api.services import _ask, _call, _now

    call = _call(ctx, req.call_id)
    p = ctx.principal
    if req.moderator and not p.sees_tenant:
        raise ApiError("PERMISSION_DENIED", "only a supervisor or admin joins as moderator without the PIN")
    service = _service(ctx, required=False)
    room, flags, connected_flags = req.room, (), ()
    if service is not None:
        d = _checked(service.join_check, p.tenant, req.room, req.pin, moderator=req.moderator)
        room_flags = tuple(f for f in d.flags if f != "moderator")
        if getattr(call, "connected", ""):
            flags, connected_flags = room_flags, d.flags
        else:
            flags = d.flags
        room = d.room
    elif req.pin or req.moderator:
        raise ApiError("UNIMPLEMENTED", "conference rooms (PINs, moderators) are not enabled on this node")
    reply = await _ask(ctx, m.JoinConference(call_id=req.call_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                             room=room, flags=flags, connected_flags=connected_flags))
    return t.CallResponse(call_id=req.call_id, message=reply.message,
                          data={**dict(reply.data), "room": req.room})


async def transfer_into_room(ctx: Context, req: t.TransferRequest) -> t.CallResponse | None:
    """A blind transfer whose target is one of the tenant's room numbers: the caller goes into the
    room as a member (the transferring party vouches: no PIN), the party it talked to is released.
    None: the target is no room (an ordinary blind transfer)."""
    from api.services import _ask, _now

    service = _service(ctx, required=False)
    tenant = ctx.principal.tenant
    if service is None or (tenant, req.target) not in service.configs:
        return None
    d = _checked(service.join_check, tenant, req.target, vouched=True)
    reply = await _ask(ctx, m.JoinConference(call_id=req.call_id, at=_now(ctx), request_id=uuid.uuid4().hex,
                                             room=d.room, flags=d.flags, caller_only=True))
    return t.CallResponse(call_id=req.call_id, message=reply.message,
                          data={**dict(reply.data), "room": req.target})


def _moderator_member(ctx: Context, service: Any, room: str) -> int:
    """The member id of one of the agent's own calls that moderates ``room`` (0: none)."""
    p = ctx.principal
    for member in service.members(p.tenant, room):
        if not member.moderator or not member.call_id:
            continue
        call = ctx.node.runtime.state_of("call", member.call_id)
        if call is not None and call.tenant == p.tenant and ctx.api.owns_call(p.agent_id, call):
            return int(member.member_id)
    return 0


def _control(action: str) -> Any:
    async def handler(ctx: Context, req: t.ConferenceMemberRequest) -> t.ConferenceResponse:
        from api.services import _now

        service, p = _service(ctx), ctx.principal
        _checked(service.config, p.tenant, req.room)  # another tenant's room: NOT_FOUND
        by_member = 0
        if not p.sees_tenant:
            by_member = _moderator_member(ctx, service, req.room)
            if not by_member:
                raise ApiError("PERMISSION_DENIED",
                               f"only a moderator of room {req.room} or a supervisor may {action} members")
        reply = await service.control(p.tenant, req.room, action, req.member_id, at=_now(ctx),
                                      by_member=by_member, request_id=uuid.uuid4().hex)
        if not reply.ok:
            raise ApiError(reply.code, reply.message)
        return t.ConferenceResponse(room=req.room, member_id=req.member_id, action=action)

    return handler


def _room_info(service: Any, cfg: Any) -> t.ConferenceRoomInfo:
    from engine.conference import switch_room
    from engine.fsm.conference import RoomState

    live = service.live.get(switch_room(cfg.tenant, cfg.number))
    members = [t.ConferenceMemberInfo(member_id=mb.member_id, call_id=mb.call_id, caller_id=mb.caller_id,
                                      moderator=mb.moderator, muted=mb.muted, joined_at=mb.joined_at)
               for mb in service.members(cfg.tenant, cfg.number)]
    return t.ConferenceRoomInfo(room=cfg.number, name=cfg.name, running=live is not None
                                and live.state is RoomState.RUNNING,
                                waiting=live is not None and live.state is RoomState.WAITING,
                                max_members=cfg.max_members, members=members)


async def list_rooms(ctx: Context, req: t.ListConferencesRequest) -> t.ConferenceList:
    service, tenant = _service(ctx), ctx.principal.tenant
    rooms = sorted((c for (ten, _), c in service.configs.items() if ten == tenant), key=lambda c: c.number)
    return t.ConferenceList(items=[_room_info(service, c) for c in rooms])


async def get_room(ctx: Context, req: t.ConferenceRoomRequest) -> t.ConferenceRoomInfo:
    service = _service(ctx)
    return _room_info(service, _checked(service.config, ctx.principal.tenant, req.room))


# ---- rooms (admin): conference_rooms rows through the configuration store ---------------------


def _rooms_store(ctx: Context) -> Any:
    admin = getattr(ctx.api, "store", None)
    config = getattr(admin, "config", None)  # api.admin_pg.ConfigAdminStore over a ConfigStore
    if config is None:
        raise ApiError("UNIMPLEMENTED", "conference rooms are stored in PostgreSQL (callengine run)")
    return admin, config


def _store_error(exc: Exception) -> ApiError:
    return ApiError(getattr(exc, "code", "INTERNAL"), str(exc))


def _row_info(row: Any) -> t.ConferenceRoomRecord:
    return t.ConferenceRoomRecord(room=row.number, name=row.name, moderator_pin=bool(row.moderator_pin_hash),
                                  member_pin=bool(row.member_pin_hash), max_members=row.max_members,
                                  wait_for_moderator=row.wait_for_moderator, flags=list(row.flags))


async def put_room(ctx: Context, req: t.PutConferenceRoomRequest) -> t.ConferenceRoomRecord:
    """Create or replace a room; PINs are hashed here and never stored or echoed; a PIN field left
    out keeps the stored one, "" removes it."""
    from adapters.postgres.config import ConferenceRoom
    from adapters.postgres.errors import NotFound, StoreError
    from engine.conference import hash_pin

    admin, config = _rooms_store(ctx)
    tenant, actor = ctx.principal.tenant, ctx.principal.subject
    try:
        old = await config.get(ConferenceRoom, tenant, req.room)
    except NotFound:
        old = None
    except StoreError as exc:
        raise _store_error(exc) from None

    def pin(given: str | None, stored: str) -> str:
        if given is None:
            return stored
        return _checked(hash_pin, given) if given else ""

    row = ConferenceRoom(tenant=tenant, number=req.room, name=req.name,
                         moderator_pin_hash=pin(req.moderator_pin, old.moderator_pin_hash if old else ""),
                         member_pin_hash=pin(req.member_pin, old.member_pin_hash if old else ""),
                         max_members=req.max_members, wait_for_moderator=req.wait_for_moderator,
                         flags=tuple(req.flags))
    try:
        await admin._ensure_tenant(tenant)
        saved = await config.put(row, actor=actor)
    except StoreError as exc:
        raise _store_error(exc) from None
    return _row_info(saved)


async def delete_room(ctx: Context, req: t.ConferenceRoomRequest) -> t.ConferenceRoomRecord:
    from adapters.postgres.config import ConferenceRoom
    from adapters.postgres.errors import StoreError

    _, config = _rooms_store(ctx)
    try:
        row = await config.get(ConferenceRoom, ctx.principal.tenant, req.room)
        await config.delete(ConferenceRoom, ctx.principal.tenant, req.room, actor=ctx.principal.subject)
    except StoreError as exc:
        raise _store_error(exc) from None
    return _row_info(row)


def conference_methods() -> list[Method]:
    from api.services import ADMIN, ALL, STAFF, Method

    return [
        Method("CallControl", "JoinConference", t.JoinConferenceRequest, t.CallResponse, join_conference, ALL,
               doc="move the call into a conference room (the room's PIN decides moderator or member)"),
        Method("Conferences", "List", t.ListConferencesRequest, t.ConferenceList, list_rooms, STAFF,
               doc="the tenant's conference rooms with their live members"),
        Method("Conferences", "Get", t.ConferenceRoomRequest, t.ConferenceRoomInfo, get_room, STAFF,
               doc="one room with its live members (member ids for Mute/Unmute/Kick)"),
        Method("Conferences", "Mute", t.ConferenceMemberRequest, t.ConferenceResponse, _control("mute"), ALL,
               doc="mute a member (supervisor/admin, or the room's moderator)"),
        Method("Conferences", "Unmute", t.ConferenceMemberRequest, t.ConferenceResponse, _control("unmute"),
               ALL, doc="unmute a member (supervisor/admin, or the room's moderator)"),
        Method("Conferences", "Kick", t.ConferenceMemberRequest, t.ConferenceResponse, _control("kick"), ALL,
               doc="kick a member out of the room; its call hangs up (supervisor/admin, or the moderator)"),
        Method("Conferences", "PutRoom", t.PutConferenceRoomRequest, t.ConferenceRoomRecord, put_room, ADMIN,
               audited=True, redact=("moderator_pin", "member_pin"),
               doc="create or replace a room (PINs hashed, never stored or shown)"),
        Method("Conferences", "DeleteRoom", t.ConferenceRoomRequest, t.ConferenceRoomRecord, delete_room, ADMIN,
               audited=True, doc="delete a room"),
    ]
