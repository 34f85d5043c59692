"""`bkv-chatd --config FILE`: run the ChatD front end until SIGTERM/SIGINT.

Exit codes: 0 clean stop, 2 bad configuration, 4 cannot listen.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from chatd_proxy.config import ChatDConfig, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bkv-chatd", description="Front end that routes sealed envelopes to the vault."
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = ChatDConfig.load(args.config)
    except ConfigError as err:
        print(f"bkv-chatd: {err}", file=sys.stderr)
        return 2
    from chatd_proxy.server import ChatDServer  # gRPC only once the config is good

    server = ChatDServer(config)
    try:
        server.start()
    except OSError as err:
        print(f"bkv-chatd: {err}", file=sys.stderr)
        return 4
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("bkv.chatd").info("signal %d: shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stopping.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
