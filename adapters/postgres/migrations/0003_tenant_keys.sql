-- Keys are per tenant, like the node's actors (tenant/id) and the API (a record of another tenant
-- is NOT_FOUND, the same id in two tenants is two records).
--
-- 0001 made queue, agent and DID ids unique across tenants (global unique indexes beside the
-- (tenant, id) primary keys): a second tenant could not create queue "sales" once a first one had
-- it. The primary keys (tenant, queue_id), (tenant, agent_id), (tenant, number) stay; the global
-- indexes go. DIDs route by the call's tenant first (NodeConfig.router).
DROP INDEX IF EXISTS queues_queue_id;
DROP INDEX IF EXISTS agents_agent_id;
DROP INDEX IF EXISTS dids_number;

-- The records' idempotence keys (ON CONFLICT DO NOTHING) must not merge two tenants' rows: agent
-- "a1" of two tenants changing state in the same instant are two rows. queue_events is keyed by
-- call_id (a UUID), tenant added all the same so that the key says what it means.
ALTER TABLE agent_state_log DROP CONSTRAINT agent_state_log_pkey;
ALTER TABLE agent_state_log ADD PRIMARY KEY (tenant, agent_id, at, state, previous);
ALTER TABLE queue_events DROP CONSTRAINT queue_events_pkey;
ALTER TABLE queue_events ADD PRIMARY KEY (tenant, queue_id, call_id, event, at);
