"""nkdaemon: natural-key change-capture backups for PostgreSQL and SQLite."""

__version__ = "0.1.0"
