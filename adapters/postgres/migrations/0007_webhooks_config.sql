-- Webhook configuration per tenant (issue 10, part 6; adapters/webhooks/pgconfig.py).
--
-- Kept like the rest of the tenant configuration: rows in PostgreSQL, read at start, changed live
-- through NOTIFY. The channel is its own ('callengine_webhooks', payload {"table", "op", "tenant",
-- "key"}) because the webhook adapter, not NodeConfig, applies these rows; every node reloads the
-- whole (small) webhook configuration on any notification and after a reconnection.
--
-- config holds the webhook's settings as adapters/webhooks/config.py's WebhookConfig without "id"
-- (url, events, body_template, headers, secret, timeout_s, ...), and for contact_lookups its
-- ContactLookupConfig (url, headers, secret, timeout_s, enabled). They are validated by the
-- adapter before a write and again when loaded: a row that does not validate is refused and logged
-- (the others still load). The audit log gets every change with "secret" masked.
CREATE TABLE webhooks (
    tenant      text NOT NULL,
    webhook_id  text NOT NULL,
    config      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, webhook_id)
);

CREATE TABLE contact_lookups (
    tenant      text PRIMARY KEY,
    config      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION webhooks_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_old jsonb := CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END;
    row_new jsonb := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END;
    r jsonb := coalesce(row_new, row_old);
BEGIN
    IF row_old ? 'config' AND row_old -> 'config' ? 'secret' THEN
        row_old := jsonb_set(row_old, '{config,secret}', '"***"');
    END IF;
    IF row_new ? 'config' AND row_new -> 'config' ? 'secret' THEN
        row_new := jsonb_set(row_new, '{config,secret}', '"***"');
    END IF;
    INSERT INTO audit_log (actor, tenant, tbl, op, before, after)
    VALUES (coalesce(current_setting('callengine.actor', true), ''), r ->> 'tenant',
            TG_TABLE_NAME, TG_OP, row_old, row_new);
    PERFORM pg_notify('callengine_webhooks', json_build_object(
        'table', TG_TABLE_NAME, 'op', TG_OP, 'tenant', r ->> 'tenant',
        'key', coalesce(r ->> 'webhook_id', ''))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER webhooks_changed AFTER INSERT OR UPDATE OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION webhooks_changed();
CREATE TRIGGER contact_lookups_changed AFTER INSERT OR UPDATE OR DELETE ON contact_lookups
    FOR EACH ROW EXECUTE FUNCTION webhooks_changed();
