"""Helpers shared by the `bkv` subcommands: errors, key input, atomic output files."""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bkv_tools.cli.exit_codes import ExitCode, classify
from client_sdk.keys import MAX_KEY_FILE_BYTES, BackupKey, KeyFormatError
from client_sdk.keys import read_key_text as read_key_file_text

STDIO = "-"


class CliError(Exception):
    """A user-facing error: printed as one line, no traceback, with its exit code.

    The codes are the :class:`~bkv_tools.cli.exit_codes.ExitCode` table.
    """

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn any SDK error (vault, age, backup, storage, key) into a CliError with its code.

    ``with cli_errors(): ...`` around a command's library calls is all a command
    needs for the exit-code table; anything :func:`classify` does not know is a
    bug and propagates unchanged.
    """
    try:
        yield
    except CliError:
        raise
    except Exception as err:
        known = classify(err)
        if known is None:
            raise
        raise CliError(known[1], known[0]) from None


def load_key(key_file: str | Path | None) -> BackupKey:
    """The backup key from ``key_file``, else from standard input (a hidden prompt on a TTY).

    Keys never come from the command line, where other users and shell history see them.
    """
    return parse_key_text(*read_key_text(key_file))


def read_key_text(key_file: str | Path | None) -> tuple[str, str]:
    """(the key as typed or stored, where it came from): the file, else standard input."""
    if key_file is not None and str(key_file) != STDIO:
        try:
            return read_key_file_text(key_file), str(key_file)
        except KeyFormatError as err:
            raise CliError(f"{key_file}: {err}", ExitCode.USAGE) from None
        except OSError as err:
            message = f"can't read key file {key_file}: {err.strerror}"
            raise CliError(message, ExitCode.USAGE) from None
    try:
        if sys.stdin.isatty():
            text = getpass.getpass("Backup key (64 hex digits): ")
        else:
            text = sys.stdin.read(MAX_KEY_FILE_BYTES + 1)
    except (EOFError, UnicodeDecodeError):
        raise CliError("no readable key on standard input", ExitCode.USAGE) from None
    if not text.strip():
        raise CliError("no key given: use --key-file FILE or type the key on stdin", ExitCode.USAGE)
    if len(text) > MAX_KEY_FILE_BYTES:
        raise CliError("standard input is too large to be a key", ExitCode.USAGE)
    return text, "key on standard input"


def parse_key_text(text: str, where: str) -> BackupKey:
    """The key in ``text``; a one-line usage error naming ``where`` otherwise."""
    try:
        return BackupKey.parse(text)
    except KeyFormatError as err:
        raise CliError(f"{where}: {err}", ExitCode.USAGE) from None


@contextlib.contextmanager
def open_input(name: str) -> Iterator[BinaryIO]:
    """A file to read, or standard input for "-"; a missing file is a one-line error."""
    if name == STDIO:
        yield sys.stdin.buffer
        return
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as err:
        raise CliError(f"can't read {name}: {err.strerror}", ExitCode.ERROR) from None
    with handle:
        yield handle


@contextlib.contextmanager
def atomic_output(name: str) -> Iterator[BinaryIO]:
    """Write to a private temporary file beside ``name``, renamed over it only on success.

    If the block raises, the temporary file is removed and ``name`` is untouched.
    "-" streams to standard output instead (where nothing can be taken back).
    Like ``cp`` and ``age``, the data is not forced to disk (no fsync): flushing
    is left to the OS. Backups written to storage are synced by the storage layer.
    """
    if name == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(name)
    if target.is_dir():
        raise CliError(f"{name} is a folder", ExitCode.ERROR)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as err:
        raise CliError(f"can't write {name}: {err.strerror}", ExitCode.ERROR) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            try:
                handle.flush()
            except OSError as err:
                raise CliError(f"can't write {name}: {err.strerror}", ExitCode.ERROR) from None
        try:
            os.replace(temp, target)
        except OSError as err:
            raise CliError(f"can't write {name}: {err.strerror}", ExitCode.ERROR) from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
