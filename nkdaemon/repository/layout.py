"""The repository directory: where each part lives, and its format marker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ObjectExistsError, RepositoryStore
from nkdaemon.repository.local_store import LocalStore

REPOSITORY_FORMAT = 1
MARKER = "nkdaemon-repository.json"


@dataclass(frozen=True)
class RepositoryLayout:
    root: Path

    @property
    def store(self) -> RepositoryStore:
        """The repository's files as a store (the format marker is read and written here)."""
        return LocalStore(self.root)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def state_path(self) -> Path:
        return self.root / "state.db"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def lock_path(self) -> Path:
        return self.root / "nkdaemon.lock"

    @property
    def marker_path(self) -> Path:
        return self.root / MARKER

    def exists(self) -> bool:
        return MARKER in self.store.list(MARKER)

    def ensure(self) -> None:
        """Create the repository if it does not exist; refuse a folder that is something else."""
        if self.exists():
            self.check_format()
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise RepositoryError(
                f"{self.root} is not empty and is not an nkdaemon repository",
                hint="point [repository] path at an empty or new folder",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.snapshots_dir.mkdir(exist_ok=True)
        marker = {"format": REPOSITORY_FORMAT, "created": datetime.now(UTC).isoformat()}
        try:  # written last: a folder without it is no repository yet
            self.store.write_if_absent(MARKER, json.dumps(marker, indent=2).encode())
        except ObjectExistsError:  # another install made it meanwhile: it stands
            self.check_format()

    def require(self) -> None:
        if not self.exists():
            raise RepositoryError(
                f"{self.root} is not an nkdaemon repository",
                hint="run `nkdaemon install` to create it, or fix [repository] path",
            )
        self.check_format()

    def check_format(self) -> None:
        data = json.loads(self.store.read(MARKER))
        if int(data.get("format", 0)) > REPOSITORY_FORMAT:
            raise RepositoryError(
                f"{self.root} has repository format {data['format']}; this release reads up "
                f"to {REPOSITORY_FORMAT}",
                hint="upgrade nkdaemon",
            )
