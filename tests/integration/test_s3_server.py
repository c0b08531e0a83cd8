"""The S3 server the tests use behaves as the object-storage repository relies on.

Checked here rather than assumed: a write with If-None-Match: * never replaces an object,
a wrong secret is refused, listing is by prefix and sorted.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.s3 import S3Server


def test_a_conditional_write_never_replaces_an_object(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="log/1", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=s3_bucket, Key="log/1", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3_bucket, Key="log/1")["Body"].read() == b"first"


def test_a_wrong_secret_is_refused(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    with pytest.raises(ClientError) as refused:
        s3_server.client(secret_key="not-the-secret").get_object(Bucket=s3_bucket, Key="k")
    assert refused.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}


def test_listing_is_by_prefix_and_sorted(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    for key in ("log/0003", "log/0001", "snapshots/a", "log/0002"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="log/")["Contents"]
    assert [o["Key"] for o in listed] == ["log/0001", "log/0002", "log/0003"]
