"""`bkv key new|public|export-age`: make a backup key and derive its age forms.

Keys are read from a key file or standard input, never from the command line,
where other users (``ps``) and shell history would see them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bkv_tools.cli.common import CliError, load_key
from bkv_tools.cli.exit_codes import ExitCode
from client_sdk.keys import BackupKey, write_key_file


def register(sub: Any) -> None:
    """Add the `key` command group to the `bkv` parser."""
    group = sub.add_parser(
        "key",
        help="create a backup key, or show its public recipient / age identity",
        description="Create a 64-digit backup key, or derive its age recipient and identity.",
    )
    commands = group.add_subparsers(dest="key_command", required=True, metavar="COMMAND")

    new = commands.add_parser(
        "new",
        help="generate a new random backup key",
        description="Generate a new 256-bit backup key and print it as 64 hex digits "
        "(or write it to a new file, mode 0600, with --out). Write it down and keep it safe: "
        "it is the only way to open backups made for it.",
    )
    new.add_argument("--out", type=Path, help="write the key to this new file instead of stdout")
    new.set_defaults(handler=run_new)

    for name, helptext, handler in (
        ("public", "print the key's public age recipient (age1...)", run_public),
        ("export-age", "print the key as an age identity (AGE-SECRET-KEY-1...)", run_export),
    ):
        cmd = commands.add_parser(
            name,
            help=helptext,
            description=f"Read a backup key and {helptext}. The key comes from --key-file "
            "or standard input.",
        )
        cmd.add_argument("--key-file", type=Path, help="key file (default: read standard input)")
        cmd.set_defaults(handler=handler)


def run_new(args: argparse.Namespace) -> int:
    """Print a fresh key, or store it in a new 0600 file."""
    key = BackupKey.generate()
    out: Path | None = args.out
    if out is None:
        print(key.digits())
        return 0
    try:
        write_key_file(out, key)
    except FileExistsError:
        message = f"{out} already exists; not overwriting a key file"
        raise CliError(message, ExitCode.ERROR) from None
    except OSError as err:
        raise CliError(f"can't write {out}: {err.strerror}", ExitCode.ERROR) from None
    print(f"wrote a new backup key to {out}", file=sys.stderr)
    return 0


def run_public(args: argparse.Namespace) -> int:
    """The recipient: safe to share; anyone can make backups only this key opens."""
    print(load_key(args.key_file).recipient())
    return 0


def run_export(args: argparse.Namespace) -> int:
    """The identity `age -d -i` accepts: as secret as the key itself."""
    print(load_key(args.key_file).identity())
    return 0
