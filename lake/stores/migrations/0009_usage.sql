-- Usage metering: what each tenant's calls cost, per UTC hour, operation and
-- status code (OK for successes). Every Lake instance adds its counts in batches;
-- a batch's id is recorded in the same transaction as its increments, so a batch
-- written again after a lost reply adds nothing. Daily figures are summed from
-- the hours by query. Usage is operator data: Lake reads and writes it as the
-- owner; lake_app gets no grant and row-level security without a policy hides
-- every row from any other role.
CREATE TABLE usage_hourly (
    tenant_id text NOT NULL,
    bucket    timestamptz NOT NULL,  -- start of the hour (UTC)
    operation text NOT NULL,         -- e.g. WritePoints
    code      text NOT NULL,         -- gRPC status code name
    calls     bigint NOT NULL,
    items_in  bigint NOT NULL DEFAULT 0,
    items_out bigint NOT NULL DEFAULT 0,
    bytes_in  bigint NOT NULL DEFAULT 0,
    bytes_out bigint NOT NULL DEFAULT 0,
    db_us     bigint NOT NULL DEFAULT 0,  -- microseconds inside database transactions
    PRIMARY KEY (tenant_id, bucket, operation, code)
);
-- Every tenant over a range (admin reads).
CREATE INDEX usage_hourly_bucket_idx ON usage_hourly (bucket);

CREATE TABLE usage_batches (
    batch_id   text PRIMARY KEY,  -- <instance>:<sequence>
    rows       integer NOT NULL,
    flushed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_batches_flushed_idx ON usage_batches (flushed_at);

ALTER TABLE usage_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_batches ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON usage_hourly, usage_batches FROM PUBLIC;
REVOKE ALL ON usage_hourly, usage_batches FROM lake_app;
