"""`bkv demo` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the `demo` command group to the `bkv` parser (not yet available)."""
    del sub


def _unused(args: argparse.Namespace) -> int:
    return 0
