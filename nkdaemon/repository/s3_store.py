"""The repository store on an S3-compatible bucket: the RepositoryStore port (core/ports.py).

An object is the key ``PREFIX/NAME``. Every write carries a SHA-256 that the server checks
against the bytes it received and echoes back; the echo must match what was sent, so no
write is done without a checksum-confirmed answer. ``write_if_absent`` is a put with
``If-None-Match: *`` (412 when the key exists: of two writers exactly one wins, no lock);
a stream longer than one part is a multipart upload whose completion carries it too, and
an upload that fails is aborted. Only a writer killed outright leaves an unfinished upload
(never an object) for ``abort_stale_uploads`` or a lifecycle rule to remove.

Driver errors are translated here and nowhere else: a missing key is ObjectMissingError,
a taken one ObjectExistsError, anything else an S3StoreError (a RepositoryError that is
also the OSError the port promises) naming the bucket and what to do. Throttling (503
SlowDown), 5xx answers and dropped connections are first retried by botocore's "standard"
mode, with backoff and jitter; what still fails is S3Unavailable. Messages are built from
error codes, the bucket and the key: never from the request, so never with credentials.

boto3 clients are thread-safe, not fork-safe: a forked child makes its own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionError,
    NoCredentialsError,
)

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import (
    ObjectExistsError,
    ObjectMissingError,
    ReadableBytes,
    RepositoryStore,
)

__all__ = ["S3Store", "S3StoreError", "S3Unavailable"]

_Names = list[str]  # in the class, ``list`` is the method
_Parts = list[dict[str, Any]]  # CompleteMultipartUpload's parts: number, ETag, SHA-256
PART_SIZE = 8 << 20  # S3's smallest part is 5 MiB (the last one excepted)
MIN_PART_SIZE = 5 << 20
_MISSING = {"NoSuchKey", "404", "NotFound"}
_TAKEN = {"PreconditionFailed", "412", "NoSuchUpload"}
_CHANGED_ON_THE_WAY = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"}
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_REFUSED |= {"InvalidToken", "ExpiredToken"}  # temporary credentials (a role, SSO)
_CREDENTIALS_HINT = (
    "check the AWS credentials nkdaemon finds through the standard chain "
    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, AWS_PROFILE, an "
    "instance role) and that they may list, read, write and delete in {where}"
)


class S3StoreError(RepositoryError, OSError):
    """The bucket cannot be used: refused credentials, no such bucket, an answer that
    breaks the store's rules. Retrying as it is will not help."""

    kind = "repository"


class S3Unavailable(S3StoreError):
    """The S3 endpoint did not answer usefully after botocore's retries (down,
    unreachable, throttling or failing with 5xx); retrying later may help."""

    kind = "repository_unavailable"


class S3Store:
    """Objects as keys ``prefix/name`` in ``bucket`` (see the module docstring).

    ``endpoint_url`` selects an S3-compatible server (None: AWS); ``path_style`` sends the
    bucket in the path rather than the host name, which most non-AWS servers need.
    Credentials come from the standard AWS chain. ``client`` replaces the boto3 client
    the store would make (tests, or a caller with its own session)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        client: Any = None,
        max_attempts: int = 6,
        part_size: int = PART_SIZE,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self._config = Config(
            region_name=region,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
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

    def key(self, name: str) -> str:
        """The key of object ``name`` (which is checked: see RepositoryStore)."""
        if not _is_name(name):
            raise ValueError(f"{name!r} is not a repository object name")
        return f"{self.prefix}/{name}" if self.prefix else name

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def describe(self, name: str = "") -> str:
        path = "/".join(p for p in (self.prefix, name) if p)
        return f"s3://{self.bucket}/{path}"

    # --- reading ---------------------------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        root = self._root()
        paginator = self._client().get_paginator("list_objects_v2")
        names: list[str] = []
        with self._translated("list", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                names.extend(item["Key"][len(root) :] for item in page.get("Contents", ()))
        return sorted(n for n in names if _is_name(n))

    def size(self, name: str) -> int:
        with self._translated("size", name):
            answer = self._client().head_object(Bucket=self.bucket, Key=self.key(name))
        return int(answer["ContentLength"])

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def open(self, name: str) -> IO[bytes]:
        with self._translated("read", name):
            answer = self._client().get_object(
                Bucket=self.bucket, Key=self.key(name), ChecksumMode="ENABLED"
            )
        return io.BufferedReader(_Body(answer["Body"], self, name), buffer_size=1 << 16)

    # --- writing ---------------------------------------------------------------------

    def write_if_absent(self, name: str, data: bytes | ReadableBytes) -> None:
        key = self.key(name)
        stream = io.BytesIO(data) if isinstance(data, bytes) else data
        first = _read_part(stream, self.part_size)
        if len(first) < self.part_size:
            self._put(name, key, first, IfNoneMatch="*")
        else:
            self._multipart(name, key, first, stream)

    def replace(self, name: str, data: bytes) -> None:
        self._put(name, self.key(name), data)

    def delete(self, name: str) -> None:
        # S3 answers a delete of a missing key with success: the port's rule as it is
        with self._translated("delete", name):
            self._client().delete_object(Bucket=self.bucket, Key=self.key(name))

    def _put(self, name: str, key: str, data: bytes, **conditions: str) -> None:
        checksum = _sha256(data)
        sent = {"Body": data, "ChecksumSHA256": checksum, **conditions}
        self._claim(name, key, checksum, "put_object", **sent)

    def _multipart(self, name: str, key: str, first: bytes, stream: ReadableBytes) -> None:
        client = self._client()
        with self._translated("write", name):
            upload = client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
            )["UploadId"]
        try:
            parts = self._upload_parts(name, key, upload, first, stream)
            digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)
            checksum = f"{_sha256(digests)}-{len(parts)}"  # S3's checksum of checksums
            sent = {"UploadId": upload, "MultipartUpload": {"Parts": parts}, "IfNoneMatch": "*"}
            self._claim(name, key, checksum, "complete_multipart_upload", **sent)
        except BaseException:
            self._abort(key, upload)
            raise

    def _claim(self, name: str, key: str, checksum: str, operation: str, **sent: Any) -> None:
        """Make a write (a put, or an upload's completion) and check the SHA-256 the
        server confirms. When botocore retried it, a refusal (412, or the upload gone)
        may answer our own first attempt, which succeeded but whose answer was lost on
        the way back: the object is ours, and the write done, if it has our SHA-256."""
        with self._translated("write", name):
            try:
                answer = getattr(self._client(), operation)(Bucket=self.bucket, Key=key, **sent)
            except ClientError as exc:
                retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                if retried and _code(exc) in _TAKEN and self._holds(key, checksum):
                    return
                raise
        self._confirm(name, checksum, answer)

    def _holds(self, key: str, checksum: str) -> bool:
        try:
            head = self._client().head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError:  # gone, or unreadable: not known to be ours
            return False
        return bool(head.get("ChecksumSHA256") == checksum)

    def _upload_parts(
        self, name: str, key: str, upload: str, first: bytes, stream: ReadableBytes
    ) -> _Parts:
        parts: _Parts = []
        block = first
        while block:
            checksum = _sha256(block)
            with self._translated("write", name):
                answer = self._client().upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=len(parts) + 1,
                    Body=block,
                    ChecksumSHA256=checksum,
                )
            self._confirm(name, checksum, answer)
            parts.append(
                {"PartNumber": len(parts) + 1, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
            )
            block = _read_part(stream, self.part_size)
        return parts

    def _abort(self, key: str, upload: str) -> None:
        """Abort an upload that will not complete; a failure to abort leaves it to the
        lifecycle rule rather than hide the error that brought us here."""
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
        key = self._root() + probe
        try:
            self._put(probe, key, b"1", IfNoneMatch="*")
            try:
                self._put(probe, key, b"2", IfNoneMatch="*")
            except ObjectExistsError:
                return
            raise S3StoreError(
                f"the S3 server at {self._endpoint()} replaced an object written with "
                f"If-None-Match: * ({self.describe(probe)})",
                hint="nkdaemon needs conditional writes to keep objects immutable; use a "
                "server that supports them (AWS S3, MinIO, SeaweedFS, Cloudflare R2...)",
            )
        finally:
            with self._translated("delete", probe):
                self._client().delete_object(Bucket=self.bucket, Key=key)

    def abort_stale_uploads(self, older_than: timedelta = timedelta(days=1)) -> _Names:
        """Abort the multipart uploads under the prefix begun over ``older_than`` ago,
        left by writers killed mid-upload (never objects, but stored and billed); younger
        ones may still run. Returns their names. A lifecycle rule does the same."""
        client, root = self._client(), self._root()
        cutoff = datetime.now(UTC) - older_than
        aborted: _Names = []
        with self._translated("clean up", ""):
            pages = client.get_paginator("list_multipart_uploads")
            for page in pages.paginate(Bucket=self.bucket, Prefix=root):
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"] < cutoff:
                        ids = {"Key": upload["Key"], "UploadId": upload["UploadId"]}
                        client.abort_multipart_upload(Bucket=self.bucket, **ids)
                        aborted.append(upload["Key"][len(root) :])
        return sorted(aborted)

    # --- the client and its errors -----------------------------------------------------

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
        with self._translated("connect", ""):
            return boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, config=self._config
            )

    def _check_bucket(self, client: Any) -> None:
        """Once per store: some servers create a missing bucket on a first put, which
        would hide a misspelt bucket name behind a new, empty repository. A listing of
        the prefix asks only for what ``list`` needs anyway (HeadBucket would need the
        right to list the whole bucket, which a policy scoped to the prefix refuses)."""
        with self._translated("open", ""):
            client.list_objects_v2(Bucket=self.bucket, Prefix=self._root(), MaxKeys=1)
        self._bucket_checked = True

    def _no_bucket(self) -> S3StoreError:
        return S3StoreError(
            f"the S3 bucket {self.bucket!r} does not exist (at {self._endpoint()})",
            hint="create the bucket, or correct [repository] url (and endpoint_url)",
        )

    def _endpoint(self) -> str:
        return self.endpoint_url or "AWS"

    @contextlib.contextmanager
    def _translated(self, operation: str, name: str) -> Iterator[None]:
        """Turn boto's exceptions into the port's (see the module docstring)."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(operation, name, exc) from exc
        except NoCredentialsError:
            raise S3StoreError(
                f"no AWS credentials found for {self.describe()}",
                hint=_CREDENTIALS_HINT.format(where=self.describe()),
            ) from None
        except ConnectionError as exc:
            raise S3Unavailable(
                f"cannot reach the S3 endpoint {self._endpoint()} for {self.describe(name)}: "
                f"{type(exc).__name__}",
                hint="check that the endpoint runs and [repository] endpoint_url is right; "
                "the daemon keeps retrying",
            ) from exc
        except BotoCoreError as exc:  # a checksum that failed on a read, a bad setting
            raise S3StoreError(
                f"S3 {operation} of {self.describe(name)} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _client_error(self, operation: str, name: str, exc: ClientError) -> OSError:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        where = self.describe(name)
        if code in _MISSING and name:
            return ObjectMissingError(2, f"object {name} is missing", where)
        if code in {"PreconditionFailed", "412"} and name:
            return ObjectExistsError(17, f"object {name} exists", where)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in _REFUSED:
            return S3StoreError(
                f"S3 refused {operation} of {where}: {code}",
                hint=_CREDENTIALS_HINT.format(where=self.describe()),
            )
        if code in _CHANGED_ON_THE_WAY:
            return S3Unavailable(
                f"S3 {operation} of {where}: the bytes the server received do not match "
                f"their SHA-256 ({code}); nothing was stored",
                hint="something between nkdaemon and the endpoint changes data; the write "
                "is safe to retry, and if this repeats, check proxies and the network",
            )
        message = exc.response.get("Error", {}).get("Message", "")
        if code in {"SlowDown", "ServiceUnavailable", "InternalError"} or status >= 500:
            return S3Unavailable(
                f"S3 {operation} of {where} failed after retries: {code} {message}".rstrip(),
                hint="the server is throttling or failing; the daemon keeps retrying",
            )
        return S3StoreError(f"S3 {operation} of {where} failed: {code} {message}".rstrip())


class _Body(io.RawIOBase):
    """A GetObject body read in blocks, its driver errors translated like every other."""

    def __init__(self, body: Any, store: S3Store, name: str) -> None:
        self._body, self._store, self._name = body, store, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._store._translated("read", self._name):
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
    while left > 0:
        block = stream.read(left)
        if not block:
            break
        blocks.append(block)
        left -= len(block)
    return b"".join(blocks)


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_name(name: str) -> bool:
    """Whether ``name`` is an object name (see RepositoryStore). Keys under the prefix
    that are not (dot names, a folder marker some tools make) are not listed."""
    return all(p and p not in (".", "..") and not p.startswith(".") for p in name.split("/"))


_: type[RepositoryStore] = S3Store  # S3Store implements the port (checked by mypy)
