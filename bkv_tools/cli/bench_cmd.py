"""`bkv bench opaque|files|backup|vault|shard`: print performance figures (never pass/fail
on time)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from bkv_tools.cli.common import CliError
from bkv_tools.cli.exit_codes import ExitCode, classify


def register(sub: Any) -> None:
    """Add the `bench` command group to the `bkv` parser."""
    parser = sub.add_parser("bench", help="benchmarks (print figures)")
    group = parser.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    opaque = group.add_parser("opaque", help="OPAQUE/OPRF operations per second")
    opaque.set_defaults(handler=_lazy("bkv_tools.bench_opaque"))
    files = group.add_parser("files", help="backup encryption/decryption throughput")
    files.set_defaults(handler=_lazy("bkv_tools.bench_files"))
    backup = group.add_parser(
        "backup", help="incremental backups: bkv against restic on a WhatsApp-like folder"
    )
    backup.add_argument("--size-mb", type=int, default=640, help="folder size (default 640)")
    backup.add_argument("--workdir", type=Path, default=None, help="where to build the folder")
    backup.add_argument("--seed", type=int, default=1, help="content seed")
    backup.set_defaults(handler=_backup)
    vault = group.add_parser("vault", help="vault registrations/recoveries per second, latency")
    vault.add_argument("--config", type=Path, default=None,
                       help="client.toml of a running cluster (default: start a temporary one)")
    vault.add_argument("--accounts", type=int, default=40, help="accounts to register")
    vault.add_argument("--recoveries", type=int, default=400, help="recoveries to run")
    vault.add_argument("--clients", type=int, default=8, help="concurrent clients")
    vault.set_defaults(handler=_vault)
    shard = group.add_parser(
        "shard", help="a 5-node shard with N deposits: memory, disk, restarts, snapshots, "
                      "catch-up, recoveries/s")
    shard.add_argument("--deposits", type=int, default=1_000_000,
                       help="deposits in the shard (default 1000000)")
    shard.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    shard.set_defaults(handler=_shard)


def _lazy(module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        del args
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise CliError(f"benchmark {module} is not available: {err}", ExitCode.ERROR) from None
        code = mod.main()
        return int(code) if isinstance(code, int) else 0

    return run


def _backup(args: argparse.Namespace) -> int:
    from bkv_tools.bench_backup import run

    if not 8 <= args.size_mb <= 1_000_000:
        raise CliError("--size-mb must be between 8 and 1000000", 2)
    return run(args.size_mb, args.workdir, args.seed)


def _shard(args: argparse.Namespace) -> int:
    from bkv_tools.bench_shard import main

    if not 1_000 <= args.deposits <= 100_000_000:
        raise CliError("--deposits must be between 1000 and 100000000", ExitCode.USAGE)
    return main(["--deposits", str(args.deposits), *(["--json"] if args.json else [])])


def _vault(args: argparse.Namespace) -> int:
    from bkv_tools.bench_vault import BenchSettings, run_bench
    from bkv_tools.launcher import LauncherError
    from client_sdk.errors import VaultError

    for name in ("accounts", "recoveries", "clients"):
        if not 1 <= getattr(args, name) <= 100_000:
            raise CliError(f"--{name} must be between 1 and 100000", ExitCode.USAGE)
    settings = BenchSettings(accounts=args.accounts, recoveries=args.recoveries,
                             clients=min(args.clients, 64))
    try:
        run_bench(settings, config_path=args.config)
    except (LauncherError, VaultError) as err:
        code = (classify(err) or (ExitCode.ERROR, ""))[0]
        raise CliError(f"vault benchmark failed: {err}", code) from None
    return 0
