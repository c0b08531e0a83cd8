"""The repository store on an S3-compatible bucket: the RepositoryStore port (core/ports.py).

An object is the key ``PREFIX/NAME``. Every write carries a SHA-256 that the server checks
against the bytes it received and echoes back; the echo must match what was sent, so no
write is done without a checksum-confirmed answer.

Nothing is ever overwritten: ``replace`` is refused, and ``write_if_absent`` is one
PutObject with ``If-None-Match: *``: the server refuses it with
412 when the key exists, so of two writers exactly one wins, with no lock. A stream is
read into memory up to one part; a longer one is spooled to a temporary file (hashed on
the way) and still sent in one conditional put, up to S3's limit for one put (5 GiB).
Only beyond that is it a multipart upload, and that guard is weaker: completion carries
``If-None-Match: *`` too, and servers honour it one writer after another, but SeaweedFS
4.x does not make it atomic (two completions racing for one key can both succeed; seen in
about one race of fifteen), so a store checks the key just before completing as well,
which narrows that window without closing it. A failed upload is aborted; a writer
killed mid-upload leaves an unfinished upload (never an object) for
``abort_stale_uploads`` or the bucket's lifecycle rule. A read asks for the object's
checksum, which botocore checks for an object written in one put; a multipart object's
checksum of checksums it does not check, so those bytes are checked by their format (a
snapshot file's SHA-256, a segment's CRCs: docs/FORMAT.md).

Errors are translated in ``repository.s3_errors``. Throttling (503 SlowDown), 5xx
answers and dropped connections are first retried by botocore's "standard" mode, with
backoff and jitter. boto3 clients are thread-safe, not fork-safe: a forked child makes its
own.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import os
import secrets
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from typing import IO, Any, BinaryIO

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from nkdaemon.core.ports import ObjectExistsError, ReadableBytes, RepositoryStore
from nkdaemon.repository.s3_errors import (
    TAKEN,
    S3Location,
    S3StoreError,
    S3Unavailable,
    error_code,
    translated,
)

__all__ = ["S3Store", "S3StoreError", "S3Unavailable"]

_Names = list[str]  # in the class, ``list`` is the method
_Parts = list[dict[str, Any]]  # CompleteMultipartUpload's parts: number, ETag, SHA-256
DEFAULT_ATTEMPTS = 6
PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3's smallest part (the last one excepted)
SINGLE_PUT_LIMIT = 5 << 30  # S3's largest object written by one PutObject
_BLOCK = 1 << 20


class S3Store:
    """Objects as keys ``prefix/name`` in ``bucket`` (see the module docstring).

    ``endpoint_url`` selects an S3-compatible server (None: AWS); ``path_style`` sends the
    bucket in the path rather than the host name, which most non-AWS servers need.
    Credentials come from the standard AWS chain. ``client`` replaces the boto3 client
    the store would make (a caller with its own session). ``spool_dir`` holds streams
    being uploaded (None: the system's temporary folder)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        client: Any = None,
        max_attempts: int | None = None,
        part_size: int = PART_SIZE,
        single_put_limit: int = SINGLE_PUT_LIMIT,
        spool_dir: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        self.location = S3Location(
            bucket=bucket, prefix=prefix.strip("/"), endpoint_url=endpoint_url
        )
        self.part_size = part_size
        self.single_put_limit = single_put_limit
        self.spool_dir = spool_dir
        self._config = Config(
            region_name=region,
            retries={"mode": "standard", "total_max_attempts": max_attempts or _attempts()},
            s3={"addressing_style": "path" if path_style else "auto"},
            connect_timeout=10,
            read_timeout=60,
        )
        self._given = client
        self._made: tuple[int, Any] | None = None
        self._bucket_checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.describe()!r})"

    @property
    def bucket(self) -> str:
        return self.location.bucket

    def key(self, name: str) -> str:
        """The key of object ``name`` (which is checked: see RepositoryStore)."""
        if not _is_name(name):
            raise ValueError(f"{name!r} is not a repository object name")
        return self.location.root + name

    def describe(self, name: str = "") -> str:
        return self.location.describe(name)

    # --- reading ---------------------------------------------------------------------

    def list(self, prefix: str = "") -> _Names:
        root = self.location.root
        paginator = self._client().get_paginator("list_objects_v2")
        names: _Names = []
        with translated(self.location, "list", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                names.extend(item["Key"][len(root) :] for item in page.get("Contents", ()))
        return sorted(n for n in names if _is_name(n))

    def size(self, name: str) -> int:
        with translated(self.location, "size", name):
            answer = self._client().head_object(Bucket=self.bucket, Key=self.key(name))
        return int(answer["ContentLength"])

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def open(self, name: str) -> IO[bytes]:
        with translated(self.location, "read", name):
            answer = self._client().get_object(
                Bucket=self.bucket, Key=self.key(name), ChecksumMode="ENABLED"
            )
        return io.BufferedReader(_Body(answer["Body"], self.location, name), _BLOCK)

    # --- writing ---------------------------------------------------------------------

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        key = self.key(name)
        first = data if isinstance(data, bytes) else _read_part(data, self.part_size)
        if isinstance(data, bytes) or len(first) < self.part_size:
            self._put(name, key, first, IfNoneMatch="*")
            return
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            size, checksum = _spool(first, data, spool)
            spool.seek(0)
            if size > self.single_put_limit:
                self._multipart(name, key, spool)
                return
            sent = {"Body": spool, "ContentLength": size, "ChecksumSHA256": checksum}
            self._claim(name, key, checksum, "put_object", IfNoneMatch="*", **sent)

    def replace(self, name: str, data: bytes) -> None:
        """Refused: nothing in a bucket is ever overwritten (a bucket under object lock,
        or a policy against overwrites, would refuse it too). A record that changes is a
        new object each time (the durable end: log_end.end_marker)."""
        raise S3StoreError(
            f"{self.describe(name)}: objects in a bucket are written once, never replaced",
            hint="this is a bug in nkdaemon: a record that changes must be written as a "
            "new object (write_if_absent); please report it",
        )

    def delete(self, name: str) -> None:
        # S3 answers a delete of a missing key with success: the port's rule as it is
        with translated(self.location, "delete", name):
            self._client().delete_object(Bucket=self.bucket, Key=self.key(name))

    def _put(self, name: str, key: str, data: bytes, **conditions: str) -> None:
        checksum = _sha256(data)
        sent = {"Body": data, "ChecksumSHA256": checksum, **conditions}
        self._claim(name, key, checksum, "put_object", **sent)

    def _claim(self, name: str, key: str, checksum: str, operation: str, **sent: Any) -> None:
        """Make a write (a put, or an upload's completion) and check the SHA-256 the
        server confirms. When botocore retried it, a refusal (412, or the upload gone)
        may answer our own first attempt, which succeeded but whose answer was lost on
        the way back: the object is ours, and the write done, if it has our SHA-256."""
        with translated(self.location, "write", name):
            try:
                answer = getattr(self._client(), operation)(Bucket=self.bucket, Key=key, **sent)
            except ClientError as exc:
                retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                gone = TAKEN | {"NoSuchUpload"}
                if retried and error_code(exc) in gone and self._holds(key, checksum):
                    return
                raise
        self._confirm(name, checksum, answer)

    def _holds(self, key: str, checksum: str | None = None) -> bool:
        """Whether ``key`` exists (with that SHA-256, when one is given)."""
        try:
            head = self._client().head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:  # gone, or unreadable: not known to be there
            if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return checksum is None or head.get("ChecksumSHA256") == checksum

    def _multipart(self, name: str, key: str, spool: BinaryIO) -> None:
        with translated(self.location, "write", name):
            upload = self._client().create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
            )["UploadId"]
        try:
            parts = self._upload_parts(name, key, upload, spool)
            digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)
            checksum = f"{_sha256(digests)}-{len(parts)}"  # S3's checksum of checksums
            with translated(self.location, "write", name):
                taken = self._holds(key)  # the weaker guard: see the module docstring
            if taken:
                raise ObjectExistsError(errno.EEXIST, f"object {name} exists", self.describe(name))
            sent = {"UploadId": upload, "MultipartUpload": {"Parts": parts}, "IfNoneMatch": "*"}
            self._claim(name, key, checksum, "complete_multipart_upload", **sent)
        except BaseException:
            self._abort(key, upload)
            raise

    def _upload_parts(self, name: str, key: str, upload: str, spool: BinaryIO) -> _Parts:
        parts: _Parts = []
        while block := _read_part(spool, self.part_size):
            checksum, number = _sha256(block), len(parts) + 1
            with translated(self.location, "write", name):
                answer = self._client().upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=block,
                    ChecksumSHA256=checksum,
                )
            self._confirm(name, checksum, answer)
            parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
        return parts

    def _abort(self, key: str, upload: str) -> None:
        """Abort an upload that will not complete; a failure to abort leaves it to
        ``abort_stale_uploads`` rather than hide the error that brought us here."""
        with contextlib.suppress(BotoCoreError, ClientError):
            self._client().abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)

    def _confirm(self, name: str, sent: str, answer: dict[str, Any]) -> None:
        echoed = answer.get("ChecksumSHA256")
        if echoed != sent:
            raise S3StoreError(
                f"{self.describe(name)}: the S3 server confirmed SHA-256 {echoed!r} for a "
                f"write sent with {sent!r}",
                hint="the server does not check x-amz-checksum-sha256 (or the bytes changed "
                "on the way); use an S3 server that supports checksums",
            )

    # --- checks and housekeeping, beyond the port ---------------------------------------

    def check_conditional_writes(self) -> None:
        """Prove that the server refuses to overwrite on ``If-None-Match: *``, which
        ``write_if_absent`` relies on: write a probe (a dot name, the store's own) twice.
        A server that ignores the header raises S3StoreError here, before two writers
        can both win."""
        probe = f".nkd-probe-{secrets.token_hex(8)}"
        key = self.location.root + probe
        try:
            self._put(probe, key, b"1", IfNoneMatch="*")
            try:
                self._put(probe, key, b"2", IfNoneMatch="*")
            except ObjectExistsError:
                return
            raise S3StoreError(
                f"the S3 server at {self.location.endpoint} replaced an object written "
                f"with If-None-Match: * ({self.describe(probe)})",
                hint="nkdaemon needs conditional writes to keep objects immutable; use a "
                "server that supports them (AWS S3, MinIO, SeaweedFS, Cloudflare R2...)",
            )
        finally:
            with translated(self.location, "delete", probe):
                self._client().delete_object(Bucket=self.bucket, Key=key)

    def abort_stale_uploads(self, older_than: timedelta = timedelta(days=1)) -> _Names:
        """Abort the multipart uploads under the prefix begun over ``older_than`` ago,
        left by writers killed mid-upload (never objects, but stored and billed); younger
        ones may still run. Returns their names. A lifecycle rule does the same."""
        client, root = self._client(), self.location.root
        cutoff = datetime.now(UTC) - older_than
        aborted: _Names = []
        with translated(self.location, "clean up", ""):
            pages = client.get_paginator("list_multipart_uploads")
            for page in pages.paginate(Bucket=self.bucket, Prefix=root):
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"] < cutoff:
                        ids = {"Key": upload["Key"], "UploadId": upload["UploadId"]}
                        client.abort_multipart_upload(Bucket=self.bucket, **ids)
                        aborted.append(upload["Key"][len(root) :])
        return sorted(aborted)

    # --- the client ------------------------------------------------------------------

    def _client(self) -> Any:
        if self._given is not None:
            client = self._given
        else:
            made = self._made
            if made is None or made[0] != os.getpid():  # a forked child makes its own
                with self._lock:
                    made = self._made = (os.getpid(), self._new_client())
            client = made[1]
        if not self._bucket_checked:
            self._check_bucket(client)
        return client

    def _new_client(self) -> Any:
        with translated(self.location, "connect", ""):
            return boto3.session.Session().client(
                "s3", endpoint_url=self.location.endpoint_url, config=self._config
            )

    def _check_bucket(self, client: Any) -> None:
        """Once per store: some servers create a missing bucket on a first put, which
        would hide a misspelt bucket name behind a new, empty repository. A listing of
        the prefix asks only for what ``list`` needs anyway (HeadBucket would need the
        right to list the whole bucket, which a policy scoped to the prefix refuses)."""
        with translated(self.location, "open", ""):
            client.list_objects_v2(Bucket=self.bucket, Prefix=self.location.root, MaxKeys=1)
        self._bucket_checked = True


class _Body(io.RawIOBase):
    """A GetObject body read in blocks, its driver errors translated like every other."""

    def __init__(self, body: Any, location: S3Location, name: str) -> None:
        self._body, self._location, self._name = body, location, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with translated(self._location, "read", self._name):
            chunk = self._body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _read_part(stream: ReadableBytes, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``; fewer only at its end."""
    blocks: list[bytes] = []
    left = size
    while left > 0 and (block := stream.read(left)):
        blocks.append(block)
        left -= len(block)
    return b"".join(blocks)


def _spool(first: bytes, stream: ReadableBytes, spool: BinaryIO) -> tuple[int, str]:
    """Write ``first`` and the rest of ``stream`` to ``spool``: (size, SHA-256)."""
    digest = hashlib.sha256(first)
    spool.write(first)
    size = len(first)
    while block := stream.read(_BLOCK):
        digest.update(block)
        spool.write(block)
        size += len(block)
    return size, base64.b64encode(digest.digest()).decode("ascii")


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _is_name(name: str) -> bool:
    """Whether ``name`` is an object name (see RepositoryStore). Keys under the prefix
    that are not (dot names, a folder marker some tools make) are not listed."""
    return all(p and p not in (".", "..") and not p.startswith(".") for p in name.split("/"))


_: type[RepositoryStore] = S3Store  # S3Store implements the port (checked by mypy)


def _attempts() -> int:
    """Attempts per request: AWS_MAX_ATTEMPTS where set (the standard AWS setting), else 6."""
    raw = os.environ.get("AWS_MAX_ATTEMPTS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_ATTEMPTS
