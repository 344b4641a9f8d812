-- The trunk that carried an outbound call (engine.messages.Cdr.trunk; docs/outbound.md): the trunk
-- that answered, or the last one tried when none did; '' for calls that used no trunk.
-- Added to the partitioned parent, so every partition (existing and future) has it. NOT NULL with a
-- constant default: PostgreSQL 11+ adds it without rewriting the rows already stored.
-- (Version 0006 is left unused on purpose.)
ALTER TABLE cdrs ADD COLUMN trunk text NOT NULL DEFAULT '';
