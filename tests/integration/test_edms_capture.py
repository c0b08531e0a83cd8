"""Capture on the EDMS example schema, against real PostgreSQL and real SQLite."""

from __future__ import annotations

import base64
from pathlib import Path

import sqlalchemy as sa

from nkdaemon.examples import edms
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import load_registry
from tests.helpers import (
    do_drain,
    do_install,
    engine_for,
    logged,
    replayed,
    run_cli,
    settings_for,
    truth,
    write_config,
)


def _edms(url: str) -> sa.Engine:
    engine = engine_for(url)
    edms.create_schema(engine)
    with engine.begin() as conn:
        edms.seed_example(conn)
    return engine


def _events(settings, table: str) -> list[dict]:
    return [e for tx in logged(settings) for e in tx.events if e.table == table]


def test_every_edms_table_is_captured_with_nested_composite_keys(
    db_url: str, tmp_path: Path
) -> None:
    engine = _edms(db_url)
    settings = settings_for(tmp_path, db_url)
    result = do_install(settings)
    assert sorted(result.tables) == sorted(edms.TABLES)

    with Session(settings, writer=False) as s:
        registry = load_registry(s.engine, settings, s.source)
    parts = {
        spec.name: [
            (p.name, p.foreign_key.ref_table if p.foreign_key else None) for p in spec.key_parts
        ]
        for spec in registry.tables.values()
    }
    assert parts["user_roles"] == [("user_id", "users"), ("role_id", "roles")]
    assert parts["document_states"] == [("workflow_id", "document_workflows"), ("code", None)]
    assert parts["document_versions"] == [("document_id", "documents"), ("version_number", None)]
    assert parts["document_dependencies"] == [
        ("document_id", "documents"),
        ("depends_on_id", "documents"),
        ("kind", None),
    ]

    with engine.begin() as conn:
        edms.add_user(conn, "dave", roles_=("author", "reviewer"))
        doc = edms.add_document(conn, "DOC-0100", author="dave")
        other = conn.execute(
            sa.select(edms.documents.c.id).where(edms.documents.c.document_number == "DOC-0001")
        ).scalar_one()
        conn.execute(
            edms.document_dependencies.insert().values(
                document_id=doc, depends_on_id=other, kind="cites"
            )
        )
    do_drain(settings)

    role_keys = [e.key for e in _events(settings, "user_roles")]
    assert {"user_id": {"username": "dave"}, "role_id": {"name": "author"}} in role_keys
    assert _events(settings, "document_versions")[0].key == {
        "document_id": {"document_number": "DOC-0100"},
        "version_number": 1,
    }
    assert _events(settings, "document_dependencies")[0].key == {
        "document_id": {"document_number": "DOC-0100"},
        "depends_on_id": {"document_number": "DOC-0001"},
        "kind": "cites",
    }
    document = _events(settings, "documents")[0]
    assert document.row["state_id"]["workflow_id"] == {"name": "standard"}
    assert document.row["author_id"] == {"username": "dave"}
    assert "id" not in document.row, "surrogate ids stay out of the payload"


def test_log_replays_to_the_source_state(db_url: str, tmp_path: Path) -> None:
    engine = _edms(db_url)
    settings = settings_for(tmp_path, db_url)
    do_install(settings)
    baseline = truth(settings)

    with engine.begin() as conn:
        edms.add_user(conn, "erin", roles_=("author",))
        edms.add_document(conn, "DOC-0200", author="erin")
    with engine.begin() as conn:  # rename a user and a workflow: nested keys change
        conn.execute(
            edms.users.update().where(edms.users.c.username == "bob").values(username="robert")
        )
        conn.execute(edms.document_workflows.update().values(name="standard-v2"))
    with engine.begin() as conn:  # cascading delete of a document with versions and comments
        conn.execute(edms.documents.delete().where(edms.documents.c.document_number == "DOC-0200"))
    with engine.begin() as conn:  # delete and re-insert the same key in one transaction
        conn.execute(edms.roles.delete().where(edms.roles.c.name == "auditor"))
        conn.execute(edms.roles.insert().values(name="auditor", description="re-created"))
    do_drain(settings)
    with engine.begin() as conn:
        edms.add_document(conn, "DOC-0201", author="robert")
    do_drain(settings)

    assert replayed(settings, baseline).comparable() == truth(settings).comparable()


def test_a_reference_names_the_key_as_it_was_when_the_change_was_made(
    db_url: str, tmp_path: Path
) -> None:
    """Invariant 5: the rename happens before the drain ever reads the document."""
    engine = _edms(db_url)
    config = write_config(tmp_path, db_url)
    settings = settings_for(tmp_path, db_url)
    do_install(settings)
    with engine.begin() as conn:
        edms.add_document(conn, "DOC-0300", author="alice")
    with engine.begin() as conn:
        conn.execute(
            edms.users.update().where(edms.users.c.username == "alice").values(username="alice2")
        )
    do_drain(settings)  # once, after both

    document = next(
        e for e in _events(settings, "documents") if e.key["document_number"] == "DOC-0300"
    )
    assert document.row["author_id"] == {"username": "alice"}
    comment = _events(settings, "document_comments")[0]
    assert comment.row["author_id"] == {"username": "alice"}
    rename = next(e for e in _events(settings, "users") if e.op == "U")
    assert rename.old_key == {"username": "alice"} and rename.key == {"username": "alice2"}

    out = run_cli(config, "history", "users", "username=alice2")
    assert out.exit_code == 0, out.output
    assert '{"username": "alice"} -> {"username": "alice2"}' in out.output
    assert "update" in out.output
    by_old_name = run_cli(config, "history", "users", "username=alice")
    assert by_old_name.output == out.output


def test_rolled_back_work_never_reaches_the_log(db_url: str, tmp_path: Path) -> None:
    engine = _edms(db_url)
    settings = settings_for(tmp_path, db_url)
    do_install(settings)
    with engine.connect() as conn:
        tx = conn.begin()
        edms.add_user(conn, "ghost")
        tx.rollback()
    with engine.begin() as conn:
        edms.add_user(conn, "real")
    do_drain(settings)
    names = [e.key["username"] for e in _events(settings, "users")]
    assert names == ["real"]


def test_types_round_trip_exactly_into_the_event_payload(pg_url: str, tmp_path: Path) -> None:
    engine = _edms(pg_url)
    settings = settings_for(tmp_path, pg_url)
    do_install(settings)
    every_byte = bytes(range(256))
    text = (
        "zero-width\u200b joiner, RTL \u05e9\u05dc\u05d5\u05dd, emoji 🧾, "
        "combining e\u0301, ‘quotes’ \\ \" '"
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("SET TIME ZONE 'Asia/Kolkata'")  # the writer's zone must not matter
        conn.exec_driver_sql("SET extra_float_digits = 1")
        doc = edms.add_document(conn, "DOC-T", author="alice", content=every_byte)
        conn.exec_driver_sql(
            "UPDATE documents SET fee = '1234567890.0100', title = %(t)s, "
            "tags = ARRAY['plain', NULL, 'with,comma', 'quo\"te', '{braces}', ''], "
            "created_at = '2026-03-04 05:06:07.891011+05:30' WHERE id = %(id)s",
            {"t": text, "id": doc},
        )
        conn.exec_driver_sql(
            "INSERT INTO placeholder_definitions (name, default_value) VALUES "
            "('exact', "
            '\'{"n": 1.10, "big": 123456789012345678901234567890.5, "s": "ü", "z": null}\')'
        )
        conn.exec_driver_sql(
            "INSERT INTO document_comments (uuid, document_id, author_id, body, created_at) "
            "VALUES ('6F9619FF-8B86-D011-B42D-00CF4FC964FF', %(id)s, "
            "(SELECT id FROM users WHERE username = 'bob'), %(t)s, 'infinity')",
            {"id": doc, "t": text},
        )
        conn.exec_driver_sql("UPDATE documents SET fee = 'NaN' WHERE document_number = 'DOC-0001'")
    do_drain(settings)

    update = next(
        e
        for e in _events(settings, "documents")
        if e.op == "U" and e.key["document_number"] == "DOC-T"
    )
    assert update.row["fee"] == "1234567890.0100"
    assert update.row["title"] == text
    assert update.row["tags"] == ["plain", None, "with,comma", 'quo"te', "{braces}", ""]
    assert update.row["created_at"] == "2026-03-03T23:36:07.891011+00:00"
    nan = next(e for e in _events(settings, "documents") if e.key["document_number"] == "DOC-0001")
    assert nan.row["fee"] == "NaN"
    version = _events(settings, "document_versions")[0]
    assert base64.b64decode(version.row["content"]) == every_byte
    placeholder = next(
        e for e in _events(settings, "placeholder_definitions") if e.key["name"] == "exact"
    )
    # jsonb's own key order, every digit kept (1.10 is not 1.1; the big number is no float)
    assert placeholder.row["default_value"] == (
        '{"n":1.10,"s":"ü","z":null,"big":123456789012345678901234567890.5}'
    )
    comment = next(e for e in _events(settings, "document_comments") if e.row["body"] == text)
    assert comment.key == {"uuid": "6f9619ff-8b86-d011-b42d-00cf4fc964ff"}
    assert comment.row["created_at"] == "infinity"


def test_sqlite_values_keep_their_storage_class_exactly(sqlite_url: str, tmp_path: Path) -> None:
    engine = _edms(sqlite_url)
    settings = settings_for(tmp_path, sqlite_url)
    do_install(settings)
    tiny = 5e-324
    with engine.begin() as conn:
        doc = edms.add_document(conn, "DOC-S", author="alice", content=b"\x00\x00nul\x00")
        conn.exec_driver_sql(
            "UPDATE documents SET fee = ?, title = ?, created_at = ? WHERE id = ?",
            (tiny, "nul\x00inside ✓", 2**62 + 1, doc),
        )
        conn.exec_driver_sql("UPDATE documents SET fee = ? WHERE id = ?", (0.1 + 0.2, doc))
    do_drain(settings)
    updates = [e for e in _events(settings, "documents") if e.op == "U"]
    assert updates[0].row["fee"] == tiny
    assert updates[0].row["title"] == "nul\x00inside ✓"
    # an integer stored in a DATETIME column keeps its class and value
    assert updates[0].row["created_at"] == {"$type": "int", "v": 2**62 + 1}
    assert updates[1].row["fee"] == 0.30000000000000004
    version = _events(settings, "document_versions")[0]
    assert base64.b64decode(version.row["content"]) == b"\x00\x00nul\x00"


def test_a_json_null_is_not_an_sql_null(pg_url: str, tmp_path: Path) -> None:
    engine = _edms(pg_url)
    settings = settings_for(tmp_path, pg_url)
    do_install(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO placeholder_definitions (name, default_value) "
            "VALUES ('json-null', 'null'::jsonb), ('sql-null', NULL)"
        )
    do_drain(settings)
    values = {
        e.key["name"]: e.row["default_value"] for e in _events(settings, "placeholder_definitions")
    }
    assert values == {"json-null": "null", "sql-null": None}
    state = truth(settings).comparable()["placeholder_definitions"]
    assert state['{"name":"json-null"}']["default_value"] == "null"
    assert state['{"name":"sql-null"}']["default_value"] is None
