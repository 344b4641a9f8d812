-- Voicemail (#10 part 1; docs/voicemail.md, adapters/postgres/voicemail.py).
--
-- voicemail_boxes: one mailbox per extension (deleted with it). The PIN is stored only as
--   engine.voicemail.hash_pin's PBKDF2-SHA256 string, never in clear. retention_days 0 keeps
--   messages until deleted.
-- voicemail_messages: one row per message; id is the call id that left it, so a replayed
--   VOICEMAIL_NEW inserts one row. Not tied to the mailbox by a foreign key on purpose: a deleted
--   mailbox (or extension) leaves the rows of its deleted messages as tombstones, so the audio
--   files they name can still be found and removed. A deletion (owner, retention, GDPR erase)
--   sets deleted_at and deleted_by and blanks caller_id; the media server owns the audio file, so
--   file_removed_at stays NULL until the ops script (docs/voicemail.md) has removed the file.
CREATE TABLE voicemail_boxes (
    tenant          text NOT NULL,
    box             text NOT NULL,
    pin_hash        text NOT NULL CHECK (pin_hash LIKE 'pbkdf2_sha256$%'),
    greeting        text NOT NULL DEFAULT '',
    max_length_s    integer NOT NULL DEFAULT 120 CHECK (max_length_s BETWEEN 1 AND 3600),
    retention_days  integer NOT NULL DEFAULT 30 CHECK (retention_days >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, box),
    FOREIGN KEY (tenant, box) REFERENCES extensions ON DELETE CASCADE
);

CREATE TABLE voicemail_messages (
    tenant          text NOT NULL,
    id              text NOT NULL CHECK (id <> ''),
    box             text NOT NULL,
    caller_id       text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    duration_s      double precision NOT NULL DEFAULT 0 CHECK (duration_s >= 0),
    path            text NOT NULL,
    folder          text NOT NULL DEFAULT 'new' CHECK (folder IN ('new', 'saved')),
    expires_at      timestamptz,
    deleted_at      timestamptz,
    deleted_by      text NOT NULL DEFAULT '',
    file_removed_at timestamptz,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX voicemail_messages_box ON voicemail_messages (tenant, box, created_at)
    WHERE deleted_at IS NULL;
CREATE INDEX voicemail_messages_expiry ON voicemail_messages (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX voicemail_messages_caller ON voicemail_messages (tenant, caller_id)
    WHERE deleted_at IS NULL;
CREATE INDEX voicemail_messages_files ON voicemail_messages (deleted_at)
    WHERE deleted_at IS NOT NULL AND file_removed_at IS NULL;
