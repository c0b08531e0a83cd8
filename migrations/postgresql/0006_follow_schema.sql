-- nkdaemon capture schema for PostgreSQL, version 6: capture follows schema changes.
--
-- A captured table's shape (its columns by attnum, with their names and types) is recorded
-- in nkdaemon.shapes. When the table changes, nkdaemon.follow_table() compares the catalog
-- with that record and, in the caller's transaction, queues a schema entry (op 'S', the
-- entry as JSON in `new`), then, where values may have changed without a row trigger (a
-- column added with a default or an identity, a type change, a table rewrite), every row
-- of the table as a baseline row (op 'B'). Both go through the queue like row changes, so
-- the transaction is sealed and ordered like any other, and a write before the DDL in the
-- same transaction comes before the entry, a write after it after.
--
-- PostgreSQL keeps a column's attnum through RENAME COLUMN, so the same attnum under a new
-- name is a rename, which the entry lists; a dropped attnum and a new one are a drop and
-- an add. The row trigger functions name the table's identity columns (primary key and
-- natural key, kept in nkdaemon.tables.identity, renames applied) and its json columns, so
-- follow_table regenerates them in the same transaction: a later write never meets a
-- function that names a column that is gone.
--
-- Who calls follow_table: event triggers on ddl_command_end, sql_drop and table_rewrite,
-- inside the DDL's own transaction (they need a superuser; see arm_event_triggers), or,
-- where they could not be created, the drain on every pass ("each pass"), in a
-- transaction that holds the table in SHARE ROW EXCLUSIVE mode. A DDL on a table capture
-- does not know costs one join of the command list with nkdaemon.tables.

CREATE TABLE IF NOT EXISTS nkdaemon.meta (name text PRIMARY KEY, value text NOT NULL);

ALTER TABLE nkdaemon.tables ADD COLUMN IF NOT EXISTS relid oid;
-- NULL: an UPDATE always queues the old row (whole-row identity).
ALTER TABLE nkdaemon.tables ADD COLUMN IF NOT EXISTS identity text[];

CREATE TABLE IF NOT EXISTS nkdaemon.shapes (
    number integer NOT NULL,
    attnum smallint NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    -- NOT NULL and the default: a change is logged (a new definition), without a baseline
    detail text NOT NULL,
    PRIMARY KEY (number, attnum)
);
-- Numbers of tables that left capture (dropped, renamed away): never given again, since the
-- drain's key index and the log know tables by number.
CREATE TABLE IF NOT EXISTS nkdaemon.retired (
    number integer PRIMARY KEY,
    table_name text NOT NULL,
    since timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The table's constraints and unique indexes, as a digest: a change is logged likewise.
ALTER TABLE nkdaemon.tables ADD COLUMN IF NOT EXISTS constraints text;

-- A table's columns now, as nkdaemon.shapes records them.
CREATE OR REPLACE FUNCTION nkdaemon.shape_now(rel oid)
RETURNS TABLE (attnum smallint, name text, type text, detail text, filled boolean)
LANGUAGE sql STABLE AS $f$
    SELECT a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
           CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END
               || coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), ''),
           a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
    FROM pg_catalog.pg_attribute a
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$f$;

CREATE OR REPLACE FUNCTION nkdaemon.constraints_of(rel oid) RETURNS text
LANGUAGE sql STABLE AS $f$
    SELECT md5(coalesce(string_agg(def, ';' ORDER BY def), ''))
    FROM (SELECT conname || ' ' || pg_catalog.pg_get_constraintdef(oid) AS def
          FROM pg_catalog.pg_constraint WHERE conrelid = rel
          UNION ALL
          SELECT pg_catalog.pg_get_indexdef(indexrelid)
          FROM pg_catalog.pg_index WHERE indrelid = rel AND indisunique) c
$f$;

-- The json columns of a row that are SQL NULL (row_to_json writes SQL NULL and a JSON null
-- alike); the same expression as nkdaemon/dialects/postgres_rows.py sql_nulls.
CREATE OR REPLACE FUNCTION nkdaemon.nulls_sql(rel oid, alias text) RETURNS text
LANGUAGE sql STABLE AS $f$
    SELECT coalesce(
        'array_remove(ARRAY[' || string_agg(
            format('CASE WHEN %s.%I IS NULL THEN %L END', alias, attname, attname), ', '
            ORDER BY attnum
        ) || ']::text[], NULL)',
        'NULL')
    FROM pg_catalog.pg_attribute
    WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
      AND atttypid IN ('json'::regtype, 'jsonb'::regtype)
$f$;

-- The INSERT, UPDATE and DELETE row trigger functions of one captured table, from its
-- columns now. One INSERT each, the table number baked in; an UPDATE queues the old row
-- only when an identity column changed.
CREATE OR REPLACE FUNCTION nkdaemon.capture_functions(num integer) RETURNS void
LANGUAGE plpgsql AS $f$
DECLARE
    t nkdaemon.tables;
    ident text[];
    old_u text := 'row_to_json(OLD)';
    template text := $t$
CREATE OR REPLACE FUNCTION nkdaemon.%I() RETURNS trigger LANGUAGE plpgsql AS $nkd$
BEGIN
    INSERT INTO nkdaemon.queue (tbl, op, old, new, old_nulls, new_nulls)
    VALUES (%s, '%s', %s, %s, %s, %s);
    RETURN NULL;
END
$nkd$
$t$;
BEGIN
    SELECT * INTO STRICT t FROM nkdaemon.tables WHERE number = num;
    SELECT array_agg(c.name ORDER BY c.i) INTO ident
    FROM unnest(t.identity) WITH ORDINALITY AS c(name, i)
    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.relid
                  AND a.attname = c.name AND a.attnum > 0 AND NOT a.attisdropped);
    IF ident IS NOT NULL THEN
        old_u := format(
            'CASE WHEN (%s) IS DISTINCT FROM (%s) THEN row_to_json(OLD) END',
            (SELECT string_agg(format('OLD.%I', c), ', ') FROM unnest(ident) c),
            (SELECT string_agg(format('NEW.%I', c), ', ') FROM unnest(ident) c));
    END IF;
    EXECUTE format(template, format('capture_%s_i', num), num, 'I', 'NULL',
        'row_to_json(NEW)', 'NULL', nkdaemon.nulls_sql(t.relid, 'NEW'));
    EXECUTE format(template, format('capture_%s_u', num), num, 'U', old_u,
        'row_to_json(NEW)', nkdaemon.nulls_sql(t.relid, 'OLD'), nkdaemon.nulls_sql(t.relid, 'NEW'));
    EXECUTE format(template, format('capture_%s_d', num), num, 'D', 'row_to_json(OLD)',
        'NULL', nkdaemon.nulls_sql(t.relid, 'OLD'), 'NULL');
END
$f$;

CREATE OR REPLACE FUNCTION nkdaemon.record_shape(num integer) RETURNS void
LANGUAGE sql AS $f$
    DELETE FROM nkdaemon.shapes WHERE number = num;
    INSERT INTO nkdaemon.shapes (number, attnum, name, type, detail)
    SELECT num, s.attnum, s.name, s.type, s.detail
    FROM nkdaemon.tables t, nkdaemon.shape_now(t.relid) s WHERE t.number = num;
    UPDATE nkdaemon.tables SET constraints = nkdaemon.constraints_of(relid) WHERE number = num;
$f$;

-- Every row of the table now, queued as baseline rows.
CREATE OR REPLACE FUNCTION nkdaemon.queue_baseline(num integer) RETURNS void
LANGUAGE plpgsql AS $f$
DECLARE
    t nkdaemon.tables;
BEGIN
    SELECT * INTO STRICT t FROM nkdaemon.tables WHERE number = num;
    EXECUTE format(
        'INSERT INTO nkdaemon.queue (tbl, op, new, new_nulls) '
        'SELECT %s, ''B'', row_to_json(r), %s FROM %I.%I AS r',
        num, nkdaemon.nulls_sql(t.relid, 'r'), t.schema_name, t.table_name);
END
$f$;

-- The table left capture (dropped, or renamed away): queue a "dropped" entry and forget it.
-- Its number is retired (nkdaemon.retired), never handed out again.
CREATE OR REPLACE FUNCTION nkdaemon.forget_table(num integer, command text) RETURNS json
LANGUAGE plpgsql AS $f$
DECLARE
    t nkdaemon.tables;
    entry json;
    trigger_name text;
BEGIN
    DELETE FROM nkdaemon.tables WHERE number = num RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = t.relid) THEN
        FOREACH trigger_name IN ARRAY ARRAY['nkdaemon_capture_i', 'nkdaemon_capture_u',
                                            'nkdaemon_capture_d', 'nkdaemon_capture_truncate']
        LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trigger_name, t.relid::regclass);
        END LOOP;
    END IF;
    DELETE FROM nkdaemon.shapes WHERE number = num;
    INSERT INTO nkdaemon.retired (number, table_name) VALUES (num, t.table_name)
    ON CONFLICT (number) DO NOTHING;
    EXECUTE format('DROP FUNCTION IF EXISTS nkdaemon.%I(), nkdaemon.%I(), nkdaemon.%I()',
        format('capture_%s_i', num), format('capture_%s_u', num), format('capture_%s_d', num));
    entry := json_build_object('name', t.table_name, 'kind', 'dropped', 'columns', NULL,
        'renamed', '[]'::json, 'baseline', false, 'command', command);
    INSERT INTO nkdaemon.queue (tbl, op, new) VALUES (num, 'S', entry);
    RETURN entry;
END
$f$;

-- Bring capture of one table in line with its shape now; the entry queued, or NULL when
-- nothing capture sees changed.
CREATE OR REPLACE FUNCTION nkdaemon.follow_table(
    num integer, command text, force_baseline boolean DEFAULT false) RETURNS json
LANGUAGE plpgsql AS $f$
DECLARE
    t nkdaemon.tables;
    now_name text;
    changed boolean;
    baseline boolean;
    renamed json;
    cols text[];
    entry json;
BEGIN
    SELECT * INTO t FROM nkdaemon.tables WHERE number = num FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT c.relname INTO now_name FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = t.relid AND n.nspname = t.schema_name;
    IF now_name IS DISTINCT FROM t.table_name THEN
        RETURN nkdaemon.forget_table(num, command);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM nkdaemon.shapes WHERE number = num) THEN
        PERFORM nkdaemon.record_shape(num);  -- installed before version 6: nothing to compare
        RETURN NULL;
    END IF;
    WITH cur AS (SELECT * FROM nkdaemon.shape_now(t.relid)),
    was AS (SELECT attnum, name, type, detail FROM nkdaemon.shapes WHERE number = num)
    SELECT coalesce(bool_or(was.attnum IS NULL OR cur.attnum IS NULL OR was.name <> cur.name
                            OR was.type <> cur.type OR was.detail <> cur.detail), false)
           OR t.constraints IS DISTINCT FROM nkdaemon.constraints_of(t.relid),
           coalesce(bool_or((was.attnum IS NULL AND cur.filled) OR was.type <> cur.type), false),
           coalesce(json_agg(json_build_array(was.name, cur.name) ORDER BY attnum)
                    FILTER (WHERE was.name <> cur.name), '[]'::json)
    INTO changed, baseline, renamed
    FROM cur FULL JOIN was USING (attnum);
    IF t.relid::text = ANY(string_to_array(current_setting('nkdaemon.rewritten', true), ',')) THEN
        baseline := true;
        changed := true;
    END IF;
    IF NOT changed THEN
        RETURN NULL;
    END IF;
    baseline := baseline OR force_baseline;
    -- identity columns follow their renames
    UPDATE nkdaemon.tables SET identity = (
        SELECT array_agg(coalesce(r.value ->> 1, c.name) ORDER BY c.i)
        FROM unnest(t.identity) WITH ORDINALITY AS c(name, i)
        LEFT JOIN json_array_elements(renamed) r ON r.value ->> 0 = c.name)
    WHERE number = num AND identity IS NOT NULL;
    SELECT array_agg(attname::text ORDER BY attnum) INTO cols
    FROM pg_catalog.pg_attribute WHERE attrelid = t.relid AND attnum > 0 AND NOT attisdropped;
    PERFORM nkdaemon.record_shape(num);
    PERFORM nkdaemon.capture_functions(num);
    entry := json_build_object('name', t.table_name, 'kind', 'altered', 'columns', cols,
        'renamed', renamed, 'baseline', baseline, 'command', command);
    INSERT INTO nkdaemon.queue (tbl, op, new) VALUES (num, 'S', entry);
    IF baseline THEN
        PERFORM nkdaemon.queue_baseline(num);
    END IF;
    RETURN entry;
END
$f$;

-- The event triggers' functions run as their owner (a superuser: only one can create event
-- triggers), so a DDL by a role that may not write nkdaemon's tables still succeeds. Their
-- search_path is fixed, so the DDL's role cannot slip its own functions or operators in;
-- a SET clause restores only that setting at exit, so the queue's transaction-local
-- bookkeeping (nkdaemon.open_tx) and nkdaemon.rewritten outlive the call.
CREATE OR REPLACE FUNCTION nkdaemon.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    num integer;
    tag text;
BEGIN
    FOR num, tag IN
        SELECT DISTINCT ON (t.number) t.number, c.command_tag
        FROM pg_catalog.pg_event_trigger_ddl_commands() c
        LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.objid
        JOIN nkdaemon.tables t ON t.relid = coalesce(i.indrelid, c.objid)
        WHERE c.classid = 'pg_catalog.pg_class'::regclass
        ORDER BY t.number
    LOOP
        PERFORM nkdaemon.follow_table(num, tag);
    END LOOP;
    IF current_setting('nkdaemon.rewritten', true) <> '' THEN
        PERFORM pg_catalog.set_config('nkdaemon.rewritten', '', true);
    END IF;
END
$f$;

CREATE OR REPLACE FUNCTION nkdaemon.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    num integer;
BEGIN
    FOR num IN
        SELECT t.number FROM pg_catalog.pg_event_trigger_dropped_objects() d
        JOIN nkdaemon.tables t ON t.relid = d.objid
        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
        ORDER BY t.number
    LOOP
        PERFORM nkdaemon.forget_table(num, tg_tag);
    END LOOP;
    -- An index dropped by DROP INDEX no longer says whose it was: look at every captured
    -- table of its schema (indexes dropped with their table or column are not "original").
    FOR num IN
        SELECT DISTINCT t.number FROM pg_catalog.pg_event_trigger_dropped_objects() d
        JOIN nkdaemon.tables t ON t.schema_name = d.schema_name
        WHERE d.object_type = 'index' AND d.original
        ORDER BY t.number
    LOOP
        PERFORM nkdaemon.follow_table(num, tg_tag);
    END LOOP;
END
$f$;

-- A rewrite can change values without changing the shape (ALTER COLUMN TYPE ... USING to
-- the same type): noted for on_ddl, which then takes a baseline.
CREATE OR REPLACE FUNCTION nkdaemon.on_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    rel oid := pg_catalog.pg_event_trigger_table_rewrite_oid();
BEGIN
    IF EXISTS (SELECT 1 FROM nkdaemon.tables WHERE relid = rel) THEN
        PERFORM pg_catalog.set_config('nkdaemon.rewritten',
            coalesce(current_setting('nkdaemon.rewritten', true), '') || ',' || rel, true);
    END IF;
END
$f$;

-- Create the event triggers if this role may (a superuser); otherwise leave the marker that
-- says the drain follows schema changes on each pass. Called again by every install.
CREATE OR REPLACE FUNCTION nkdaemon.arm_event_triggers() RETURNS text
LANGUAGE plpgsql AS $f$
BEGIN
    IF (SELECT count(*) FROM pg_catalog.pg_event_trigger
        WHERE evtname IN ('nkdaemon_ddl', 'nkdaemon_drop', 'nkdaemon_rewrite')) < 3 THEN
        DROP EVENT TRIGGER IF EXISTS nkdaemon_ddl;
        DROP EVENT TRIGGER IF EXISTS nkdaemon_drop;
        DROP EVENT TRIGGER IF EXISTS nkdaemon_rewrite;
        CREATE EVENT TRIGGER nkdaemon_ddl ON ddl_command_end EXECUTE FUNCTION nkdaemon.on_ddl();
        CREATE EVENT TRIGGER nkdaemon_drop ON sql_drop EXECUTE FUNCTION nkdaemon.on_drop();
        CREATE EVENT TRIGGER nkdaemon_rewrite ON table_rewrite
            EXECUTE FUNCTION nkdaemon.on_rewrite();
    END IF;
    INSERT INTO nkdaemon.meta (name, value) VALUES ('schema_changes', 'event trigger')
    ON CONFLICT (name) DO UPDATE SET value = excluded.value;
    RETURN 'event trigger';
EXCEPTION WHEN insufficient_privilege THEN
    INSERT INTO nkdaemon.meta (name, value) VALUES ('schema_changes', 'each pass')
    ON CONFLICT (name) DO UPDATE SET value = excluded.value;
    RETURN 'each pass';
END
$f$;

SELECT nkdaemon.arm_event_triggers();

INSERT INTO nkdaemon.schema_version (version) VALUES (6) ON CONFLICT DO NOTHING;
