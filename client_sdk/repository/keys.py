"""Keys a repository derives from the backup key, each for one purpose.

The chunk-id key makes a chunk's id a MAC, not a plain hash: storage that
holds a known file cannot compute the ids its chunks would have, so it cannot
confirm that the file is present. The chunker seed turns the chunker's gear
table into a key-dependent one, so chunk boundaries (and therefore pack sizes)
are not a fingerprint of known content either.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client_sdk import age
from client_sdk.keys import BackupKey

CHUNK_ID_INFO = b"bkv-repo/v1 chunk id"
CHUNKER_SEED_INFO = b"bkv-repo/v1 chunker seed"
ID_SIZE = 32


def _derive(raw: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(raw)


@dataclass(frozen=True, repr=False)
class RepoKeys:
    """Everything a repository needs from the backup key."""

    identity: age.X25519Identity
    recipient: age.X25519Recipient
    chunk_id_key: bytes
    chunker_seed: int

    @classmethod
    def from_backup_key(cls, key: BackupKey) -> RepoKeys:
        identity = age.X25519Identity(key.raw)
        seed = int.from_bytes(_derive(key.raw, CHUNKER_SEED_INFO, 8), "big") >> 1
        return cls(
            identity, identity.recipient, _derive(key.raw, CHUNK_ID_INFO, 32), seed or 1
        )

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """HMAC-SHA-256 of the chunk under the chunk-id key (OpenSSL, GIL released)."""
        return hmac.digest(self.chunk_id_key, data, "sha256")

    def __repr__(self) -> str:
        return f"<RepoKeys recipient={self.recipient}>"
