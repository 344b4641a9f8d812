-- Recordings (#10 part 2, docs/recordings.md): the metadata of each call recording, the always-on
-- flags of queues and extensions, and each tenant's recording policy.
--
-- The audio itself lives on the media server (FreeSWITCH writes `path`); this table is its index.
-- One row per recording, keyed by the engine's recording id (<call id>-r<n>): the writer upserts it
-- from CALL_RECORDING_STARTED (row opened) and CALL_RECORDING_STOPPED (stopped, duration, paused),
-- so a replayed event writes the same row again and events arriving out of order still end right.
-- `call_id` links it to its CDR (cdrs.call_id).

CREATE TABLE recordings (
    recording_id   text PRIMARY KEY CHECK (recording_id <> ''),
    tenant         text NOT NULL,
    call_id        text NOT NULL,
    path           text NOT NULL,
    started_at     timestamptz NOT NULL,
    stopped_at     timestamptz,
    duration_s     double precision NOT NULL DEFAULT 0,
    paused_s       double precision NOT NULL DEFAULT 0,
    -- "agent:<id>", "user:<subject>", "auto:queue:<id>", "auto:extension:<ext>"
    started_by     text NOT NULL DEFAULT '',
    compliance     boolean NOT NULL DEFAULT false,
    queue_id       text NOT NULL DEFAULT '',
    agent_id       text NOT NULL DEFAULT '',
    extension      text NOT NULL DEFAULT '',
    -- "stopped", "call_ended" or the media server's completion cause; '' while recording
    stop_reason    text NOT NULL DEFAULT '',
    -- started_at + the tenant's retention period, fixed when the row is opened
    retain_until   timestamptz NOT NULL,
    -- set by the retention job when the row expired (the audio file is the media server's to delete)
    expired_at     timestamptz
);
CREATE INDEX recordings_tenant_started ON recordings (tenant, started_at);
CREATE INDEX recordings_call ON recordings (call_id);
CREATE INDEX recordings_retain ON recordings (retain_until) WHERE expired_at IS NULL;

-- Per-tenant policy; a tenant without a row has the defaults below (engine/recordings.py).
CREATE TABLE recording_policies (
    tenant                 text PRIMARY KEY CHECK (tenant <> ''),
    -- the consent announcement played before an on-demand recording ('' = none)
    consent                text NOT NULL DEFAULT '',
    retention_days         integer NOT NULL DEFAULT 90 CHECK (retention_days > 0),
    -- an agent may start/stop/pause recordings of its own calls
    agent_control          boolean NOT NULL DEFAULT true,
    -- an agent may listen to recordings of its own calls
    agent_listen           boolean NOT NULL DEFAULT false,
    -- roles that may pause or stop an always-on (compliance) recording (default: nobody)
    compliance_stop_roles  jsonb NOT NULL DEFAULT '[]'
);

-- Always-on recording: every call answered through this queue / at this extension is recorded,
-- after `record_consent` (an announcement, '' = none) has played.
ALTER TABLE queues ADD COLUMN record boolean NOT NULL DEFAULT false;
ALTER TABLE queues ADD COLUMN record_consent text NOT NULL DEFAULT '';
ALTER TABLE extensions ADD COLUMN record boolean NOT NULL DEFAULT false;
ALTER TABLE extensions ADD COLUMN record_consent text NOT NULL DEFAULT '';
