"""`export`: the state at a time as a Django fixture, loaded by Django's own loaddata into
fresh databases, compared through Django's ORM; from an imported snapshot (streamed
straight) and from captured history (the log folded over the baseline)."""

from __future__ import annotations

import json
import lzma
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.django_edms.harness import django, django_states, legacy_config
from tests.helpers import run_cli

AT = "2020-06-01T12:00:00+00:00"


@pytest.fixture
def fresh_url(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str
) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(name: str) -> str:
        if db_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'{name}.db'}"
        made.append(pg.create_database(request.getfixturevalue("pg_server")))
        return made[-1]

    yield make
    for url in made:
        pg.drop_database(request.getfixturevalue("pg_server"), url)


def test_exports_load_with_django_loaddata_into_fresh_databases(
    db_url: str, fresh_url: Callable[[str], str], tmp_path: Path
) -> None:
    """An imported snapshot exported, and the captured state after a rename, an update, a
    delete and inserts exported: Django's loaddata takes both into empty databases and
    its ORM reads back the source's rows."""
    imported_target, latest_target = fresh_url("imported"), fresh_url("latest")
    suffix = ".json.gz" if db_url.startswith("sqlite") else ".json"
    django(
        [db_url, imported_target, latest_target],
        "migrate",
        "populate",
        f"dump:{tmp_path / 'plain.json'}",
        f"state:{tmp_path / 'before.json'}",
        "migrate@1",
        "migrate@2",
    )
    config = legacy_config(tmp_path, db_url)
    assert run_cli(config, "import-legacy", str(tmp_path / "plain.json"), "--at", AT).exit_code == 0
    exported = tmp_path / f"imported{suffix}"
    done = run_cli(config, "export", "--at", AT, "-o", str(exported))
    assert done.exit_code == 0, done.output
    assert "edms.document.watchers" in done.output  # a summary line per model
    assert run_cli(config, "install").exit_code == 0
    django(
        [db_url, imported_target],
        "mutate",
        f"state:{tmp_path / 'after.json'}",
        f"load:{exported}@1",
    )
    assert run_cli(config, "drain").exit_code == 0
    latest = tmp_path / f"latest{suffix}"
    done = run_cli(config, "export", "--latest", "-o", str(latest))
    assert done.exit_code == 0, done.output
    django(latest_target, f"load:{latest}")
    from_import, from_log = django_states([imported_target, latest_target], tmp_path)
    before = json.loads((tmp_path / "before.json").read_text())
    after = json.loads((tmp_path / "after.json").read_text())
    assert before["rows"] != after["rows"]
    assert from_import["rows"] == before["rows"]
    assert from_log["rows"] == after["rows"]


def test_export_writes_natural_keys_only_the_tables_asked_and_parents_first(
    tmp_path: Path,
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    django(source, "migrate", "populate", f"dump:{tmp_path / 'plain.json'}")
    config = legacy_config(tmp_path, source)
    assert run_cli(config, "import-legacy", str(tmp_path / "plain.json"), "--at", AT).exit_code == 0
    out = tmp_path / "some.json.xz"
    tables = ("--table", "documents", "--table", "document_states", "--table", "users")
    assert run_cli(config, "export", "--at", AT, *tables, "-o", str(out)).exit_code == 0
    objects = json.loads(lzma.decompress(out.read_bytes()))
    models = [o["model"] for o in objects]
    assert sorted(set(models)) == ["edms.document", "edms.documentstate", "edms.user"]
    assert models.index("edms.documentstate") < models.index("edms.document")
    assert all("pk" not in o for o in objects)  # natural primary keys
    doc = next(o for o in objects if o["fields"].get("document_number") == "DOC-0002")
    assert doc["fields"]["author"] == ["bob"]
    assert doc["fields"]["state"] == ["standard", "draft"]  # a nested key, spliced
    assert doc["fields"]["parent"] == ["DOC-0001"]
    assert doc["fields"]["watchers"] == [["alice"]]
    stdout = run_cli(config, "export", "--at", AT, "--table", "roles")
    assert stdout.exit_code == 0
    assert '"model":"edms.role"' in stdout.stdout
