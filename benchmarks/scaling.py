"""How each stage's cost grows with the data, beside what a user would use instead (issue 15).

For pgbench scale 1, 10 and 100 (100k, 1M, 10M pgbench_accounts rows), every stage runs in
its own process (time from its start to its end, peak memory from wait4), next to its
anchor measured in the same run:

- install on the populated source    | a psycopg SELECT of the same rows
- snapshot (`nkdaemon snapshot`)     | `pg_dump -Fc` of the captured tables
- drain of bulk UPDATEs of pgbench_accounts (2M events from scale 10 on, 2x the rows below)
- restore --latest into an empty pgbench schema (snapshot load, log replay of those events,
  validation, whole command)        | `pg_restore` of the dump
- a SQLite source with the same pgbench_accounts rows: snapshot | `sqlite3 .backup`, and
  restore | loading its `.dump` with the sqlite3 shell (Python's sqlite3 module if the shell
  is missing; the JSON says which)

It prints one table and writes it as JSON; `--plot` draws it (matplotlib, the `bench` extra).
The machine's load is recorded at the start and the end: figures taken under load are noisy.

    python benchmarks/scaling.py [--scales 1,10,100 | --max-scale 10] [--json PATH]
        [--plot scaling.png] [--sqlite-max-scale 10] [--keep]
    python benchmarks/scaling.py --from-json PATH [--plot scaling.png]   # table/plot again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Measured,
    admin,
    db_url,
    empty_pgbench_schema,
    measured,
    nkdaemon_config,
    nkdaemon_measured,
    pg_bin,
    pgbench_init,
    run_sql,
)
from _scaling_report import Record, Target, plot, read_json, render_table, write_json

SOURCE = "nkd_bench_scale_src"
PG_RESTORE_DB = "nkd_bench_scale_pg"
TARGET = "nkd_bench_scale_nk"
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
CONFIG = f"""
[capture]
tables = {json.dumps(list(TABLES))}
[tables.pgbench_history]
identity = "full"
"""
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "scaling.json"
BULK_EVENTS = 2_000_000  # issue 15: replay and drain sustained over >= 2 million events
BULK_STATEMENT_ROWS = 1_000_000  # one transaction at most this big (a large one, not absurd)

# issue 15's targets
INSTALL_RATE = Target(kind="rate", value=200_000)
SNAPSHOT_RATIO = Target(kind="ratio", value=2)
LOAD_RATIO = Target(kind="ratio", value=1.5)
REPLAY_RATE = Target(kind="rate", value=50_000)
VALIDATE_RATE = Target(kind="rate", value=500_000)
RESTORE_RATIO = Target(kind="ratio", value=3)
DRAIN_RATE = Target(kind="rate", value=50_000)
SQLITE_RATIO = Target(kind="ratio", value=3)

# The anchor for install: the rows read through psycopg as an application would, with a
# server-side cursor so that memory stays flat, as nkdaemon's own reads do.
SELECT_SCRIPT = """
import sys, psycopg
n = 0
with psycopg.connect(sys.argv[1]) as conn:
    for table in sys.argv[2:]:
        with conn.cursor(name="scan") as cur:
            cur.itersize = 10_000
            cur.execute(f'SELECT * FROM "{table}"')
            for _ in cur:
                n += 1
        conn.commit()
print(n)
"""


def _stage_times(stderr: str) -> dict[str, float]:
    """The restore's per-stage seconds, from its JSON log lines (`restore.stage`)."""
    stages: dict[str, float] = {}
    for line in stderr.splitlines():
        if '"restore.stage"' in line:
            event = json.loads(line)
            stages[event["stage"]] = float(event["seconds"])
    return stages


def _restored_counts(stdout: str) -> tuple[int, int]:
    found = re.search(r"(\d+) snapshot rows and (\d+) logged changes", stdout)
    if not found:
        raise SystemExit(f"restore printed no counts:\n{stdout[-2000:]}")
    return int(found[1]), int(found[2])


def update_ranges(rows: int, events: int) -> list[tuple[int, int]]:
    """The (low, high] aid ranges of UPDATEs of pgbench_accounts making ``events`` changes,
    one transaction each of at most BULK_STATEMENT_ROWS rows, going round the table (each
    row changed once per lap)."""
    ranges, low = [], 0
    while events > 0:
        size = min(events, BULK_STATEMENT_ROWS, rows - low)
        ranges.append((low, low + size))
        events -= size
        low = (low + size) % rows
    return ranges


class ScaleRun:
    """Every PostgreSQL stage at one pgbench scale, in the order a user meets them."""

    def __init__(
        self,
        scale: int,
        work: Path,
        bar: tqdm[Any],
        keep: Callable[[Record], None],
        profile: Path | None = None,
    ) -> None:
        self.scale = scale
        self.profile = profile
        self.rows = scale * 100_000
        self.work = work
        self.bar = bar
        self.keep = keep
        self.notes: dict[str, Any] = {}

    def add(self, record: Record) -> None:
        self.keep(record)
        ratio = f", {record.ratio:.2f}x {record.anchor}" if record.ratio is not None else ""
        rss = f", {record.max_rss_kb / 1024:.0f} MB" if record.max_rss_kb else ""
        tqdm.write(
            f"scale {self.scale} {record.stage}: {record.rows:,} in {record.seconds:.2f} s "
            f"= {record.rate:,.0f} {record.unit}{ratio}{rss}"
        )

    def nk(self, stage: str, config: Path, *args: str) -> Measured:
        """One nkdaemon command, profiled into PROFILE/scaleN-STAGE.prof with --profile."""
        name = re.sub(r"\W+", "-", stage)
        profile = self.profile / f"scale{self.scale}-{name}.prof" if self.profile else None
        return nkdaemon_measured(config, *args, profile=profile)

    def step(self, what: str) -> None:
        self.bar.set_postfix_str(f"scale {self.scale}: {what}")
        self.bar.update(1)

    def run(self) -> None:
        self.step("pgbench -i")
        started = time.perf_counter()
        pgbench_init(SOURCE, self.scale)
        self.notes["pgbench_init_seconds"] = round(time.perf_counter() - started, 2)
        self.step("anchors")
        anchors = self._anchors()
        with nkdaemon_config(SOURCE, CONFIG, log_level="info") as config:
            self.step("install")
            install = self.nk("install", config, "install")
            self.add(self._record("install", self.rows, install, anchors["select"], INSTALL_RATE))
            self.step("snapshot")
            snap = self.nk("snapshot", config, "snapshot", "--force")
            self.add(self._record("snapshot", self.rows, snap, anchors["pg_dump"], SNAPSHOT_RATIO))
            self.step("bulk update + drain")
            events = self._drain(config)
            self.step("restore")
            self._restore(config, events, anchors["pg_restore"])

    def _record(
        self, stage: str, rows: int, run: Measured, anchor: tuple[str, float], target: Target
    ) -> Record:
        return Record(
            scale=self.scale,
            stage=stage,
            rows=rows,
            seconds=run.seconds,
            anchor=anchor[0],
            anchor_seconds=anchor[1],
            target=target,
            max_rss_kb=run.max_rss_kb,
        )

    def _anchors(self) -> dict[str, tuple[str, float]]:
        """SELECT, pg_dump -Fc and pg_restore of the tables as the application has them
        (before install: a dump with capture triggers would not restore elsewhere)."""
        select = measured([sys.executable, "-c", SELECT_SCRIPT, db_url(SOURCE), *TABLES])
        self.notes["select_rows"] = int(select.stdout.strip())
        dump = self.work / f"scale{self.scale}.dump"
        tables = [arg for t in TABLES for arg in ("-t", t)]
        pg_dump = measured([pg_bin("pg_dump"), "-Fc", *tables, "-f", str(dump), db_url(SOURCE)])
        self.notes["dump_bytes"] = dump.stat().st_size
        admin(f'DROP DATABASE IF EXISTS "{PG_RESTORE_DB}" WITH (FORCE)')
        admin(f'CREATE DATABASE "{PG_RESTORE_DB}"')
        pg_restore = measured([pg_bin("pg_restore"), "-d", db_url(PG_RESTORE_DB), str(dump)])
        admin(f'DROP DATABASE IF EXISTS "{PG_RESTORE_DB}" WITH (FORCE)')
        dump.unlink()
        self.notes["anchor_rss_kb"] = {
            "select": select.max_rss_kb,
            "pg_dump": pg_dump.max_rss_kb,
            "pg_restore": pg_restore.max_rss_kb,
        }
        return {
            "select": ("psycopg SELECT", select.seconds),
            "pg_dump": ("pg_dump -Fc", pg_dump.seconds),
            "pg_restore": ("pg_restore", pg_restore.seconds),
        }

    def _drain(self, config: Path) -> int:
        wanted = BULK_EVENTS if self.scale >= 10 else 2 * self.rows
        started = time.perf_counter()
        for low, high in update_ranges(self.rows, wanted):
            run_sql(
                SOURCE,
                "UPDATE pgbench_accounts SET abalance = abalance + 1 "
                f"WHERE aid > {low} AND aid <= {high}",
            )
        self.notes["bulk_update_seconds"] = round(time.perf_counter() - started, 2)
        drain = self.nk("drain", config, "drain", "--json")
        events = int(json.loads(drain.stdout)["events"])
        if events != wanted:
            raise SystemExit(f"drain moved {events} events, the updates made {wanted}")
        self.add(
            Record(
                scale=self.scale,
                stage="drain",
                rows=events,
                seconds=drain.seconds,
                unit="events/s",
                target=DRAIN_RATE,
                max_rss_kb=drain.max_rss_kb,
            )
        )
        return events

    def _restore(self, config: Path, events: int, anchor: tuple[str, float]) -> None:
        empty_pgbench_schema(TARGET)  # as the application creates it: primary keys in place
        url = db_url(TARGET, "postgresql+psycopg")
        restore = self.nk("restore", config, "restore", "--latest", "--target", url)
        admin(f'DROP DATABASE IF EXISTS "{TARGET}" WITH (FORCE)')
        stages = _stage_times(restore.stderr)
        rows, applied = _restored_counts(restore.stdout)
        if applied != events:
            raise SystemExit(f"restore replayed {applied} events, the drain logged {events}")
        self.notes["restore_stages"] = stages
        # the stages share the restore's process: its peak memory is on the whole restore
        for stage, count, target, unit in (
            ("load", rows, LOAD_RATIO, "rows/s"),
            ("replay", applied, REPLAY_RATE, "events/s"),
            ("validate", rows, VALIDATE_RATE, "rows/s"),
        ):
            self.add(
                Record(
                    scale=self.scale,
                    stage=f"restore: {stage}",
                    rows=count,
                    seconds=stages[stage],
                    unit=unit,
                    anchor=anchor[0] if stage == "load" else None,
                    anchor_seconds=anchor[1] if stage == "load" else None,
                    target=target,
                )
            )
        self.add(self._record("restore: whole", rows, restore, anchor, RESTORE_RATIO))


SQLITE_DDL = (  # pgbench's own pgbench_accounts, as `pgbench -i` makes it
    "CREATE TABLE pgbench_accounts "
    "(aid int NOT NULL PRIMARY KEY, bid int, abalance int, filler char(84))"
)
SQLITE_FILL = """
INSERT INTO pgbench_accounts
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?)
SELECT x, (x - 1) / 100000 + 1, 0, printf('%84s', '') FROM n
"""
# without the sqlite3 shell: the same work through Python's sqlite3 module
PY_BACKUP = "import sqlite3, sys; sqlite3.connect(sys.argv[2]).close(); " + (
    "s = sqlite3.connect(sys.argv[1]); d = sqlite3.connect(sys.argv[2]); s.backup(d)"
)
PY_LOAD = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[2]); "
    "c.executescript(open(sys.argv[1]).read()); c.close()"
)


class SqliteRun:
    """A SQLite source with the same pgbench_accounts rows: snapshot beside `.backup`,
    restore beside loading the `.dump`."""

    def __init__(self, scale: int, work: Path, run: ScaleRun) -> None:
        self.rows = scale * 100_000
        self.folder = work / f"sqlite{scale}"
        self.run_ = run
        self.shell = shutil.which("sqlite3")
        run.notes["sqlite_tool"] = "sqlite3 shell" if self.shell else "python sqlite3 module"

    def run(self) -> None:
        self.folder.mkdir()
        source = self.folder / "source.db"
        with sqlite3.connect(source) as conn:
            conn.execute(SQLITE_DDL)
            conn.execute(SQLITE_FILL, (self.rows,))
        conn.close()
        dump = self.folder / "dump.sql"
        self._dump(source, dump)
        backup = self._backup(source, self.folder / "backup.db")
        load = self._load(dump, self.folder / "loaded.db")
        extra = '[capture]\ntables = ["pgbench_accounts"]\n'
        with nkdaemon_config("", extra, source_url=f"sqlite:///{source}") as config:
            self.run_.step("sqlite install")
            install = self.run_.nk("sqlite install", config, "install")
            self._add("sqlite install", install.seconds, install.max_rss_kb)
            self.run_.step("sqlite snapshot")
            snap = self.run_.nk("sqlite snapshot", config, "snapshot", "--force")
            self._add("sqlite snapshot", snap.seconds, snap.max_rss_kb, backup)
            target = self.folder / "target.db"
            with sqlite3.connect(target) as conn:
                conn.execute(SQLITE_DDL)
            conn.close()
            self.run_.step("sqlite restore")
            restore = self.run_.nk(
                "sqlite restore", config, "restore", "--latest", "--target", f"sqlite:///{target}"
            )
            self._add("sqlite restore", restore.seconds, restore.max_rss_kb, load)
        shutil.rmtree(self.folder)

    def _add(
        self, stage: str, seconds: float, rss: int, anchor: tuple[str, float] | None = None
    ) -> None:
        self.run_.add(
            Record(
                scale=self.run_.scale,
                stage=stage,
                rows=self.rows,
                seconds=seconds,
                anchor=anchor[0] if anchor else None,
                anchor_seconds=anchor[1] if anchor else None,
                target=SQLITE_RATIO if anchor else None,
                max_rss_kb=rss,
            )
        )

    def _dump(self, source: Path, dump: Path) -> None:
        if self.shell:
            with dump.open("w") as out:
                subprocess.run([self.shell, str(source), ".dump"], stdout=out, check=True)
            return
        with sqlite3.connect(source) as conn, dump.open("w") as out:
            for line in conn.iterdump():
                out.write(line + "\n")
        conn.close()

    def _backup(self, source: Path, copy: Path) -> tuple[str, float]:
        if self.shell:
            done = measured([self.shell, str(source), f".backup '{copy}'"])
            return ("sqlite3 .backup", done.seconds)
        done = measured([sys.executable, "-c", PY_BACKUP, str(source), str(copy)])
        return ("Connection.backup", done.seconds)

    def _load(self, dump: Path, database: Path) -> tuple[str, float]:
        if self.shell:
            done = measured([self.shell, str(database)], stdin=dump)
            return ("sqlite3 < .dump", done.seconds)
        done = measured([sys.executable, "-c", PY_LOAD, str(dump), str(database)])
        return ("executescript(.dump)", done.seconds)


def parse_scales(args: argparse.Namespace) -> list[int]:
    scales = [int(s) for s in args.scales.split(",")] if args.scales else [1, 10, 100]
    return [s for s in scales if args.max_scale is None or s <= args.max_scale]


def machine(when: str) -> dict[str, Any]:
    load = os.getloadavg()
    return {f"load_{when}": [round(x, 2) for x in load], f"time_{when}": _now()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def measure(args: argparse.Namespace, meta: dict[str, Any]) -> list[Record]:
    scales = parse_scales(args)
    records: list[Record] = []

    def keep(record: Record) -> None:
        """Each stage on disk as soon as it is measured: a run stopped at 10M rows (too slow,
        too much memory) still leaves the figures it reached."""
        records.append(record)
        write_json(args.json, records, {**meta, "partial": True})

    steps = sum(6 + 3 * (s <= args.sqlite_max_scale) for s in scales)
    bar = tqdm(total=steps, unit="step", disable=not sys.stderr.isatty(), file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="nkd-scaling-"))
    try:
        for scale in scales:
            run = ScaleRun(scale, work, bar, keep, args.profile)
            meta.setdefault("notes", {})[str(scale)] = run.notes
            run.run()
            if scale <= args.sqlite_max_scale:
                SqliteRun(scale, work, run).run()
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            for database in (SOURCE, PG_RESTORE_DB, TARGET):
                admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", help="pgbench scales, e.g. 1,10 (default 1,10,100)")
    parser.add_argument("--max-scale", type=int, help="stop after this scale")
    parser.add_argument("--sqlite-max-scale", type=int, default=10, help="SQLite up to this")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="write the table here")
    parser.add_argument("--plot", type=Path, help="draw the table (PNG) with matplotlib")
    parser.add_argument("--from-json", type=Path, help="print/plot a table measured before")
    parser.add_argument(
        "--profile", type=Path, help="run nkdaemon under cProfile, statistics in this folder"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases at the end")
    args = parser.parse_args()
    if args.from_json:
        records, meta = read_json(args.from_json)
    else:
        meta = {"command": " ".join(["python", *sys.argv]), "cores": os.cpu_count()}
        meta.update(platform=platform.platform(), **machine("start"))
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            meta["profiled"] = "under cProfile: times inflated, for where they go only"
        records = measure(args, meta)
        meta.update(machine("end"))
        write_json(args.json, records, meta)
    end = meta.get("time_end", "(stopped before the end)")
    print(
        f"\n{meta['time_start']} to {end}, {meta['cores']} cores; load average "
        f"{meta['load_start']} at the start, {meta.get('load_end')} at the end"
    )
    print(render_table(records))
    if args.plot:
        plot(records, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
