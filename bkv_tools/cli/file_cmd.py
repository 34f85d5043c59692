"""`bkv file encrypt|decrypt`: one file to or from the age format.

Decryption writes to a temporary file beside OUT and renames it only once the
whole file authenticated, so a wrong key or a damaged file leaves nothing
behind (with OUT = "-" the authenticated prefix may already have been written).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bkv_tools.cli.common import (
    STDIO,
    CliError,
    atomic_output,
    load_key,
    open_input,
)
from bkv_tools.cli.exit_codes import ExitCode
from client_sdk import age


def register(sub: Any) -> None:
    """Add the `file` command group to the `bkv` parser."""
    group = sub.add_parser(
        "file",
        help="encrypt or decrypt a single file (age format)",
        description="Encrypt or decrypt one file in the age v1 format, "
        "compatible with the `age` tool.",
    )
    commands = group.add_subparsers(dest="file_command", required=True, metavar="COMMAND")

    enc = commands.add_parser(
        "encrypt",
        help="encrypt a file to a backup key's recipient",
        description="Encrypt IN to OUT for a recipient (age1...) or the key in --key-file.",
    )
    who = enc.add_mutually_exclusive_group(required=True)
    who.add_argument("-r", "--recipient", help="the age recipient (age1...) to encrypt to")
    who.add_argument("--key-file", help="encrypt to the recipient of this backup key")
    _in_out(enc)
    enc.set_defaults(handler=run_encrypt)

    dec = commands.add_parser(
        "decrypt",
        help="decrypt a file with a backup key",
        description="Decrypt IN to OUT with the key in --key-file (or on standard input). "
        "OUT appears only if the whole file authenticated.",
    )
    dec.add_argument("--key-file", help="the backup key file (default: standard input)")
    _in_out(dec)
    dec.set_defaults(handler=run_decrypt)


def _in_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help='file to read ("-" for standard input)')
    parser.add_argument(
        "output", metavar="OUT", nargs="?", help='file to write ("-" for standard output)'
    )
    parser.add_argument("-o", "--output", dest="output_option", metavar="OUT", help="same as OUT")


def _output(args: argparse.Namespace) -> str:
    if args.output is not None and args.output_option is not None:
        raise CliError("give OUT either as an argument or with -o, not both", ExitCode.USAGE)
    output: str | None = args.output if args.output is not None else args.output_option
    if output is None:
        raise CliError('name the output file (OUT, or "-" for standard output)', ExitCode.USAGE)
    return output


def run_encrypt(args: argparse.Namespace) -> int:
    """Encrypt IN to OUT for the recipient."""
    output = _output(args)
    if args.recipient is not None:
        try:
            recipient = age.X25519Recipient.parse(args.recipient)
        except age.KeyEncodingError as err:
            raise CliError(str(err), ExitCode.USAGE) from None
    else:
        if args.key_file == STDIO and args.input == STDIO:
            raise CliError("the key and IN can't both come from standard input", ExitCode.USAGE)
        recipient = age.X25519Recipient.parse(load_key(args.key_file).recipient())
    if output == STDIO and sys.stdout.isatty():
        raise CliError('refusing to write encrypted data to a terminal (use OUT or "> file")')
    with open_input(args.input) as src, atomic_output(output) as dst:
        try:
            age.encrypt(src, dst, [recipient])
        except BrokenPipeError:  # OUT is a pipe whose reader left: end quietly, not an error
            raise
        except OSError as err:
            raise CliError(f"I/O error: {err.strerror}", ExitCode.ERROR) from None
    return 0


def run_decrypt(args: argparse.Namespace) -> int:
    """Decrypt IN to OUT; OUT is left untouched unless everything authenticated."""
    output = _output(args)
    if args.key_file in (None, STDIO) and args.input == STDIO:
        raise CliError("IN is standard input, so the key needs --key-file", ExitCode.USAGE)
    key = load_key(args.key_file)
    with open_input(args.input) as src, atomic_output(output) as dst:
        try:
            age.decrypt(src, dst, [key.identity()])
        except age.NoIdentityMatchError:
            raise CliError("this key does not open this file", ExitCode.WRONG_SECRET) from None
        except age.DamagedFileError as err:
            where = f" (at byte {err.offset})" if err.offset is not None else ""
            raise CliError(f"the file is damaged{where}", ExitCode.DAMAGED) from None
        except age.AgeError as err:
            raise CliError(f"can't decrypt {args.input}: {err}", ExitCode.DAMAGED) from None
        except BrokenPipeError:  # OUT is a pipe whose reader left: end quietly, not an error
            raise
        except OSError as err:
            raise CliError(f"I/O error: {err.strerror}", ExitCode.ERROR) from None
    return 0
