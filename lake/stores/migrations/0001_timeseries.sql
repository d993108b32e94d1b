-- Time series, first cut: a series is (tenant, metric, tags); one row per point.
CREATE TABLE ts_points (
    tenant_id text NOT NULL,
    metric    text NOT NULL,
    tags      jsonb NOT NULL DEFAULT '{}'::jsonb,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (tenant_id, metric, tags, ts)
);
