"""ReplicatedVault in-process: startup checks and a single-node group (one loopback port)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from vault_node import state as st
from vault_node.raft.replication import (
    SNAPSHOT_FILE,
    NotLeaderError,
    RaftConfig,
    RaftStartupError,
    ReplicatedVault,
)
from vault_node.raft.transport_cipher import LinkKey

SECRET = os.urandom(32)
KEY = LinkKey.generate()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(data_dir: Path, address: str, secret: bytes = SECRET, **kw: object) -> RaftConfig:
    return RaftConfig(node_id="solo", self_address=address, peer_addresses=[address],
                      data_dir=data_dir, transport_secret=secret, link_key=KEY,
                      **kw)  # type: ignore[arg-type]


def _wait_leader(vault: ReplicatedVault) -> None:
    deadline = time.monotonic() + 10
    while not vault.is_leader():
        assert time.monotonic() < deadline, "single node never became leader"
        time.sleep(0.02)


@pytest.mark.parametrize("secret", [b"", b"short-secret", "a string secret of 32 characters"])
def test_refuses_weak_or_missing_secret(tmp_path: Path, secret: object) -> None:
    with pytest.raises(RaftStartupError):
        ReplicatedVault(_config(tmp_path, "127.0.0.1:1", secret))  # type: ignore[arg-type]


def test_refuses_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(RaftStartupError):
            ReplicatedVault(_config(tmp_path, address))


def test_single_node_commit_restart_and_snapshot(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_port()}"
    account, record = os.urandom(32), os.urandom(16)
    with ReplicatedVault(_config(tmp_path, address)) as vault:
        with pytest.raises(ValueError):
            vault.submit(st.BeginAttempt(b"short"))
        _wait_leader(vault)
        assert vault.submit(st.Put(account, record, b"sealed", 3)).outcome == st.Outcome.OK
        assert vault.submit(st.BeginAttempt(account)).attempts == 1
        digest = vault.digest()
    with pytest.raises(NotLeaderError):
        vault.submit(st.BeginAttempt(account))  # closed
    with ReplicatedVault(_config(tmp_path, address)) as vault:
        assert vault.digest() == digest  # journal replay restores the counter
        _wait_leader(vault)
        assert vault.submit(st.BeginAttempt(account)).attempts == 2
        vault.force_snapshot()
        deadline = time.monotonic() + 10
        while vault.status().snapshots_written == 0:
            assert time.monotonic() < deadline, "no snapshot written"
            time.sleep(0.02)
        digest = vault.digest()
    with ReplicatedVault(_config(tmp_path, address)) as vault:
        assert vault.digest() == digest
        entry = vault.entry_view(account)
        assert entry is not None and entry.attempts == 2
    (tmp_path / SNAPSHOT_FILE).write_bytes(b"BKVSNAP1\n{}\nbad")
    with pytest.raises(RaftStartupError):
        ReplicatedVault(_config(tmp_path, address))
