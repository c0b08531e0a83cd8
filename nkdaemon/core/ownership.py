"""Which repository a source's capture feeds.

One source feeds one repository: two drains on one queue would each take some of the
changes and split the stream between two logs. The capture schema records its owner (an
installation id, and the repository's path as configured); `install` refuses a source that
another repository owns unless told to take it over, and a take-over draws a new
installation id, which the old repository's drain finds and stops on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nkdaemon.core.errors import CaptureOwnerError

TAKE_OVER = "`nkdaemon install --take-over`"


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptureOwner:
    """The repository a source's capture feeds, as the capture schema records it.

    ``repository`` is the repository's path (or URL) as its configuration gives it, never
    with a password; it, ``host`` and ``since`` are None for an installation made by a
    release that did not record them."""

    installation: str
    repository: str | None
    host: str | None
    since: datetime | None

    def describe(self) -> str:
        if self.repository is None:
            return f"installation {self.installation} (made by an older release; path unknown)"
        details = [f"host {self.host}"] if self.host else []
        if self.since is not None:
            details.append(f"since {self.since.isoformat(timespec='seconds')}")
        return self.repository + (f" ({', '.join(details)})" if details else "")


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptureClaim:
    """What `install` records in the source: this repository owns its capture.

    ``seen`` is the installation id the source had when install decided (None: none); the
    source refuses the claim if another install changed it since. ``new`` draws a new
    installation id (a first install, or a take-over), which ends the previous owner's
    draining."""

    repository: str
    host: str
    seen: str | None
    new: bool


def owned_elsewhere(owner: CaptureOwner) -> CaptureOwnerError:
    """`install` on a source whose capture feeds another repository."""
    return CaptureOwnerError(
        f"the source is captured by another repository: {owner.describe()}; two repositories "
        "on one source would each log part of its changes",
        hint=f"use that repository, or run {TAKE_OVER} to move capture here (that repository "
        "then receives no more changes, and history here starts from a new baseline)",
    )


def not_ours(owner: CaptureOwner, ours: str | None) -> CaptureOwnerError:
    """A drain (or status) for a repository whose installation the source no longer feeds."""
    if ours is None:
        return owned_elsewhere(owner)
    return CaptureOwnerError(
        f"capture in the source was taken over by another repository: {owner.describe()}; "
        "this repository receives no more changes (its log ends at its last drained "
        "transaction)",
        hint=f"stop this daemon, or run {TAKE_OVER} here to move capture back (history here "
        "then restarts from a new baseline)",
    )


def changed_during_install(owner: CaptureOwner | None) -> CaptureOwnerError:
    now = "nobody" if owner is None else owner.describe()
    return CaptureOwnerError(
        f"capture in the source changed owner while this install ran (now: {now})",
        hint="run `nkdaemon install` again",
    )
