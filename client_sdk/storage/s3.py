"""S3 storage: objects under ``s3://bucket/prefix/``, large ones sent as multipart uploads.

Memory stays flat whatever the backup size: the writer holds one part buffer
(:data:`PART_SIZE`) and uploads it when full; a multipart upload is completed
(made visible) only on commit and aborted on any failure, so no partial object
or orphaned parts remain. Buckets are never created here: they are provisioned
with their access policy by whoever owns the storage.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from client_sdk.storage.base import (
    ObjectNotFound,
    ObjectReader,
    ObjectWriter,
    Storage,
    StorageError,
    StorageNotFound,
    StorageUnavailable,
    check_name,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MIB = 1024 * 1024
PART_SIZE = 8 * MIB  # S3 needs >= 5 MiB for every part but the last
SINGLE_PUT_LIMIT = 64 * MIB
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_CLIENT_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10)


class S3Storage(Storage):
    """The objects directly under ``prefix`` in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        part_size: int = PART_SIZE,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.part_size = part_size
        session = boto3.session.Session()
        try:
            self._client: Any = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=session.region_name or "us-east-1",
                config=_CLIENT_CONFIG,
            )
        except (BotoCoreError, ValueError) as err:
            raise StorageError(f"can't use S3 storage {self.url}: {err}") from None

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def error(self, err: Exception, name: str | None = None) -> StorageError:
        """Turn a boto error into a one-line storage error naming the bucket or object."""
        if isinstance(err, StorageError):
            return err
        if isinstance(err, NoCredentialsError):
            return StorageUnavailable(f"no AWS credentials for {self.url}")
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return StorageNotFound(f"storage not found: s3://{self.bucket}")
            if code in _NOT_FOUND and name is not None:
                return ObjectNotFound(f"{name} not found in {self.url}")
            message = err.response.get("Error", {}).get("Message", "") or code
            return StorageUnavailable(f"S3 refused the request for {self.url}: {message}")
        return StorageUnavailable(f"S3 storage {self.url} is unreachable: {err}")

    def open_writer(self, name: str) -> ObjectWriter:
        return _S3Writer(self, self._key(name), name)

    def write_small(self, name: str, data: bytes | memoryview) -> None:
        """One PUT (atomic on S3) for objects up to :data:`SINGLE_PUT_LIMIT`, like packs."""
        if len(data) > SINGLE_PUT_LIMIT:
            super().write_small(name, data)
            return
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=bytes(data))
        except (BotoCoreError, ClientError) as err:
            raise self.error(err, name) from None

    def open_reader(self, name: str) -> ObjectReader:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        except (BotoCoreError, ClientError) as err:
            raise self.error(err, name) from None
        return _S3Reader(self, reply["Body"], int(reply["ContentLength"]))

    def names(self) -> list[str]:
        names: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                names.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as err:
            raise self.error(err) from None
        return sorted(n for n in names if n)

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (BotoCoreError, ClientError) as err:
            raise self.error(err, name) from None


class _S3Writer(ObjectWriter):
    """Buffers one part; small objects go up with a single PUT on commit."""

    def __init__(self, storage: S3Storage, key: str, name: str) -> None:
        super().__init__()
        self._s3 = storage
        self._key = key
        self._name = name
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.parts_uploaded = 0

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            call = getattr(self._s3._client, method)
            return call(Bucket=self._s3.bucket, Key=self._key, **kwargs)
        except (BotoCoreError, ClientError) as err:
            raise self._s3.error(err, self._name) from None

    def _write(self, view: memoryview) -> None:
        size = self._s3.part_size
        while view:
            room = size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == size:
                self._flush_part()

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = str(self._call("create_multipart_upload")["UploadId"])
        number = len(self._parts) + 1
        reply = self._call(
            "upload_part", UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
        )
        self._parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        self.parts_uploaded = number
        self._buffer.clear()

    def _commit(self) -> None:
        if self._upload_id is None:
            self._call("put_object", Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._flush_part()
            self._call(
                "complete_multipart_upload",
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id = None
        self._buffer = bytearray()

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            # If this fails too, the bucket's lifecycle rule reaps the orphaned parts.
            with contextlib.suppress(BotoCoreError, ClientError):
                self._s3._client.abort_multipart_upload(
                    Bucket=self._s3.bucket, Key=self._key, UploadId=upload_id
                )


class _S3Reader(ObjectReader):
    def __init__(self, storage: S3Storage, body: Any, size: int) -> None:
        super().__init__(size)
        self._s3 = storage
        self._body = body

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data: bytes = self._body.read(len(view))
        except (BotoCoreError, ClientError, OSError) as err:
            raise self._s3.error(err) from None
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            super().close()
