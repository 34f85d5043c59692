"""`bkv-vault-node`: create a fleet (`init-fleet`) and run a vault node (`run`).

Admin commands (`member`, `link-key`, `snapshot`, `hsm`) live in ``vault_node.admin.cli``.

Exit codes (the project-wide table of ``bkv_tools.cli.exit_codes``): 0 ok, 1
unexpected failure or cannot listen, 2 bad configuration or keys; the admin
commands add 1 refused change, 6 damaged high-water mark, 8 no answer in time,
12 transport secret refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from bkv_ops.console import quiet_on_closed_pipe
from bkv_ops.logs import LOG_FORMATS, configure_logging, pick_format
from vault_node.config import ConfigError, NodeConfig
from vault_node.hsm.fleet import (
    FleetHsm,
    HsmError,
    MasterKeyBackend,
    SoftwareMasterKey,
    create_master_key_file,
    init_fleet,
)
from vault_node.hsm.pkcs11 import Pkcs11MasterKey, create_token_key
from vault_node.raft.audit import print_audit


def _master_for_init(args: argparse.Namespace) -> tuple[MasterKeyBackend, Path, str | None]:
    """The master key (created if absent), the fleet file path and what was created."""
    key_file: Path | None = args.master_key_file
    out: Path | None = args.fleet_file
    if args.config is not None:
        cfg = NodeConfig.load(args.config)
        out = out or cfg.fleet_file
        if cfg.pkcs11 is not None:  # the key is generated inside the token, never exported
            created = create_token_key(cfg.pkcs11)
            note = f"generated master key {cfg.pkcs11.key_label!r} in PKCS#11 token"
            return Pkcs11MasterKey.open_token(cfg.pkcs11), out, note if created else None
        key_file = key_file or cfg.master_key_file
    if key_file is None or out is None:
        raise ConfigError("give --config, or --master-key-file and --fleet-file")
    created = create_master_key_file(key_file)
    note = f"created master key file {key_file} (mode 0600)"
    # Same key source as `run` ($BKV_MASTER_KEY wins), so the nodes can open the fleet.
    return SoftwareMasterKey.load(key_file), out, note if created else None


def _init_fleet(args: argparse.Namespace) -> int:
    out: Path | None = args.fleet_file
    if out is not None and out.exists():
        print(f"bkv-vault-node: {out} already exists; refusing to overwrite", file=sys.stderr)
        return 2
    try:
        master, out, created = _master_for_init(args)
        if out.exists():
            print(f"bkv-vault-node: {out} already exists; refusing to overwrite", file=sys.stderr)
            return 2
        blob = init_fleet(master)
        hsm = FleetHsm.open_fleet(master, blob)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
    except (HsmError, ConfigError) as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"bkv-vault-node: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    keys = {
        "fleet_public_key": hsm.fleet_public_key.hex(),
        "opaque_public_key": hsm.opaque_public_key.hex(),
    }
    if args.json:
        print(json.dumps(keys))
    else:
        if created:
            print(created)
        print(f"wrote sealed fleet file {out}")
        print(f"fleet_public_key  = {keys['fleet_public_key']}")
        print(f"opaque_public_key = {keys['opaque_public_key']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    level = logging.DEBUG if args.verbose else logging.INFO
    configure_logging(pick_format(args.log_format), level, service="vault")
    try:  # now that the node is known, name it on every line (config errors come later)
        cfg = NodeConfig.load(args.config)
        configure_logging(pick_format(args.log_format, cfg.log_format), level,
                          service="vault", node=cfg.node_id)
    except ConfigError:
        pass
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("bkv.vault").info("signal %d: shutting down", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(args.config, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(config: Path, stop: threading.Event) -> int:
    # Imported here so `init-fleet` doesn't pull in gRPC and Raft.
    from vault_node.server import StartupError, VaultNode

    try:
        node = VaultNode(NodeConfig.load(config))
    except (ConfigError, StartupError) as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return _cli_code(getattr(err, "exit_code", 2))
    try:
        node.start()
        while not stop.wait(0.5):
            pass
    except StartupError as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return _cli_code(err.exit_code)
    finally:
        node.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bkv-vault-node", description="A member of the Backup Key Vault HSM fleet."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init-fleet", help="create the master key (if absent) and fleet secrets")
    init.add_argument("--master-key-file", type=Path)
    init.add_argument("--fleet-file", type=Path)
    init.add_argument(
        "--config", type=Path, help="node config: its master key backend (software or pkcs11)"
    )
    init.add_argument("--json", action="store_true", help="print the public keys as JSON")
    init.set_defaults(handler=_init_fleet)
    run = sub.add_parser("run", help="run a vault node until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                     help="json lines or text (default: the config's log_format, else text "
                          "on a terminal and json otherwise)")
    run.set_defaults(handler=_run)
    from vault_node.admin.cli import add_commands  # late, like the node's modules in _serve

    add_commands(sub)  # `member list|add|remove`, `snapshot take|restore`, `hsm high-water show`
    audit = sub.add_parser("audit", help="print this node's audit trail (checks its order)")
    audit.add_argument("--config", type=Path, required=True)
    audit.add_argument("--since", type=int, default=0, metavar="INDEX",
                       help="only entries at or after this Raft index")
    audit.set_defaults(handler=lambda a: print_audit(a.config, a.since))
    return parser


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


def _version() -> str:
    """The installed distribution's version, for `--version`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backup-key-vault")
    except PackageNotFoundError:
        return "unknown"


def _cli_code(code: int) -> int:
    """The project-wide code: 4 means "destroyed" in every command, so "cannot listen" is 1."""
    return 1 if code == 4 else code


if __name__ == "__main__":
    sys.exit(main())
