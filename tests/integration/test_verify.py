"""`nkdaemon verify`: damaged snapshots and missing segments are named; --source finds drift."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from nkdaemon.examples import edms
from nkdaemon.runtime.config import load_settings
from tests.helpers import do_drain, do_install, engine_for, run_cli, write_config


def _setup(url: str, tmp_path: Path, transactions: int = 12) -> tuple[Path, sa.Engine]:
    engine = engine_for(url)
    edms.create_schema(engine)
    with engine.begin() as conn:
        edms.seed_example(conn)
    config = write_config(tmp_path, url)
    text = config.read_text().replace("[repository]\n", '[repository]\nsegment_size = "2KiB"\n')
    config.write_text(text)
    settings = load_settings(config)
    do_install(settings)
    for i in range(transactions):
        with engine.begin() as conn:
            edms.add_user(conn, f"user{i}")
        do_drain(settings)
    return config, engine


def test_a_sound_repository_verifies_against_the_source(db_url: str, tmp_path: Path) -> None:
    config, _engine = _setup(db_url, tmp_path, transactions=3)
    result = run_cli(config, "verify", "--source")
    assert result.exit_code == 0, result.output
    assert "verified: no problem found" in result.output
    assert "ok      users: expected 6 rows, found 6" in result.output


def test_verify_names_a_corrupted_snapshot_file(db_url: str, tmp_path: Path) -> None:
    config, _engine = _setup(db_url, tmp_path, transactions=1)
    snapshot = next((tmp_path / "repo" / "snapshots").iterdir())
    damaged = snapshot / "tables" / sorted(p.name for p in (snapshot / "tables").iterdir())[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = run_cli(config, "verify")
    assert result.exit_code == 1
    assert f"snapshot {snapshot.name}: tables/{damaged.name}" in result.output
    assert "fails its SHA-256 checksum" in result.output


def test_verify_names_a_missing_segment(db_url: str, tmp_path: Path) -> None:
    config, _engine = _setup(db_url, tmp_path)
    segments = sorted((tmp_path / "repo" / "log").iterdir())
    assert len(segments) >= 3, "small segments, several of them"
    missing = segments[1]
    missing.unlink()
    following = segments[2].name
    result = run_cli(config, "verify")
    assert result.exit_code == 1
    first = int(missing.name.split(".")[0])
    last = int(following.split(".")[0]) - 1
    assert f"log segment for transactions {first}..{last} is missing" in result.output


def test_verify_source_lists_a_difference_the_log_did_not_see(pg_url: str, tmp_path: Path) -> None:
    config, engine = _setup(pg_url, tmp_path, transactions=1)
    with engine.begin() as conn:  # a change made with triggers switched off: never captured
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql(
            "UPDATE users SET full_name = 'Changed Behind Our Back' WHERE username = 'bob'"
        )
    result = run_cli(config, "verify", "--source")
    assert result.exit_code == 1
    assert (
        'DIFFERS users: expected 4 rows, found 4 — different: {"username":"bob"}' in result.output
    )
