"""Restore targets: writing natural-key rows into a PostgreSQL or SQLite database.

``table`` holds what both share (TargetTable, Address, RestoreTargetError), ``postgres`` and
``sqlite`` one backend each, ``ddl`` the tables --create-schema makes, ``values`` the
conversion of canonical values, and ``factory.open_target`` picks the backend for a URL.
"""
