"""Fuzz targets: every parser that takes untrusted bytes, with the exceptions it may raise.

Each target feeds one input to a parser and lets only the exception types the
parser documents escape; anything else (IndexError, struct.error, a bare
Exception, ...) is a finding. Keys are fixed so that seeds built from real
messages (``make_corpus.py``) stay meaningful across runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bkv_protocol import opaque_messages as om
from bkv_protocol import sealing, tokens
from bkv_protocol.errors import ProtocolError
from client_sdk import age
from client_sdk.age import header as age_header
from client_sdk.age import stream as age_stream
from client_sdk.backup.archive import extract
from client_sdk.backup.errors import BackupError
from client_sdk.keys import BackupKey
from vault_node import state as st
from vault_node.raft import log_entries as le
from vault_node.raft.journal import DurableJournal, read_snapshot
from vault_node.raft.pysyncobj_edge import decode_message
from vault_node.raft.transport_cipher import LinkError, LinkSession


def fixed(label: str) -> bytes:
    """A 32-byte key that is the same in every run (fuzzing keys, never real ones)."""
    return hashlib.sha256(b"bkv fuzz " + label.encode()).digest()


FLEET_PRIVATE = fixed("fleet")
RESPONSE_KEY = fixed("response")
TRANSPORT_SECRET = fixed("transport")
BACKUP_KEY = BackupKey(fixed("backup"))
PAYLOAD_KEY = fixed("payload")
TOKEN_SIGNING = fixed("token")
TOKEN_NOW = 1_800_000_000.0  # tokens are verified "at" this time, so seeds never expire
ACCOUNT, SHARD = "fuzz-account", 0
MESSAGE_TYPES = (1, 2, 3, 4)
TOKEN_PUBLIC = tokens.public_key_from(TOKEN_SIGNING)


@dataclass(frozen=True)
class Target:
    """One parser under fuzz: ``run(data)`` and the exceptions it is allowed to raise."""

    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]


def _sealing(data: bytes) -> None:
    if not data:
        return
    mtype = MESSAGE_TYPES[data[0] % len(MESSAGE_TYPES)]
    if data[0] & 0x80:
        sealing.open_reply(RESPONSE_KEY, ACCOUNT, SHARD, mtype, data[1:])
    else:
        sealing.open_request(FLEET_PRIVATE, ACCOUNT, SHARD, mtype, data[1:])


_OPAQUE_PARSERS: tuple[Callable[[bytes], object], ...] = (
    om.KE1.parse,
    om.KE2.parse,
    om.RegistrationRecord.parse,
    om.parse_registration_request,
    om.parse_registration_response,
    om.check_ke3,
)


def _opaque(data: bytes) -> None:
    if data:
        _OPAQUE_PARSERS[data[0] % len(_OPAQUE_PARSERS)](data[1:])


def _state_command(data: bytes) -> None:
    try:
        command, time_ms = le.decode_entry(data)
    except ValueError:
        return
    # Decoding is canonical: what decodes re-encodes to the same bytes.
    again = le.encode_command(command) if time_ms is None else le.encode_entry(command, time_ms)
    if again != data:
        raise AssertionError("command encoding is not canonical")
    result = st.VaultState().apply(command)  # never raises
    if result.outcome is st.Outcome.INVALID:
        raise AssertionError("a decoded command failed validation")


_WORKDIR = Path(tempfile.mkdtemp(prefix="bkv-fuzz-"))
logging.getLogger("vault_node.raft.journal").setLevel(logging.ERROR)  # torn tails are the norm here


def _journal(data: bytes) -> None:
    """The Raft journal (magic + CRC'd records) and the snapshot file, as read at start-up."""
    path = _WORKDIR / "raft.journal"
    for leftover in (path, path.with_name(path.name + ".meta")):
        leftover.unlink(missing_ok=True)
    if data[:1] == b"S":
        path.write_bytes(b"BKVSNAP1\n" + data[1:])
        plain, _last, _previous = read_snapshot(path)
        st.VaultState.from_plain(plain)
        return
    path.write_bytes(b"BKVJRNL1" + data)
    journal = DurableJournal(path, fsync=False)
    try:
        for i in range(len(journal)):
            command, _idx, _term = journal[i]
            if not isinstance(command, bytes):
                raise AssertionError("journal entry is not bytes")
    finally:
        journal._destroy()


LINK_KEY = fixed("link session")  # one direction's key of an established link connection


def _transport_frame(data: bytes) -> None:
    """The first data frame of a connection: opened, decompressed (bounded), unpickled."""
    decode_message(LinkSession(LINK_KEY, LINK_KEY).open(data))


def _age_header(data: bytes) -> None:
    age_header.read_header(io.BytesIO(data))


def _age_decrypt(data: bytes) -> None:
    """Whole files to a fixed identity: header, MAC, then the STREAM decryptor."""
    age.decrypt(io.BytesIO(data), io.BytesIO(), [BACKUP_KEY.identity()])


def _age_stream(data: bytes) -> None:
    age_stream.decrypt_payload(PAYLOAD_KEY, io.BytesIO(data), io.BytesIO())


def _backup_archive(data: bytes) -> None:
    """The restore path past authentication: a tar stream of any content, properly encrypted."""
    sealed = io.BytesIO()
    age.encrypt(io.BytesIO(data), sealed, [BACKUP_KEY.recipient()])
    sealed.seek(0)
    with tempfile.TemporaryDirectory(dir=_WORKDIR) as temp:
        extract(sealed, BACKUP_KEY, Path(temp) / "restore", None)


def _token(data: bytes) -> None:
    tokens.verify_token(TOKEN_PUBLIC, data.decode("latin-1"), now=TOKEN_NOW)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("sealing", _sealing, (ProtocolError,)),
        Target("opaque_messages", _opaque, (ProtocolError,)),
        Target("state_command", _state_command, ()),
        # read_snapshot documents nothing narrower; replication refuses to start on these.
        Target("journal", _journal, (RuntimeError, ValueError, KeyError, TypeError)),
        # the link connection drops the peer on LinkError, its only refusal
        Target("transport_frame", _transport_frame, (LinkError,)),
        Target("age_header", _age_header, (age.AgeError,)),
        Target("age_decrypt", _age_decrypt, (age.AgeError,)),
        Target("age_stream", _age_stream, (age.DamagedFileError,)),
        Target("backup_archive", _backup_archive, (BackupError,)),
        Target("token", _token, (ProtocolError,)),
    )
}


def run_one(target: Target, data: bytes) -> None:
    """Run one input; a documented exception is a normal outcome, anything else propagates."""
    with contextlib.suppress(*target.allowed):
        target.run(data)
