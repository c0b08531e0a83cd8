-- nkdaemon capture schema for PostgreSQL, version 1.
--
-- Row triggers append each change to nkdaemon.queue inside the application's transaction
-- (rolled-back work leaves nothing). Nothing is looked up on this hot path: ids are
-- translated to natural keys later, by the daemon.
--
-- Commit order: the first queued change of a transaction (opens_tx, computed by the
-- column default in the executor, not in PL/pgSQL, because it runs for every row) fires
-- nkdaemon.open_tx(), which marks the transaction open, and queues one deferred
-- constraint-trigger event; at commit that fires nkdaemon.seal_tx(), which takes a shared
-- advisory lock (held until the transaction ends), draws the next commit sequence number
-- and records the commit time. The drain briefly takes the same lock exclusively before
-- reading the sequence, so every transaction with a number at or below what it reads has
-- finished; it never has to wait for, or later find, an earlier one. A change made after
-- the seal fired (SET CONSTRAINTS ALL IMMEDIATE, another deferred trigger) re-opens the
-- transaction and it is sealed again with a later number.

CREATE SCHEMA IF NOT EXISTS nkdaemon;

CREATE TABLE IF NOT EXISTS nkdaemon.schema_version (
    version integer PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS nkdaemon.tables (
    number integer PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    UNIQUE (schema_name, table_name)
);

CREATE SEQUENCE IF NOT EXISTS nkdaemon.commit_seq;

-- No index: inserts stay cheap; the drain reads and deletes whole committed batches.
-- Ids only order the changes within one transaction (one backend), so each backend may
-- take them a thousand at a time.
CREATE SEQUENCE IF NOT EXISTS nkdaemon.queue_id_seq CACHE 1000;
CREATE TABLE IF NOT EXISTS nkdaemon.queue (
    id bigint NOT NULL DEFAULT nextval('nkdaemon.queue_id_seq'),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tbl integer NOT NULL,
    op "char" NOT NULL,
    opens_tx boolean NOT NULL
        DEFAULT (current_setting('nkdaemon.open_tx', true) IS DISTINCT FROM pg_current_xact_id()::text),
    old json,
    new json,
    -- json/jsonb columns that are SQL NULL: row_to_json writes both SQL NULL and a JSON
    -- null as null. Filled only for tables that have such columns.
    old_nulls text[],
    new_nulls text[]
);

CREATE TABLE IF NOT EXISTS nkdaemon.commits (
    xid xid8 NOT NULL,
    seq bigint NOT NULL,
    commit_time timestamptz NOT NULL
);

-- Row triggers use one generated function per table and operation (see
-- nkdaemon/sources/postgres.py, row_trigger_functions): each is a single INSERT with the
-- table number baked in, and an UPDATE stores the old row only when the row's id or
-- natural key changed, which halves the JSON work of the common update.

CREATE OR REPLACE FUNCTION nkdaemon.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nkdaemon.queue (tbl, op) VALUES (TG_ARGV[0]::integer, 'T');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION nkdaemon.open_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('nkdaemon.open_tx', pg_current_xact_id()::text, true);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS open_tx ON nkdaemon.queue;
CREATE TRIGGER open_tx AFTER INSERT ON nkdaemon.queue
    FOR EACH ROW WHEN (NEW.opens_tx) EXECUTE FUNCTION nkdaemon.open_tx();

CREATE OR REPLACE FUNCTION nkdaemon.seal_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- 1852533605 spells 'nkde'; the drain takes (1852533605, 1) exclusively to fence.
    PERFORM pg_advisory_xact_lock_shared(1852533605, 1);
    INSERT INTO nkdaemon.commits (xid, seq, commit_time)
    VALUES (pg_current_xact_id(), nextval('nkdaemon.commit_seq'), clock_timestamp());
    PERFORM set_config('nkdaemon.open_tx', '', true);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS seal_tx ON nkdaemon.queue;
CREATE CONSTRAINT TRIGGER seal_tx AFTER INSERT ON nkdaemon.queue
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.opens_tx) EXECUTE FUNCTION nkdaemon.seal_tx();

INSERT INTO nkdaemon.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
