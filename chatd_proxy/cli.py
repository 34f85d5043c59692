"""`bkv-chatd --config FILE`: run the ChatD front end until SIGTERM/SIGINT.

SIGHUP re-reads the config and routes every shard to its (new) node list: the
step after a membership change. Other changes need a restart; a config that
can't be read, or changes the shard count, is refused and ChatD keeps routing
as before.

Exit codes (the table of ``bkv_tools.cli.exit_codes``): 0 clean stop, 2 bad
configuration, 1 cannot listen.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bkv_ops.console import quiet_on_closed_pipe
from bkv_ops.logs import LOG_FORMATS, configure_logging, pick_format
from chatd_proxy.config import ChatDConfig, ConfigError

if TYPE_CHECKING:
    from chatd_proxy.server import ChatDServer


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bkv-chatd", description="Front end that routes sealed envelopes to the vault."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="json lines or text (default: the config's log_format, else "
                             "text on a terminal and json otherwise)")
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    try:
        config = ChatDConfig.load(args.config)
    except ConfigError as err:
        print(f"bkv-chatd: {err}", file=sys.stderr)
        return 2
    configure_logging(pick_format(args.log_format, config.log_format), level,
                      service="chatd", node=f"chatd-{config.datacenter}")
    from bkv_ops.tls import TlsError
    from chatd_proxy.server import ChatDServer  # gRPC only once the config is good

    try:
        server = ChatDServer(config)
        server.start()
    except (OSError, TlsError) as err:
        print(f"bkv-chatd: {err}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    reloading = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("bkv.chatd").info("signal %d: shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reloading.set())
    while not stopping.wait(0.1):
        if reloading.is_set():
            reloading.clear()
            _reload(server, args.config)
    server.stop()
    return 0


def _reload(server: ChatDServer, path: Path) -> None:
    """SIGHUP: route to the node lists of the config as it is now on disk."""
    log = logging.getLogger("bkv.chatd")
    try:
        changes = server.reload(ChatDConfig.load(path))
    except (ConfigError, ValueError) as err:
        log.error("reload refused, routing unchanged: %s", err)
        return
    log.info("reloaded %s: %s", path, "; ".join(changes) if changes else "no change")


def _version() -> str:
    """The installed distribution's version, for `--version`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backup-key-vault")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
