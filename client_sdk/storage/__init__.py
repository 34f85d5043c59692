"""Where encrypted backups live: a local folder or an S3 bucket, behind one small interface.

Storage only ever sees age ciphertext and public manifests, so it is treated as
untrusted: it needs no integrity guarantees of its own (age authenticates every
chunk), only that a half-written object never looks complete. Both adapters
publish an object only once it was written in full.

URLs: a plain path or ``file:///abs/path`` is a folder; ``s3://bucket/prefix``
is an S3 prefix (endpoint from ``s3_endpoint`` or boto3's usual
``AWS_ENDPOINT_URL``; credentials from the standard AWS variables).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from client_sdk.storage.base import (
    ObjectNotFound,
    ObjectReader,
    ObjectWriter,
    Storage,
    StorageError,
    StorageNotFound,
    StorageUnavailable,
    StorageURLError,
)

__all__ = [
    "ObjectNotFound",
    "ObjectReader",
    "ObjectWriter",
    "Storage",
    "StorageError",
    "StorageNotFound",
    "StorageURLError",
    "StorageUnavailable",
    "open_storage",
    "split_object_url",
]


def open_storage(url: str, *, create: bool = False, s3_endpoint: str | None = None) -> Storage:
    """The storage behind ``url``.

    With ``create`` a missing local folder is made (backup creation); without,
    a missing folder or bucket raises :class:`StorageNotFound`.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "s3":
        from client_sdk.storage.s3 import S3Storage  # boto3 is slow to import

        bucket, prefix = _s3_parts(url)
        return S3Storage(bucket, prefix, endpoint_url=s3_endpoint)
    if scheme in ("", "file"):
        from client_sdk.storage.folder import FolderStorage

        return FolderStorage(_folder_path(url), create=create)
    raise StorageURLError(f"unsupported storage URL {url!r} (use a folder, file:// or s3://)")


def split_object_url(url: str) -> tuple[str, str]:
    """Split the URL of one stored object into (storage URL, object name)."""
    if "://" in url and urlsplit(url).scheme.lower() == "s3":
        bucket, key = _s3_parts(url)
        prefix, _, name = key.rpartition("/")
        if not name:
            raise StorageURLError(f"{url!r} does not name an object")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", name
    path = _folder_path(url)
    if not path.name:
        raise StorageURLError(f"{url!r} does not name a file")
    return str(path.parent), path.name


def _s3_parts(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket = parts.netloc
    if not bucket or parts.query or parts.fragment:
        raise StorageURLError(f"malformed S3 URL {url!r} (expected s3://bucket/prefix)")
    return bucket, parts.path.strip("/")


def _folder_path(url: str) -> Path:
    if "://" not in url:
        if not url:
            raise StorageURLError("empty storage path")
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        raise StorageURLError(f"unsupported storage URL {url!r} (use a folder, file:// or s3://)")
    if not parts.path:
        raise StorageURLError(f"malformed file URL {url!r}")
    return Path(unquote(parts.path))
