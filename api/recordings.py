"""Recording methods (#10 part 2, docs/recordings.md), registered in ``api.services.METHODS``.

Rules
1. The role gate lets every role in (ALL); the tenant's ``RecordingPolicy`` then decides
   (``engine.recordings.allowed``): admin and supervisor everything, an agent start/stop/pause on
   its own calls when ``agent_control``, listen to its own recordings when ``agent_listen``; pausing
   or stopping an always-on (compliance) recording only for ``compliance_stop_roles``. A refusal is
   PERMISSION_DENIED.
2. Tenant isolation as everywhere (``api.services`` rule 3): another tenant's call or recording is
   NOT_FOUND; so is an expired recording (its audio is gone).
3. The engine chooses every file name (the request types have no path); the consent announcement
   comes from the policy. The call machine decides the rest (FAILED_PRECONDITION when nothing is
   recording, PERMISSION_DENIED for a compliance recording without the policy's override).
4. ``ctx.api.recordings`` is the recordings catalog (``engine.recordings.RecordingCatalog`` or
   ``adapters.postgres.recordings.PgRecordings``); without one the default policy applies and the
   Recordings service answers UNIMPLEMENTED.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from api import types as t
from api.errors import ApiError
from engine import messages as m
from engine.recordings import (
    DEFAULT_POLICY,
    Action,
    RecordingPolicy,
    RecordingRow,
    allowed,
    started_by,
)

if TYPE_CHECKING:
    from api.dispatch import Context
    from api.services import Method

# api.services registers these methods while it is being imported: its helpers are imported late
# (inside the functions), so importing this module first works as well


def _call(ctx: Context, call_id: str) -> Any:
    from api.services import _call as call

    return call(ctx, call_id)


def _now(ctx: Context) -> float:
    from api.services import _now as now

    return now(ctx)


async def _ask(ctx: Context, command: Any) -> Any:
    from api.services import _ask as ask

    return await ask(ctx, command)

__all__ = ["recording_methods"]


def _catalog(ctx: Context) -> Any:
    return getattr(ctx.api, "recordings", None)


async def _policy(ctx: Context) -> RecordingPolicy:
    catalog = _catalog(ctx)
    if catalog is None:
        return DEFAULT_POLICY
    policy: RecordingPolicy = await catalog.policy(ctx.principal.tenant)
    return policy


def _check(ctx: Context, policy: RecordingPolicy, action: Action, *, own: bool) -> None:
    if not allowed(policy, ctx.principal.roles, action, own=own):
        raise ApiError("PERMISSION_DENIED", f"the tenant's recording policy does not allow you to {action} this")


async def _reply(ctx: Context, call_id: str, command: Any) -> t.CallResponse:
    reply = await _ask(ctx, command)
    return t.CallResponse(call_id=call_id, message=reply.message, data=dict(reply.data))


async def start_recording(ctx: Context, req: t.CallRequest) -> t.CallResponse:
    _call(ctx, req.call_id)  # tenant, and an agent's own call only
    policy = await _policy(ctx)
    _check(ctx, policy, "start", own=True)
    p = ctx.principal
    return await _reply(ctx, req.call_id, m.StartRecording(
        call_id=req.call_id, at=_now(ctx), request_id=uuid.uuid4().hex,
        by=started_by(p.roles, p.agent_id, p.subject), consent=policy.consent))


def _controls(action: Action, build: Any) -> Any:
    async def handler(ctx: Context, req: t.CallRequest) -> t.CallResponse:
        _call(ctx, req.call_id)
        policy = await _policy(ctx)
        _check(ctx, policy, action, own=True)
        # may this caller also pause/stop an always-on recording? The call machine knows whether it is one
        override = allowed(policy, ctx.principal.roles, action, own=True, compliance=True)
        return await _reply(ctx, req.call_id, build(req, _now(ctx), uuid.uuid4().hex, override))

    return handler


def _info(ctx: Context, row: RecordingRow) -> t.RecordingInfo:
    catalog = _catalog(ctx)
    return t.RecordingInfo(
        recording_id=row.recording_id, call_id=row.call_id, path=row.path,
        audio_url=catalog.audio_url(row) if catalog is not None else "", started_at=row.started_at,
        stopped_at=row.stopped_at, duration_s=row.duration_s, paused_s=row.paused_s, started_by=row.started_by,
        compliance=row.compliance, queue_id=row.queue_id, agent_id=row.agent_id, extension=row.extension,
        stop_reason=row.stop_reason, retain_until=row.retain_until)


def _need_catalog(ctx: Context) -> Any:
    catalog = _catalog(ctx)
    if catalog is None:
        raise ApiError("UNIMPLEMENTED", "recordings are not stored on this node")
    return catalog


async def list_recordings(ctx: Context, req: t.ListRecordingsRequest) -> t.RecordingList:
    """Staff see the tenant's recordings; an agent only its own, and only when the policy lets it listen."""
    catalog, p = _need_catalog(ctx), ctx.principal
    policy = await _policy(ctx)
    _check(ctx, policy, "listen", own=True)
    agent_id = "" if p.sees_tenant else (p.agent_id or "\x00")
    rows = await catalog.list(p.tenant, call_id=req.call_id, agent_id=agent_id, limit=req.limit)
    return t.RecordingList(items=[_info(ctx, r) for r in rows])


async def get_recording(ctx: Context, req: t.RecordingRequest) -> t.RecordingInfo:
    catalog, p = _need_catalog(ctx), ctx.principal
    row = await catalog.get(p.tenant, req.recording_id)
    if row is None or row.tenant != p.tenant or row.expired_at is not None:
        raise ApiError("NOT_FOUND", f"recording {req.recording_id} not found")
    policy = await _policy(ctx)
    _check(ctx, policy, "listen", own=bool(p.agent_id) and row.agent_id == p.agent_id)
    return _info(ctx, row)


def _policy_record(policy: RecordingPolicy) -> t.RecordingPolicyRecord:
    return t.RecordingPolicyRecord(consent=policy.consent, retention_days=policy.retention_days,
                                   agent_control=policy.agent_control, agent_listen=policy.agent_listen,
                                   compliance_stop_roles=list(policy.compliance_stop_roles))  # type: ignore[arg-type]


async def get_policy(ctx: Context, req: t.RecordingPolicyRequest) -> t.RecordingPolicyRecord:
    return _policy_record(await _policy(ctx))


async def set_policy(ctx: Context, req: t.RecordingPolicyRecord) -> t.RecordingPolicyRecord:
    """Replace the tenant's policy (a new retention period applies to recordings started after it)."""
    catalog = _need_catalog(ctx)
    policy = RecordingPolicy(tenant=ctx.principal.tenant, consent=req.consent, retention_days=req.retention_days,
                             agent_control=req.agent_control, agent_listen=req.agent_listen,
                             compliance_stop_roles=tuple(sorted(set(req.compliance_stop_roles))))
    await catalog.put_policy(policy)
    return _policy_record(policy)


def recording_methods() -> list[Method]:
    from api.services import ADMIN, ALL, Method

    return [
        Method("CallControl", "StartRecording", t.CallRequest, t.CallResponse, start_recording, ALL,
               doc="record the call (after the policy's consent announcement); the engine names the file"),
        Method("CallControl", "StopRecording", t.CallRequest, t.CallResponse,
               _controls("stop", lambda r, at, rid, o: m.StopRecording(call_id=r.call_id, at=at, request_id=rid,
                                                                      override=o)), ALL,
               doc="stop recording (an always-on recording only where the policy allows)"),
        Method("CallControl", "PauseRecording", t.CallRequest, t.CallResponse,
               _controls("pause", lambda r, at, rid, o: m.PauseRecording(call_id=r.call_id, at=at, request_id=rid,
                                                                        override=o)), ALL,
               doc="pause the recording (silence is recorded meanwhile)"),
        Method("CallControl", "ResumeRecording", t.CallRequest, t.CallResponse,
               _controls("pause", lambda r, at, rid, o: m.ResumeRecording(call_id=r.call_id, at=at,
                                                                         request_id=rid)), ALL,
               doc="resume a paused recording"),
        Method("Recordings", "List", t.ListRecordingsRequest, t.RecordingList, list_recordings, ALL,
               doc="the tenant's recordings, newest first (an agent: its own, if the policy lets it listen)"),
        Method("Recordings", "Get", t.RecordingRequest, t.RecordingInfo, get_recording, ALL,
               doc="a recording's metadata and where to fetch its audio"),
        Method("Admin", "GetRecordingPolicy", t.RecordingPolicyRequest, t.RecordingPolicyRecord, get_policy, ADMIN,
               audited=True, doc="the tenant's recording policy (the defaults when none is stored)"),
        Method("Admin", "SetRecordingPolicy", t.RecordingPolicyRecord, t.RecordingPolicyRecord, set_policy, ADMIN,
               audited=True, doc="replace the tenant's recording policy"),
    ]
