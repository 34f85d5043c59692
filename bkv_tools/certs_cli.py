"""``bkv-certs``: the cluster CA and the certificates of a deployment, into one folder.

A thin command over :mod:`bkv_ops.tls`. ``compose`` writes the certificates
``deploy/docker-compose.yml`` mounts (``compose_layout prepare`` makes the same
ones itself); ``local`` those of a local cluster made by ``bkv cluster up``
(which also makes them itself); ``custom`` any set of names. Existing files are
kept, so a second run only adds what is missing; that needs the CA key, which
``--no-keep-ca-key`` discards after the first run. Exit codes: 0 done, 1 error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bkv_ops import tls, tls_certs
from bkv_ops.console import quiet_on_closed_pipe


def _custom_identities(args: argparse.Namespace) -> list[tls_certs.Identity]:
    ids = [tls_certs.Identity(tls.ROLE_VAULT_NODE, n, (n, *args.dns), tuple(args.ip))
           for n in args.vault_node]
    ids += [tls_certs.Identity(tls.ROLE_CHATD, n, (n, *args.dns), tuple(args.ip))
            for n in args.chatd]
    ids += [tls_certs.Identity(tls.ROLE_OPS, n) for n in args.ops]
    return ids


def _local_identities(state_dir: Path) -> list[tls_certs.Identity]:
    from bkv_tools.launcher_layout import local_identities

    try:
        layout = json.loads((state_dir / "cluster.json").read_text("utf-8"))
        return local_identities(layout)
    except (OSError, ValueError, KeyError, TypeError):
        raise tls.TlsError(f"no readable local cluster layout in {state_dir}") from None


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bkv-certs",
        description="make the cluster CA and the TLS certificates of vault nodes, ChatDs "
                    "and probes (private keys 0600; existing files kept)")
    from bkv_tools.cli import package_version

    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    compose = sub.add_parser("compose", help="the docker compose deployment")
    compose.add_argument("--out", type=Path, default=Path("deploy/state/tls"))
    local = sub.add_parser("local", help="a local cluster made by `bkv cluster up`")
    local.add_argument("--state-dir", type=Path, required=True)
    custom = sub.add_parser("custom", help="the names given")
    custom.add_argument("--out", type=Path, required=True)
    custom.add_argument("--vault-node", action="append", default=[], metavar="NAME")
    custom.add_argument("--chatd", action="append", default=[], metavar="NAME")
    custom.add_argument("--ops", action="append", default=[], metavar="NAME")
    custom.add_argument("--dns", action="append", default=[], metavar="HOST",
                        help="extra DNS name for every node and ChatD certificate")
    custom.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                        help="IP address for every node and ChatD certificate")
    for p in (compose, local, custom):
        p.add_argument("--no-keep-ca-key", action="store_true",
                       help="do not keep the CA private key (no certificates can be added later)")
        p.add_argument("--days", type=int, default=tls_certs.LEAF_DAYS,
                       help=f"validity of the leaf certificates (default {tls_certs.LEAF_DAYS})")
    args = parser.parse_args(argv)
    if not 1 <= args.days <= 3650:
        parser.error("--days must be in 1..3650")
    try:
        if args.layout == "compose":
            from bkv_tools.compose_layout import tls_identities

            out, identities = args.out, tls_identities()
        elif args.layout == "local":
            out, identities = args.state_dir / "tls", _local_identities(args.state_dir)
        else:
            out, identities = args.out, _custom_identities(args)
        written = tls_certs.ensure_bundle(out, identities, keep_ca_key=not args.no_keep_ca_key,
                                          days=args.days)
    except (tls.TlsError, OSError) as err:
        print(f"bkv-certs: {err}", file=sys.stderr)
        return 1
    print(f"{len(written)} file(s) written in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
