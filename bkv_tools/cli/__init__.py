"""`bkv`: a thin command-line shell over client_sdk and the cluster tooling; parses and prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bkv_ops.console import quiet_on_closed_pipe
from bkv_tools.cli import (
    backup_cmd,
    bench_cmd,
    cluster_cmd,
    demo_cmd,
    file_cmd,
    key_cmd,
    vault_cmd,
)
from bkv_tools.cli.common import CliError
from bkv_tools.cli.exit_codes import ExitCode, classify, help_epilog

COMMAND_GROUPS = (key_cmd, file_cmd, backup_cmd, vault_cmd, cluster_cmd, demo_cmd, bench_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bkv",
        description="End-to-end encrypted backups and the Backup Key Vault.",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (what `--version` prints on every script)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backup-key-vault")
    except PackageNotFoundError:
        return "unknown"


@quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except CliError as err:
        print(f"bkv: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("bkv: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): quiet_on_closed_pipe ends it
        raise
    except Exception as err:
        known = classify(err)  # an SDK error a command let through: still one line, its code
        if known is None:
            raise
        print(f"bkv: {known[1]}", file=sys.stderr)
        return known[0]


if __name__ == "__main__":
    sys.exit(main())
