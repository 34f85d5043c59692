"""Write the seed corpus: a few real messages per target, under the targets' fixed keys.

Run ``.venv/bin/python tests/fuzz/make_corpus.py`` to regenerate
``tests/fuzz/corpus/<target>/``. Seeds are real protocol messages (sealed
requests, OPAQUE messages, journal files, age files, tokens...), so the fuzzer
starts deep inside each parser instead of at its first length check.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bkv_protocol import opaque, sealing, tokens
from bkv_protocol.ksf import IDENTITY_KSF
from client_sdk import age
from client_sdk.age import stream as age_stream
from tests.fuzz import targets as t
from vault_node import state as st
from vault_node.raft import log_entries as le
from vault_node.raft.journal import DurableJournal, write_snapshot
from vault_node.raft.pysyncobj_edge import encode_message
from vault_node.raft.transport_cipher import LinkSession

CORPUS = Path(__file__).resolve().parent / "corpus"


def _sealing() -> list[bytes]:
    public = sealing.fleet_public_key(t.FLEET_PRIVATE)
    out = []
    for index, mtype in enumerate(t.MESSAGE_TYPES[:2]):
        body = b"\x0a\x20" + bytes(32) + b"\x12\x04ping"
        out.append(bytes([index]) + sealing.seal_request(public, t.ACCOUNT, t.SHARD, mtype, body))
        reply = sealing.seal_reply(t.RESPONSE_KEY, t.ACCOUNT, t.SHARD, mtype, b"\x0a\x02ok")
        out.append(bytes([0x80 | index]) + reply)
    return out


def _opaque() -> list[bytes]:
    keys = opaque.generate_server_keys()
    cid = b"fuzz-credential"
    reg_state, request = opaque.client_start_registration(b"password")
    response = opaque.server_registration_response(keys, request, cid)
    record, _export = opaque.client_finish_registration(reg_state, response, ksf=IDENTITY_KSF)
    login_state, ke1 = opaque.client_start_login(b"password")
    _server_state, ke2 = opaque.server_start_login(keys, record, cid, ke1, context=b"fuzz")
    ke3, _session, _export = opaque.client_finish_login(
        login_state, ke2, ksf=IDENTITY_KSF, context=b"fuzz"
    )
    messages = [ke1, ke2, record, request, response, ke3]
    return [bytes([i]) + m for i, m in enumerate(messages)]


def _commands() -> list[st.Command]:
    account, record_id = hashlib.sha256(b"account").digest(), bytes(range(16))
    return [
        st.Put(account, record_id, b"sealed record " * 4, 10),
        st.BeginAttempt(account, bytes(range(16, 32))),  # tagged, as the service sends it
        st.BeginAttempt(account),  # untagged, as logged before guess tags
        st.ResetAttempts(account, record_id),
        st.DestroyIfExhausted(account, record_id),
        st.Delete(account),
    ]


def _state_command() -> list[bytes]:
    commands = _commands()
    return [le.encode_command(commands[0]), le.encode_command(commands[2])] + [
        le.encode_entry(c, 1_763_900_000_000 + i) for i, c in enumerate(commands)
    ]


def _journal() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raft.journal"
        journal = DurableJournal(path, fsync=False)
        for i, command in enumerate(_commands(), 1):
            journal.add(le.encode_entry(command, 1_763_900_000_000 + i), i, 1)
        journal.sync()
        journal._destroy()
        raw = path.read_bytes()[len(b"BKVJRNL1") :]
        state = st.VaultState()
        for command in _commands()[:2]:
            state.apply(command)
        snapshot = Path(tmp) / "raft.snapshot"
        write_snapshot(snapshot, state.to_plain(), (b"x", 2, 1), (b"y", 1, 1), durable=False)
        snap = b"S" + snapshot.read_bytes()[len(b"BKVSNAP1\n") :]
    return [raw, raw[: len(raw) // 2], snap]


def _transport_frame() -> list[bytes]:
    messages = [{"type": "append_entries", "term": 3, "entries": [(b"\x01entry", 7, 3)]},
                (os.urandom(32), ["bkv_members", "local"])]
    return [LinkSession(t.LINK_KEY, t.LINK_KEY).seal(encode_message(m)) for m in messages]


def _age_files() -> list[bytes]:
    out = []
    for size in (0, 100, age_stream.CHUNK_SIZE + 10):
        sealed = io.BytesIO()
        age.encrypt(io.BytesIO(os.urandom(size)), sealed, [t.BACKUP_KEY.recipient()])
        out.append(sealed.getvalue())
    return out


def _age_header() -> list[bytes]:
    return [f[: f.index(b"\n---") + 49] for f in _age_files()[:2]]


def _age_decrypt() -> list[bytes]:
    return _age_files()[:2]


def _age_stream() -> list[bytes]:
    out = []
    for size in (0, 50):
        sealed = io.BytesIO()
        age_stream.encrypt_payload(t.PAYLOAD_KEY, io.BytesIO(b"p" * size), sealed)
        out.append(sealed.getvalue())
    return out


def _backup_archive() -> list[bytes]:
    out = []
    for names in (["chats/today.txt"], ["photos/a.jpg", "photos/b.jpg"]):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 5
                tar.addfile(info, io.BytesIO(b"hello"))
        out.append(raw.getvalue())
    return out


def _token() -> list[bytes]:
    return [
        tokens.mint_token(t.TOKEN_SIGNING, account, now=t.TOKEN_NOW - 10).encode("ascii")
        for account in ("alice", "a" * 40)
    ]


SEEDS = {
    "sealing": _sealing,
    "opaque_messages": _opaque,
    "state_command": _state_command,
    "journal": _journal,
    "transport_frame": _transport_frame,
    "age_header": _age_header,
    "age_decrypt": _age_decrypt,
    "age_stream": _age_stream,
    "backup_archive": _backup_archive,
    "token": _token,
}


def main() -> None:
    assert set(SEEDS) == set(t.TARGETS), "every target needs seeds"
    for name, make in SEEDS.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for i, seed in enumerate(make()):
            (folder / f"seed-{i}").write_bytes(seed)


if __name__ == "__main__":
    main()
