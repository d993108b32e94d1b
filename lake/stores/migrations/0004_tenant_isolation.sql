-- Row-level security: Lake runs tenant queries as lake_app, which is neither the
-- tables' owner nor a superuser, after SET LOCAL ROLE in each transaction. Every
-- policy reads the tenant that the transaction set with set_config(..., true).
DO $$
BEGIN
    CREATE ROLE lake_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another database created it already
END
$$;
GRANT lake_app TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO lake_app;

CREATE FUNCTION lake_tenant() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '') $$;

-- Cache generations: changed in the same transaction as every write, so a read
-- after an acknowledged write can never be served an older cached answer. They hold
-- no tenant data, only version numbers: no row-level security, so Lake reads them in
-- one round trip before a cached read.
CREATE TABLE cache_generations (
    tenant_id text NOT NULL,
    scope     text NOT NULL,
    gen       bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, scope)
);
GRANT SELECT, INSERT, UPDATE ON cache_generations TO lake_app;

-- Time series, partitioned by day; ts_points (first cut) is migrated and dropped.
CREATE TABLE ts_series (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    metric    text NOT NULL,
    tags      jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (tenant_id, metric, tags)
);
CREATE INDEX ts_series_tags_idx ON ts_series USING gin (tags jsonb_path_ops);

CREATE TABLE ts_data (
    tenant_id text NOT NULL,
    series_id bigint NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);

INSERT INTO ts_series (tenant_id, metric, tags)
    SELECT DISTINCT tenant_id, metric, tags FROM ts_points;
DO $$
DECLARE day date;
BEGIN
    FOR day IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM ts_points LOOP
        EXECUTE format(
            'CREATE TABLE ts_data_p%s PARTITION OF ts_data'
            ' FOR VALUES FROM (%L) TO (%L)',
            to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC',
            (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;
INSERT INTO ts_data (tenant_id, series_id, ts, value)
    SELECT p.tenant_id, s.id, p.ts, p.value
    FROM ts_points p JOIN ts_series s USING (tenant_id, metric, tags);
DROP TABLE ts_points;

-- Spatial: a planar point for box and polygon queries, beside the earth index.
ALTER TABLE features ADD COLUMN geom point GENERATED ALWAYS AS (point(lon, lat)) STORED;
CREATE INDEX features_geom_idx ON features USING gist (geom);

-- Row-level security on a tenant table: forced (the owner too), one policy on
-- tenant_id, and lake_app's grants. Later migrations call it for their tables.
CREATE FUNCTION lake_isolate(tbl regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s'
        ' USING (tenant_id = lake_tenant()) WITH CHECK (tenant_id = lake_tenant())',
        tbl);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO lake_app', tbl);
END
$$;
SELECT lake_isolate('ts_series');
SELECT lake_isolate('ts_data');
SELECT lake_isolate('features');
GRANT USAGE ON SEQUENCE ts_series_id_seq TO lake_app;
