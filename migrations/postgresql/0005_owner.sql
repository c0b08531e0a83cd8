-- nkdaemon capture schema for PostgreSQL, version 5: the repository capture feeds.
--
-- One source feeds one repository: two drains on one queue would each take part of the
-- changes and split the stream between two logs. `install` records its repository here
-- (its path as configured, never a password, and the host it ran on) beside the
-- installation id in nkdaemon.meta, and refuses a source another repository owns unless
-- told to take it over. A take-over draws a new installation id; the old repository's
-- drain reads the id in the same snapshot as the queue, so it stops (naming this row)
-- before it could read a change that belongs to the new owner.
--
-- One row: the current owner.

CREATE TABLE IF NOT EXISTS nkdaemon.owner (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    installation_id text NOT NULL,
    repository text NOT NULL,
    host text NOT NULL,
    since timestamptz NOT NULL
);

INSERT INTO nkdaemon.schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;
