"""`bkv vault register|recover|delete`: deposit a backup key under a password, get it back,
or erase the deposit.

The password comes from an interactive prompt or, with ``--password-stdin``,
from one line on standard input; never from the command line, where other
users and shell history could read it.
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bkv_protocol.sealing import MAX_ACCOUNT_BYTES
from bkv_tools.cli.common import STDIO, CliError
from bkv_tools.cli.exit_codes import ExitCode, classify
from client_sdk.config import ClientConfig, default_client_config_path
from client_sdk.errors import AlreadyRegistered, ConfigError, VaultError
from client_sdk.keys import BackupKey, KeyFormatError, read_key_file, write_key_file

if TYPE_CHECKING:
    from client_sdk.vault_client import VaultClient

T = TypeVar("T")

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
# Flags someone might try for a password: refused, and their value never echoed.
_PASSWORD_FLAGS = ("--password", "--pass", "--passwd", "--pw", "-p")


def register(sub: Any) -> None:
    """Add the `vault` command group to the `bkv` parser."""
    group = sub.add_parser(
        "vault",
        help="deposit the backup key in the vault under a password, or recover it",
        description="Deposit the backup key in the Backup Key Vault, or recover it.",
    )
    commands = group.add_subparsers(dest="vault_command", required=True, metavar="COMMAND")

    reg = commands.add_parser(
        "register",
        allow_abbrev=False,
        help="deposit a backup key under a password",
        description="Deposit the key from --key-file in the vault, protected by a password. "
        "The vault destroys the key after too many wrong passwords. An account that already "
        "has a deposit keeps it unless you confirm (on a terminal) or pass --replace.",
    )
    reg.add_argument("--key-file", required=True, type=Path, help="the backup key file to deposit")
    reg.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing deposit of the account (its old password stops working)",
    )
    _common_options(reg)
    reg.set_defaults(handler=run_register)

    rec = commands.add_parser(
        "recover",
        allow_abbrev=False,
        help="recover the deposited backup key with the password",
        description="Recover the backup key from the vault and write it to a new file (mode 0600). "
        "Every wrong password uses one of the limited attempts.",
    )
    rec.add_argument(
        "--out-key-file", required=True, type=Path,
        help='new file to write the key to ("-" prints it on standard output)'
    )
    _common_options(rec)
    rec.set_defaults(handler=run_recover)

    rm = commands.add_parser(
        "delete",
        allow_abbrev=False,
        help="erase the deposit of an account (the password authorises it)",
        description="Erase the account's deposit from the vault. The password is checked "
        "first (a wrong one uses an attempt, as in recover); the deletion is then committed "
        "on a majority of vault nodes, audited, and compacted off their disks. The backup "
        "key is not returned: keep it written down, or your backups become unreadable.",
    )
    _common_options(rm)
    rm.set_defaults(handler=run_delete)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--account", required=True, help="the account the key belongs to")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="client config (default: client.toml of the local cluster)",
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of a prompt",
    )
    parser.add_argument(
        *_PASSWORD_FLAGS,
        nargs="?",
        dest="refused_password",
        action=_RefusePassword,
        help=argparse.SUPPRESS,
    )


class _RefusePassword(argparse.Action):
    """Catches ``--password X`` so the value is neither used nor echoed back."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "a password is never accepted on the command line; "
            "type it at the prompt or use --password-stdin"
        )


def run_register(args: argparse.Namespace) -> int:
    """Deposit the key file's key under a new password."""
    account = _account(args.account)
    key = _read_key(args.key_file)
    with _client(_load_config(args.config)) as client:
        password = _read_password(args.password_stdin, confirm=True)
        try:
            _vault_call(lambda: client.register(account, key.raw, password, replace=args.replace))
        except _Exists:
            if args.password_stdin or not sys.stdin.isatty():
                raise CliError(
                    f"account {account!r} already has a deposit in the vault; pass --replace "
                    "to replace it (its old password stops working)",
                    ExitCode.ALREADY_REGISTERED,
                ) from None
            if not _confirm(f"account {account!r} already has a deposit; replacing it makes "
                            "its old password useless. Replace it? [y/N] "):
                raise CliError("kept the existing deposit", ExitCode.ALREADY_REGISTERED) from None
            _vault_call(lambda: client.register(account, key.raw, password, replace=True))
    print(f"deposited the backup key of account {account!r} in the vault")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """Erase the deposit after a successful password check."""
    account = _account(args.account)
    with _client(_load_config(args.config)) as client:
        password = _read_password(args.password_stdin, confirm=False)
        _vault_call(lambda: client.delete(account, password))
    print(f"deleted the vault deposit of account {account!r}")
    return 0


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run_recover(args: argparse.Namespace) -> int:
    """Recover the key with the password and write it to a new 0600 file."""
    account = _account(args.account)
    out: Path = args.out_key_file
    _check_new_file(out)  # before spending a guess on it
    with _client(_load_config(args.config)) as client:
        password = _read_password(args.password_stdin, confirm=False)
        raw = _vault_call(lambda: client.recover(account, password))
    if str(out) == STDIO:
        print(BackupKey(raw).digits(), flush=True)
        print(f"recovered the backup key of account {account!r}", file=sys.stderr)
        return 0
    try:
        write_key_file(out, BackupKey(raw))
    except FileExistsError:
        raise CliError(f"{out} appeared meanwhile; not overwriting it", ExitCode.ERROR) from None
    except OSError as err:
        raise CliError(f"can't write {out}: {err.strerror}", ExitCode.ERROR) from None
    print(f"recovered the backup key of account {account!r} into {out}")
    return 0


def _client(config: ClientConfig) -> VaultClient:
    from client_sdk.vault_client import VaultClient  # keeps `bkv --help` fast

    try:
        return VaultClient(config)
    except ConfigError as err:
        raise CliError(str(err), ExitCode.USAGE) from None


class _Exists(Exception):
    """Internal: the vault refused to replace a live deposit without consent."""


def _vault_call(call: Callable[[], T]) -> T:
    """Run one vault operation; every VaultError becomes a one-line CliError with its code."""
    try:
        return call()
    except AlreadyRegistered:
        raise _Exists() from None
    except (VaultError, ConfigError) as err:
        code, message = classify(err) or (ExitCode.ERROR, str(err))
        raise CliError(message, code) from None


def _account(account: str) -> str:
    if not account or not account.isprintable():
        raise CliError("--account must be a non-empty printable name", ExitCode.USAGE)
    if len(account.encode("utf-8", "surrogateescape")) > MAX_ACCOUNT_BYTES:
        raise CliError(f"--account must be at most {MAX_ACCOUNT_BYTES} bytes", ExitCode.USAGE)
    return account


def _read_key(path: Path) -> BackupKey:
    try:
        return read_key_file(path)
    except KeyFormatError as err:
        raise CliError(str(err), ExitCode.USAGE) from None
    except OSError as err:
        raise CliError(f"can't read key file {path}: {err.strerror}", ExitCode.USAGE) from None


def _check_new_file(path: Path) -> None:
    if str(path) == STDIO:
        return
    if path.exists() or path.is_symlink():
        raise CliError(f"{path} already exists; not overwriting a key file", ExitCode.USAGE)
    if not path.parent.is_dir():
        raise CliError(f"{path.parent} is not a directory", ExitCode.USAGE)


def _load_config(path: Path | None) -> ClientConfig:
    if path is None:
        path = default_client_config_path()
        if not path.exists():
            raise CliError(
                f"no cluster config at {path}: start one with `bkv cluster up` or pass --config",
                ExitCode.USAGE,
            )
    try:
        return ClientConfig.load(path)
    except ConfigError as err:
        raise CliError(str(err), ExitCode.USAGE) from None


def _read_password(from_stdin: bool, *, confirm: bool) -> str:
    """One line of stdin, or a prompt (twice when choosing a new password)."""
    if from_stdin:
        try:
            line = sys.stdin.readline(MAX_PASSWORD_CHARS + 3)
        except UnicodeDecodeError:
            raise CliError(
                "the password on standard input is not valid text", ExitCode.USAGE
            ) from None
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise CliError("no password on standard input", ExitCode.USAGE)
    else:
        try:
            password = getpass.getpass("Vault password: ")
            if confirm:
                again = getpass.getpass("Repeat the password: ")
                if not hmac.compare_digest(_utf8(password), _utf8(again)):
                    raise CliError("the passwords do not match", ExitCode.USAGE)
        except EOFError:
            raise CliError("no password entered", ExitCode.USAGE) from None
    if len(password) > MAX_PASSWORD_CHARS:
        raise CliError(f"password is longer than {MAX_PASSWORD_CHARS} characters", ExitCode.USAGE)
    if confirm and len(password) < MIN_PASSWORD_CHARS:
        raise CliError(f"password must be at least {MIN_PASSWORD_CHARS} characters", ExitCode.USAGE)
    if not password:
        raise CliError("the password must not be empty", ExitCode.USAGE)
    _utf8(password)
    return password


def _utf8(password: str) -> bytes:
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError("the password is not valid text", ExitCode.USAGE) from None
