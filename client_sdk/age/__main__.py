"""Minimal age-compatible command line: ``python -m client_sdk.age``.

    python -m client_sdk.age -r age1... [-o OUT] [IN]
    python -m client_sdk.age -d -i IDENTITY_FILE [-o OUT] [IN]

It exists to exercise and time the library end to end as a separate process;
the ``bkv`` command is the user-facing tool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import BinaryIO

from bkv_ops.console import quiet_on_closed_pipe
from client_sdk.age import AgeError, decrypt, encrypt


def _read_identities(path: str) -> list[str]:
    """age identity file: one identity per line, '#' comments and blank lines ignored."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


@quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client_sdk.age", description=__doc__)
    parser.add_argument("-d", "--decrypt", action="store_true")
    parser.add_argument("-r", "--recipient", action="append", default=[])
    parser.add_argument("-i", "--identity", action="append", default=[])
    parser.add_argument("-o", "--output")
    parser.add_argument("input", nargs="?")
    args = parser.parse_args(argv)
    try:
        with ExitStack() as stack:
            src: BinaryIO = (
                stack.enter_context(open(args.input, "rb")) if args.input else sys.stdin.buffer
            )
            dst: BinaryIO = (
                stack.enter_context(open(args.output, "xb")) if args.output else sys.stdout.buffer
            )
            if args.decrypt:
                identities = [i for path in args.identity for i in _read_identities(path)]
                decrypt(src, dst, identities)
            else:
                encrypt(src, dst, args.recipient)
            dst.flush()
    except BrokenPipeError:  # the reader of standard output went away: end quietly
        raise
    except (AgeError, OSError) as err:
        print(f"age: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
