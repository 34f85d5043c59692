"""Errors of backup creation and restore; each message is one user-facing line."""

from __future__ import annotations

from client_sdk.storage import ObjectNotFound


class BackupError(Exception):
    """A backup could not be made or restored; the message is one user-facing line."""


class SourceError(BackupError):
    """The folder to back up is missing, unreadable, or changed while being read."""


class DestinationError(BackupError):
    """The restore destination is unusable (not empty, not writable, no parent)."""


class InvalidRecipientError(BackupError):
    """The recipient is not an "age1..." X25519 recipient."""


class WrongKeyError(BackupError):
    """The key is not the one the backup was made for."""


class DamagedBackupError(BackupError):
    """The backup failed to authenticate or is not a valid archive; ``offset`` when known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class BackupNotFound(ObjectNotFound):
    """The storage exists but has no backup with that id."""
