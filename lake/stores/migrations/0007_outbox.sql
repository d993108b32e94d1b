-- Transactional outbox: every write records its change event in the same
-- transaction as the data; a relay delivers pending events to the stream peer in
-- order per tenant. lake_app may only add its own tenant's events; the relay runs
-- as the owner (row-level security enabled, not forced) and sees every tenant.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    tenant_id    text NOT NULL,
    kind         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (tenant_id, id) WHERE delivered_at IS NULL;

ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbox
    USING (tenant_id = lake_tenant()) WITH CHECK (tenant_id = lake_tenant());
GRANT INSERT ON outbox TO lake_app;
GRANT USAGE ON SEQUENCE outbox_id_seq TO lake_app;
