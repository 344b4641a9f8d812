-- callengine configuration schema.
--
-- Every configuration table is keyed by (tenant, <id>...) and carries a trigger that
--   1. appends to audit_log (who: the transaction setting callengine.actor), and
--   2. NOTIFYs channel 'callengine_config' with {"table", "op", "tenant", "key": [...]}
--      (keys only: a NOTIFY payload is limited to 8000 bytes, a flow document is not).
-- Column names equal the field names of the msgspec Structs in adapters/postgres/config.py;
-- nested values (lists, maps, relax steps, rules, flow documents) are jsonb.

CREATE TABLE tenants (
    tenant      text PRIMARY KEY CHECK (tenant <> ''),
    name        text NOT NULL DEFAULT '',
    enabled     boolean NOT NULL DEFAULT true,
    settings    jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE roles (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    role        text NOT NULL CHECK (role <> ''),
    permissions jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant, role)
);

CREATE TABLE users (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    user_id     text NOT NULL CHECK (user_id <> ''),
    name        text NOT NULL DEFAULT '',
    email       text NOT NULL DEFAULT '',
    roles       jsonb NOT NULL DEFAULT '[]',
    enabled     boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant, user_id)
);

CREATE TABLE extensions (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    extension   text NOT NULL CHECK (extension <> ''),
    name        text NOT NULL DEFAULT '',
    user_id     text NOT NULL DEFAULT '',
    caller_id   text NOT NULL DEFAULT '',
    voicemail   boolean NOT NULL DEFAULT false,
    enabled     boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant, extension)
);

CREATE TABLE dids (
    tenant          text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    number          text NOT NULL CHECK (number <> ''),
    destination     text NOT NULL,
    time_condition  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, number)
);
-- a dialled number reaches one tenant
CREATE UNIQUE INDEX dids_number ON dids (number);

CREATE TABLE trunks (
    tenant       text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    trunk_id     text NOT NULL CHECK (trunk_id <> ''),
    host         text NOT NULL,
    port         integer NOT NULL DEFAULT 5060,
    transport    text NOT NULL DEFAULT 'udp',
    username     text NOT NULL DEFAULT '',
    max_channels integer NOT NULL DEFAULT 0,
    enabled      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant, trunk_id)
);

CREATE TABLE outbound_routes (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    route_id    text NOT NULL CHECK (route_id <> ''),
    pattern     text NOT NULL,
    priority    integer NOT NULL DEFAULT 100,
    trunks      jsonb NOT NULL DEFAULT '[]',
    prepend     text NOT NULL DEFAULT '',
    strip       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, route_id)
);

CREATE TABLE queues (
    tenant          text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    queue_id        text NOT NULL CHECK (queue_id <> ''),
    name            text NOT NULL DEFAULT '',
    strategy        text NOT NULL DEFAULT 'longest-idle',
    ring_timeout_s  double precision NOT NULL DEFAULT 20,
    offer_grace_s   double precision NOT NULL DEFAULT 10,
    wrap_up_s       double precision NOT NULL DEFAULT 0,
    max_wait_s      double precision NOT NULL DEFAULT 0,
    max_length      integer NOT NULL DEFAULT 0,
    overflow_target text NOT NULL DEFAULT '',
    sl_threshold_s  double precision NOT NULL DEFAULT 20,
    short_abandon_s double precision NOT NULL DEFAULT 5,
    relax_steps     jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant, queue_id)
);
-- actors are addressed by id alone (engine/actors/node.py), so queue and agent ids are global
CREATE UNIQUE INDEX queues_queue_id ON queues (queue_id);

CREATE TABLE agents (
    tenant            text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    agent_id          text NOT NULL CHECK (agent_id <> ''),
    name              text NOT NULL DEFAULT '',
    extension         text NOT NULL DEFAULT '',
    user_id           text NOT NULL DEFAULT '',
    max_missed_offers integer NOT NULL DEFAULT 3,
    enabled           boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant, agent_id)
);
CREATE UNIQUE INDEX agents_agent_id ON agents (agent_id);

CREATE TABLE skills (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    skill       text NOT NULL CHECK (skill <> ''),
    description text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, skill)
);

CREATE TABLE agent_skills (
    tenant      text NOT NULL,
    agent_id    text NOT NULL,
    skill       text NOT NULL,
    level       integer NOT NULL CHECK (level BETWEEN 1 AND 100),
    PRIMARY KEY (tenant, agent_id, skill),
    FOREIGN KEY (tenant, agent_id) REFERENCES agents ON DELETE CASCADE,
    FOREIGN KEY (tenant, skill) REFERENCES skills ON DELETE CASCADE
);

CREATE TABLE queue_members (
    tenant      text NOT NULL,
    queue_id    text NOT NULL,
    agent_id    text NOT NULL,
    penalty     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, queue_id, agent_id),
    FOREIGN KEY (tenant, queue_id) REFERENCES queues ON DELETE CASCADE,
    FOREIGN KEY (tenant, agent_id) REFERENCES agents ON DELETE CASCADE
);

-- flows are versioned documents: a save adds a version; the newest version is the live one
CREATE TABLE flows (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    flow_id     text NOT NULL CHECK (flow_id <> ''),
    version     integer NOT NULL CHECK (version >= 1),
    document    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, flow_id, version)
);

CREATE TABLE time_conditions (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    name        text NOT NULL CHECK (name <> ''),
    timezone    text NOT NULL DEFAULT 'UTC',
    rules       jsonb NOT NULL DEFAULT '[]',
    calendar    text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, name)
);

CREATE TABLE holidays (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    calendar    text NOT NULL CHECK (calendar <> ''),
    day         text NOT NULL,
    name        text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, calendar, day)
);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL DEFAULT '',
    tenant      text NOT NULL DEFAULT '',
    tbl         text NOT NULL,
    op          text NOT NULL,
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant, at);

-- One trigger function for every configuration table. TG_ARGV names the key columns.
CREATE FUNCTION config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_new jsonb := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END;
    row_old jsonb := CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END;
    r jsonb := coalesce(row_new, row_old);
    keys jsonb := '[]'::jsonb;
    i integer;
BEGIN
    FOR i IN 0 .. TG_NARGS - 1 LOOP
        keys := keys || jsonb_build_array(r ->> TG_ARGV[i]);
    END LOOP;
    INSERT INTO audit_log (actor, tenant, tbl, op, before, after)
    VALUES (coalesce(current_setting('callengine.actor', true), ''), r ->> 'tenant',
            TG_TABLE_NAME, TG_OP, row_old, row_new);
    PERFORM pg_notify('callengine_config', json_build_object(
        'table', TG_TABLE_NAME, 'op', TG_OP, 'tenant', r ->> 'tenant', 'key', keys)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION config_changed();
CREATE TRIGGER roles_changed AFTER INSERT OR UPDATE OR DELETE ON roles
    FOR EACH ROW EXECUTE FUNCTION config_changed('role');
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION config_changed('user_id');
CREATE TRIGGER extensions_changed AFTER INSERT OR UPDATE OR DELETE ON extensions
    FOR EACH ROW EXECUTE FUNCTION config_changed('extension');
CREATE TRIGGER dids_changed AFTER INSERT OR UPDATE OR DELETE ON dids
    FOR EACH ROW EXECUTE FUNCTION config_changed('number');
CREATE TRIGGER trunks_changed AFTER INSERT OR UPDATE OR DELETE ON trunks
    FOR EACH ROW EXECUTE FUNCTION config_changed('trunk_id');
CREATE TRIGGER outbound_routes_changed AFTER INSERT OR UPDATE OR DELETE ON outbound_routes
    FOR EACH ROW EXECUTE FUNCTION config_changed('route_id');
CREATE TRIGGER queues_changed AFTER INSERT OR UPDATE OR DELETE ON queues
    FOR EACH ROW EXECUTE FUNCTION config_changed('queue_id');
CREATE TRIGGER agents_changed AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION config_changed('agent_id');
CREATE TRIGGER skills_changed AFTER INSERT OR UPDATE OR DELETE ON skills
    FOR EACH ROW EXECUTE FUNCTION config_changed('skill');
CREATE TRIGGER agent_skills_changed AFTER INSERT OR UPDATE OR DELETE ON agent_skills
    FOR EACH ROW EXECUTE FUNCTION config_changed('agent_id', 'skill');
CREATE TRIGGER queue_members_changed AFTER INSERT OR UPDATE OR DELETE ON queue_members
    FOR EACH ROW EXECUTE FUNCTION config_changed('queue_id', 'agent_id');
CREATE TRIGGER flows_changed AFTER INSERT OR UPDATE OR DELETE ON flows
    FOR EACH ROW EXECUTE FUNCTION config_changed('flow_id');
CREATE TRIGGER time_conditions_changed AFTER INSERT OR UPDATE OR DELETE ON time_conditions
    FOR EACH ROW EXECUTE FUNCTION config_changed('name');
CREATE TRIGGER holidays_changed AFTER INSERT OR UPDATE OR DELETE ON holidays
    FOR EACH ROW EXECUTE FUNCTION config_changed('calendar', 'day');
