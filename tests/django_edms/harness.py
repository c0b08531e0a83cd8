"""Test helpers around the Django EDMS project: run it, configure nkdaemon for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from nkdaemon.repository.snapshots import SnapshotInfo, list_snapshots, read_table
from tests.helpers import ROOT, write_config

MODELS = {
    "edms.role": "roles",
    "edms.user": "users",
    "edms.userrole": "user_roles",
    "edms.documenttype": "document_types",
    "edms.documentsource": "document_sources",
    "edms.documentworkflow": "document_workflows",
    "edms.documentstate": "document_states",
    "edms.document": "documents",
    "edms.document.watchers": "document_watchers",
    "edms.documentversion": "document_versions",
    "edms.documentdependency": "document_dependencies",
    "edms.documentcomment": "document_comments",
    "edms.placeholderdefinition": "placeholder_definitions",
}
LEGACY = '[capture]\nexclude = ["django_*"]\n\n[legacy.models]\n' + "".join(
    f'"{label}" = "{table}"\n' for label, table in MODELS.items()
)


def django(urls: str | list[str], *actions: str) -> None:
    """Run the Django project's manage.py-like script in its own process, on one database
    or several (``action@N`` works on the N-th)."""
    listed = [urls] if isinstance(urls, str) else urls
    env = {**os.environ, "EDMS_DATABASE_URL": " ".join(listed), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.django_edms.run", *actions],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def django_states(urls: list[str], directory: Path) -> list[dict[str, Any]]:
    """Every row of the EDMS models by natural key, read through Django's ORM, for each
    database (one process for all)."""
    django(urls, *(f"state:{directory / f'state-{i}.json'}@{i}" for i in range(len(urls))))
    return [
        json.loads((directory / f"state-{i}.json").read_text(encoding="utf-8"))
        for i in range(len(urls))
    ]


def legacy_config(directory: Path, url: str, *, repo: str = "repo") -> Path:
    config = write_config(directory, url, LEGACY, name=f"{repo}.toml")
    text = config.read_text().replace(str(directory / "repo"), str(directory / repo))
    config.write_text(text)
    return config


def snapshot_content(snapshot: SnapshotInfo) -> dict[str, list[str]]:
    """Each table's rows (key and row, references by natural key), order-free."""
    return {
        table.name: sorted(
            orjson.dumps({"k": r["k"], "r": r["r"]}, option=orjson.OPT_SORT_KEYS).decode()
            for r in read_table(snapshot, table)
        )
        for table in snapshot.tables
    }


def snapshots(directory: Path) -> list[SnapshotInfo]:
    return list_snapshots(directory / "snapshots")
