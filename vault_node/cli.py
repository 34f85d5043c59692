"""`bkv-vault-node`: run a vault node, create a fleet."""

from __future__ import annotations

import sys


def main() -> int:
    print("bkv-vault-node: not built yet", file=sys.stderr)
    return 1
