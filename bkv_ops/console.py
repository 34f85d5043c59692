"""The edge every console script shares: a reader that goes away ends it quietly.

``bkv-vault-node audit ... | head -1`` closes the pipe while the command still
writes; Python then raises ``BrokenPipeError`` from a ``print`` (or from the final
flush at exit) and prints a traceback. Wrapped in :func:`quiet_on_closed_pipe`, the
script instead points its standard output and error at ``/dev/null`` (so the
interpreter's own flush at exit finds nothing to complain about, as the Python
documentation of ``SIGPIPE`` recommends) and exits with :data:`CLOSED_PIPE_EXIT`.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

CLOSED_PIPE_EXIT = 141
"""128 + SIGPIPE: what a shell shows for any other tool cut off by ``head`` (``$?``,
``PIPESTATUS``, ``pipefail``). Not 0: the output was cut short, e.g. a decrypted file."""


def quiet_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a console script's ``main``: a closed output pipe exits 141 without a traceback."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                code = main(*args, **kwargs)
            except SystemExit:  # argparse's --help and errors: flush here, not at exit
                _flush()
                raise
            _flush()  # output still buffered fails here, where it can be caught
            return code
        except BrokenPipeError:
            _silence()
            return CLOSED_PIPE_EXIT

    return run


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _silence() -> None:
    """Point fds 1 and 2 at /dev/null: the exit-time flush must not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno() if stream is not None else -1
            except (OSError, ValueError):  # a stream without a file (e.g. under a test)
                continue
            if fd >= 0:
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)
