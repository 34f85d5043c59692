"""The device side, as a library an app embeds: backup keys, age-format backups, the vault client.

What an app embeds. Imports ``bkv_protocol``, ``bkv_ops.tls`` and ``bkv_api`` only; never
``vault_node``, ``chatd_proxy`` or ``bkv_tools`` (the CLI and cluster tooling).

The public API is what ``__all__`` lists, importable from here::

    import client_sdk as bkv

    key = bkv.BackupKey.generate()                       # or bkv.read_key_file(path)
    result = bkv.create_backup(folder, "s3://bucket/backups", key)
    for backup in bkv.list_backups("s3://bucket/backups", key): ...
    bkv.restore_backup(result.snapshot_id, "s3://bucket/backups", key, dest)

    with bkv.VaultClient(bkv.ClientConfig.load(path)) as vault:
        vault.register("alice", key.raw, password)
        raw = vault.recover("alice", password)           # bkv.WrongPassword, bkv.KeyDestroyed

``AsyncVaultClient`` does the same for asyncio. Every other module is internal.
Names load on first use, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client_sdk.age import decrypt, encrypt
    from client_sdk.aio import AsyncVaultClient
    from client_sdk.backup.errors import (
        BackupError,
        BackupNotFound,
        DamagedBackupError,
        SourceError,
        WrongKeyError,
    )
    from client_sdk.config import ClientConfig
    from client_sdk.errors import (
        AlreadyRegistered,
        ConfigError,
        KeyDestroyed,
        NoQuorum,
        NotRegistered,
        RateLimited,
        VaultError,
        VaultUnavailable,
        WrongPassword,
    )
    from client_sdk.keys import BackupKey, KeyFormatError, read_key_file, write_key_file
    from client_sdk.repository import check as check_backups
    from client_sdk.repository import create as create_backup
    from client_sdk.repository import forget as forget_backups
    from client_sdk.repository import list_backups
    from client_sdk.repository import restore as restore_backup
    from client_sdk.storage import StorageError
    from client_sdk.vault_client import VaultClient

# public name -> (module, attribute)
_PUBLIC: dict[str, tuple[str, str]] = {
    # keys
    "BackupKey": ("client_sdk.keys", "BackupKey"),
    "KeyFormatError": ("client_sdk.keys", "KeyFormatError"),
    "read_key_file": ("client_sdk.keys", "read_key_file"),
    "write_key_file": ("client_sdk.keys", "write_key_file"),
    # age v1 streams
    "encrypt": ("client_sdk.age", "encrypt"),
    "decrypt": ("client_sdk.age", "decrypt"),
    # backups in a repository at a storage URL
    "create_backup": ("client_sdk.repository", "create"),
    "list_backups": ("client_sdk.repository", "list_backups"),
    "restore_backup": ("client_sdk.repository", "restore"),
    "forget_backups": ("client_sdk.repository", "forget"),
    "check_backups": ("client_sdk.repository", "check"),
    # the vault
    "ClientConfig": ("client_sdk.config", "ClientConfig"),
    "VaultClient": ("client_sdk.vault_client", "VaultClient"),
    "AsyncVaultClient": ("client_sdk.aio", "AsyncVaultClient"),
    # errors an app catches
    "ConfigError": ("client_sdk.errors", "ConfigError"),
    "VaultError": ("client_sdk.errors", "VaultError"),
    "WrongPassword": ("client_sdk.errors", "WrongPassword"),
    "KeyDestroyed": ("client_sdk.errors", "KeyDestroyed"),
    "NotRegistered": ("client_sdk.errors", "NotRegistered"),
    "AlreadyRegistered": ("client_sdk.errors", "AlreadyRegistered"),
    "VaultUnavailable": ("client_sdk.errors", "VaultUnavailable"),
    "NoQuorum": ("client_sdk.errors", "NoQuorum"),
    "RateLimited": ("client_sdk.errors", "RateLimited"),
    "BackupError": ("client_sdk.backup.errors", "BackupError"),
    "BackupNotFound": ("client_sdk.backup.errors", "BackupNotFound"),
    "WrongKeyError": ("client_sdk.backup.errors", "WrongKeyError"),
    "DamagedBackupError": ("client_sdk.backup.errors", "DamagedBackupError"),
    "SourceError": ("client_sdk.backup.errors", "SourceError"),
    "StorageError": ("client_sdk.storage", "StorageError"),
}

__all__ = [
    "AlreadyRegistered",
    "AsyncVaultClient",
    "BackupError",
    "BackupKey",
    "BackupNotFound",
    "ClientConfig",
    "ConfigError",
    "DamagedBackupError",
    "KeyDestroyed",
    "KeyFormatError",
    "NoQuorum",
    "NotRegistered",
    "RateLimited",
    "SourceError",
    "StorageError",
    "VaultClient",
    "VaultError",
    "VaultUnavailable",
    "WrongKeyError",
    "WrongPassword",
    "check_backups",
    "create_backup",
    "decrypt",
    "encrypt",
    "forget_backups",
    "list_backups",
    "read_key_file",
    "restore_backup",
    "write_key_file",
]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'client_sdk' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
