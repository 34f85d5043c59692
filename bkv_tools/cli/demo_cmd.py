"""`bkv demo`: start a throw-away cluster and walk through backup, loss and recovery."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bkv_tools.cli.common import CliError
from bkv_tools.cli.exit_codes import ExitCode, classify


def register(sub: Any) -> None:
    """Add the `demo` command to the `bkv` parser."""
    parser = sub.add_parser("demo", help="end-to-end demo on a temporary local cluster")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="cluster state directory (default: a temporary one)")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from bkv_tools.demo import DemoFailed, run_demo
    from bkv_tools.launcher import LauncherError
    from client_sdk.backup import BackupError
    from client_sdk.errors import VaultError

    try:
        run_demo(args.state_dir, say=lambda line: print(line, flush=True))
    except (DemoFailed, BackupError) as err:
        raise CliError(f"demo failed: {err}", ExitCode.ERROR) from None
    except LauncherError as err:
        raise CliError(f"demo failed: {err}", ExitCode.ERROR) from None
    except VaultError as err:
        code = (classify(err) or (ExitCode.ERROR, ""))[0]
        raise CliError(f"demo failed: {err}", code) from None
    return 0
