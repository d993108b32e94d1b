-- requires: cube, earthdistance
-- Spatial features, first cut: lon/lat points with properties, indexed on the earth.
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS earthdistance;
CREATE TABLE features (
    tenant_id  text NOT NULL,
    id         text NOT NULL,
    lon        double precision NOT NULL,
    lat        double precision NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX features_earth_idx ON features USING gist (ll_to_earth(lat, lon));
