"""Opening the restore target a ``--target`` URL names."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from nkdaemon.targets.postgres import PostgresTarget
from nkdaemon.targets.sqlite import SqliteTarget
from nkdaemon.targets.table import RestoreTargetError


def open_target(url: str, *, source_dialect: str) -> PostgresTarget | SqliteTarget:
    """A target in its restore transaction, for a backup taken from ``source_dialect``.

    Raises RestoreTargetError for a database nkdaemon cannot restore into, or cannot open.
    """
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return PostgresTarget(url, source_dialect=source_dialect)
    if backend == "sqlite":
        return SqliteTarget(url, source_dialect=source_dialect)
    raise RestoreTargetError(
        f"--target: database {backend!r} is not supported",
        hint="restore into PostgreSQL (postgresql+psycopg://...) or SQLite (sqlite:///path)",
    )
