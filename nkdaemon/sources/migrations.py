"""Finding the versioned capture-schema SQL under migrations/."""

from __future__ import annotations

from pathlib import Path


def migrations_dir(dialect: str) -> Path:
    """The folder of one dialect's migration files (in the wheel, or the source tree)."""
    here = Path(__file__).resolve().parent.parent
    for base in (here / "_migrations", here.parent / "migrations"):
        if (base / dialect).is_dir():
            return base / dialect
    raise FileNotFoundError(f"migrations for {dialect} are missing from this installation")


def pending_migrations(dialect: str, installed: int) -> list[tuple[int, str]]:
    """(version, SQL text) of each migration newer than ``installed``, in order."""
    out = []
    for path in sorted(migrations_dir(dialect).glob("*.sql")):
        version = int(path.name.split("_", 1)[0])
        if version > installed:
            out.append((version, path.read_text(encoding="utf-8")))
    return out
