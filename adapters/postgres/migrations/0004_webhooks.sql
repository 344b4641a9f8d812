-- Outbound webhooks (issue 10): events a webhook did not take (adapters/webhooks/deadletter.py).
--
-- reason: queue_full (the webhook's bounded queue was full, nothing was sent), rejected (a 4xx
-- other than 429), exhausted (every attempt failed), shutdown (still queued when the node stopped).
-- event is the event's JSON as text (jsonb refuses \u0000, which a caller id can carry).
-- (tenant, webhook_id, delivery_id) is the idempotence key: a retried batch inserts each letter once.
CREATE TABLE webhook_dead_letters (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    webhook_id   text NOT NULL,
    delivery_id  text NOT NULL,
    event_type   text NOT NULL,
    event        text NOT NULL,
    reason       text NOT NULL CHECK (reason IN ('queue_full', 'rejected', 'exhausted', 'shutdown')),
    attempts     integer NOT NULL,
    last_status  integer,
    last_error   text NOT NULL DEFAULT '',
    failed_at    timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX webhook_dead_letters_delivery ON webhook_dead_letters (tenant, webhook_id, delivery_id);
-- what ops ask: a tenant's recent dead letters (per webhook within it)
CREATE INDEX webhook_dead_letters_tenant_failed ON webhook_dead_letters (tenant, failed_at);
