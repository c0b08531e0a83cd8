-- nkdaemon capture schema for SQLite, version 2: the repository capture feeds.
--
-- One source feeds one repository: two drains on one queue would each take part of the
-- changes and split the stream between two logs. `install` records its repository here
-- (its path as configured, never a password, and the host it ran on) beside the
-- installation id in _nkd_meta, and refuses a source another repository owns unless told
-- to take it over. A take-over draws a new installation id; the old repository's drain
-- reads the id in the same read transaction as the queue, so it stops (naming this row)
-- before it could read a change that belongs to the new owner.
--
-- One row: the current owner.

CREATE TABLE IF NOT EXISTS _nkd_owner (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    installation_id TEXT NOT NULL,
    repository TEXT NOT NULL,
    host TEXT NOT NULL,
    since TEXT NOT NULL
);

INSERT OR IGNORE INTO _nkd_schema_version (version) VALUES (2);
