-- Per-tenant quotas (lake quota set/show). Overrides are not tenant data: Lake reads
-- and writes them as the owner, like lake_tokens; lake_app gets no grant. One row per
-- tenant and quota name; a quota without a row takes quotas.default.<name>.
CREATE TABLE tenant_quotas (
    tenant_id  text NOT NULL,
    name       text NOT NULL CHECK (name IN (
                   'read_per_s', 'write_per_s', 'search_per_s', 'text_per_s',
                   'max_collections', 'max_vectors', 'max_features',
                   'max_points_per_day')),
    value      double precision NOT NULL CHECK (value >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
ALTER TABLE tenant_quotas ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON tenant_quotas FROM PUBLIC;
REVOKE ALL ON tenant_quotas FROM lake_app;

-- What each tenant stores, kept in every write's own transaction (the row lock makes
-- the storage caps exact under concurrency and across instances). points counts the
-- points written on points_day (UTC); the first write of a new day starts it over.
CREATE TABLE tenant_usage (
    tenant_id   text PRIMARY KEY,
    collections bigint NOT NULL DEFAULT 0,
    vectors     bigint NOT NULL DEFAULT 0,
    features    bigint NOT NULL DEFAULT 0,
    points_day  date NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    points      bigint NOT NULL DEFAULT 0
);
SELECT lake_isolate('tenant_usage');

-- Counts of what is stored already (the vector tables exist only with pgvector).
DO $$
BEGIN
    INSERT INTO tenant_usage (tenant_id, features)
        SELECT tenant_id, count(*) FROM features GROUP BY tenant_id;
    IF to_regclass('vector_collections') IS NOT NULL THEN
        INSERT INTO tenant_usage AS u (tenant_id, collections)
            SELECT tenant_id, count(*) FROM vector_collections GROUP BY tenant_id
            ON CONFLICT (tenant_id) DO UPDATE SET collections = EXCLUDED.collections;
        INSERT INTO tenant_usage AS u (tenant_id, vectors)
            SELECT tenant_id, count(*) FROM vector_items GROUP BY tenant_id
            ON CONFLICT (tenant_id) DO UPDATE SET vectors = EXCLUDED.vectors;
    END IF;
END
$$;
