"""A pickle codec for pysyncobj's log entries that refuses every global.

pysyncobj wraps each log entry in a protocol-2 pickle and unpickles it when an
entry is applied, replayed from the journal, or reassembled from a large
transmission. Our entries need only tuples, lists, ints, strings and bytes:
the command payload is ``vault_node.state``'s canonical encoding and membership
changes are JSON (``vault_node.raft.membership``). So an entry that names a global
(the way a pickle gets code to run) is refused, even from a journal on a
tampered disk or from an authenticated but misbehaving peer.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

PROTOCOL = 2  # what pysyncobj writes; peers must agree on it
UnpicklingError = pickle.UnpicklingError


class _NoGlobals(pickle.Unpickler):
    """Only how protocol 2 spells ``bytes``: ``_codecs.encode``, and ``bytes()`` when empty."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) == ("__builtin__", "bytes"):
            return _empty_bytes
        raise pickle.UnpicklingError(f"a pickle here may not name a global ({module}.{name})")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` only: ``bytes(n)`` would let a pickle allocate n bytes."""
    if args:
        raise pickle.UnpicklingError("unexpected bytes() arguments in a pickle")
    return b""


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected encoding in a log entry")
    return text.encode("latin1")


def loads(data: bytes | str) -> Any:
    """Unpickle plain data only; ``pickle.UnpicklingError`` for anything else."""
    return _NoGlobals(io.BytesIO(to_bytes(data))).load()


def load(file: Any) -> Any:
    return _NoGlobals(file).load()


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    return pickle.dumps(obj, PROTOCOL)


def dump(obj: Any, file: Any, protocol: int | None = None) -> None:
    pickle.dump(obj, file, PROTOCOL)


def to_bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8")
