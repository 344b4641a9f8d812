"""Webhook administration (#10 part 6, docs/webhooks.md), registered in ``api.services.METHODS``.

Rules
1. Admin only (the role gate), the caller's tenant only (from the token; no request names a
   tenant). Every call is audited, with ``secret`` and ``headers`` masked in the audited body.
2. A secret never leaves the node: views say ``signed`` and show header names with ``***``.
3. The configuration is the PostgreSQL rows (``adapters.webhooks.pgconfig``): a write is validated
   there first (a bad webhook is INVALID_ARGUMENT and nothing is written) and reaches every node's
   dispatcher through NOTIFY, so ``Put`` answers before the dispatcher has it (moments later).
4. ``Redrive`` takes the chosen dead letters from the store in one step (each is sent once even
   when two operators redrive at once), queues them for their webhook under their own delivery id
   (receivers deduplicate on it) and puts back those that could not be queued, with the reason.
   A redriven event that fails again is a dead letter again (the same row).
5. ``ctx.api.webhooks`` is the node's ``adapters.webhooks.node.NodeWebhooks``; without it the
   service answers UNIMPLEMENTED.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from adapters.webhooks.config import ContactLookupConfig, WebhookConfig, WebhookConfigError
from api.errors import ApiError
from api.types import Deleted, OptId, Req, Resp

if TYPE_CHECKING:
    from api.dispatch import Context
    from api.services import Method

__all__ = ["webhook_methods"]

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
Limit = Annotated[int, Meta(ge=1, le=1000)]
MASK = "***"


class WebhookRequest(Req, frozen=True, kw_only=True):
    id: Id


class Empty(Req, frozen=True, kw_only=True):
    pass


class WebhookView(Resp, frozen=True, kw_only=True):
    id: str
    url: str
    events: list[str]
    body_template: str | None = None
    #: header names; values masked
    headers: dict[str, str] = {}
    #: requests carry a Callengine-Signature (a secret is set; it is never shown)
    signed: bool = False
    timeout_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float
    retry_after_cap_s: float
    queue_capacity: int
    enabled: bool


class WebhookList(Resp, frozen=True, kw_only=True):
    items: list[WebhookView]


class ContactLookupView(Resp, frozen=True, kw_only=True):
    configured: bool
    url: str = ""
    headers: dict[str, str] = {}
    signed: bool = False
    timeout_s: float = 0.0
    enabled: bool = False


class DeadLettersRequest(Req, frozen=True, kw_only=True):
    webhook_id: OptId = ""
    limit: Limit = 100


class DeadLetterView(Resp, frozen=True, kw_only=True):
    id: int
    webhook_id: str
    delivery_id: str
    event_type: str
    #: the event's JSON text, as it would have been sent without a template
    event: str
    reason: str
    attempts: int
    last_status: int | None = None
    last_error: str = ""
    failed_at: float
    #: set while a redrive of it is under way; cleared if it fails again
    redriven_at: float | None = None
    redrives: int = 0


class DeadLetterList(Resp, frozen=True, kw_only=True):
    items: list[DeadLetterView]


class RedriveRequest(Req, frozen=True, kw_only=True):
    """Which dead letters: ``ids`` (from ListDeadLetters), else all of ``webhook_id``, else all of
    the tenant; oldest first, at most ``limit``."""

    ids: Annotated[list[int], Meta(max_length=1000)] = []
    webhook_id: OptId = ""
    limit: Limit = 100


class RedriveResponse(Resp, frozen=True, kw_only=True):
    queued: int
    #: reason -> how many were not queued and stay dead (no_webhook, queue_full, bad_event, closing)
    skipped: dict[str, int] = {}


class WebhookStats(Resp, frozen=True, kw_only=True):
    """This node's counters for the tenant's webhooks (since the node started)."""

    #: webhook id -> queued, delivered, retries, dead_lettered
    webhooks: dict[str, dict[str, int]]


def _node(ctx: Context) -> Any:
    hooks = getattr(ctx.api, "webhooks", None)
    if hooks is None:
        raise ApiError("UNIMPLEMENTED", "webhooks are not configured on this node (no PostgreSQL)")
    return hooks


def _masked(headers: dict[str, str]) -> dict[str, str]:
    return {k: MASK for k in headers}


def _view(w: WebhookConfig) -> WebhookView:
    fields = {f: getattr(w, f) for f in WebhookView.__struct_fields__ if f not in ("headers", "signed")}
    return WebhookView(**fields, headers=_masked(w.headers), signed=bool(w.secret))


async def put_webhook(ctx: Context, req: WebhookConfig) -> WebhookView:
    try:
        saved = await _node(ctx).store.put_webhook(ctx.principal.tenant, req, actor=ctx.principal.subject)
    except WebhookConfigError as exc:
        raise ApiError("INVALID_ARGUMENT", str(exc)[:500]) from None
    return _view(saved)


async def _webhooks(ctx: Context) -> list[WebhookConfig]:
    return list(await _node(ctx).store.list_webhooks(ctx.principal.tenant))


async def get_webhook(ctx: Context, req: WebhookRequest) -> WebhookView:
    for w in await _webhooks(ctx):
        if w.id == req.id:
            return _view(w)
    raise ApiError("NOT_FOUND", f"webhook {req.id} not found")


async def list_webhooks(ctx: Context, req: Empty) -> WebhookList:
    return WebhookList(items=[_view(w) for w in sorted(await _webhooks(ctx), key=lambda w: w.id)])


async def delete_webhook(ctx: Context, req: WebhookRequest) -> Deleted:
    if not await _node(ctx).store.delete_webhook(ctx.principal.tenant, req.id, actor=ctx.principal.subject):
        raise ApiError("NOT_FOUND", f"webhook {req.id} not found")
    return Deleted(id=req.id)


def _lookup_view(c: ContactLookupConfig | None) -> ContactLookupView:
    if c is None:
        return ContactLookupView(configured=False)
    return ContactLookupView(configured=True, url=c.url, headers=_masked(c.headers), signed=bool(c.secret),
                             timeout_s=c.timeout_s, enabled=c.enabled)


async def put_contact_lookup(ctx: Context, req: ContactLookupConfig) -> ContactLookupView:
    try:
        await _node(ctx).store.put_contact_lookup(ctx.principal.tenant, req, actor=ctx.principal.subject)
    except WebhookConfigError as exc:
        raise ApiError("INVALID_ARGUMENT", str(exc)[:500]) from None
    return _lookup_view(req)


async def get_contact_lookup(ctx: Context, req: Empty) -> ContactLookupView:
    config = await _node(ctx).store.load()
    found = next((t.contact_lookup for t in config.tenants if t.tenant == ctx.principal.tenant), None)
    return _lookup_view(found)


async def delete_contact_lookup(ctx: Context, req: Empty) -> Deleted:
    if not await _node(ctx).store.delete_contact_lookup(ctx.principal.tenant, actor=ctx.principal.subject):
        raise ApiError("NOT_FOUND", "this tenant has no contact lookup")
    return Deleted(id="contact_lookup")


def _letter_view(x: Any) -> DeadLetterView:
    return DeadLetterView(id=x.id, webhook_id=x.webhook_id, delivery_id=x.delivery_id, event_type=x.event_type,
                          event=x.event, reason=x.reason, attempts=x.attempts, last_status=x.last_status,
                          last_error=x.last_error, failed_at=x.at, redriven_at=x.redriven_at, redrives=x.redrives)


async def list_dead_letters(ctx: Context, req: DeadLettersRequest) -> DeadLetterList:
    letters = await _node(ctx).dispatcher.store.list(ctx.principal.tenant, req.webhook_id or None, req.limit)
    return DeadLetterList(items=[_letter_view(x) for x in letters])


async def redrive(ctx: Context, req: RedriveRequest) -> RedriveResponse:
    hooks = _node(ctx)
    tenant = ctx.principal.tenant
    letters = await hooks.dispatcher.store.take(tenant, req.ids, req.webhook_id or None, req.limit)
    skipped: Counter[str] = Counter()
    back: list[int] = []
    for letter in letters:
        outcome = hooks.dispatcher.redrive(letter)
        if outcome != "queued":
            skipped[outcome] += 1
            back.append(letter.id)
    await hooks.dispatcher.store.release(tenant, back)
    return RedriveResponse(queued=len(letters) - len(back), skipped=dict(skipped))


async def stats(ctx: Context, req: Empty) -> WebhookStats:
    prefix = ctx.principal.tenant + "/"
    per_hook = _node(ctx).dispatcher.statistics()["webhooks"]
    return WebhookStats(webhooks={k[len(prefix):]: dict(v) for k, v in per_hook.items() if k.startswith(prefix)})


def webhook_methods() -> list[Method]:
    from api.services import ADMIN, Method

    secret_fields = ("secret", "headers")

    def method(name: str, req: type, resp: type, handler: Any, doc: str, redact: tuple[str, ...] = ()) -> Method:
        return Method("Webhooks", name, req, resp, handler, ADMIN, audited=True, doc=doc, redact=redact)

    return [
        method("Put", WebhookConfig, WebhookView, put_webhook,
               "create or replace a webhook (validated; every node applies it moments later)", secret_fields),
        method("Get", WebhookRequest, WebhookView, get_webhook, "a webhook (secret never shown)"),
        method("List", Empty, WebhookList, list_webhooks, "the tenant's webhooks"),
        method("Delete", WebhookRequest, Deleted, delete_webhook,
               "remove a webhook (what it still held becomes dead letters)"),
        method("PutContactLookup", ContactLookupConfig, ContactLookupView, put_contact_lookup,
               "set the tenant's contact lookup (screen pop)", secret_fields),
        method("GetContactLookup", Empty, ContactLookupView, get_contact_lookup, "the tenant's contact lookup"),
        method("DeleteContactLookup", Empty, Deleted, delete_contact_lookup, "remove the contact lookup"),
        method("ListDeadLetters", DeadLettersRequest, DeadLetterList, list_dead_letters,
               "events a webhook did not take, newest last"),
        method("Redrive", RedriveRequest, RedriveResponse, redrive,
               "send dead letters again (each once, same delivery id)"),
        method("Stats", Empty, WebhookStats, stats, "this node's delivery counters per webhook"),
    ]

