"""`bkv backup` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the `backup` command group to the `bkv` parser (not yet available)."""
    del sub


def _unused(args: argparse.Namespace) -> int:
    return 0
