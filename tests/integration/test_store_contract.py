"""What every RepositoryStore must do, written once (core/ports.RepositoryStore).

``StoreContract`` holds the cases; each implementation subclasses it once and says how to
make an empty store: the local directory, and a fresh bucket on a real S3 server
(SeaweedFS, tests/s3.py) under a prefix. ``replace`` is the local store's alone
(``ReplacingContract``): a bucket store refuses it, nothing in a bucket is overwritten.
After the contract, what only the local directory has to show: its temporary files,
folders and modes, and a read-only folder (tests/integration/test_s3_store.py has what
only the bucket has to show).

Crashes are real: a child process is killed with SIGKILL while it writes, its stream
stalled after the store has taken a first block.
"""

from __future__ import annotations

import io
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import (
    ObjectExistsError,
    ObjectMissingError,
    RepositoryStore,
)
from nkdaemon.repository.encrypted_store import EncryptedStore
from nkdaemon.repository.envelope import EncryptionKey
from nkdaemon.repository.local_store import LocalStore
from nkdaemon.repository.s3_store import S3Store
from nkdaemon.repository.snapshots import (
    SnapshotWriter,
    confirm_unchanged,
    list_snapshots,
    prune_snapshots,
    read_table,
)
from tests.s3 import S3Server

BLOCK = 1 << 16


class _Stalling:
    """A stream that hands out one block, then tells the parent and waits to be killed."""

    def __init__(self, ready: int) -> None:
        self._ready = ready
        self._reads = 0

    def read(self, size: int = -1, /) -> bytes:
        self._reads += 1
        if self._reads == 1:
            return b"x" * BLOCK
        stall(self._ready)
        return b""


def stall(ready: int) -> None:
    os.write(ready, b"w")  # what came before is with the store now
    while True:
        signal.pause()  # until SIGKILL


def killed_while(work: Callable[[int], None]) -> None:
    """Run ``work(ready)`` in a child process; SIGKILL it once it writes to ``ready``."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(ready_r)
            work(ready_w)
        finally:
            os._exit(1)
    os.close(ready_w)
    try:
        assert select.select([ready_r], [], [], 60)[0], "the child never stalled"
        assert os.read(ready_r, 1) == b"w", "the child failed before it stalled"
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(ready_r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _rows(count: int, table: str) -> list[dict[str, Any]]:
    return [
        {"k": {"code": f"{table}{n}"}, "r": {"code": f"{table}{n}", "n": n}} for n in range(count)
    ]


class StoreContract:
    """The cases; a subclass per implementation defines ``make_store``."""

    listings = 2000  # lists raced against deletes; a bucket's round trips make it cost more

    def make_store(self, tmp_path: Path) -> RepositoryStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> RepositoryStore:
        return self.make_store(tmp_path)

    # --- reading what was written ------------------------------------------------------

    def test_an_empty_store_lists_nothing_and_has_no_object(self, store: RepositoryStore) -> None:
        assert store.list() == []
        assert store.list("a/") == []
        for read in (store.read, store.open, store.size):
            with pytest.raises(ObjectMissingError):
                read("a/b")

    def test_an_object_reads_back_as_written_whole_or_streamed(
        self, store: RepositoryStore
    ) -> None:
        data = os.urandom(3 * BLOCK + 17)
        store.write_if_absent("a/b.bin", data)
        assert store.read("a/b.bin") == data
        assert store.size("a/b.bin") == len(data)
        with store.open("a/b.bin") as handle:
            blocks = iter(lambda: handle.read(BLOCK), b"")
            assert b"".join(blocks) == data

    def test_an_object_is_written_from_a_stream_read_to_its_end(
        self, store: RepositoryStore
    ) -> None:
        class Blocks:
            def __init__(self) -> None:
                self.left = [os.urandom(BLOCK) for _ in range(5)]
                self.given: list[bytes] = []

            def read(self, size: int = -1, /) -> bytes:
                block = self.left.pop(0) if self.left else b""
                self.given.append(block)
                return block

        source = Blocks()
        store.write_if_absent("streamed", source)
        assert store.read("streamed") == b"".join(source.given)
        assert store.size("streamed") == 5 * BLOCK

    def test_an_empty_object_is_an_object(self, store: RepositoryStore) -> None:
        store.write_if_absent("empty", b"")
        assert store.list() == ["empty"]
        assert store.read("empty") == b""
        assert store.size("empty") == 0

    def test_list_is_sorted_and_filtered_by_prefix(self, store: RepositoryStore) -> None:
        names = ["b/2", "a", "b/10", "b/1/x", "ba", "c/d/e"]
        for name in names:
            store.write_if_absent(name, name.encode())
        assert store.list() == sorted(names)
        assert store.list("b/") == ["b/1/x", "b/10", "b/2"]
        assert store.list("b") == ["b/1/x", "b/10", "b/2", "ba"]
        assert store.list("b/1") == ["b/1/x", "b/10"]
        assert store.list("c/d/e") == ["c/d/e"]
        assert store.list("c/d/e/") == []
        assert store.list("z") == []

    def test_names_that_are_no_relative_keys_are_refused(self, store: RepositoryStore) -> None:
        for name in ("", "/a", "a/", "a//b", "../a", "a/../b", "./a", ".hidden", "a/.tmp"):
            with pytest.raises(ValueError):
                store.write_if_absent(name, b"x")
        assert store.list() == []

    # --- immutable objects -------------------------------------------------------------

    def test_write_if_absent_refuses_an_existing_name_and_leaves_it_intact(
        self, store: RepositoryStore
    ) -> None:
        store.write_if_absent("log/1", b"first")
        with pytest.raises(ObjectExistsError):
            store.write_if_absent("log/1", b"second, longer than the first")
        with pytest.raises(FileExistsError):  # what callers that know no stores catch
            store.write_if_absent("log/1", io.BytesIO(b"third, streamed"))
        assert store.read("log/1") == b"first"
        assert store.list() == ["log/1"]

    def test_of_writers_racing_for_one_name_exactly_one_wins(self, store: RepositoryStore) -> None:
        writers = 8
        start = threading.Barrier(writers)
        won: list[bytes] = []
        lost: list[BaseException] = []

        def write(n: int) -> None:
            data = f"writer {n} ".encode() * 1000
            start.wait()
            try:
                store.write_if_absent("contended", data)
                won.append(data)
            except ObjectExistsError as exc:
                lost.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and len(lost) == writers - 1
        assert store.read("contended") == won[0]

    def test_a_stream_that_fails_stores_nothing(self, store: RepositoryStore) -> None:
        class Failing:
            def __init__(self) -> None:
                self.reads = 0

            def read(self, size: int = -1, /) -> bytes:
                self.reads += 1
                if self.reads > 2:
                    raise RuntimeError("the source broke")
                return b"y" * BLOCK

        with pytest.raises(RuntimeError, match="the source broke"):
            store.write_if_absent("broken", Failing())
        assert store.list() == []
        store.write_if_absent("broken", b"now whole")
        assert store.read("broken") == b"now whole"

    def test_a_writer_killed_mid_write_leaves_no_object_and_the_name_free(
        self, store: RepositoryStore
    ) -> None:
        store.write_if_absent("kept", b"before")
        killed_while(lambda ready: store.write_if_absent("torn/object", _Stalling(ready)))
        assert store.list() == ["kept"]
        with pytest.raises(ObjectMissingError):
            store.read("torn/object")
        store.write_if_absent("torn/object", b"whole")
        assert store.list() == ["kept", "torn/object"]
        assert store.read("torn/object") == b"whole"

    # --- deletion ----------------------------------------------------------------------

    def test_delete_removes_one_object_and_a_missing_one_is_no_error(
        self, store: RepositoryStore
    ) -> None:
        for name in ("s/1/manifest.json", "s/1/tables/1", "s/2/manifest.json"):
            store.write_if_absent(name, b"x")
        store.delete("s/1/tables/1")
        store.delete("s/1/tables/1")
        store.delete("never/there")
        assert store.list() == ["s/1/manifest.json", "s/2/manifest.json"]
        store.delete("s/1/manifest.json")
        assert store.list("s/1") == []
        store.write_if_absent("s/1/tables/1", b"a name deleted is free again")
        assert store.read("s/1/tables/1") == b"a name deleted is free again"

    def test_listing_while_objects_are_deleted_never_fails(self, store: RepositoryStore) -> None:
        """A snapshot pruned while another process lists the store (a folder of a local
        store vanishes mid-walk)."""
        done = threading.Event()
        failures: list[BaseException] = []

        def churn() -> None:
            n = 0
            while not done.is_set():
                name = f"s/{n % 4}/tables/{n}"
                store.write_if_absent(name, b"t")
                store.delete(name)
                n += 1

        writer = threading.Thread(target=churn)
        writer.start()
        try:
            for _ in range(self.listings):
                try:
                    store.list("s/")
                except OSError as exc:
                    failures.append(exc)
        finally:
            done.set()
            writer.join()
        assert failures == []

    def test_describe_names_the_store_and_an_object(self, store: RepositoryStore) -> None:
        assert store.describe()
        assert store.describe("a/b").endswith("a/b")

    # --- snapshots, written through the store ------------------------------------------

    def test_snapshots_are_written_listed_read_and_pruned_through_the_store(
        self, store: RepositoryStore
    ) -> None:
        rows = _rows(2_000, "t")
        for second in (1, 2, 3):
            writer = SnapshotWriter(
                store, time=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC), position=second
            )
            assert writer.write_table(1, "t", iter(rows)) == len(rows)
            writer.commit(installation="i", log_lsn=0, dialect="sqlite", definitions=[])
        first, *_ = snapshots = list_snapshots(store)
        assert [s.position for s in snapshots] == [1, 2, 3]
        table = first.table("t")
        assert table is not None
        assert list(read_table(first, table)) == rows
        assert prune_snapshots(store, keep=1) == [s.id for s in snapshots[:2]]
        assert [s.position for s in list_snapshots(store)] == [3]
        assert all(name.startswith(f"{snapshots[-1].folder}/") for name in store.list())

    def test_a_snapshot_killed_while_written_is_not_listed_and_can_be_written_again(
        self, store: RepositoryStore
    ) -> None:
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        rows = _rows(500, "u")

        def stalled_rows(ready: int) -> Iterator[dict[str, Any]]:
            yield from rows[:250]
            stall(ready)
            yield from rows[250:]

        def write(ready: int) -> None:
            writer = SnapshotWriter(store, time=moment, position=9)
            writer.write_table(1, "whole", iter(rows))
            writer.write_table(2, "torn", stalled_rows(ready))

        killed_while(write)
        assert list_snapshots(store) == []
        assert store.list(), "the first table was written: the manifest is what is missing"
        writer = SnapshotWriter(store, time=moment, position=9)
        writer.write_table(1, "whole", iter(rows))
        writer.commit(installation="i", log_lsn=0, dialect="sqlite", definitions=[])
        (snapshot,) = list_snapshots(store)
        assert [t.name for t in snapshot.tables] == ["whole"]
        assert len(store.list()) == 2, "nothing of the killed attempt is left"

    def test_an_aborted_snapshot_leaves_nothing(self, store: RepositoryStore) -> None:
        writer = SnapshotWriter(store, time=datetime(2026, 1, 1, tzinfo=UTC), position=1)
        writer.write_table(1, "t", iter(_rows(10, "t")))
        writer.abort()
        assert store.list() == []
        assert list_snapshots(store) == []


class ReplacingContract(StoreContract):
    """What a store whose small records change (a local repository: log/end.json, a
    snapshot's checked.json) does with ``replace``; a bucket store refuses it instead."""

    def test_replace_writes_a_new_object(self, store: RepositoryStore) -> None:
        store.replace("end.json", b"one")
        assert store.read("end.json") == b"one"
        store.replace("end.json", b"two, longer")
        assert store.read("end.json") == b"two, longer"
        store.replace("end.json", b"3")
        assert store.read("end.json") == b"3"
        assert store.list() == ["end.json"]

    def test_a_reader_sees_a_replaced_object_whole_old_or_whole_new(
        self, store: RepositoryStore
    ) -> None:
        versions = [b"a" * (4 * BLOCK), b"b" * BLOCK]
        store.replace("pointer", versions[0])
        seen: set[bytes] = set()
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                seen.add(store.read("pointer"))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for n in range(40):
                store.replace("pointer", versions[n % 2])
        finally:
            done.set()
            reader.join()
        assert seen <= set(versions)

    def test_a_snapshot_found_still_current_records_it_beside_the_snapshot(
        self, store: RepositoryStore
    ) -> None:
        writer = SnapshotWriter(store, time=datetime(2026, 1, 1, tzinfo=UTC), position=1)
        writer.write_table(1, "t", iter(_rows(10, "t")))
        writer.commit(installation="i", log_lsn=0, dialect="sqlite", definitions=[])
        confirm_unchanged(list_snapshots(store)[-1], datetime(2026, 1, 2, tzinfo=UTC))
        assert list_snapshots(store)[-1].current_as_of.startswith("2026-01-02")


class TestLocalStore(ReplacingContract):
    def make_store(self, tmp_path: Path) -> RepositoryStore:
        return LocalStore(tmp_path / "store")


class TestS3Store(StoreContract):
    """A new bucket per test, the store under a prefix; credentials through the standard
    AWS chain (the environment), as the daemon finds them."""

    server: S3Server
    listings = 200  # a listing is the server's, not a walk of folders that may vanish

    @pytest.fixture(autouse=True)
    def _s3(self, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = s3_server
        for variable, value in s3_server.environment().items():
            monkeypatch.setenv(variable, value)

    def make_store(self, tmp_path: Path) -> RepositoryStore:
        return S3Store(
            self.server.new_bucket(),
            "backups/edms",
            endpoint_url=self.server.endpoint,
            region=self.server.region,
            path_style=True,
        )

    def test_replace_is_refused_and_the_object_stays(self, store: RepositoryStore) -> None:
        """Nothing in a bucket is overwritten (issue 13), whatever writes through the port."""
        store.write_if_absent("log/end.json", b"one")
        with pytest.raises(RepositoryError, match="never replaced"):
            store.replace("log/end.json", b"two")
        with pytest.raises(RepositoryError, match="never replaced"):
            store.replace("new.json", b"two")
        assert store.list() == ["log/end.json"] and store.read("log/end.json") == b"one"


# --- what only the local directory has to show ---------------------------------------------


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_a_local_temporary_file_left_by_a_crash_is_never_listed_nor_in_the_way(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    store.write_if_absent("log/end.json", b"old")
    (tmp_path / "log" / ".end.json.0123456789ab.tmp").write_bytes(b"half of a new")
    (tmp_path / "log" / ".0000000000000002.nkdlog.ba9876543210.tmp").write_bytes(b"half")
    assert store.list() == ["log/end.json"]
    store.replace("log/end.json", b"new")
    store.write_if_absent("log/0000000000000002.nkdlog", b"whole")
    assert store.list() == ["log/0000000000000002.nkdlog", "log/end.json"]
    assert store.read("log/end.json") == b"new"


def test_a_local_write_leaves_no_temporary_file_whether_it_succeeds_or_fails(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    store.write_if_absent("a/b", b"x")
    store.replace("a/c", b"y")
    with pytest.raises(ObjectExistsError):
        store.write_if_absent("a/b", b"z")
    assert _files(tmp_path) == ["a", "a/b", "a/c"]


def test_local_objects_are_made_with_the_usual_file_mode(tmp_path: Path) -> None:
    """0666 less the umask, like any file the process makes: not a temporary file's 0600,
    which would lock other users out of a repository they read today."""
    store = LocalStore(tmp_path)
    store.write_if_absent("a", b"x")
    store.replace("b", b"y")
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    for name in ("a", "b"):
        assert (tmp_path / name).stat().st_mode == reference.stat().st_mode


def test_local_folders_are_made_as_needed_and_removed_with_their_last_object(
    tmp_path: Path,
) -> None:
    root = tmp_path / "snapshots"
    store = LocalStore(root)
    store.write_if_absent("s1/tables/1.jsonl.zst", b"t")
    store.write_if_absent("s1/manifest.json", b"m")
    store.delete("s1/tables/1.jsonl.zst")
    assert _files(root) == ["s1", "s1/manifest.json"]
    store.delete("s1/manifest.json")
    assert _files(root) == []
    assert root.is_dir(), "the store's own folder stays"


def test_reading_a_local_store_creates_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "absent")
    assert store.list() == []
    assert store.list("x/") == []
    with pytest.raises(ObjectMissingError):
        store.read("x")
    assert not (tmp_path / "absent").exists()


def test_a_read_only_local_store_is_read_and_refuses_writes_with_the_os_error(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    store.write_if_absent("a/b", b"kept")
    if os.geteuid() == 0:
        pytest.skip(
            "root writes read-only folders (tests/e2e/test_readonly_repository.py drops that)"
        )
    for folder in (tmp_path / "store", tmp_path / "store" / "a"):
        folder.chmod(0o555)
    try:
        assert store.list() == ["a/b"]
        assert store.read("a/b") == b"kept"
        with pytest.raises(PermissionError):
            store.write_if_absent("a/c", b"x")
        with pytest.raises(PermissionError):
            store.replace("a/b", b"x")
        assert _files(tmp_path / "store") == ["a", "a/b"]
    finally:
        for folder in (tmp_path / "store", tmp_path / "store" / "a"):
            folder.chmod(0o755)


# --- the contract again, through encryption (repository/encrypted_store.py) -----------------

CONTRACT_KEY = EncryptionKey.from_secret(bytes(range(32)))


class TestEncryptedLocalStore(ReplacingContract):
    """Every object sealed on its way into a local directory (tests/integration/
    test_encrypted_store.py shows that nothing readable reaches the medium)."""

    def make_store(self, tmp_path: Path) -> RepositoryStore:
        return EncryptedStore(LocalStore(tmp_path / "store"), CONTRACT_KEY)


class TestEncryptedS3Store(TestS3Store):
    """Every object sealed on its way into a bucket on SeaweedFS."""

    def make_store(self, tmp_path: Path) -> RepositoryStore:
        return EncryptedStore(super().make_store(tmp_path), CONTRACT_KEY)
