"""Webhook configuration: per tenant, which URLs receive which events, and how.

Rules
1. The configuration is typed (msgspec Structs, unknown keys refused) and validated once, when it
   is loaded: a bad URL scheme, an unknown event type, a template placeholder the event does not
   have, a header the dispatcher owns are each a typed ``WebhookConfigError`` that names the
   tenant and the webhook. Nothing is discovered at delivery time.
2. Event types are the CTI wire names (``api.events.EVENT_TYPES``: CALL_CREATED, CALL_ENDED,
   AGENT_STATE_CHANGED, ...) plus ``CDR`` (call journaling: the call detail record written when a
   call ends, see ``engine.messages.Cdr``).
3. A body template is ``string.Template`` text (``$name`` / ``${name}``), never ``eval``: each
   placeholder is replaced by the JSON encoding of that field of the event (strings quoted and
   escaped, numbers as numbers, ``null``), so a template such as
   ``{"call": $call_id, "from": $caller_id}`` renders valid JSON whatever the values hold.
   ``$event`` is the whole event as a JSON object and ``$type`` its type name. A placeholder must
   be a field of *every* event type the webhook takes, and the template must render JSON.
   Without a template the body is the event itself (``{"type": ..., "tenant": ..., ...}``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from api.events import EVENT_TYPES, CtiUnknown
from engine.messages import Cdr

__all__ = [
    "WebhookConfig", "TenantWebhooks", "WebhooksConfig", "WebhookConfigError", "BadUrl",
    "UnknownEventType", "UnknownPlaceholder", "InvalidTemplate", "InvalidSetting", "CDR_EVENT",
    "SIGNATURE_HEADER", "known_event_types", "fields_of", "load_config", "validate", "render_body",
    "RESERVED_HEADERS", "ContactLookupConfig", "validate_contact_lookup", "validate_webhook",
    "MAX_LOOKUP_TIMEOUT_S",
]

#: the event type of call journaling (a ``Cdr`` offered through ``offer_cdr``)
CDR_EVENT = "CDR"
#: header carrying ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` (see ``signing.py``)
SIGNATURE_HEADER = "Callengine-Signature"
#: headers the dispatcher sets itself; a webhook may not override them
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection",
    SIGNATURE_HEADER.lower(), "callengine-webhook-id", "callengine-event", "callengine-delivery",
    "callengine-attempt",
})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: placeholders every event has besides its fields
_ALWAYS = frozenset({"event", "type"})


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One outbound webhook of a tenant."""

    id: str
    url: str
    #: event type names (CTI wire names and/or "CDR")
    events: list[str]
    #: ``string.Template`` body with JSON-encoded values; None: the event's own JSON
    body_template: str | None = None
    headers: dict[str, str] = {}
    #: HMAC-SHA256 key; None: requests are not signed
    secret: str | None = None
    #: total time one attempt may take (connect + send + response)
    timeout_s: float = 5.0
    #: attempts in all, the first included; after the last one the event is dead-lettered
    max_attempts: int = 5
    #: full-jitter backoff: sleep uniform(0, min(cap, base * 2 ** (attempt - 1)))
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    #: a 429's Retry-After is honoured up to this many seconds
    retry_after_cap_s: float = 300.0
    #: events waiting for this webhook; when full, new events are dead-lettered (never waited for)
    queue_capacity: int = 1000
    enabled: bool = True


class ContactLookupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's contact lookup (screen pop): ``GET url?caller_id=...`` on each inbound call.

    Its JSON answer rides on the call's CTI events as ``CALL_CONTACT`` (``lookup.py``)."""

    url: str
    headers: dict[str, str] = {}
    #: HMAC-SHA256 key; the signature covers the query string (``lookup.py``); None: unsigned
    secret: str | None = None
    #: the whole lookup (connect + request + answer); past it the call simply has no contact
    timeout_s: float = 0.3
    enabled: bool = True


class TenantWebhooks(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant: str
    webhooks: list[WebhookConfig] = []
    contact_lookup: ContactLookupConfig | None = None


class WebhooksConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenants: list[TenantWebhooks] = []

    def for_tenant(self, tenant: str) -> list[WebhookConfig]:
        return [w for t in self.tenants if t.tenant == tenant for w in t.webhooks if w.enabled]

    def tenant_names(self) -> list[str]:
        return [t.tenant for t in self.tenants if any(w.enabled for w in t.webhooks)]

    def contact_lookups(self) -> dict[str, ContactLookupConfig]:
        """tenant -> its enabled contact lookup."""
        return {t.tenant: t.contact_lookup for t in self.tenants
                if t.contact_lookup is not None and t.contact_lookup.enabled}


# ---- errors ----------------------------------------------------------------------------------


class WebhookConfigError(ValueError):
    """A webhook configuration that cannot be used; names where (tenant, webhook id)."""

    def __init__(self, message: str, *, tenant: str = "", webhook_id: str = "") -> None:
        where = "/".join(p for p in (tenant, webhook_id) if p)
        super().__init__(f"webhook {where}: {message}" if where else message)
        self.tenant = tenant
        self.webhook_id = webhook_id


class BadUrl(WebhookConfigError):
    pass


class UnknownEventType(WebhookConfigError):
    pass


class UnknownPlaceholder(WebhookConfigError):
    pass


class InvalidTemplate(WebhookConfigError):
    pass


class InvalidSetting(WebhookConfigError):
    pass


# ---- event types and their fields --------------------------------------------------------------


def known_event_types() -> frozenset[str]:
    return frozenset(name for name, cls in EVENT_TYPES.items() if cls is not CtiUnknown) | {CDR_EVENT}


def fields_of(event_type: str) -> frozenset[str]:
    """The placeholders an event type offers (its JSON keys, plus ``event`` and ``type``)."""
    if event_type == CDR_EVENT:
        return frozenset(Cdr.__struct_encode_fields__) | _ALWAYS
    cls = EVENT_TYPES[event_type]
    return frozenset(cls.__struct_encode_fields__) | _ALWAYS


# ---- templates -------------------------------------------------------------------------------


def _placeholders(template: str) -> list[str]:
    """Names used by a ``string.Template``; raises ValueError on a malformed ``$``."""
    names: list[str] = []
    for m in string.Template.pattern.finditer(template):
        if m.group("invalid") is not None:
            line = template[: m.start("invalid")].count("\n") + 1
            raise ValueError(f"a '$' that starts no placeholder (line {line}); write '$$' for a dollar")
        name = m.group("named") or m.group("braced")
        if name is not None:
            names.append(name)
    return names


def render_body(template: str, payload: dict[str, Any], encoded_event: bytes) -> bytes:
    """The body for one event: every placeholder becomes the JSON encoding of its value."""
    values: dict[str, str] = {}
    for name in _placeholders(template):
        if name == "event":
            values[name] = encoded_event.decode()
        else:
            values[name] = msgspec.json.encode(payload.get(name)).decode()
    return string.Template(template).substitute(values).encode()


# ---- loading and validation ------------------------------------------------------------------


def load_config(data: bytes | str | dict[str, Any]) -> WebhooksConfig:
    """Decode (JSON text or a mapping, e.g. from YAML) and validate; typed errors only."""
    try:
        if isinstance(data, dict):
            config = msgspec.convert(data, WebhooksConfig)
        else:
            config = msgspec.json.decode(data, type=WebhooksConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidSetting(f"webhook configuration does not decode: {exc}") from exc
    validate(config)
    return config


def validate(config: WebhooksConfig) -> None:
    seen_tenants: set[str] = set()
    for tw in config.tenants:
        if not tw.tenant:
            raise InvalidSetting("a tenant entry without a tenant name")
        if tw.tenant in seen_tenants:
            raise InvalidSetting(f"tenant {tw.tenant!r} is listed twice", tenant=tw.tenant)
        seen_tenants.add(tw.tenant)
        ids: set[str] = set()
        for hook in tw.webhooks:
            if hook.id in ids:
                raise InvalidSetting("two webhooks share this id", tenant=tw.tenant, webhook_id=hook.id)
            ids.add(hook.id)
            validate_webhook(hook, tenant=tw.tenant)
        if tw.contact_lookup is not None:
            validate_contact_lookup(tw.contact_lookup, tenant=tw.tenant)


#: the longest a contact lookup may take: it exists to pop a screen while the phone rings
MAX_LOOKUP_TIMEOUT_S = 5.0


def validate_contact_lookup(lookup: ContactLookupConfig, *, tenant: str = "") -> None:
    where = {"tenant": tenant, "webhook_id": "contact_lookup"}
    _check_url(lookup.url, where)
    _check_headers(lookup.headers, where)
    if not 0 < lookup.timeout_s <= MAX_LOOKUP_TIMEOUT_S:
        raise InvalidSetting(f"timeout_s must be > 0 and <= {MAX_LOOKUP_TIMEOUT_S:g}, not {lookup.timeout_s}",
                             **where)
    if lookup.secret is not None and not lookup.secret:
        raise InvalidSetting("secret is empty (omit it to send unsigned requests)", **where)


def validate_webhook(hook: WebhookConfig, *, tenant: str = "") -> None:
    where = {"tenant": tenant, "webhook_id": hook.id}
    if not hook.id or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", hook.id):
        raise InvalidSetting(f"webhook id {hook.id!r} must be 1-128 of A-Z a-z 0-9 _ . : -", **where)
    _check_url(hook.url, where)
    _check_events(hook.events, where)
    _check_numbers(hook, where)
    _check_headers(hook.headers, where)
    if hook.secret is not None and not hook.secret:
        raise InvalidSetting("secret is empty (omit it to send unsigned requests)", **where)
    if hook.body_template is not None:
        _check_template(hook.body_template, hook.events, where)


def _check_url(url: str, where: dict[str, str]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise BadUrl(f"url {url!r} does not parse: {exc}", **where) from exc
    if parts.scheme not in ("http", "https"):
        raise BadUrl(f"url {url!r}: scheme must be http or https, not {parts.scheme or 'none'!r}", **where)
    if not parts.hostname:
        raise BadUrl(f"url {url!r} has no host", **where)
    if parts.username or parts.password:
        raise BadUrl(f"url {url!r}: put credentials in headers, not in the URL (they would be logged)", **where)


def _check_events(events: Iterable[str], where: dict[str, str]) -> None:
    events = list(events)
    if not events:
        raise UnknownEventType("no event types (list at least one)", **where)
    known = known_event_types()
    for name in events:
        if name not in known:
            raise UnknownEventType(
                f"unknown event type {name!r}; known: {', '.join(sorted(known))}", **where)


def _check_numbers(hook: WebhookConfig, where: dict[str, str]) -> None:
    if not hook.timeout_s > 0:
        raise InvalidSetting(f"timeout_s must be > 0, not {hook.timeout_s}", **where)
    if hook.max_attempts < 1:
        raise InvalidSetting(f"max_attempts must be >= 1, not {hook.max_attempts}", **where)
    if hook.backoff_base_s < 0 or hook.backoff_cap_s < hook.backoff_base_s:
        raise InvalidSetting(
            f"backoff must satisfy 0 <= backoff_base_s <= backoff_cap_s "
            f"(got {hook.backoff_base_s}, {hook.backoff_cap_s})", **where)
    if hook.retry_after_cap_s < 0:
        raise InvalidSetting(f"retry_after_cap_s must be >= 0, not {hook.retry_after_cap_s}", **where)
    if hook.queue_capacity < 1:
        raise InvalidSetting(f"queue_capacity must be >= 1, not {hook.queue_capacity}", **where)


def _check_headers(headers: dict[str, str], where: dict[str, str]) -> None:
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise InvalidSetting(f"header name {name!r} is not an HTTP token", **where)
        if name.lower() in RESERVED_HEADERS:
            raise InvalidSetting(f"header {name!r} is set by the dispatcher and cannot be configured", **where)
        if any(c in value for c in "\r\n\0"):
            raise InvalidSetting(f"header {name!r} has a line break or NUL in its value", **where)


def _check_template(template: str, events: list[str], where: dict[str, str]) -> None:
    try:
        names = _placeholders(template)
    except ValueError as exc:
        raise InvalidTemplate(str(exc), **where) from exc
    for event_type in events:
        available = fields_of(event_type)
        missing = sorted({n for n in names if n not in available})
        if missing:
            raise UnknownPlaceholder(
                f"template placeholder(s) {', '.join('$' + n for n in missing)} are not fields of "
                f"{event_type}; its fields: {', '.join(sorted(available))}", **where)
    # placeholders become JSON values, so a template that is JSON with them stays JSON with any
    # event: check it once with a sample value
    sample = string.Template(template).substitute({n: '"x"' for n in names})
    try:
        msgspec.json.decode(sample)
    except msgspec.DecodeError as exc:
        raise InvalidTemplate(
            f"the template does not render JSON ({exc}); placeholders are JSON values already, "
            f"so write {{\"call\": $call_id}}, not {{\"call\": \"$call_id\"}}", **where) from exc
