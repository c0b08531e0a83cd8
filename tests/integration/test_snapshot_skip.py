"""A snapshot is not taken when nothing changed since the newest one (issue 10).

An identical copy would only push older restore points out of retention. The command says
so, the newest snapshot records that it is still current (what /readyz measures), `--force`
takes one anyway, and a snapshot is taken all the same, with the reason, when the newest
one cannot stand for now (its files are damaged). `install` always takes its baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from nkdaemon.core.log import Gap
from nkdaemon.repository.snapshots import SnapshotInfo, list_snapshots
from nkdaemon.runtime.config import HealthSettings, Settings, load_settings
from nkdaemon.runtime.health import HealthState
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import load_registry
from nkdaemon.services.snapshot import SnapshotResult, take_snapshot
from tests.helpers import do_drain, engine_for, run_cli, write_config


@dataclass(frozen=True)
class Source:
    config: Path
    settings: Settings
    engine: sa.Engine

    @property
    def snapshots(self) -> list[SnapshotInfo]:
        return list_snapshots(self.settings.repository.path / "snapshots")

    def snapshot(self, *args: str) -> dict[str, object]:
        result = run_cli(self.config, "snapshot", "--json", *args)
        assert result.exit_code == 0, result.output
        document: dict[str, object] = json.loads(result.stdout)
        return document

    def change(self, n: int) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO items (code) VALUES ('item-{n}')")


def _installed(tmp_path: Path) -> Source:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id integer PRIMARY KEY, code text NOT NULL UNIQUE)"
        )
    config = write_config(tmp_path, url)
    assert run_cli(config, "install").exit_code == 0
    return Source(config=config, settings=load_settings(config), engine=engine)


def test_no_snapshot_is_taken_when_nothing_changed(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    (baseline,) = source.snapshots
    result = run_cli(source.config, "snapshot")
    assert result.exit_code == 0, result.output
    assert f"no change since snapshot {baseline.id}; not taken" in result.output
    assert [s.id for s in source.snapshots] == [baseline.id]
    (still,) = source.snapshots
    assert still.current_as_of > baseline.time  # the baseline is known current until now

    source.change(1)  # a change not yet drained is a change all the same
    taken = source.snapshot()
    assert taken["taken"] is True and taken["note"] is None
    do_drain(source.settings)
    second = source.snapshot()
    assert second == {**second, "taken": False, "id": taken["id"]}
    assert second["note"] == f"no change since snapshot {taken['id']}; not taken"
    assert len(source.snapshots) == 2


def test_force_takes_a_snapshot_of_an_unchanged_source(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    (baseline,) = source.snapshots
    forced = source.snapshot("--force")
    assert forced["taken"] is True
    assert forced["note"] == f"no change since snapshot {baseline.id}; taken all the same (--force)"
    assert len(source.snapshots) == 2


def test_a_damaged_newest_snapshot_is_replaced_and_the_reason_given(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    (baseline,) = source.snapshots
    table = baseline.path / baseline.tables[0].file
    table.write_bytes(table.read_bytes() + b"\0")
    taken = source.snapshot()
    assert taken["taken"] is True
    assert taken["note"] == (
        f"the source is unchanged, but snapshot {baseline.id}: tables/1.jsonl.zst (items) "
        "fails its SHA-256 checksum; taken"
    )


def test_install_always_takes_its_baseline(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    assert run_cli(source.config, "install").exit_code == 0  # again, nothing changed
    assert len(source.snapshots) == 2


def test_readiness_counts_a_snapshot_found_current_as_fresh() -> None:
    now = datetime.now(UTC)
    health = HealthState(HealthSettings(max_snapshot_age_seconds=60), {})
    health.update(state="running")
    old = (now - timedelta(hours=2)).isoformat()
    health.update(snapshots=[{"id": "a", "time": old, "current_as_of": old}])
    assert any("newest snapshot is 7200 s old" in r for r in health.readiness(now))
    recent = (now - timedelta(seconds=5)).isoformat()
    health.update(snapshots=[{"id": "a", "time": old, "current_as_of": recent}])
    assert health.readiness(now) == []


def test_a_gap_logged_since_the_newest_snapshot_makes_a_new_one(tmp_path: Path) -> None:
    """Restores from a snapshot refuse to cross a GAP marker logged after it: with the
    source unchanged, a new snapshot is still what lets them start after the gap."""
    source = _installed(tmp_path)
    (baseline,) = source.snapshots
    with Session(source.settings, writer=True) as session:
        checkpoint = session.state.checkpoint()
        session.log_store.recover(
            durable_segment=checkpoint.segment, durable_offset=checkpoint.offset
        )
        lsn = session.log_store.next_lsn
        session.log_store.append_gap(
            Gap(from_lsn=lsn, to_lsn=lsn, position=checkpoint.position, reason="lost in a test")
        )
        session.log_store.sync()

        def snapshot(log_lsn: int) -> SnapshotResult:
            return take_snapshot(
                source=session.source,
                tables=dict(load_registry(session.engine, source.settings, session.source).tables),
                directory=session.layout.snapshots_dir,
                installation=baseline.installation,
                log_lsn=lambda: log_lsn,
                cuts=session.cuts,
                log_store=session.log_store,
            )

        assert not snapshot(checkpoint.lsn).taken  # as if the gap were not durable yet
        result = snapshot(lsn)
    assert result.taken, result
    assert result.note == (
        f"the source is unchanged since snapshot {baseline.id}, but the log holds a gap "
        f"marker after it (lsn {lsn}); taken"
    )
