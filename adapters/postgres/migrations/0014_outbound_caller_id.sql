-- Caller-ID rules of outbound routes (docs/outbound.md; engine.routing.outbound.CallerIdRule): what
-- the far end sees for a call through the route: the caller's own number (keep), a fixed number
-- (replace: the company's main number) or the caller's number with a prefix (prefix: a DID block's
-- leading digits). Constant defaults: existing rows keep the caller's number, without a rewrite.
ALTER TABLE outbound_routes
    ADD COLUMN caller_id_mode text NOT NULL DEFAULT 'keep' CHECK (caller_id_mode IN ('keep', 'replace', 'prefix')),
    ADD COLUMN caller_id_value text NOT NULL DEFAULT '';
