-- Each cache generation carries the transaction that last set it, kept by a
-- trigger (so that every writer, of any Lake version, keeps it): every instance
-- polls for the generations changed since its last look (lake.stores.lease).
ALTER TABLE cache_generations ADD COLUMN changed xid8 NOT NULL DEFAULT '0';
CREATE INDEX cache_generations_changed ON cache_generations (changed);

CREATE FUNCTION lake_generation_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.changed := pg_current_xact_id();
    RETURN NEW;
END
$$;

CREATE TRIGGER cache_generations_changed
    BEFORE INSERT OR UPDATE ON cache_generations
    FOR EACH ROW EXECUTE FUNCTION lake_generation_changed();
