-- Redriving dead letters (docs/webhooks.md): a letter taken for a redrive is marked (redriven_at,
-- redrives + 1) in the same statement that reads it, so two operators redriving at once send it
-- once. If the redriven delivery fails again, its new dead letter (same delivery id) updates this
-- row and clears redriven_at, so it shows up as dead again instead of being lost.
ALTER TABLE webhook_dead_letters ADD COLUMN redriven_at timestamptz;
ALTER TABLE webhook_dead_letters ADD COLUMN redrives integer NOT NULL DEFAULT 0;
