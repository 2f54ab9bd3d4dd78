"""An S3 bucket (or an S3-compatible one: MinIO, Ceph, moto) as a place to keep store entries.

:class:`Bucket` is the little tiffin needs from boto3: read and write small JSON objects
(optionally only if absent, or only if unchanged: S3's conditional writes), upload a file with
its SHA-256 stored beside it, stream an object out while the caller hashes it, list and delete.
Its rules:

* Every object tiffin writes carries its SHA-256 twice: ``x-amz-meta-sha256`` (hex, kept by
  any S3-compatible store) and S3's own ``ChecksumSHA256`` (base64, which S3 itself checks on
  upload). Readers check what they read against the manifest (:mod:`tiffin.store.remote`).
* An upload is one PUT, or a multipart upload that boto3 aborts when a part fails: no object
  is ever half written.
* Timeouts are bounded (10 s to connect, 60 s per read) and boto3 retries throttling.
* The endpoint is boto3's own setting (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``);
  ``MLFLOW_S3_ENDPOINT_URL`` is honoured when neither is set, as MLflow users have it.
* boto3's errors become tiffin's: a missing bucket or key :class:`NotFound`, a refused
  condition :class:`~tiffin.exceptions.AlreadyExists` (the caller re-reads), anything else a
  :class:`StoreError` in one line naming the object.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiffin.exceptions import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    StoreError,
    TiffinError,
    missing_dependency,
)

__all__ = ["Bucket", "Progress", "parse_url"]

#: ``progress(bytes_done_since_last_call)``, called from boto3's transfer threads
Progress = Callable[[int], None]

_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_MLFLOW_ENDPOINT = "MLFLOW_S3_ENDPOINT_URL"
_CHUNK = 1 << 20


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (no slash at either end)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "s3":
        raise InvalidArgument(
            f"remote {url!r} is not an s3:// URL; tiffin keeps remote models in S3 or an "
            "S3-compatible store (s3://BUCKET/PREFIX)"
        )
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidArgument(f"remote {url!r} names no bucket (s3://BUCKET/PREFIX)")
    return bucket, prefix.strip("/")


def _endpoint() -> str | None:
    if any(os.environ.get(var) for var in _ENDPOINT_VARS):
        return None  # boto3 reads them itself
    return os.environ.get(_MLFLOW_ENDPOINT) or None


def sha256_b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


@dataclass(frozen=True)
class Stored:
    """A small object read whole: its bytes and the ETag a conditional write compares."""

    data: bytes
    etag: str


class Bucket:
    """``s3://bucket/prefix``: keys below are relative to the prefix."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_url(url)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise missing_dependency("boto3", "s3") from exc
            config = Config(
                connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}
            )
            self._client = boto3.client("s3", endpoint_url=_endpoint(), config=config)
        return self._client

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def where(self, relative: str) -> str:
        return f"s3://{self.bucket}/{self.key(relative)}"

    # -- errors ---------------------------------------------------------------------------

    def _error(self, exc: Exception, relative: str, doing: str) -> Exception:
        """boto3's error as tiffin's (see the module docstring)."""
        code = ""
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        where = self.where(relative)
        if code in ("NoSuchBucket",):
            return NotFound(f"bucket {self.bucket!r} does not exist ({self.url})")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{where} does not exist")
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return AlreadyExists(f"{where} changed while tiffin wrote it")
        text = " ".join(str(exc).split())
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            text += " (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or a role)"
        return StoreError(f"cannot {doing} {where}: {text}")

    def _call(self, relative: str, doing: str, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except TiffinError:
            raise
        except Exception as exc:  # botocore raises its own tree; translated right here
            raise self._error(exc, relative, doing) from exc

    # -- small objects --------------------------------------------------------------------

    def read(self, relative: str) -> Stored:
        answer = self._call(relative, "read", "get_object", Key=self.key(relative))
        try:
            data = answer["Body"].read()
        except Exception as exc:
            raise self._error(exc, relative, "read") from exc
        return Stored(data, str(answer.get("ETag", "")))

    def read_or_none(self, relative: str) -> Stored | None:
        try:
            return self.read(relative)
        except NotFound:
            self.require_bucket()
            return None

    def require_bucket(self) -> None:
        """A missing key in a missing bucket is the bucket's fault: say that instead."""
        try:
            self._call("", "reach", "head_bucket")
        except NotFound:  # HEAD answers a bare 404
            raise NotFound(f"bucket {self.bucket!r} does not exist ({self.url})") from None

    def write(
        self, relative: str, data: bytes, *, only_new: bool = False, if_etag: str | None = None
    ) -> None:
        """Write ``data``; ``only_new``: refuse (AlreadyExists) if the object exists;
        ``if_etag``: refuse unless the object is still the one read with that ETag."""
        digest = hashlib.sha256(data).hexdigest()
        extra: dict[str, Any] = {}
        if only_new:
            extra["IfNoneMatch"] = "*"
        if if_etag:
            extra["IfMatch"] = if_etag
        self._call(
            relative, "write", "put_object", Key=self.key(relative), Body=data,
            Metadata={"sha256": digest}, ChecksumSHA256=sha256_b64(digest),
            ContentType="application/json", **extra,
        )  # fmt: skip

    # -- files ----------------------------------------------------------------------------

    def upload(self, relative: str, path: Path, sha256: str, progress: Progress | None) -> None:
        extra = {"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"}
        try:
            self.client.upload_file(
                str(path), self.bucket, self.key(relative), ExtraArgs=extra, Callback=progress
            )
        except TiffinError:
            raise
        except Exception as exc:
            raise self._error(exc, relative, "upload") from exc

    def stream(self, relative: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """An object's metadata and its bytes, chunk by chunk."""
        answer = self._call(relative, "read", "get_object", Key=self.key(relative))
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(_CHUNK)
            except Exception as exc:
                raise self._error(exc, relative, "read") from exc
            finally:
                body.close()

        return dict(answer.get("Metadata") or {}), chunks()

    def delete(self, relatives: list[str]) -> None:
        for start in range(0, len(relatives), 1000):
            batch = relatives[start : start + 1000]
            self._call(
                batch[0], "delete", "delete_objects",
                Delete={"Objects": [{"Key": self.key(r)} for r in batch], "Quiet": True},
            )  # fmt: skip

    def list(self, relative: str) -> list[str]:
        """Keys under ``relative`` (relative to the prefix)."""
        found: list[str] = []
        base = self.key(relative)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            ):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    found.append(key[len(self.prefix) + 1 :] if self.prefix else key)
        except TiffinError:
            raise
        except Exception as exc:
            raise self._error(exc, relative, "list") from exc
        return found

