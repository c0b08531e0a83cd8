"""Where an S3 store lives, and boto's exceptions turned into the port's, in one place.

A missing key is ObjectMissingError, a taken one ObjectExistsError (core/ports.py), and
anything else an S3StoreError: a RepositoryError that is also the OSError the port
promises, naming the bucket and what to do. Messages are built from error codes, the
bucket and the key, never from the request, so they never carry a credential.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionError,
    NoCredentialsError,
)

from nkdaemon.core.errors import RepositoryError
from nkdaemon.core.ports import ObjectExistsError, ObjectMissingError

__all__ = ["S3Location", "S3StoreError", "S3Unavailable", "error_code", "translated"]

TAKEN = {"PreconditionFailed", "412"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CHANGED_ON_THE_WAY = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"}
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_REFUSED |= {"InvalidToken", "ExpiredToken"}  # temporary credentials (a role, SSO)
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
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
    unreachable, throttling, failing with 5xx, bytes changed on the way); retrying later
    may help."""

    kind = "repository_unavailable"


@dataclass(frozen=True, kw_only=True, slots=True)
class S3Location:
    """A bucket, a key prefix ("" or without slashes at its ends), and the endpoint
    (None: AWS)."""

    bucket: str
    prefix: str
    endpoint_url: str | None

    @property
    def root(self) -> str:
        """What every key of the store starts with."""
        return f"{self.prefix}/" if self.prefix else ""

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or "AWS"

    def describe(self, name: str = "") -> str:
        path = "/".join(p for p in (self.prefix, name) if p)
        return f"s3://{self.bucket}/{path}"

    def no_bucket(self) -> S3StoreError:
        return S3StoreError(
            f"the S3 bucket {self.bucket!r} does not exist (at {self.endpoint})",
            hint="create the bucket, or correct [repository] url (and endpoint_url)",
        )


@contextlib.contextmanager
def translated(location: S3Location, operation: str, name: str) -> Iterator[None]:
    """Turn boto's exceptions raised inside into the port's (see the module docstring);
    ``name`` is the object (or listing prefix) the operation was about."""
    try:
        yield
    except ClientError as exc:
        raise _client_error(location, operation, name, exc) from exc
    except NoCredentialsError:
        raise S3StoreError(
            f"no AWS credentials found for {location.describe()}",
            hint=_CREDENTIALS_HINT.format(where=location.describe()),
        ) from None
    except ConnectionError as exc:
        raise S3Unavailable(
            f"cannot reach the S3 endpoint {location.endpoint} for {location.describe(name)}: "
            f"{type(exc).__name__}",
            hint="check that the endpoint runs and [repository] endpoint_url is right; "
            "the daemon keeps retrying",
        ) from exc
    except BotoCoreError as exc:  # a checksum that failed on a read, a bad setting
        raise S3StoreError(
            f"S3 {operation} of {location.describe(name)} failed: {type(exc).__name__}: {exc}"
        ) from exc


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _client_error(location: S3Location, operation: str, name: str, exc: ClientError) -> OSError:
    code = error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    where = location.describe(name)
    if code in _MISSING and name:
        return ObjectMissingError(errno.ENOENT, f"object {name} is missing", where)
    if code in TAKEN and name:
        return ObjectExistsError(errno.EEXIST, f"object {name} exists", where)
    if code == "NoSuchBucket":
        return location.no_bucket()
    if code in _REFUSED:
        return S3StoreError(
            f"S3 refused {operation} of {where}: {code}",
            hint=_CREDENTIALS_HINT.format(where=location.describe()),
        )
    if code in _CHANGED_ON_THE_WAY:
        return S3Unavailable(
            f"S3 {operation} of {where}: the bytes the server received do not match "
            f"their SHA-256 ({code}); nothing was stored",
            hint="something between nkdaemon and the endpoint changes data; the write "
            "is safe to retry, and if this repeats, check proxies and the network",
        )
    message = exc.response.get("Error", {}).get("Message", "")
    if code in _UNAVAILABLE or status >= 500:
        return S3Unavailable(
            f"S3 {operation} of {where} failed after retries: {code} {message}".rstrip(),
            hint="the server is throttling or failing; the daemon keeps retrying",
        )
    return S3StoreError(f"S3 {operation} of {where} failed: {code} {message}".rstrip())
