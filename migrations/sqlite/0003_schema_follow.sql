-- nkdaemon capture schema for SQLite, version 3: capture follows schema changes.
--
-- A capture trigger's column list is fixed when it is created, so when a captured table
-- changes shape the drain's pass regenerates the triggers (in the write transaction that
-- notices the change) and records the new column list here. A change keeps the layout in
-- force when it was queued: the one with the greatest since_seq below its seq. Shadow
-- tables only grow (ALTER TABLE ADD COLUMN), so old rows keep their slots.
CREATE TABLE IF NOT EXISTS _nkd_layouts (
    number INTEGER NOT NULL,
    since_seq INTEGER NOT NULL,
    columns TEXT NOT NULL,
    PRIMARY KEY (number, since_seq)
);

INSERT OR IGNORE INTO _nkd_layouts (number, since_seq, columns)
SELECT number, 0, columns FROM _nkd_tables;

-- The table's indexes when capture last looked (JSON; NULL: not noted yet): an index
-- made or dropped changes the table's definition (queued without a baseline).
ALTER TABLE _nkd_tables ADD COLUMN indexes TEXT;

-- A schema change, queued in _nkd_changes as op 'S' at this seq. columns: the JSON list
-- after the change (NULL: dropped); renamed: JSON [[old, new], ...]; baseline: whether every
-- row of the table follows as op 'B' entries (values in the shadow's n-slots).
CREATE TABLE IF NOT EXISTS _nkd_schema_changes (
    seq INTEGER PRIMARY KEY,
    number INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    columns TEXT,
    renamed TEXT NOT NULL DEFAULT '[]',
    baseline INTEGER NOT NULL,
    command TEXT NOT NULL
);

-- Table numbers capture stopped using (the table was dropped, renamed or left out). A
-- number is never given to another table: the drain's key index and the log know tables
-- by number. since_seq: every change of the table is at or below it; once drained, its
-- shadow table and layouts go, but the row stays.
CREATE TABLE IF NOT EXISTS _nkd_retired (
    number INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    since_seq INTEGER NOT NULL
);

INSERT OR IGNORE INTO _nkd_schema_version (version) VALUES (3);
