"""The Raft log's entries: a canonical binary encoding of the vault's commands.

An entry is never a pickle of a command: it is a tag byte and fixed-size fields,
decoded strictly (anything malformed is a ValueError, applied as a no-op), and
optionally stamped with the time the leader proposed it, for the audit trail.
"""

from __future__ import annotations

import struct

from vault_node.state import (
    ACCOUNT_ID_BYTES,
    GUESS_TAG_BYTES,
    RECORD_ID_BYTES,
    BeginAttempt,
    Command,
    Delete,
    DestroyIfExhausted,
    Put,
    ResetAttempts,
    validate,
)

_TAGS: dict[type, int] = {
    Put: 1,
    BeginAttempt: 2,
    ResetAttempts: 3,
    DestroyIfExhausted: 4,
    Delete: 5,
}


def encode_command(command: Command) -> bytes:
    """Encode a validated command as tag + fixed fields (+ limit and record for Put).

    A BeginAttempt carries its guess tag after the account id, or nothing when
    untagged: exactly the form entries had before tags existed.
    """
    validate(command)
    tag = _TAGS[type(command)]
    out = bytes([tag]) + command.account_id
    if isinstance(command, Put):
        out += command.record_id + struct.pack(">H", command.limit) + command.sealed_record
    elif isinstance(command, ResetAttempts | DestroyIfExhausted | Delete):
        out += command.record_id
    elif isinstance(command, BeginAttempt):
        out += command.guess_tag
    return out


def decode_command(data: bytes) -> Command:
    """Inverse of ``encode_command``; raises ValueError on anything malformed."""
    if not isinstance(data, bytes) or len(data) < 1 + ACCOUNT_ID_BYTES:
        raise ValueError("command too short")
    tag, rest = data[0], data[1:]
    account_id, rest = rest[:ACCOUNT_ID_BYTES], rest[ACCOUNT_ID_BYTES:]
    command: Command
    if tag == 1:
        if len(rest) < RECORD_ID_BYTES + 2:
            raise ValueError("truncated Put")
        record_id = rest[:RECORD_ID_BYTES]
        (limit,) = struct.unpack(">H", rest[RECORD_ID_BYTES : RECORD_ID_BYTES + 2])
        command = Put(account_id, record_id, rest[RECORD_ID_BYTES + 2 :], limit)
    elif tag == 2 and len(rest) in (0, GUESS_TAG_BYTES):
        command = BeginAttempt(account_id, rest)
    elif tag == 5 and len(rest) in (0, RECORD_ID_BYTES):
        command = Delete(account_id, rest)
    elif tag in (3, 4) and len(rest) == RECORD_ID_BYTES:
        cls = ResetAttempts if tag == 3 else DestroyIfExhausted
        command = cls(account_id, rest)
    else:
        raise ValueError("malformed command")
    validate(command)
    return command


# A log entry may carry the time the leader proposed it, for the audit trail: one
# STAMP tag, the time in milliseconds since the Unix epoch, then the command as
# above. Entries written before stamps existed decode with no time.
_STAMP_TAG = 0x10
_STAMP = struct.Struct(">BQ")


def encode_entry(command: Command, time_ms: int) -> bytes:
    """Encode ``command`` stamped with the leader's proposal time (ms since the epoch)."""
    if type(time_ms) is not int or not 0 <= time_ms < 1 << 64:
        raise ValueError("time_ms must be a non-negative 64-bit integer")
    return _STAMP.pack(_STAMP_TAG, time_ms) + encode_command(command)


def decode_entry(data: bytes) -> tuple[Command, int | None]:
    """Inverse of ``encode_entry``; also reads unstamped entries (time ``None``).

    Raises ValueError on anything malformed.
    """
    if isinstance(data, bytes) and data[:1] == bytes([_STAMP_TAG]):
        if len(data) < _STAMP.size:
            raise ValueError("truncated stamp")
        _tag, time_ms = _STAMP.unpack_from(data)
        return decode_command(data[_STAMP.size :]), int(time_ms)
    return decode_command(data), None
