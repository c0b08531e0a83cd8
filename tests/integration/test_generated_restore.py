"""Generated restores: random schemas and workloads, every instant restored four ways.

For each dialect, hypothesis draws a schema of 3-7 tables (ids of every kind, names that
need quoting, keys that contain foreign keys, cycles, self-references, cascades, a keyless
table) and a workload (inserts, updates, renames of natural keys, re-pointed references,
cascading deletes, delete and re-insert, rolled-back transactions, snapshots and drains in
between), records the source's content by natural key at random instants, then restores
each instant (a) with --create-schema into an empty database, (b) into a target whose
application seeded some of the rows in another order with other ids, (c) a second time
into (a)'s target, which must change nothing, and (d) with --table of one table after that
table drifted, and compares every result with the recorded truth. Each restore runs in a
child process under a timeout, so a hang fails its example, not the suite.

Profiles: NKD_HYPOTHESIS_PROFILE=ci (default: the same few examples every run, the module
in well under two minutes on two cores) or =deep (hundreds of new examples per dialect,
larger workloads, every distinct failure shrunk and reported). NKD_GENERATED_ALL=1 switches
on the features in KNOWN_BROKEN too. A failing example prints `case = Case(...)`, which
tests/workloads/reduce.py makes smaller.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.workloads.case import Case, literal, run_case
from tests.workloads.features import check_names, for_dialect
from tests.workloads.restoring import Pool
from tests.workloads.strategies import cases

pytestmark = pytest.mark.slow

# Features the generated tests leave out until the defect each one hits is fixed (a name
# from tests/workloads/features.py, with the FINDINGS.md section that says what fails and a
# reproduction in test_generated_findings.py). Empty: every finding so far is fixed.
KNOWN_BROKEN = check_names(set())

DISABLED = frozenset() if os.environ.get("NKD_GENERATED_ALL") else KNOWN_BROKEN


@dataclass(frozen=True)
class Profile:
    postgresql_examples: int
    sqlite_examples: int
    min_steps: int
    max_steps: int
    restore_timeout: float
    settings: settings


DEEP_DB = os.environ.get("NKD_HYPOTHESIS_DB", str(Path(tempfile.gettempdir()) / "nkd-hypothesis"))
BASE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
PROFILES = {
    # CI: the same examples every run (derandomize), the module well under two minutes
    "ci": Profile(6, 16, 3, 8, 60, settings(BASE, derandomize=True, database=None)),
    # looking for defects: new examples every run, each distinct failure shrunk and reported;
    # failures are kept outside the checkout and replayed first by the next deep run
    "deep": Profile(
        200,
        400,
        0,
        16,
        60,
        settings(BASE, report_multiple_bugs=True, database=DirectoryBasedExampleDatabase(DEEP_DB)),
    ),
}
PROFILE = PROFILES[os.environ.get("NKD_HYPOTHESIS_PROFILE", "ci")]
TIMEOUT_MARK = pytest.mark.timeout(0 if PROFILE is PROFILES["deep"] else 300)


@pytest.fixture(scope="module")
def pg_pool(pg_server: str) -> Iterator[Pool]:
    pool = Pool(pg_server)
    yield pool
    pool.close()


def _case(data: st.DataObject, dialect: str) -> Case:
    strategy = cases(dialect, DISABLED, min_steps=PROFILE.min_steps, max_steps=PROFILE.max_steps)
    case = data.draw(strategy, label="case")
    note(case.describe())
    note(f"case = {literal(case)}")
    for feature in sorted(case.schema.features()):
        event(f"feature: {feature}")
    return case


def _run(case: Case, pool: Pool | None) -> None:
    with tempfile.TemporaryDirectory(prefix="nkd-gen-") as directory:
        report = run_case(
            case,
            directory=Path(directory),
            pool=pool,
            disabled=for_dialect(DISABLED, case.schema.dialect),
            timeout=PROFILE.restore_timeout,
        )
    event(f"instants: {report.instants}")
    event(f"restores: {report.restores}")
    note(f"done: {report.done}")


@TIMEOUT_MARK
@settings(PROFILE.settings, max_examples=PROFILE.postgresql_examples)
@given(data=st.data())
def test_generated_restores_on_postgresql_match_the_truth(
    pg_pool: Pool, data: st.DataObject
) -> None:
    _run(_case(data, "postgresql"), pg_pool)


@TIMEOUT_MARK
@settings(PROFILE.settings, max_examples=PROFILE.sqlite_examples)
@given(data=st.data())
def test_generated_restores_on_sqlite_match_the_truth(data: st.DataObject) -> None:
    _run(_case(data, "sqlite"), None)
