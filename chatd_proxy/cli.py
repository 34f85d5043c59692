"""`bkv-chatd`: run the ChatD front end."""

from __future__ import annotations

import sys


def main() -> int:
    print("bkv-chatd: not built yet", file=sys.stderr)
    return 1
