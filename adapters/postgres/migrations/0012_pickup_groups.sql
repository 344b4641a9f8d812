-- Pickup groups (#10 part 4, docs/parking.md): the groups an extension belongs to, as a JSON list of
-- names (like outbound_routes.trunks). A group pickup by an extension takes the oldest call ringing
-- another member of any of its groups. Constant default: existing rows need no rewrite.
ALTER TABLE extensions ADD COLUMN pickup_groups jsonb NOT NULL DEFAULT '[]';
