"""A repository written before the issue 11 redesign restores every instant identically.

tests/fixtures/format1/ holds two small repositories (captured from SQLite and from
PostgreSQL by the code of commit 074cb90, made by tests/fixtures/make_format1.py) and what
the source held at each instant, dumped by plain SQL that names rows by natural keys. The
bytes are the holdout: any change to how the log, the snapshots or the repository state are
read shows here as a refused restore or a different row.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import pg
from tests.fixtures.make_format1 import dump
from tests.helpers import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "format1"


def _repository(dialect: str, tmp_path: Path) -> Path:
    """A copy of the fixture (restore must not need to write, but must not touch the original)."""
    shutil.copytree(FIXTURES / dialect / "repo", tmp_path / "repo")
    config = tmp_path / "nkdaemon.toml"
    config.write_text(
        f'[source]\nurl = "sqlite:///{tmp_path / "gone.db"}"\n\n'
        f'[repository]\npath = "{tmp_path / "repo"}"\n'
    )
    return config


def _instants(dialect: str) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads((FIXTURES / dialect / "expected.json").read_text())
    return loaded


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_every_instant_of_an_old_repository_restores_into_sqlite(
    dialect: str, tmp_path: Path
) -> None:
    config = _repository(dialect, tmp_path)
    for number, instant in enumerate(_instants(dialect)):
        target = f"sqlite:///{tmp_path / f'target{number}.db'}"
        when = ("--latest",) if instant["at"] == "latest" else ("--at", instant["at"])
        result = run_cli(config, "restore", *when, "--target", target, "--create-schema")
        assert result.exit_code == 0, result.output
        assert dump(target) == instant["content"], f"instant {instant['at']}"


def test_every_instant_of_an_old_postgresql_repository_restores_into_postgresql(
    pg_server: str, tmp_path: Path
) -> None:
    config = _repository("postgresql", tmp_path)
    for instant in _instants("postgresql"):
        target = pg.create_database(pg_server)
        try:
            when = ("--latest",) if instant["at"] == "latest" else ("--at", instant["at"])
            result = run_cli(config, "restore", *when, "--target", target, "--create-schema")
            assert result.exit_code == 0, result.output
            assert dump(target) == instant["content"], f"instant {instant['at']}"
        finally:
            pg.drop_database(pg_server, target)


def test_the_fixture_is_not_trivial() -> None:
    """Each repository's instants differ from each other, so a restore that ignored --at
    (or the log) could not pass the tests above."""
    for dialect in ("sqlite", "postgresql"):
        contents = [json.dumps(i["content"], sort_keys=True) for i in _instants(dialect)]
        assert len(set(contents)) == len(contents), dialect
