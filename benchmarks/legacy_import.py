"""import-legacy and export on a generated Django fixture: rows/s and peak memory.

Generates a legacy dumpdata file (integer pks and foreign keys, models in reverse
dependency order, so every reference points forward) of about --rows objects for the EDMS
example schema, imports it into a fresh repository with `nkdaemon import-legacy`, then
exports the imported instant with `nkdaemon export`, each in its own process, and prints
each one's rate and peak resident memory beside the fixture's size. SQLite source (the
schema only: table definitions), so nothing else is needed.

    python benchmarks/legacy_import.py [--rows 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from nkdaemon.examples import edms

MODELS = {
    "edms.role": "roles",
    "edms.user": "users",
    "edms.userrole": "user_roles",
    "edms.documenttype": "document_types",
    "edms.documentworkflow": "document_workflows",
    "edms.documentstate": "document_states",
    "edms.document": "documents",
    "edms.documentversion": "document_versions",
    "edms.documentcomment": "document_comments",
}
WHEN = "2026-01-01T09:00:00.123Z"


def objects(rows: int) -> Iterator[dict[str, Any]]:
    """About ``rows`` fixture objects, parents last."""
    users = max(10, rows // 20)
    docs = max(10, (rows - 2 * users) // 3)
    yield from _comments(docs, users)
    yield from _versions(docs, users)
    yield from _documents(docs, users)
    yield {
        "model": "edms.documentworkflow",
        "pk": 1,
        "fields": {"name": "standard", "initial_state": 1},
    }
    yield {
        "model": "edms.documentstate",
        "pk": 1,
        "fields": {"workflow": 1, "code": "draft", "label": "Draft"},
    }
    for pk in range(1, users + 1):
        yield {
            "model": "edms.userrole",
            "pk": pk,
            "fields": {"user": pk, "role": 1 + pk % 7, "granted_at": WHEN},
        }
    for pk in range(1, users + 1):
        yield {
            "model": "edms.user",
            "pk": pk,
            "fields": {
                "username": f"user{pk}",
                "email": f"u{pk}@example.com",
                "full_name": f"User {pk}",
                "is_active": True,
                "created_at": WHEN,
            },
        }
    for pk, code in enumerate(["SOP", "POL", "FRM", "WI", "RPT"], start=1):
        yield {"model": "edms.documenttype", "pk": pk, "fields": {"code": code, "label": code}}
    for pk, name in enumerate(edms.ROLES, start=1):
        yield {"model": "edms.role", "pk": pk, "fields": {"name": name, "description": None}}


def _documents(docs: int, users: int) -> Iterator[dict[str, Any]]:
    for pk in range(1, docs + 1):
        yield {
            "model": "edms.document",
            "pk": pk,
            "fields": {
                "document_number": f"DOC-{pk:08d}",
                "title": f"Document {pk} ✓",
                "type": 1 + pk % 5,
                "source": None,
                "state": 1,
                "author": 1 + pk % users,
                "parent": pk - 1 if pk % 10 != 1 else None,
                "fee": "12.3400",
                "tags": ["a", "b"],
                "created_at": WHEN,
            },
        }


def _versions(docs: int, users: int) -> Iterator[dict[str, Any]]:
    content = base64.b64encode(b"\x00binary\xff" * 8).decode()
    for pk in range(1, docs + 1):
        yield {
            "model": "edms.documentversion",
            "pk": pk,
            "fields": {
                "document": pk,
                "version_number": 1,
                "created_by": 1 + pk % users,
                "content": content,
                "sha256": "0" * 64,
                "created_at": WHEN,
            },
        }


def _comments(docs: int, users: int) -> Iterator[dict[str, Any]]:
    for pk in range(1, docs + 1):
        yield {
            "model": "edms.documentcomment",
            "pk": pk,
            "fields": {
                "uuid": str(uuid.UUID(int=pk)),
                "document": pk,
                "author": 1 + pk % users,
                "body": "a comment",
                "created_at": WHEN,
            },
        }


def write_fixture(path: Path, rows: int) -> int:
    count = 0
    with path.open("wb") as out:
        out.write(b"[")
        for obj in objects(rows):
            out.write(b",\n" if count else b"\n")
            out.write(orjson.dumps(obj))
            count += 1
        out.write(b"\n]\n")
    return count


def measured(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in kB, output) of one nkdaemon process."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "nkdaemon", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"nkdaemon {args[2]} failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    options = parser.parse_args()
    work = options.keep or Path(tempfile.mkdtemp(prefix="nkd-legacy-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "schema.db"
    source.unlink(missing_ok=True)
    edms.create_schema(sa.create_engine(f"sqlite:///{source}"))
    config = work / "nkdaemon.toml"
    mapping = "".join(f'"{label}" = "{table}"\n' for label, table in MODELS.items())
    config.write_text(
        f'[source]\nurl = "sqlite:///{source}"\n[repository]\npath = "{work / "repo"}"\n'
        f'[log]\nlevel = "warning"\n[legacy.models]\n{mapping}'
    )
    fixture = work / "fixture.json"
    count = write_fixture(fixture, options.rows)
    size = fixture.stat().st_size
    print(f"fixture: {count} objects, {size / 1e6:.0f} MB ({fixture})")
    at = "2020-01-01T00:00:00Z"
    seconds, rss, output = measured(
        ["--config", str(config), "import-legacy", str(fixture), "--at", at]
    )
    print(output.strip().splitlines()[-1])
    print(
        f"import-legacy: {count / seconds:,.0f} rows/s ({seconds:.1f} s), "
        f"peak RSS {rss / 1024:.0f} MB ({rss * 1024 / size:.2f}x the file)"
    )
    out = work / "export.json"
    seconds, rss, output = measured(["--config", str(config), "export", "--at", at, "-o", str(out)])
    print(
        f"export:        {count / seconds:,.0f} rows/s ({seconds:.1f} s), "
        f"peak RSS {rss / 1024:.0f} MB, {out.stat().st_size / 1e6:.0f} MB written"
    )


if __name__ == "__main__":
    main()
