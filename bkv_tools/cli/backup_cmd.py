"""`bkv backup create|list|restore|forget|check`: incremental encrypted folder backups.

A thin shell over :mod:`client_sdk.repository`: it parses, calls, prints.
Storage URLs: a folder path, ``file:///path`` or ``s3://bucket/prefix``. The S3
endpoint comes from ``--s3-endpoint`` or ``AWS_ENDPOINT_URL``; credentials from
the standard AWS environment variables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bkv_tools.cli.common import (
    CliError,
    cli_errors,
    parse_key_text,
    read_key_text,
)
from bkv_tools.cli.exit_codes import ExitCode
from client_sdk.key_typos import digit_count
from client_sdk.keys import HEX_DIGITS, BackupKey
from client_sdk.progress import ProgressBar, format_size


def register(sub: Any) -> None:
    """Add the `backup` command group to the `bkv` parser."""
    group = sub.add_parser(
        "backup",
        help="incremental encrypted folder backups",
        description="Create, list, restore, forget and check end-to-end encrypted, "
        "deduplicated folder backups. Every stored object is an age file for the key.",
    )
    commands = group.add_subparsers(dest="backup_command", required=True, metavar="COMMAND")

    create = commands.add_parser(
        "create",
        help="back up a folder (prints the backup id)",
        description="Back up SRC_DIR into the repository at URL, storing only data the "
        "repository does not hold yet. Prints the new backup id.",
    )
    create.add_argument("src_dir", metavar="SRC_DIR", type=Path, help="the folder to back up")
    create.add_argument("--to", required=True, metavar="URL", help="the repository")
    _key_option(create)
    _common(create, progress=True, as_json=True)
    create.set_defaults(handler=run_create)

    lister = commands.add_parser(
        "list",
        help="list the backups in a repository",
        description="List the backups at URL: id, time, files, size and new bytes stored.",
    )
    lister.add_argument("--to", required=True, metavar="URL", help="the repository")
    _key_option(lister)
    _common(lister, progress=False, as_json=True)
    lister.set_defaults(handler=run_list)

    restore = commands.add_parser(
        "restore",
        help="restore a backup into a new folder",
        description="Restore backup ID from --from URL into DEST_DIR, which must not exist "
        "or be empty; it appears only once everything is restored and verified. "
        "A single-file backup can also be named by its URL, without --from.",
    )
    restore.add_argument("backup", metavar="ID", help="backup id (or a single-file backup URL)")
    restore.add_argument("dest_dir", metavar="DEST_DIR", type=Path, help="folder to restore into")
    restore.add_argument("--from", dest="source", metavar="URL", help="the repository")
    restore.add_argument("--path", metavar="P", help="restore only this file or folder")
    _key_option(restore)
    _common(restore, progress=True, as_json=False)
    restore.set_defaults(handler=run_restore)

    forget = commands.add_parser(
        "forget",
        help="remove backups, then the data no backup uses",
        description="Remove the named backups (or all but the newest N), then delete or "
        "repack the packs no remaining backup uses.",
    )
    forget.add_argument("ids", metavar="ID", nargs="*", help="backups to remove")
    forget.add_argument("--to", required=True, metavar="URL", help="the repository")
    forget.add_argument("--keep-last", type=int, metavar="N", help="keep only the newest N")
    _key_option(forget)
    _common(forget, progress=False, as_json=False)
    forget.set_defaults(handler=run_forget)

    check = commands.add_parser(
        "check",
        help="verify a repository",
        description="Check that every backup at URL can be restored: structure by default, "
        "every byte of every pack with --read-data.",
    )
    check.add_argument("--to", required=True, metavar="URL", help="the repository")
    check.add_argument("--read-data", action="store_true", help="download and verify all data")
    _key_option(check)
    _common(check, progress=False, as_json=False)
    check.set_defaults(handler=run_check)


def _key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", type=Path, help="the backup key file (default: stdin)")


def _common(parser: argparse.ArgumentParser, *, progress: bool, as_json: bool) -> None:
    parser.add_argument(
        "--s3-endpoint", metavar="URL", help="S3 endpoint (default: $AWS_ENDPOINT_URL or AWS)"
    )
    if progress:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    if as_json:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _skipped(path: str, reason: str) -> None:
    print(f"bkv: skipped {path}: {reason}", file=sys.stderr)


def run_create(args: argparse.Namespace) -> int:
    """Back up SRC_DIR; print the id on stdout (and nothing else there)."""
    from client_sdk import repository  # keeps `bkv --help` fast

    key, hint = _key(args, args.to)
    with _errors(hint), ProgressBar("backing up", enabled=False if args.quiet else None) as bar:
        result = repository.create(
            args.src_dir,
            args.to,
            key,
            s3_endpoint=args.s3_endpoint,
            on_skip=_skipped,
            progress=bar if bar.enabled else None,
        )
        _done()
    if args.json:
        print(json.dumps(vars(result)))
    else:
        print(result.snapshot_id)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """One line per backup, oldest first."""
    from client_sdk import repository

    key, hint = _key(args, args.to)
    damaged: list[str] = []
    with _errors(hint):
        found = repository.list_backups(
            args.to, key, s3_endpoint=args.s3_endpoint, on_damaged=damaged.append
        )
    _list_table(args, found)
    for problem in damaged:
        print(f"bkv: {problem}", file=sys.stderr)
    if damaged:
        raise CliError(f"{len(damaged)} damaged backups not listed", ExitCode.DAMAGED)
    return 0


def _list_table(args: argparse.Namespace, found: list[Any]) -> None:
    if args.json:
        rows = [
            {"id": b.backup_id, "time": b.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "files": b.files, "size": b.size, "new_bytes": b.new_bytes, "kind": b.kind}
            for b in found
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return
    if not found:
        print(f"no backups in {args.to}", file=sys.stderr)
        return
    print(f"{'ID':<25} {'TIME (UTC)':<20} {'FILES':>7} {'SIZE':>10} {'NEW':>10}")
    for b in found:
        created = b.created.strftime("%Y-%m-%d %H:%M:%S")
        files = "-" if b.files is None else str(b.files)
        size, new = format_size(b.size), format_size(b.new_bytes)
        print(f"{b.backup_id:<25} {created:<20} {files:>7} {size:>10} {new:>10}")


def run_restore(args: argparse.Namespace) -> int:
    """Restore into DEST_DIR, all or nothing."""
    from client_sdk import backup, repository

    key, hint = _key(args, args.source)
    with _errors(hint), ProgressBar("restoring", enabled=False if args.quiet else None) as bar:
        shown = bar if bar.enabled else None
        if args.source is None:  # a single-file backup named by its URL
            if args.path is not None:
                raise CliError("--path needs --from URL", ExitCode.USAGE)
            backup.restore_backup(
                args.backup, key, args.dest_dir, progress=shown, s3_endpoint=args.s3_endpoint
            )
        else:
            repository.restore(
                args.backup, args.source, key, args.dest_dir,
                path=args.path, s3_endpoint=args.s3_endpoint, progress=shown,
            )  # fmt: skip
        _done()
    print(f"restored into {args.dest_dir}", file=sys.stderr)
    return 0


def run_forget(args: argparse.Namespace) -> int:
    from client_sdk import repository

    if bool(args.ids) == (args.keep_last is not None):
        raise CliError("give backup ids or --keep-last N (not both)", ExitCode.USAGE)
    key, hint = _key(args, args.to)
    with _errors(hint):
        result = repository.forget(
            args.to, key, ids=args.ids or None, keep_last=args.keep_last,
            s3_endpoint=args.s3_endpoint,
        )  # fmt: skip
    for backup_id in result.removed:
        print(f"removed {backup_id}")
    print(
        f"{result.kept} backups kept; {result.deleted_packs} packs deleted, "
        f"{result.repacked_packs} repacked",
        file=sys.stderr,
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from client_sdk import repository

    key, hint = _key(args, args.to)
    with _errors(hint):
        report = repository.check(args.to, key, read_data=args.read_data,
                                  s3_endpoint=args.s3_endpoint)  # fmt: skip
    read = f", {format_size(report.read_bytes)} read" if args.read_data else ""
    print(f"{report.snapshots} backups, {report.packs} packs, {report.chunks} chunks{read}")
    if report.unindexed_packs:
        print(f"{report.unindexed_packs} packs left by an interrupted backup "
              "(the next backup reuses them)")  # fmt: skip
    for problem in report.errors:
        print(f"bkv: {problem}", file=sys.stderr)
    if report.errors:
        raise CliError(f"{len(report.errors)} problems found", ExitCode.DAMAGED)
    print("no problems found")
    return 0


def _done() -> None:
    """The work is published: a Ctrl-C from now on must not report it as interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _errors(hint: Callable[[], str | None] | None = None) -> Iterator[None]:
    """Library errors to one-line messages and the exit-code table (``exit_codes``).

    ``hint`` names a mistyped digit when the key does not open the repository.
    """
    from client_sdk import backup, repository

    try:
        with cli_errors():
            try:
                yield
            except backup.WrongKeyError as err:
                found = hint() if hint is not None else None
                if found is None:
                    raise
                raise CliError(f"{err}; {found}", ExitCode.WRONG_SECRET) from None
    except repository.RepositoryLocked as err:
        raise CliError(str(err), ExitCode.ERROR) from None


def _key(args: argparse.Namespace, url: str | None
         ) -> tuple[BackupKey, Callable[[], str | None]]:
    """The key, and a hint finder for when it does not open the repository at ``url``.

    A key with one digit missing or extra does not even parse; it is checked
    against the repository's key fingerprint right away.
    """
    text, where = read_key_text(args.key_file)
    endpoint = getattr(args, "s3_endpoint", None)

    def hint() -> str | None:
        return _typo_hint(text, url, endpoint)

    try:
        key = parse_key_text(text, where)
    except CliError as err:
        found = hint() if digit_count(text) in (HEX_DIGITS - 1, HEX_DIGITS + 1) else None
        if found is None:
            raise
        raise CliError(f"{err}; {found}", ExitCode.WRONG_SECRET) from None
    return key, hint


def _typo_hint(text: str, url: str | None, s3_endpoint: str | None) -> str | None:
    """"digit 19 looks wrong: ..." if one edit of ``text`` matches the repository's key."""
    from client_sdk.key_typos import find_typo, fingerprints_in
    from client_sdk.storage import StorageError, open_storage

    if not url:
        return None
    try:
        names = open_storage(url, s3_endpoint=s3_endpoint).names()
    except StorageError:
        return None
    for fp in fingerprints_in(names):
        typo = find_typo(text, fp)
        if typo is not None:
            return typo.message()
    return None
