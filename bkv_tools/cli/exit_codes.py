"""The exit codes of every console script, and the mapping from library errors to them.

One code per outcome a script must tell apart, the same in every command, so
that "wrong password" (ask again) never looks like "try later" (retry):

====  ===============  =========================================================
code  name             meaning
====  ===============  =========================================================
0     OK               done
1     ERROR            any other failure (unwritable output, unexpected answer)
2     USAGE            usage error or bad input (arguments, key or config file)
3     WRONG_SECRET     wrong password or wrong key (a vault guess was counted)
4     DESTROYED        the vault destroyed the deposit after too many guesses
5     NOT_REGISTERED   the vault holds no deposit for this account
6     DAMAGED          the data is damaged or tampered with; ``cluster status``:
                       two members hold different states at one applied index
7     STORAGE_MISSING  the storage, or the backup asked for, does not exist
8     UNAVAILABLE      vault (ChatD, leader) or storage not reachable: try later
9     NO_QUORUM        a vault shard lost its majority of nodes: try later
10    DEGRADED         ``cluster status``: every shard works, some node is down
11    RATE_LIMITED     ChatD throttled this account: try again shortly
12    CONFIG           ChatD or the vault refused the setup (token, fleet key)
13    ALREADY_REG...  the account already has a deposit (``--replace`` replaces it)
130   INTERRUPTED      interrupted (Ctrl-C)
141   CLOSED_PIPE      standard output closed early (``| head``): the rest was dropped
====  ===============  =========================================================

Commands adopt it with :func:`classify`: it maps an exception of the SDK
(vault, age, backup, storage, key parsing) to ``(code, one-line message)``,
or returns None for anything it does not know, which is then a bug to surface.
"""

from __future__ import annotations

from enum import IntEnum

from bkv_ops.console import CLOSED_PIPE_EXIT


class ExitCode(IntEnum):
    """Process exit codes; the values are a public interface and never change."""

    OK = 0
    ERROR = 1
    USAGE = 2
    WRONG_SECRET = 3
    DESTROYED = 4
    NOT_REGISTERED = 5
    DAMAGED = 6
    STORAGE_MISSING = 7
    UNAVAILABLE = 8
    NO_QUORUM = 9
    DEGRADED = 10
    RATE_LIMITED = 11
    CONFIG = 12
    ALREADY_REGISTERED = 13
    INTERRUPTED = 130
    CLOSED_PIPE = CLOSED_PIPE_EXIT  # 141, every console script (bkv_ops.console)


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.ERROR: "other failure",
    ExitCode.USAGE: "usage error or bad input (arguments, key or config file)",
    ExitCode.WRONG_SECRET: "wrong password or wrong key",
    ExitCode.DESTROYED: "the vault destroyed the key (too many wrong passwords)",
    ExitCode.NOT_REGISTERED: "no key deposited for this account",
    ExitCode.DAMAGED: "damaged or tampered data (cluster status: members' states differ)",
    ExitCode.STORAGE_MISSING: "storage or backup not found",
    ExitCode.UNAVAILABLE: "vault or storage unreachable: try later",
    ExitCode.NO_QUORUM: "the vault has no quorum: try later",
    ExitCode.DEGRADED: "cluster status: some node unreachable",
    ExitCode.RATE_LIMITED: "rate limited: try again shortly",
    ExitCode.CONFIG: "setup refused: account token, fleet key or shard count",
    ExitCode.ALREADY_REGISTERED: "the account already has a deposit (--replace replaces it)",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.CLOSED_PIPE: "standard output closed early (e.g. `| head`), output cut short",
}

TRY_LATER = frozenset({ExitCode.UNAVAILABLE, ExitCode.NO_QUORUM, ExitCode.RATE_LIMITED})
"""Codes after which the same command may succeed unchanged."""


def help_epilog() -> str:
    """The table for ``--help`` (argparse epilog; use RawDescriptionHelpFormatter)."""
    lines = ["exit codes:"]
    lines += [f"  {int(code):>3}  {MEANINGS[code]}" for code in ExitCode]
    return "\n".join(lines)


def classify(err: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and one-line message for a library error; None if it is not one.

    Imports are local so that ``bkv --help`` does not load the SDK. The order
    matters: subclasses are checked before their bases.
    """
    from client_sdk import errors as vault
    from client_sdk.age import errors as age
    from client_sdk.keys import KeyFormatError

    message = str(err) or type(err).__name__
    if isinstance(err, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    table: list[tuple[type[BaseException] | tuple[type[BaseException], ...], ExitCode]] = [
        (vault.WrongPassword, ExitCode.WRONG_SECRET),
        (vault.KeyDestroyed, ExitCode.DESTROYED),
        (vault.NotRegistered, ExitCode.NOT_REGISTERED),
        (vault.AlreadyRegistered, ExitCode.ALREADY_REGISTERED),
        (vault.NoQuorum, ExitCode.NO_QUORUM),
        (vault.VaultUnavailable, ExitCode.UNAVAILABLE),
        (vault.RateLimited, ExitCode.RATE_LIMITED),
        ((vault.AccountRejected, vault.VaultProtocolError), ExitCode.CONFIG),
        (vault.ConfigError, ExitCode.USAGE),
        (vault.VaultError, ExitCode.ERROR),
        (age.NoIdentityMatchError, ExitCode.WRONG_SECRET),
        (age.DamagedFileError, ExitCode.DAMAGED),
        (age.KeyEncodingError, ExitCode.USAGE),
        (age.AgeError, ExitCode.DAMAGED),
        (KeyFormatError, ExitCode.USAGE),
    ]
    table += _backup_and_storage()
    for classes, code in table:
        if isinstance(err, classes):
            return code, message
    return None


def _backup_and_storage() -> list[tuple[type[BaseException] | tuple[type[BaseException], ...],
                                        ExitCode]]:
    """Backup and storage errors (their modules load lazily: boto3 is heavy)."""
    from client_sdk.backup import errors as backup
    from client_sdk.storage import base as storage

    return [
        (backup.WrongKeyError, ExitCode.WRONG_SECRET),
        (backup.DamagedBackupError, ExitCode.DAMAGED),
        (backup.InvalidRecipientError, ExitCode.USAGE),
        ((backup.SourceError, backup.DestinationError), ExitCode.ERROR),
        (backup.BackupError, ExitCode.USAGE),  # e.g. a backup id given where a URL belongs
        (storage.StorageURLError, ExitCode.USAGE),
        ((storage.StorageNotFound, storage.ObjectNotFound), ExitCode.STORAGE_MISSING),
        (storage.StorageUnavailable, ExitCode.UNAVAILABLE),
        (storage.StorageError, ExitCode.ERROR),
    ]
