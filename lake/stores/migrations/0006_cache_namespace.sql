-- A per-database namespace for cache keys, so that several databases (or Lake
-- deployments) can share one Redis without reading each other's entries.
CREATE TABLE lake_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO lake_meta (key, value) VALUES ('cache_namespace', gen_random_uuid()::text);
