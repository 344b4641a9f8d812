"""Outbound webhooks and CRM call journaling (issue 10, part 6).

Per tenant, webhooks receive CTI events and CDRs as signed JSON POSTs, with retries, backoff and
dead letters, without ever blocking the call path. ``config`` (typed configuration and its
validation), ``signing`` (the HMAC scheme, for senders and receivers), ``dispatcher`` (queues,
workers, retries), ``deadletter`` (the store port, in memory and PostgreSQL), ``wiring`` (the
hub subscription, the CTI port and the CDR listener), ``pgconfig`` (the configuration in
PostgreSQL, kept live by NOTIFY), ``lookup`` (the contact lookup: screen pop on inbound calls) and
``node`` (all of it for one ``callengine run`` node). See docs/webhooks.md.
"""

from adapters.webhooks.config import (
    CDR_EVENT,
    BadUrl,
    InvalidSetting,
    InvalidTemplate,
    TenantWebhooks,
    UnknownEventType,
    UnknownPlaceholder,
    WebhookConfig,
    WebhookConfigError,
    WebhooksConfig,
    load_config,
)
from adapters.webhooks.deadletter import (
    DeadLetter,
    DeadLetterStore,
    MemoryDeadLetterStore,
    PgDeadLetterStore,
)
from adapters.webhooks.dispatcher import WebhookDispatcher, open_webhook_dispatcher
from adapters.webhooks.signing import SignatureError, signature_header, verify_signature
from adapters.webhooks.wiring import WebhookCdrStore, WebhookCti, attach_to_hub, pump_hub

__all__ = [
    "CDR_EVENT", "BadUrl", "InvalidSetting", "InvalidTemplate", "TenantWebhooks", "UnknownEventType",
    "UnknownPlaceholder", "WebhookConfig", "WebhookConfigError", "WebhooksConfig", "load_config",
    "DeadLetter", "DeadLetterStore", "MemoryDeadLetterStore", "PgDeadLetterStore",
    "WebhookDispatcher", "open_webhook_dispatcher", "SignatureError", "signature_header",
    "verify_signature", "WebhookCdrStore", "WebhookCti", "attach_to_hub", "pump_hub",
]
