"""What the command line says, and to whom: messages that tell the truth and the way out.

One-shot commands do not retry; install names every table it cannot key, and why; history
refuses a table that is not captured and explains its KEY=VALUE; init says what is left to
do; postgres:// URLs are understood; a restore that rolls back leaves no SQLite file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.runtime.config import load_settings
from tests import pg
from tests.helpers import do_drain, do_install, engine_for, run_cli, write_config

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nodb"


def _execute(url: str, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def users_repository(tmp_path: Path) -> Path:
    """A SQLite source with users, capture installed, one change drained."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    _execute(url, "CREATE TABLE users (id integer PRIMARY KEY, name text NOT NULL UNIQUE)")
    config = write_config(tmp_path, url)
    do_install(load_settings(config))
    _execute(url, "INSERT INTO users (name) VALUES ('ann')")
    do_drain(load_settings(config))
    return config


# --- one-shot commands do not retry ----------------------------------------------------------


@pytest.mark.parametrize("command", ["install", "drain"])
def test_a_one_shot_command_with_the_source_down_says_to_run_it_again(
    tmp_path: Path, command: str
) -> None:
    result = run_cli(write_config(tmp_path, UNREACHABLE), command)
    assert result.exit_code == 1, result.output
    assert "PostgreSQL unavailable" in result.output
    assert "then run the command again" in result.output, result.output
    assert "nkdaemon retries" not in result.output


# --- install names every keyless table, and what it lacks ------------------------------------


def test_install_names_every_table_without_a_key_at_once_and_what_each_lacks(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    _execute(
        url,
        "CREATE TABLE events (id integer PRIMARY KEY, note text)",  # a generated id only
        "CREATE TABLE readings (sensor text, value real)",  # no primary key at all
        "CREATE TABLE sensors (name text NOT NULL UNIQUE)",  # keyed
    )
    refused = run_cli(write_config(tmp_path, url), "install")
    assert refused.exit_code == 2, refused.output
    assert "2 tables have no natural key" in refused.output
    events = next(line for line in refused.output.splitlines() if "'events':" in line)
    readings = next(line for line in refused.output.splitlines() if "'readings':" in line)
    assert "primary key (id) is an id the database generates" in events
    assert "it has no primary key" in readings and "generate" not in readings

    # the hint's whole-row sections paste into the configuration as they are
    lines = refused.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "capture whole rows" in line)
    snippet = "\n".join(line.strip() for line in lines[start + 1 :]) + "\n"
    accepted = run_cli(write_config(tmp_path, url, snippet), "install")
    assert accepted.exit_code == 0, f"{snippet}\n{accepted.output}"


# --- history ---------------------------------------------------------------------------------


def test_history_of_a_table_that_is_not_captured_exits_2_listing_the_captured_ones(
    users_repository: Path,
) -> None:
    result = run_cli(users_repository, "history", "nosuchtable", "a=b")
    assert result.exit_code == 2, result.output
    assert "table 'nosuchtable' is not captured" in result.output
    assert "captured tables: users" in result.output
    assert "no change" not in result.output


def test_history_of_a_row_with_no_change_names_the_tables_key(users_repository: Path) -> None:
    result = run_cli(users_repository, "history", "users", "nickname=ann")
    assert result.exit_code == 1, result.output
    assert "no change of users matching nickname=ann" in result.output
    assert "users is named by (name)" in result.output


def test_history_help_explains_key_value_and_the_dotted_form(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "unused.toml", "history", "--help")
    assert result.exit_code == 0, result.output
    assert "TABLE KEY=VALUE..." in result.output
    text = " ".join(result.output.split())
    assert "Each KEY=VALUE names one part of the row's natural key" in text
    assert "reach into it with dots" in text
    assert "user_roles user_id.username=alice role_id.name=admin" in text


# --- init ------------------------------------------------------------------------------------


def test_init_with_a_source_says_what_is_left_and_without_one_to_edit_it(tmp_path: Path) -> None:
    given = tmp_path / "given.toml"
    result = run_cli(tmp_path / "unused.toml", "init", "--source", UNREACHABLE, str(given))
    assert result.exit_code == 0, result.output
    assert "edit [source] url" not in result.output
    assert f"next: `nkdaemon --config {given} install`" in result.output
    assert load_settings(given).source.url == UNREACHABLE

    default = run_cli(tmp_path / "unused.toml", "init", str(tmp_path / "default.toml"))
    assert "edit [source] url" in default.output


# --- postgres:// URLs ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "POSTGRES"])
def test_libpq_style_urls_read_as_the_psycopg_driver(tmp_path: Path, scheme: str) -> None:
    config = write_config(tmp_path, f"{scheme}://app:s3cret@db:5433/edms")
    assert load_settings(config).source.url == "postgresql+psycopg://app:s3cret@db:5433/edms"


def test_a_postgres_url_captures_and_restores(pg_url: str, pg_server: str, tmp_path: Path) -> None:
    _execute(pg_url, "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL UNIQUE)")
    plain = "postgres://" + pg_url.split("://", 1)[1]
    config = write_config(tmp_path, plain)
    assert run_cli(config, "install").exit_code == 0
    _execute(pg_url, "INSERT INTO users (name) VALUES ('ann')")
    drained = run_cli(config, "drain")
    assert drained.exit_code == 0, drained.output
    target = pg.create_database(pg_server)
    try:
        plain_target = "postgres://" + target.split("://", 1)[1]
        args = ("restore", "--latest", "--create-schema", "--target", plain_target)
        restored = run_cli(config, *args)
        assert restored.exit_code == 0, restored.output
        assert _tables(target) == ["users"]
    finally:
        pg.drop_database(pg_server, target)


# --- a restore that rolls back leaves no SQLite file behind ----------------------------------


def test_a_dry_run_or_failed_restore_into_a_new_sqlite_file_leaves_no_file(
    users_repository: Path, tmp_path: Path
) -> None:
    dry = tmp_path / "dry.db"
    result = run_cli(
        users_repository,
        "restore",
        "--latest",
        "--create-schema",
        "--dry-run",
        "--target",
        f"sqlite:///{dry}",
    )
    assert result.exit_code == 0, result.output
    assert list(tmp_path.glob("dry.db*")) == []

    failed = tmp_path / "failed.db"  # no --create-schema: refused, nothing to keep
    result = run_cli(users_repository, "restore", "--latest", "--target", f"sqlite:///{failed}")
    assert result.exit_code == 1, result.output
    assert list(tmp_path.glob("failed.db*")) == []

    kept = tmp_path / "kept.db"
    result = run_cli(
        users_repository, "restore", "--latest", "--create-schema", "--target", f"sqlite:///{kept}"
    )
    assert result.exit_code == 0, result.output
    assert _tables(f"sqlite:///{kept}") == ["users"]


def test_a_dry_run_into_an_existing_sqlite_file_leaves_it_in_place(
    users_repository: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.db"
    _execute(f"sqlite:///{existing}", "CREATE TABLE other (x int)")
    result = run_cli(
        users_repository,
        "restore",
        "--latest",
        "--create-schema",
        "--dry-run",
        "--target",
        f"sqlite:///{existing}",
    )
    assert result.exit_code == 0, result.output
    assert _tables(f"sqlite:///{existing}") == ["other"]
