-- requires: vector
-- Vector collections: each declared once per tenant with a dimension and a metric,
-- with an HNSW index of its own (a partial index on the collection, cast to its
-- dimension), so collections of different dimensions coexist in one table.
CREATE TABLE vector_collections (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    name       text NOT NULL,
    dim        integer NOT NULL CHECK (dim BETWEEN 1 AND 2000),
    metric     text NOT NULL CHECK (metric IN ('cosine', 'l2', 'ip')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE vector_items (
    tenant_id     text NOT NULL,
    collection_id bigint NOT NULL REFERENCES vector_collections (id) ON DELETE CASCADE,
    id            text NOT NULL,
    embedding     vector NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, id)
);

-- First-cut rows move into cosine collections where a (tenant, collection) had one
-- dimension; the old table stays as vectors_v0 so that nothing is lost.
INSERT INTO vector_collections (tenant_id, name, dim, metric)
    SELECT tenant_id, collection, min(vector_dims(embedding)), 'cosine'
    FROM vectors GROUP BY tenant_id, collection
    HAVING count(DISTINCT vector_dims(embedding)) = 1;
INSERT INTO vector_items (tenant_id, collection_id, id, embedding, metadata)
    SELECT v.tenant_id, c.id, v.id, v.embedding, v.metadata
    FROM vectors v JOIN vector_collections c
        ON c.tenant_id = v.tenant_id AND c.name = v.collection;
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT id, dim FROM vector_collections LOOP
        EXECUTE format(
            'CREATE INDEX vector_items_hnsw_%s ON vector_items USING hnsw'
            ' ((embedding::vector(%s)) vector_cosine_ops) WHERE collection_id = %s',
            c.id, c.dim, c.id);
    END LOOP;
END
$$;
ALTER TABLE vectors RENAME TO vectors_v0;

SELECT lake_isolate('vector_collections');
SELECT lake_isolate('vector_items');
GRANT USAGE ON SEQUENCE vector_collections_id_seq TO lake_app;
