-- Wrong voicemail PINs counted across calls (docs/voicemail.md; engine.voicemail.lockout): the
-- phone menu reports every PIN it checks, the service keeps the count of wrong ones in a row here
-- and locks the mailbox until locked_until after too many (its menu then gets no PIN hash: every
-- PIN fails). A new PIN clears both. Constant defaults: existing mailboxes start unlocked.
ALTER TABLE voicemail_boxes
    ADD COLUMN pin_failures integer NOT NULL DEFAULT 0 CHECK (pin_failures >= 0),
    ADD COLUMN locked_until timestamptz;
