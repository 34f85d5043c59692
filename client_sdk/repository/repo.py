"""A repository: the objects at one storage URL, opened with one backup key.

Every object is an age v1 file for the key's recipient (``age -d`` opens any
of them). Names: ``config.age``, ``snapshot-<id>.age``, ``index-<hex>.age``,
``pack-<hex>.age``, ``lock-<hex>.age``; backups of the older single-file
format (``<id>.age`` + ``<id>.json``) may share the storage and are left alone.
See docs/repository.md for the formats.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from client_sdk import age
from client_sdk.age.memory import decrypt_bytes, decrypt_into, encrypt_bytes, encrypt_into
from client_sdk.backup.errors import DamagedBackupError, WrongKeyError
from client_sdk.key_typos import fingerprint_of_public, marker_name
from client_sdk.keys import BackupKey
from client_sdk.repository.buffers import SEALED_CAPACITY, plain_buffer, sealed_buffer
from client_sdk.repository.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE, Chunker
from client_sdk.repository.index import (
    MAX_INDEX_BYTES,
    Index,
    IndexFormatError,
    decode_index,
    is_index_name,
)
from client_sdk.repository.keys import RepoKeys
from client_sdk.repository.pack import PackEntry, PackFormatError, parse_trailer
from client_sdk.repository.snapshot import (
    MAX_SNAPSHOT_BYTES,
    Snapshot,
    SnapshotFormatError,
    decode_snapshot,
    snapshot_id_of,
    snapshot_name,
)
from client_sdk.storage import ObjectNotFound, Storage, StorageError, open_storage

CONFIG_NAME = "config.age"
KEY_MARKER_FORMAT = "bkv-key/v1"
CONFIG_FORMAT = "bkv-repo/v1"
MAX_CONFIG_BYTES = 64 * 1024
READ_THREADS = 4


class Repository:
    """Reads and writes the encrypted objects of one repository."""

    def __init__(self, storage: Storage, key: BackupKey) -> None:
        self.storage = storage
        self.url = storage.url
        self.keys = RepoKeys.from_backup_key(key)

    @classmethod
    def open(
        cls, url: str, key: BackupKey, *, create: bool = False, s3_endpoint: str | None = None
    ) -> Repository:
        return cls(open_storage(url, create=create, s3_endpoint=s3_endpoint), key)

    def chunker(self) -> Chunker:
        return Chunker(self.keys.chunker_seed)

    # --- sealed objects -------------------------------------------------------------------

    def seal(self, plain: bytes | bytearray | memoryview) -> bytearray:
        return encrypt_bytes(plain, self.keys.recipient)

    def write(self, name: str, plain: bytes | bytearray | memoryview) -> int:
        """Seal and publish one object; return its stored size."""
        sealed = self.seal(plain)
        self.storage.write_small(name, bytes(sealed))
        return len(sealed)

    def read(self, name: str, limit: int) -> bytearray:
        """Fetch and open one object; wrong key and damage become one-line errors."""
        try:
            blob = self.storage.read_small(name, limit)
        except ObjectNotFound:
            raise
        except StorageError as err:
            if "larger than expected" in str(err):
                raise DamagedBackupError(f"{name} in {self.url} is damaged: too large") from None
            raise
        return self.open_blob(name, blob)

    def open_blob(self, name: str, blob: bytes | bytearray) -> bytearray:
        try:
            return decrypt_bytes(blob, self.keys.identity)
        except age.NoIdentityMatchError:
            raise WrongKeyError("this key does not open this backup") from None
        except age.AgeError as err:
            raise DamagedBackupError(f"{name} in {self.url} is damaged: {err}") from None

    # --- config ---------------------------------------------------------------------------

    def has_config(self, names: list[str]) -> bool:
        return CONFIG_NAME in names

    def check_config(self) -> None:
        """Open the config: proves the key is the repository's before anything else."""
        raw = self.read(CONFIG_NAME, MAX_CONFIG_BYTES)
        try:
            data = json.loads(raw)
            ok = data.get("format") == CONFIG_FORMAT
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise DamagedBackupError(f"{CONFIG_NAME} in {self.url} is not a bkv repository config")

    def write_config(self) -> None:
        config = {
            "format": CONFIG_FORMAT,
            "chunker": {"min": MIN_SIZE, "avg": AVG_SIZE, "max": MAX_SIZE},
        }
        self.write(CONFIG_NAME, json.dumps(config).encode())
        # the key's public fingerprint in a name, for "digit 19 looks wrong" hints
        fp = fingerprint_of_public(self.keys.recipient.public_bytes)
        self.write(marker_name(fp), json.dumps({"format": KEY_MARKER_FORMAT}).encode())

    # --- index and snapshots --------------------------------------------------------------

    def load_index(self, names: list[str]) -> Index:
        """The union of every index object."""
        index = Index()
        wanted = [n for n in names if is_index_name(n)]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for part in pool.map(self._read_index, wanted):
                if part is not None:
                    index.merge(part)
        return index

    def _read_index(self, name: str) -> Index | None:
        try:
            raw = self.read(name, MAX_INDEX_BYTES)
        except ObjectNotFound:
            return None  # removed by a prune that ran meanwhile
        try:
            return decode_index(raw)
        except IndexFormatError as err:
            raise DamagedBackupError(f"{name} in {self.url} is damaged: {err}") from None

    def snapshot_ids(self, names: list[str]) -> list[str]:
        return sorted(sid for sid in map(snapshot_id_of, names) if sid is not None)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        name = snapshot_name(snapshot_id)
        raw = self.read(name, MAX_SNAPSHOT_BYTES)
        try:
            return decode_snapshot(raw, snapshot_id)
        except SnapshotFormatError as err:
            raise DamagedBackupError(f"{name} in {self.url} is damaged: {err}") from None

    def load_snapshots(self, ids: list[str]) -> list[Snapshot]:
        with ThreadPoolExecutor(READ_THREADS) as pool:
            return list(pool.map(self.load_snapshot, ids))

    # --- packs ----------------------------------------------------------------------------

    def write_pack(self, name: str, plain: memoryview) -> int:
        """Seal a pack through this thread's reusable buffer and publish it."""
        sealed = sealed_buffer()
        size = encrypt_into(plain, self.keys.recipient, sealed)
        self.storage.write_small(name, sealed[:size])
        return size

    def read_pack(self, name: str) -> tuple[memoryview, list[PackEntry]]:
        """A pack's plaintext and entries; a missing or damaged pack is named.

        The plaintext lives in this thread's reusable buffer: it is valid until
        this thread reads the next pack.
        """
        sealed, plain = sealed_buffer(), plain_buffer()
        try:
            size = self.storage.read_into(name, sealed, SEALED_CAPACITY)
        except ObjectNotFound:
            raise DamagedBackupError(f"{name} is missing from {self.url}") from None
        except StorageError as err:
            if "larger than expected" in str(err):
                raise DamagedBackupError(f"{name} in {self.url} is damaged: too large") from None
            raise
        try:
            view = plain[: decrypt_into(sealed[:size], self.keys.identity, plain)]
        except age.NoIdentityMatchError:
            raise WrongKeyError("this key does not open this backup") from None
        except (age.AgeError, ValueError) as err:
            raise DamagedBackupError(f"{name} in {self.url} is damaged: {err}") from None
        try:
            return view, parse_trailer(view)
        except PackFormatError as err:
            raise DamagedBackupError(f"{name} in {self.url} is damaged: {err}") from None
