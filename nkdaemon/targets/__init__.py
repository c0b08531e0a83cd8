"""Restore targets: writing natural-key rows into a PostgreSQL or SQLite database."""
