-- requires: vector
-- Vectors, first cut: one table for every collection; pgvector's vector type.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE vectors (
    tenant_id  text NOT NULL,
    collection text NOT NULL,
    id         text NOT NULL,
    embedding  vector NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant_id, collection, id)
);
