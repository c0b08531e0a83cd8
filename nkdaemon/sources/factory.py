"""Opening the configured source: its SQLAlchemy engine and its capture adapter."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from nkdaemon.core.errors import SourceError
from nkdaemon.core.ports import CaptureSource
from nkdaemon.core.settings import SourceSettings


def engine_url(url: str) -> sa.URL:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(source: SourceSettings) -> Engine:
    url = engine_url(source.url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not path.exists():
            raise SourceError(
                f"the SQLite database {path} does not exist",
                hint="check [source] url; nkdaemon never creates the source database",
            )
    return sa.create_engine(url, poolclass=NullPool)


def open_source(source: SourceSettings, secrets: tuple[str, ...] = ()) -> CaptureSource:
    if source.dialect == "postgresql":
        from nkdaemon.sources.postgres import PostgresSource

        return PostgresSource(source.url, schema=source.schema, secrets=secrets)
    from nkdaemon.sources.sqlite import SqliteSource

    return SqliteSource(source.url)
