-- nkdaemon capture schema for PostgreSQL, version 4: the same bookkeeping, cheaper.
--
-- Every PL/pgSQL PERFORM, and every condition that reads a table, runs a query through the
-- executor; an assignment or a condition made only of function calls is evaluated
-- directly, which costs a fraction of that. open_tx and seal_tx run once per application
-- transaction, so this is per-commit work (measured in benchmarks/capture_overhead.py:
-- about a tenth of pgbench's throughput under version 3). Behaviour is unchanged:
--   * the shared fence lock is tried first and waited for only if the drain holds (or
--     waits for) it, exactly as the plain call would;
--   * pg_sequence_last_value() is NULL exactly when the sequence's is_called is false,
--     which is how the drain arms the wake-up (version 3).
--
-- VACUUM must not truncate the queue's or the commits' empty tail pages: that takes an
-- ACCESS EXCLUSIVE lock, which would stall the application's inserts (the drain vacuums
-- both tables itself, see nkdaemon/sources/postgres.py, so they stay small even where
-- autovacuum is off).

CREATE OR REPLACE FUNCTION nkdaemon.open_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ignored text;
BEGIN
    ignored := set_config('nkdaemon.open_tx', pg_current_xact_id()::text, true);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION nkdaemon.seal_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ignored text;
BEGIN
    -- 1852533605 spells 'nkde'; the drain takes (1852533605, 1) exclusively to fence.
    IF NOT pg_try_advisory_xact_lock_shared(1852533605, 1) THEN
        PERFORM pg_advisory_xact_lock_shared(1852533605, 1);
    END IF;
    INSERT INTO nkdaemon.commits (xid, seq, commit_time)
    VALUES (pg_current_xact_id(), nextval('nkdaemon.commit_seq'), clock_timestamp());
    ignored := set_config('nkdaemon.open_tx', '', true);
    IF pg_sequence_last_value('nkdaemon.wake_armed') IS NULL THEN
        PERFORM setval('nkdaemon.wake_armed', 1, true);
        PERFORM pg_notify('nkdaemon_queue', '');
    END IF;
    RETURN NULL;
END
$$;

ALTER TABLE nkdaemon.queue SET (vacuum_truncate = false);
ALTER TABLE nkdaemon.commits SET (vacuum_truncate = false);

INSERT INTO nkdaemon.schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;
