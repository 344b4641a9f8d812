-- The SIP directory FreeSWITCH reads through mod_xml_curl (adapters/freeswitch/xml_curl.py, issue 10).
--
-- sip_domains: the SIP domains (realms) of a tenant. A domain reaches one tenant (unique index);
--   a tenant may have several (aliases). A directory lookup for user@domain finds the tenant here.
-- sip_credentials: one SIP credential per extension, as the digest A1 hash
--   md5(extension ":" realm ":" password) that FreeSWITCH's `a1-hash` user param takes, never the
--   password itself. The hash is only valid for its realm: it is served for lookups in that
--   domain only, and changing a tenant's domain means setting the passwords again.
--   Kept apart from `extensions` so that an Admin API update of an extension (which rebuilds the
--   row from its record) never touches the credential, and listing extensions never returns it.
CREATE TABLE sip_domains (
    tenant      text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    domain      text NOT NULL CHECK (domain <> ''),
    PRIMARY KEY (tenant, domain)
);
CREATE UNIQUE INDEX sip_domains_domain ON sip_domains (lower(domain));

CREATE TABLE sip_credentials (
    tenant      text NOT NULL,
    extension   text NOT NULL,
    realm       text NOT NULL CHECK (realm <> ''),
    a1_hash     text NOT NULL CHECK (a1_hash ~ '^[0-9a-f]{32}$'),
    PRIMARY KEY (tenant, extension),
    FOREIGN KEY (tenant, extension) REFERENCES extensions ON DELETE CASCADE
);

CREATE TRIGGER sip_domains_changed AFTER INSERT OR UPDATE OR DELETE ON sip_domains
    FOR EACH ROW EXECUTE FUNCTION config_changed('domain');
CREATE TRIGGER sip_credentials_changed AFTER INSERT OR UPDATE OR DELETE ON sip_credentials
    FOR EACH ROW EXECUTE FUNCTION config_changed('extension');
