-- Conference rooms (#10 part 3, docs/conferences.md): one row per room number of a tenant. The room
-- on FreeSWITCH is named "<number>-<tenant>" (mod_conference names are switch-wide).
-- PINs are stored as engine.conference.hash_pin's PBKDF2-SHA256 strings, never as digits; ''
-- means "no PIN" (member_pin_hash: members join freely; moderator_pin_hash: nobody joins as
-- moderator by PIN). flags: mod_conference member flags for everyone ("mute", "deaf", ...).
CREATE TABLE conference_rooms (
    tenant              text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    number              text NOT NULL CHECK (number ~ '^[0-9]{1,16}$'),
    name                text NOT NULL DEFAULT '',
    moderator_pin_hash  text NOT NULL DEFAULT '',
    member_pin_hash     text NOT NULL DEFAULT '',
    max_members         integer NOT NULL DEFAULT 0 CHECK (max_members >= 0),
    wait_for_moderator  boolean NOT NULL DEFAULT false,
    flags               jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant, number)
);

CREATE TRIGGER conference_rooms_changed AFTER INSERT OR UPDATE OR DELETE ON conference_rooms
    FOR EACH ROW EXECUTE FUNCTION config_changed('number');

-- The conference room a call was in (engine.messages.Cdr.conference, the last room it joined);
-- '' for calls never in one. Constant default: existing rows and partitions need no rewrite.
ALTER TABLE cdrs ADD COLUMN conference text NOT NULL DEFAULT '';
