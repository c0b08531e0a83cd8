-- nkdaemon capture schema for PostgreSQL, version 2: wake the daemon at commit.
--
-- The seal also sends a notification on channel nkdaemon_queue. It is only a wake-up: the
-- daemon always re-reads the queue (and polls as a fallback), so a lost or coalesced
-- notification costs latency, never data. PostgreSQL folds identical notifications of
-- one transaction into one.

CREATE OR REPLACE FUNCTION nkdaemon.seal_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- 1852533605 spells 'nkde'; the drain takes (1852533605, 1) exclusively to fence.
    PERFORM pg_advisory_xact_lock_shared(1852533605, 1);
    INSERT INTO nkdaemon.commits (xid, seq, commit_time)
    VALUES (pg_current_xact_id(), nextval('nkdaemon.commit_seq'), clock_timestamp());
    PERFORM set_config('nkdaemon.open_tx', '', true);
    PERFORM pg_notify('nkdaemon_queue', '');
    RETURN NULL;
END
$$;

INSERT INTO nkdaemon.schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;
