"""The repository store on a local directory: the RepositoryStore port (core/ports.py).

An object is a file under the root, its name the relative path. A write goes to a
temporary file in the same folder (a name starting with a dot, which listings skip), is
fsynced, then given its name in one step, and the folder is fsynced so that the name
itself survives a crash. Folders are made for an object's name as needed and removed when
their last object is deleted: the store looks like object storage, which has no folders.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nkdaemon.core.ports import (
    ObjectExistsError,
    ObjectMissingError,
    ReadableBytes,
    RepositoryStore,
)
from nkdaemon.repository.files import fsync_dir

__all__ = ["LocalStore", "as_store"]

# A filesystem without hard links (FAT, some network shares) answers os.link with these.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
_COPY_BLOCK = 1 << 20


class LocalStore:
    """Objects as files under ``root`` (see the module docstring). Reading creates
    nothing, not even ``root``: a store on a read-only mount is read."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, name: str) -> Path:
        """The file that holds object ``name`` (which is checked: see RepositoryStore)."""
        parts = name.split("/")
        if any(not p or p in (".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"{name!r} is not a repository object name")
        return self.root.joinpath(*parts)

    # --- reading ---------------------------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        folder = prefix.rpartition("/")[0]
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return []
        found: list[str] = []
        for directory, folders, files in os.walk(start, onerror=_unless_gone):
            relative = Path(directory).relative_to(self.root).as_posix()
            base = "" if relative == "." else f"{relative}/"
            # descend only where names starting with the prefix can be
            folders[:] = [
                f for f in folders if not f.startswith(".") and _may_hold(f"{base}{f}/", prefix)
            ]
            found.extend(
                f"{base}{f}"
                for f in files
                if not f.startswith(".") and f"{base}{f}".startswith(prefix)
            )
        return sorted(found)

    def size(self, name: str) -> int:
        with _missing_as(name):
            return self.path(name).stat().st_size

    def read(self, name: str) -> bytes:
        with _missing_as(name):
            return self.path(name).read_bytes()

    def open(self, name: str) -> IO[bytes]:
        with _missing_as(name):
            return self.path(name).open("rb")

    def describe(self, name: str = "") -> str:
        return str(self.path(name) if name else self.root)

    # --- writing ---------------------------------------------------------------------

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        target = self.path(name)
        self._make_folders(target.parent)
        temporary = self._write_temporary(target, data)
        try:
            _link(temporary, target, name)
        finally:
            temporary.unlink(missing_ok=True)
        fsync_dir(target.parent)

    def replace(self, name: str, data: bytes) -> None:
        target = self.path(name)
        self._make_folders(target.parent)
        temporary = self._write_temporary(target, data)
        try:
            temporary.replace(target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)

    def delete(self, name: str) -> None:
        target = self.path(name)
        try:
            target.unlink()
        except FileNotFoundError:
            return
        folder = target.parent
        fsync_dir(folder)
        while folder != self.root and _remove_if_empty(folder):
            folder = folder.parent
            fsync_dir(folder)

    def _make_folders(self, folder: Path) -> None:
        """Make ``folder`` and those above it, each one's entry made durable in its parent
        (the root's own parents are made, not fsynced: they are the operator's)."""
        if folder.is_dir():
            return
        if folder == self.root:
            folder.mkdir(parents=True, exist_ok=True)
            return
        self._make_folders(folder.parent)
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            folder.mkdir()
        fsync_dir(folder.parent)

    @staticmethod
    def _write_temporary(target: Path, data: bytes | ReadableBytes) -> Path:
        """``data`` in a new, fsynced file beside ``target``, with a name listings skip.
        Created like any file (mode 0666 less the umask), never with a temp file's 0600."""
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                else:
                    shutil.copyfileobj(data, handle, _COPY_BLOCK)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return temporary


def as_store(where: str | os.PathLike[str] | RepositoryStore) -> RepositoryStore:
    """A store for ``where``: a path is a local directory; a store is itself."""
    if isinstance(where, str | os.PathLike):
        return LocalStore(Path(where))
    return where


def _link(temporary: Path, target: Path, name: str) -> None:
    """Give ``temporary`` the name ``target`` unless it is taken: a hard link fails
    rather than replace, in one step. Without hard links, a check and a rename: the
    repository lock keeps a second writer out, so nothing comes between the two."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise ObjectExistsError(errno.EEXIST, f"object {name} exists", str(target)) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if target.exists():
            raise ObjectExistsError(errno.EEXIST, f"object {name} exists", str(target)) from None
        temporary.rename(target)


def _remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:  # not empty (another object, or a write in progress), or gone
        return False
    return True


def _may_hold(folder: str, prefix: str) -> bool:
    """Whether names under ``folder`` (ending in "/") can start with ``prefix``."""
    return folder.startswith(prefix) or prefix.startswith(folder)


def _unless_gone(error: OSError) -> None:
    """Listing fails where a folder cannot be read; one removed while it was listed (a
    snapshot being pruned) only held objects that are gone."""
    if not isinstance(error, FileNotFoundError):
        raise error


@contextlib.contextmanager
def _missing_as(name: str) -> Iterator[None]:
    """Turns a missing file into ObjectMissingError naming the object."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ObjectMissingError(errno.ENOENT, f"object {name} is missing", exc.filename) from None


_: type[RepositoryStore] = LocalStore  # LocalStore implements the port (checked by mypy)
