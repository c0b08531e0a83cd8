"""The error tree. Every error names the thing, the bad value and the way out."""

from __future__ import annotations


class NkdError(Exception):
    """Base of every error nkdaemon reports to a user.

    ``hint`` says what to do about it; ``exit_code`` is what the CLI exits with.
    """

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(NkdError):
    """The configuration file is missing, malformed or names things that do not exist."""

    exit_code = 2
    kind = "config"


class UsageError(NkdError):
    """A command was called with arguments that cannot work."""

    exit_code = 2
    kind = "usage"


class SchemaError(ConfigError):
    """The source schema cannot be captured as configured (no key, uncaptured reference...)."""

    kind = "schema"


class SourceError(NkdError):
    """The source database failed in a way retrying will not fix."""

    kind = "source"


class SourceUnavailable(SourceError):
    """The source database cannot be reached right now; retrying may help."""

    kind = "source_unavailable"


# Shown by one-shot commands, which exit; the daemon retries by itself and says so in its log.
UNAVAILABLE_HINT = (
    "check that the database server runs and that [source] url is right, then run the "
    "command again (the daemon, `nkdaemon run`, keeps retrying by itself)"
)


class NotInstalledError(SourceError):
    """Capture is not installed in the source database."""

    kind = "not_installed"


class CaptureOwnerError(SourceError):
    """The source's capture feeds another repository (see nkdaemon/core/ownership.py)."""

    kind = "capture_owner"


class RepositoryError(NkdError):
    """The backup repository cannot be used."""

    kind = "repository"


class LogCorruptionError(RepositoryError):
    """A log segment holds bytes that fail their checksum somewhere other than a torn tail."""

    kind = "corruption"

    def __init__(self, segment: str, offset: int, detail: str) -> None:
        super().__init__(
            f"log segment {segment} is corrupt at byte offset {offset}: {detail}",
            hint="the records before this offset are intact; restore from a copy of the "
            "repository or take a new snapshot (`nkdaemon snapshot`) so that restores after "
            "it do not need the damaged segment",
        )
        self.segment = segment
        self.offset = offset


class LogTruncatedError(RepositoryError):
    """The log ends before the durable end the repository recorded: records made durable
    are missing (a segment cut short or lost)."""

    kind = "corruption"

    def __init__(self, segment: str, offset: int, detail: str) -> None:
        super().__init__(
            f"log segment {segment} ends at byte offset {offset}, before its durable end: {detail}",
            hint="the records before this offset are intact; restore from a copy of the "
            "repository, or pass --allow-truncated-log to restore the intact prefix only",
        )
        self.segment = segment
        self.offset = offset


class LogGapError(RepositoryError):
    """Transactions known to have been made durable are missing from the log."""

    kind = "gap"


class CaptureError(NkdError):
    """A captured change cannot be translated into a natural-key event."""

    kind = "capture"


class LockHeldError(RepositoryError):
    """Another nkdaemon process holds the repository lock."""

    kind = "locked"
