"""Helpers shared by the `bkv` subcommands."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed as one line, no traceback, with a meaningful exit code.

    Exit codes: 1 generic failure, 2 wrong key / wrong password / bad input,
    3 damaged data, 4 storage or vault unreachable.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
