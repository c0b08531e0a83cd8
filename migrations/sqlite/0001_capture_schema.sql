-- nkdaemon capture schema for SQLite, version 1.
--
-- SQLite runs one writer at a time, so the order of _nkd_changes.seq (AUTOINCREMENT,
-- never reused) is the commit order. Each change is one row here plus one row in the
-- table's shadow table _nkd_rows_<number>, whose untyped columns keep every value exactly
-- as stored (REAL bits, BLOBs, text with NULs), which JSON built inside SQLite would not.
-- The per-table shadow tables and triggers are generated at install time.

CREATE TABLE IF NOT EXISTS _nkd_schema_version (
    version INTEGER PRIMARY KEY,
    installed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS _nkd_tables (
    number INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL UNIQUE,
    columns TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS _nkd_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl INTEGER NOT NULL,
    op TEXT NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

INSERT OR IGNORE INTO _nkd_schema_version (version) VALUES (1);
