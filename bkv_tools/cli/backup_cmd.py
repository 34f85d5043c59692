"""`bkv backup create|list|restore`: encrypted folder backups in a folder or S3 bucket.

Storage URLs: a folder path, ``file:///path`` or ``s3://bucket/prefix``. The S3
endpoint comes from ``--s3-endpoint`` or ``AWS_ENDPOINT_URL``; credentials from
the standard AWS environment variables.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bkv_tools.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_DAMAGED,
    EXIT_GENERIC,
    EXIT_UNREACHABLE,
    CliError,
    load_key,
)
from client_sdk.progress import ProgressBar, format_size


def register(sub: Any) -> None:
    """Add the `backup` command group to the `bkv` parser."""
    group = sub.add_parser(
        "backup",
        help="create, list and restore encrypted folder backups",
        description="Create, list and restore end-to-end encrypted folder backups.",
    )
    commands = group.add_subparsers(dest="backup_command", required=True, metavar="COMMAND")

    create = commands.add_parser(
        "create",
        help="back up a folder (prints the backup id)",
        description="Pack SRC_DIR, encrypt it for the backup key's recipient and store it at URL. "
        "Only the public recipient is needed. Prints the new backup id.",
    )
    create.add_argument("src_dir", metavar="SRC_DIR", type=Path, help="the folder to back up")
    create.add_argument("--to", required=True, metavar="URL", help="where to store the backup")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--key-file", type=Path, help="encrypt to the recipient of this key")
    who.add_argument("-r", "--recipient", help="the age recipient (age1...) to encrypt to")
    _storage_options(create, progress=True)
    create.set_defaults(handler=run_create)

    lister = commands.add_parser(
        "list",
        help="list the backups in a storage",
        description="List the backups stored at URL: id, creation time, size.",
    )
    lister.add_argument("--to", required=True, metavar="URL", help="the storage to list")
    _storage_options(lister, progress=False)
    lister.set_defaults(handler=run_list)

    restore = commands.add_parser(
        "restore",
        help="restore a backup into a new folder",
        description="Decrypt and unpack a backup into DEST_DIR, which must not exist or be "
        "empty. DEST_DIR appears only if the whole backup authenticated. URL_OR_ID is the "
        "backup's URL, or its id together with --from URL.",
    )
    restore.add_argument("backup", metavar="URL_OR_ID", help="backup URL, or id with --from")
    restore.add_argument("dest_dir", metavar="DEST_DIR", type=Path, help="folder to restore into")
    restore.add_argument("--key-file", type=Path, help="the backup key file (default: stdin)")
    restore.add_argument("--from", dest="source", metavar="URL", help="storage holding the id")
    _storage_options(restore, progress=True)
    restore.set_defaults(handler=run_restore)


def _storage_options(parser: argparse.ArgumentParser, *, progress: bool) -> None:
    parser.add_argument(
        "--s3-endpoint", metavar="URL", help="S3 endpoint (default: $AWS_ENDPOINT_URL or AWS)"
    )
    if progress:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_create(args: argparse.Namespace) -> int:
    """Back up SRC_DIR; print the id on stdout (and nothing else there)."""
    from client_sdk import backup  # keeps `bkv --help` fast

    recipient = args.recipient
    if recipient is None:
        recipient = load_key(args.key_file).recipient()

    def skipped(path: str, reason: str) -> None:
        print(f"bkv: skipped {path}: {reason}", file=sys.stderr)

    with _errors(), ProgressBar("encrypting", enabled=False if args.quiet else None) as bar:
        backup_id = backup.create_backup(
            args.src_dir,
            args.to,
            recipient,
            progress=bar if bar.enabled else None,
            s3_endpoint=args.s3_endpoint,
            on_skip=skipped,
        )
    print(backup_id)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """One line per backup, oldest first."""
    from client_sdk import backup

    with _errors():
        infos = backup.list_backups(args.to, s3_endpoint=args.s3_endpoint)
    if not infos:
        print(f"no backups in {args.to}", file=sys.stderr)
        return 0
    print(f"{'ID':<25} {'CREATED (UTC)':<20} {'SIZE':>10}")
    for info in infos:
        created = info.created.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{info.backup_id:<25} {created:<20} {format_size(info.size):>10}")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Restore into DEST_DIR, all or nothing."""
    from client_sdk import backup

    key = load_key(args.key_file)
    with _errors(), ProgressBar("restoring", enabled=False if args.quiet else None) as bar:
        backup.restore_backup(
            args.backup,
            key,
            args.dest_dir,
            progress=bar if bar.enabled else None,
            storage_url=args.source,
            s3_endpoint=args.s3_endpoint,
        )
    print(f"restored into {args.dest_dir}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Map library errors to one-line messages and the documented exit codes."""
    from client_sdk import backup, storage

    try:
        yield
    except (backup.WrongKeyError, backup.InvalidRecipientError) as err:
        raise CliError(str(err), EXIT_BAD_INPUT) from None
    except backup.DamagedBackupError as err:
        raise CliError(str(err), EXIT_DAMAGED) from None
    except (backup.SourceError, backup.DestinationError) as err:
        raise CliError(str(err), EXIT_GENERIC) from None
    except (backup.BackupError, storage.StorageURLError) as err:
        raise CliError(str(err), EXIT_BAD_INPUT) from None
    except storage.StorageError as err:
        raise CliError(str(err), EXIT_UNREACHABLE) from None
