-- nkdaemon capture schema for PostgreSQL, version 3: notify only when the daemon waits.
--
-- PostgreSQL serialises the commits of transactions that send a notification (a
-- database-wide lock taken before commit and held to its end), so a wake-up from every
-- transaction costs throughput at high commit rates. The daemon arms a flag (this
-- sequence's is_called = false; setval is not transactional, so it is seen at once) just
-- before each drain pass takes its fence; the first transaction sealed after that sends
-- the wake-up and disarms it. Nothing is missed: a transaction sealed before the arming
-- holds the shared lock the fence waits for, so that same pass reads it. A transaction
-- that disarms and then fails to commit leaves the daemon to its poll interval (latency,
-- never data).

CREATE SEQUENCE IF NOT EXISTS nkdaemon.wake_armed;

CREATE OR REPLACE FUNCTION nkdaemon.seal_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- 1852533605 spells 'nkde'; the drain takes (1852533605, 1) exclusively to fence.
    PERFORM pg_advisory_xact_lock_shared(1852533605, 1);
    INSERT INTO nkdaemon.commits (xid, seq, commit_time)
    VALUES (pg_current_xact_id(), nextval('nkdaemon.commit_seq'), clock_timestamp());
    PERFORM set_config('nkdaemon.open_tx', '', true);
    IF NOT (SELECT is_called FROM nkdaemon.wake_armed) THEN
        PERFORM setval('nkdaemon.wake_armed', 1, true);
        PERFORM pg_notify('nkdaemon_queue', '');
    END IF;
    RETURN NULL;
END
$$;

INSERT INTO nkdaemon.schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;
