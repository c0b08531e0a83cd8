"""The repository directory: where each part lives, and its format marker."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nkdaemon.core.errors import RepositoryError

REPOSITORY_FORMAT = 1
MARKER = "nkdaemon-repository.json"


@dataclass(frozen=True)
class RepositoryLayout:
    root: Path

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
        return self.marker_path.exists()

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
        tmp = self.marker_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"format": REPOSITORY_FORMAT, "created": datetime.now(UTC).isoformat()}, indent=2
            )
        )
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.rename(self.marker_path)

    def require(self) -> None:
        if not self.exists():
            raise RepositoryError(
                f"{self.root} is not an nkdaemon repository",
                hint="run `nkdaemon install` to create it, or fix [repository] path",
            )
        self.check_format()

    def check_format(self) -> None:
        data = json.loads(self.marker_path.read_text())
        if int(data.get("format", 0)) > REPOSITORY_FORMAT:
            raise RepositoryError(
                f"{self.root} has repository format {data['format']}; this release reads up "
                f"to {REPOSITORY_FORMAT}",
                hint="upgrade nkdaemon",
            )
