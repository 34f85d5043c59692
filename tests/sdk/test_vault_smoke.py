"""End-to-end smoke test: `bkv vault` and VaultClient against a real local cluster via ChatD."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig
from client_sdk.errors import AccountRejected, NotRegistered
from client_sdk.keys import BackupKey, read_key_file, write_key_file
from client_sdk.vault_client import VaultClient

pytestmark = pytest.mark.cluster

PASSWORD = "correct horse battery staple"
BKV = [str(Path(sys.executable).parent / "bkv")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), 1, allow_identity_ksf=True)
    try:
        local.up(timeout=150)
        yield local
    finally:
        local.down(grace=5)


def bkv(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BKV, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_register_wrong_password_recover(cluster: LocalCluster, tmp_path: Path) -> None:
    """The production path end to end (production KSF, as the CLI always uses)."""
    account, config = f"smoke-{secrets.token_hex(4)}", str(cluster.client_config_path)
    key = BackupKey.generate()
    write_key_file(tmp_path / "backup.key", key)
    common = ["--account", account, "--config", config, "--password-stdin"]

    done = bkv(
        "vault",
        "register",
        "--key-file",
        str(tmp_path / "backup.key"),
        *common,
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr

    out = tmp_path / "recovered.key"
    wrong = bkv("vault", "recover", "--out-key-file", str(out), *common, stdin="nope nope\n")
    assert (wrong.returncode, wrong.stderr) == (3, "bkv: wrong password: 9 attempts left\n")
    assert not out.exists()

    right = bkv("vault", "recover", "--out-key-file", str(out), *common, stdin=PASSWORD + "\n")
    assert right.returncode == 0, right.stderr
    assert read_key_file(out) == key
    assert out.stat().st_mode & 0o777 == 0o600


def test_client_rotates_past_a_dead_front_end(cluster: LocalCluster) -> None:
    config = ClientConfig.load(cluster.client_config_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    rotated = ClientConfig(
        fleet_public_key=config.fleet_public_key,
        shard_count=config.shard_count,
        chatd=[dead, *config.chatd],
        deadline_seconds=config.deadline_seconds,
        token_signing_key_file=config.token_signing_key_file,
    )
    account, key = f"smoke-{secrets.token_hex(4)}", secrets.token_bytes(32)
    with VaultClient(rotated, ksf=IDENTITY_KSF) as client:
        with pytest.raises(NotRegistered):
            client.recover(account, PASSWORD)
        client.register(account, key, PASSWORD)
        assert client.recover(account, PASSWORD) == key


def test_chatd_rejects_a_foreign_token(cluster: LocalCluster) -> None:
    config = ClientConfig.load(cluster.client_config_path)
    forged = ClientConfig(
        fleet_public_key=config.fleet_public_key,
        shard_count=config.shard_count,
        chatd=config.chatd,
        deadline_seconds=config.deadline_seconds,
        token="AAAA-not-a-token",
    )
    with VaultClient(forged, ksf=IDENTITY_KSF) as client, pytest.raises(AccountRejected):
        client.recover("alice", PASSWORD)
