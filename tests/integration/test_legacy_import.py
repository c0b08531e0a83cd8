"""`import-legacy`: Django's own dumpdata (with and without natural keys) into the
repository, restored into fresh databases with other ids, compared through Django's ORM;
the reconciliation report; any order of objects; compressed files."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nkdaemon.core.legacy import ModelMap
from nkdaemon.runtime.config import load_settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.legacy_import import ImportSettings, import_fixture
from nkdaemon.sources.registry import reflect_registry
from tests import pg
from tests.django_edms.harness import (
    MODELS,
    django,
    django_states,
    legacy_config,
    snapshot_content,
    snapshots,
)
from tests.helpers import run_cli

AT = "2020-06-01T12:00:00+00:00"


@pytest.fixture
def fresh_url(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str
) -> Iterator[Callable[[str], str]]:
    """Makes more databases of the test's dialect (dropped at the end)."""
    made: list[str] = []

    def make(name: str) -> str:
        if db_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'{name}.db'}"
        server = request.getfixturevalue("pg_server")
        made.append(pg.create_database(server))
        return made[-1]

    yield make
    for url in made:
        pg.drop_database(request.getfixturevalue("pg_server"), url)


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A populated Django EDMS on SQLite, its two dumps and its state, made once."""
    base = tmp_path_factory.mktemp("edms")
    url = f"sqlite:///{base / 'source.db'}"
    django(
        url,
        "migrate",
        "populate",
        f"dump:{base / 'plain.json'}",
        f"dump:{base / 'natural.json'}:natural",
        f"state:{base / 'state.json'}",
    )
    return base


def copy_source(sqlite_source: Path, tmp_path: Path) -> str:
    shutil.copy(sqlite_source / "source.db", tmp_path / "source.db")
    for name in ("plain.json", "natural.json"):
        shutil.copy(sqlite_source / name, tmp_path / name)
    return f"sqlite:///{tmp_path / 'source.db'}"


def import_cli(config: Path, *args: str) -> Any:
    return run_cli(config, "import-legacy", *args)


def test_dumpdata_imports_as_nkdaemon_snapshots_it_and_restores_into_fresh_databases(
    db_url: str, fresh_url: Callable[[str], str], tmp_path: Path
) -> None:
    """Django's dumpdata, with and without natural keys, imported, holds exactly what
    nkdaemon's own snapshot of the dumped database holds (every value canonical, every
    reference by natural key); restored at the import's instant into a freshly initialised
    database (reference rows seeded in another order: other ids), Django's ORM reads back
    the same rows."""
    targets = [fresh_url("plain"), fresh_url("natural")]
    django(
        [db_url, *targets],
        "migrate",
        "populate",
        f"dump:{tmp_path / 'plain.json'}",
        f"dump:{tmp_path / 'natural.json'}:natural",
        f"state:{tmp_path / 'source.json'}",
        *(f"{action}@{i}" for i in (1, 2) for action in ("migrate", "seed-reverse")),
    )
    source = json.loads((tmp_path / "source.json").read_text())
    config = legacy_config(tmp_path, db_url)
    instants = {"plain": AT, "natural": "2020-06-02T00:00:00+00:00"}
    for kind, at in instants.items():
        done = import_cli(config, str(tmp_path / f"{kind}.json"), "--at", at)
        assert done.exit_code == 0, done.output
    captured = legacy_config(tmp_path, db_url, repo="captured")
    assert run_cli(captured, "install").exit_code == 0
    (baseline,) = snapshots(tmp_path / "captured")
    expected = snapshot_content(baseline)
    assert sum(len(rows) for rows in expected.values()) == 41
    imported = snapshots(tmp_path / "repo")
    assert [snapshot_content(s) for s in imported] == [expected, expected]
    assert imported[0].imported is not None and imported[0].imported["file"] == "plain.json"
    for target, at in zip(targets, instants.values(), strict=True):
        done = run_cli(config, "restore", "--target", target, "--at", at)
        assert done.exit_code == 0, done.output
    for restored in django_states(targets, tmp_path):
        assert restored["rows"] == source["rows"]
        assert restored["ids"]["edms.role"] != source["ids"]["edms.role"]  # other ids


def test_between_an_import_and_captured_history_restore_refuses_and_status_lists_it_apart(
    sqlite_source: Path, tmp_path: Path
) -> None:
    url = copy_source(sqlite_source, tmp_path)
    config = legacy_config(tmp_path, url)
    assert import_cli(config, str(tmp_path / "plain.json"), "--at", AT).exit_code == 0
    assert run_cli(config, "install").exit_code == 0  # captured history starts now
    target = f"sqlite:///{tmp_path / 'target.db'}"
    refused = run_cli(
        config, "restore", "--target", target, "--at", "2021-01-01T00:00:00Z", "--create-schema"
    )
    assert refused.exit_code == 2
    assert "nothing is known of the changes in between" in refused.output
    assert AT in refused.output
    exact = run_cli(config, "restore", "--target", target, "--at", AT, "--create-schema")
    assert exact.exit_code == 0, exact.output
    status = run_cli(config, "status", "--json")
    document = json.loads(status.output)
    assert [s["time"] for s in document["imported_snapshots"]] == [
        "2020-06-01T12:00:00.000000+00:00"
    ]
    assert len(document["snapshots"]) == 1  # the captured baseline only
    assert "imported     2020-06-01" in run_cli(config, "status").output


def _edit(path: Path, change: Callable[[list[dict[str, Any]]], None]) -> Path:
    objects = json.loads(path.read_text(encoding="utf-8"))
    change(objects)
    path.write_text(json.dumps(objects, ensure_ascii=False), encoding="utf-8")
    return path


def _document(objects: list[dict[str, Any]], number: str) -> dict[str, Any]:
    return next(o for o in objects if o["fields"].get("document_number") == number)


def test_dangling_references_are_listed_and_refused_unless_nullable_and_allowed(
    sqlite_source: Path, tmp_path: Path
) -> None:
    url = copy_source(sqlite_source, tmp_path)
    config = legacy_config(tmp_path, url)

    def dangle(objects: list[dict[str, Any]]) -> None:
        doc = _document(objects, "DOC-0002")
        doc["fields"]["author"] = 999
        doc["fields"]["parent"] = 998

    fixture = _edit(tmp_path / "plain.json", dangle)
    for extra in ((), ("--allow-dangling",)):
        refused = import_cli(config, str(fixture), "--at", AT, *extra)
        assert refused.exit_code == 1
        doc_pk = _document(json.loads(fixture.read_text()), "DOC-0002")["pk"]
        assert f"edms.document pk {doc_pk} author_id: users pk 999 is not in the file" in (
            refused.output
        )
        assert "edms.document: " in refused.output  # the count per model
        assert not list((tmp_path / "repo" / "snapshots").iterdir())  # nothing written
        if not extra:
            assert "parent_id: documents pk 998 is not in the file" in refused.output

    def only_parent(objects: list[dict[str, Any]]) -> None:
        _document(objects, "DOC-0002")["fields"]["author"] = 2

    _edit(fixture, only_parent)
    assert import_cli(config, str(fixture), "--at", AT).exit_code == 1
    allowed = import_cli(config, str(fixture), "--at", AT, "--allow-dangling")
    assert allowed.exit_code == 0, allowed.output
    assert "1 references to rows not in the file set to NULL" in allowed.output
    (snapshot,) = snapshots(tmp_path / "repo")
    docs = snapshot_content(snapshot)["documents"]
    assert any('"document_number":"DOC-0002"' in d and '"parent_id":null' in d for d in docs)


def test_a_duplicate_natural_key_always_refuses_naming_both_pks(
    sqlite_source: Path, tmp_path: Path
) -> None:
    url = copy_source(sqlite_source, tmp_path)
    config = legacy_config(tmp_path, url)

    def duplicate(objects: list[dict[str, Any]]) -> None:
        alice = next(o for o in objects if o["fields"].get("username") == "alice")
        objects.append({"model": "edms.user", "pk": 77, "fields": dict(alice["fields"])})

    fixture = _edit(tmp_path / "plain.json", duplicate)
    refused = import_cli(config, str(fixture), "--at", AT, "--allow-dangling")
    assert refused.exit_code == 1
    assert (
        'edms.user pk 1 (natural key): natural key {"username":"alice"} is also that of pk 77'
        in refused.output
    )


def test_unknown_models_and_fields_are_refused_with_the_mapping_hint(
    sqlite_source: Path, tmp_path: Path
) -> None:
    url = copy_source(sqlite_source, tmp_path)
    config = legacy_config(tmp_path, url)

    def strange(objects: list[dict[str, Any]]) -> None:
        objects.append({"model": "other.thing", "pk": 1, "fields": {}})
        objects[0]["fields"]["colour"] = "red"

    fixture = _edit(tmp_path / "plain.json", strange)
    refused = import_cli(config, str(fixture), "--at", AT)
    assert refused.exit_code == 2
    assert "model other.thing maps to no captured table" in refused.output
    assert "edms.role.colour: table roles has no such column" in refused.output
    assert "[legacy.models]" in refused.output


def _import(config: Path, fixture: Path, at: datetime) -> dict[str, list[str]]:
    settings_ = load_settings(config)
    with Session(settings_, writer=False) as session:
        session.layout.ensure()
        registry = reflect_registry(session.engine, settings_)
        report = import_fixture(
            path=fixture,
            at=at,
            snapshots_dir=session.layout.snapshots_dir,
            work_dir=session.layout.root,
            settings=ImportSettings(
                specs=dict(registry.tables), dialect="sqlite", model_map=ModelMap(explicit=MODELS)
            ),
        )
    assert report.snapshot is not None
    return snapshot_content(report.snapshot)


@pytest.fixture(scope="module")
def in_order(sqlite_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("order")
    url = copy_source(sqlite_source, base)
    config = legacy_config(base, url)
    return {
        "config": config,
        "content": _import(config, base / "plain.json", datetime(2020, 1, 1, tzinfo=UTC)),
        "objects": json.loads((base / "plain.json").read_text()),
        "base": base,
    }


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
@example(seed=-1)  # -1: the file's objects in reverse (every reference points forward)
def test_any_order_of_models_and_rows_gives_the_same_snapshot(
    in_order: dict[str, Any], seed: int
) -> None:
    objects = list(in_order["objects"])
    if seed == -1:
        objects.reverse()
    else:
        random.Random(seed).shuffle(objects)
    fixture = in_order["base"] / "shuffled.json"
    fixture.write_text(json.dumps(objects))
    at = datetime(2020, 1, 2, tzinfo=UTC).replace(microsecond=abs(seed) % 10**6)
    assert _import(in_order["config"], fixture, at) == in_order["content"]
    for snapshot in snapshots(in_order["base"] / "repo"):
        if snapshot.moment == at:
            shutil.rmtree(snapshot.path)


@pytest.mark.parametrize(
    ("number", "suffix", "compress"),
    [
        (1, ".gz", gzip.compress),
        (2, ".bz2", bz2.compress),
        (3, ".xz", lzma.compress),
        (4, ".zst", zstandard.ZstdCompressor().compress),
        (5, "", lambda data: data),
    ],
)
def test_compressed_fixtures_are_read_by_their_content(
    in_order: dict[str, Any], number: int, suffix: str, compress: Callable[[bytes], bytes]
) -> None:
    data = (in_order["base"] / "plain.json").read_bytes()
    fixture = in_order["base"] / f"compressed{suffix}.bin"  # named without the suffix: sniffed
    fixture.write_bytes(compress(data))
    at = datetime(2020, 2, 1, tzinfo=UTC).replace(microsecond=number)
    assert _import(in_order["config"], fixture, at) == in_order["content"]


def test_legacy_models_must_map_labels_to_tables(tmp_path: Path) -> None:
    from nkdaemon.core.errors import ConfigError
    from nkdaemon.runtime.config import parse_settings

    base = {"source": {"url": "sqlite:///x.db"}, "repository": {"path": "repo"}}
    for models in ({"edms": "documents"}, {"edms.document": 3}):
        with pytest.raises(ConfigError, match=r"\[legacy\] models"):
            parse_settings({**base, "legacy": {"models": models}}, base_dir=tmp_path)
    parsed = parse_settings(
        {**base, "legacy": {"models": {"EDMS.Document": "documents"}}}, base_dir=tmp_path
    )
    assert parsed.legacy.models == {"edms.document": "documents"}


@settings(max_examples=60, deadline=None)
@given(
    code=st.text(max_size=8),
    name=st.text(max_size=8),
    number=st.integers(-(2**40), 2**40),
    nested=st.booleans(),
)
def test_django_natural_keys_nest_and_flatten_back(
    code: str, name: str, number: int, nested: bool
) -> None:
    """A key that contains a key that contains a key: spliced flat (Django's convention)
    or as nested lists, it reads as the same nested natural key and flattens back."""
    from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, KeyPart, make_table_spec
    from nkdaemon.core.legacy import flatten_key, key_width, nest_key

    def table(table_name: str, plain: str, ref: str | None) -> Any:
        columns = [ColumnSpec(name="id", logical_type="int", nullable=False)]
        columns.append(ColumnSpec(name=plain, logical_type="text", nullable=False))
        fks: tuple[ForeignKeySpec, ...] = ()
        parts = [KeyPart(name=plain, column=plain)]
        if ref is not None:
            fk = ForeignKeySpec(columns=(f"{ref}_id",), ref_table=ref, ref_columns=("id",))
            columns.append(ColumnSpec(name=f"{ref}_id", logical_type="int", nullable=False))
            fks = (fk,)
            parts.insert(0, KeyPart(name=fk.part_name, foreign_key=fk))
        return make_table_spec(
            number=len(table_name),
            name=table_name,
            schema=None,
            columns=tuple(columns),
            primary_key=("id",),
            key_parts=tuple(parts),
            foreign_keys=fks,
        )

    specs = {"a": table("a", "code", None), "bb": table("bb", "name", "a")}
    specs["ccc"] = table("ccc", "number", "bb")

    def same(_spec: Any, _column: str, value: Any) -> Any:
        return value

    flat = [code, name, number]
    given_key = [[[code], name], number] if nested else flat
    key = nest_key(specs["ccc"], specs, given_key, same)
    assert key == {"bb_id": {"a_id": {"code": code}, "name": name}, "number": number}
    assert flatten_key(specs["ccc"], specs, key, same) == flat
    assert key_width(specs["ccc"], specs) == 3
