"""A SQLite table whose PRIMARY KEY may hold NULL (not an INTEGER rowid key, not NOT NULL:
SQLite's old quirk, e.g. `id serial PRIMARY KEY`), captured whole: its rows are found in a
SQLite target by rowid, so updates and deletes replay onto the right rows (they used to
match nothing: `id = NULL` is never true, and the restore said it did not match)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import captured_notes, do_drain, engine_for, run_cli


def _bodies(url: str) -> list[str]:
    """The rows as a multiset (they have no key to tell them apart by)."""
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = sorted(str(r[0]) for r in conn.exec_driver_sql("SELECT body FROM notes"))
    engine.dispose()
    return rows


@pytest.mark.parametrize("target_kind", ["sqlite", "postgresql"])
def test_rows_with_null_keys_are_updated_and_deleted_in_the_target(
    tmp_path: Path, target_kind: str, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    settings = captured_notes(url, tmp_path)
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO notes (body) VALUES ('a'), ('b'), ('c'), ('c')")
    do_drain(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE notes SET body = 'a2' WHERE body = 'a'")
        conn.exec_driver_sql("DELETE FROM notes WHERE body = 'b'")
    do_drain(settings)
    with engine.begin() as conn:
        ids = conn.exec_driver_sql("SELECT id FROM notes").fetchall()
    assert ids and all(row[0] is None for row in ids)  # the quirk this is about
    engine.dispose()
    target = (
        str(request.getfixturevalue("pg_url"))
        if target_kind == "postgresql"
        else f"sqlite:///{tmp_path / 'restored.db'}"
    )
    assert settings.file is not None
    if target_kind == "postgresql":  # a PostgreSQL primary key cannot hold NULL: refused
        refused = run_cli(
            settings.file, "restore", "--latest", "--create-schema", "--target", target
        )
        assert refused.exit_code == 1 and 'null value in column "id"' in refused.output
        assert "Traceback" not in refused.output
        return
    for _ in range(2):  # into an empty database, then over what the first restore wrote
        done = run_cli(settings.file, "restore", "--latest", "--create-schema", "--target", target)
        assert done.exit_code == 0, done.output
        assert _bodies(target) == _bodies(url) == ["a2", "c", "c"], done.output
