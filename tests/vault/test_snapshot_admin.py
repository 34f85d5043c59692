"""Sealed snapshots: take from a live shard, rebuild the shard from it, refuse bad input."""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bkv_api.v1 import envelope_pb2 as pb
from tests.vault.conftest import (
    NODE_CMD,
    TEST_ATTEMPT_LIMIT,
    Cluster,
    VaultCallError,
    VaultTestClient,
    clean_env,
)
from tests.vault.test_membership import run_cli
from vault_node.hsm.fleet import SoftwareMasterKey
from vault_node.raft.core import SNAPSHOT_MEMBERS_KEY
from vault_node.raft.journal import read_snapshot, write_snapshot
from vault_node.raft.membership import Member
from vault_node.raft.replication import SNAPSHOT_FILE, RaftConfig, RaftStartupError, ReplicatedVault
from vault_node.raft.snapshot_file import (
    SnapshotContents,
    SnapshotFileError,
    open_sealed,
    restore_into,
    seal,
)
from vault_node.raft.snapshot_stream import read_header
from vault_node.raft.transport_cipher import LinkKey

Code = pb.VaultError.Code


def run_admin(*args: str) -> subprocess.CompletedProcess[str]:
    """`bkv-vault-node ARGS` as its own process."""
    return subprocess.run([*NODE_CMD, *args], capture_output=True, text=True, timeout=90,
                          env=clean_env(), check=False)


def _wrong_guess(client: VaultTestClient, account: str) -> None:
    with pytest.raises(VaultCallError) as err:
        client.recover(account, b"wrong")
    assert err.value.code == Code.LOGIN_FAILED


@pytest.mark.cluster
def test_snapshot_rebuilds_the_shard(cluster: Cluster) -> None:
    client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
    keys = {name: secrets.token_bytes(32) for name in ("guessed", "destroyed", "clean")}
    accounts = {name: f"{name}-{secrets.token_hex(4)}" for name in keys}
    try:
        for name, account in accounts.items():
            client.register(account, b"pw", keys[name])
        _wrong_guess(client, accounts["guessed"])  # one attempt used
        for _ in range(TEST_ATTEMPT_LIMIT):
            _wrong_guess(client, accounts["destroyed"])
    finally:
        client.close()

    first = cluster.configs[0]
    out_file = cluster.state / "shard.snapshot"
    took = run_admin("snapshot", "take", "--config", first["config_path"], "--out", str(out_file))
    assert took.returncode == 0, took.stderr
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    blob = out_file.read_bytes()
    for name in accounts.values():
        assert name.encode() not in blob
    again = run_cli("snapshot", "take", "--config", first["config_path"], "--out", str(out_file))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    # A snapshot never goes into one member: refused, nothing touched.
    before = sorted(p.name for p in Path(first["data_dir"]).iterdir())
    one = run_cli("snapshot", "restore", "--config", first["config_path"], "--in", str(out_file))
    assert one.returncode == 2 and "shard rebuild" in one.stderr
    configs = [a for cfg in cluster.configs for a in ("--config", cfg["config_path"])]
    alone = run_cli("shard", "rebuild", "--from", str(out_file), "--config",
                    first["config_path"])
    assert alone.returncode == 1 and "every member" in alone.stderr, alone.stderr
    busy = run_cli("shard", "rebuild", "--from", str(out_file), *configs)
    assert busy.returncode == 1 and "answers" in busy.stderr, busy.stderr
    assert sorted(p.name for p in Path(first["data_dir"]).iterdir()) == before

    running = run_cli("snapshot", "take", "--offline", "--config", first["config_path"],
                        "--out", str(cluster.state / "never.snapshot"))
    assert running.returncode == 2 and "is running" in running.stderr

    cluster.stop()
    # Offline, from a stopped node's data dir: the same state as the leader gave.
    offline_file = cluster.state / "offline.snapshot"
    taken = run_cli("snapshot", "take", "--offline", "--config", first["config_path"],
                      "--out", str(offline_file))
    assert taken.returncode == 0, taken.stderr
    master = SoftwareMasterKey.load(Path(first["master_key_file"]))
    online = open_sealed(master, cluster.fleet_public_key, blob)
    offline = open_sealed(master, cluster.fleet_public_key, offline_file.read_bytes())
    assert offline.state == online.state
    assert offline.last_entry[0] >= online.last_entry[0]

    # A tampered file is refused and changes nothing.
    tampered = cluster.state / "tampered.snapshot"
    tampered.write_bytes(blob[:-20] + bytes(b ^ 1 for b in blob[-20:]))
    bad = run_cli("shard", "rebuild", "--from", str(tampered), *configs)
    assert bad.returncode == 2 and "does not open" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert sorted(p.name for p in Path(first["data_dir"]).iterdir()) == before

    # The newest state (taken offline): nothing to roll back, no override needed.
    done = run_cli("shard", "rebuild", "--from", str(offline_file), *configs, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["epoch"] == 1 and not result["accepted_rollback"]
    assert result["rollback"]["attempts_after"] == 0
    for cfg in cluster.configs:  # the old state is kept aside, never deleted
        assert list(Path(cfg["data_dir"]).parent.glob(Path(cfg["data_dir"]).name
                                                      + ".before-rebuild-*"))
    cluster.start()
    client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
    try:
        # the counter survived: one guess was used before, this is the second
        login = client.login_start(accounts["guessed"], b"pw")
        assert login.reply.attempts_left == TEST_ATTEMPT_LIMIT - 2
        assert client.login_finish(accounts["guessed"], login) == keys["guessed"]
        assert client.recover(accounts["clean"], b"pw") == keys["clean"]
        with pytest.raises(VaultCallError) as err:  # the tombstone was kept
            client.login_start(accounts["destroyed"], b"pw")
        assert err.value.code == Code.KEY_DESTROYED
    finally:
        client.close()


def _contents() -> SnapshotContents:
    state: dict[str, Any] = {"version": 1, "entries": []}
    return SnapshotContents(state, (Member("n1", "dc1", "127.0.0.1:7001", "127.0.0.1:7002"),),
                            (12, 3), (11, 3), int(time.time()), "n1")


def test_other_fleet_or_other_key_is_refused(tmp_path: Path) -> None:
    master = SoftwareMasterKey(os.urandom(32))
    fleet_a, fleet_b = os.urandom(32), os.urandom(32)
    blob = seal(master, fleet_a, _contents())
    assert open_sealed(master, fleet_a, blob).last_entry == (12, 3)
    with pytest.raises(SnapshotFileError, match="another fleet"):
        open_sealed(master, fleet_b, blob)
    with pytest.raises(SnapshotFileError, match="does not open"):
        open_sealed(SoftwareMasterKey(os.urandom(32)), fleet_a, blob)
    with pytest.raises(SnapshotFileError, match="not a sealed vault snapshot"):
        open_sealed(master, fleet_a, b"BKVSNAP1\n{}")
    downgraded = blob[:8] + b"\x00" + blob[9:]
    with pytest.raises(SnapshotFileError, match="format version"):
        open_sealed(master, fleet_a, downgraded)


def test_restore_needs_an_empty_dir_and_membership_rides_in_the_snapshot(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "raft.journal").write_bytes(b"x")
    with pytest.raises(SnapshotFileError, match="not empty"):
        restore_into(tmp_path / "busy", _contents(), ())

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    me = Member("solo", "dc1", address, "127.0.0.1:1")
    gone = Member("gone", "dc2", "127.0.0.1:2", "127.0.0.1:3")
    data = tmp_path / "node"
    restore_into(data, _contents(), (me, gone))
    plain, last, previous = read_snapshot(data / SNAPSHOT_FILE)
    assert last[1:] == (12, 3)
    assert [m["node_id"] for m in plain[SNAPSHOT_MEMBERS_KEY]] == ["gone", "solo"]
    # The node starts with the snapshot's membership even though its bootstrap list differs.
    cfg = RaftConfig(node_id="solo", self_address=address, peer_addresses=[address],
                     data_dir=data, transport_secret=os.urandom(32), members=(me,),
                     link_key=LinkKey.generate())
    with ReplicatedVault(cfg) as vault:
        members = vault._obj.bkv_members()
        assert sorted(m.node_id for m in members) == ["gone", "solo"]
        assert vault.status().last_applied == 12
    assert json.loads(json.dumps(plain[SNAPSHOT_MEMBERS_KEY]))  # plain JSON, no pickles

    # A snapshot whose member list is malformed stops the node instead of starting empty.
    plain[SNAPSHOT_MEMBERS_KEY] = [{"node_id": "x"}]
    write_snapshot(data / SNAPSHOT_FILE, plain, last, previous)
    with pytest.raises(RaftStartupError, match="unusable"):
        ReplicatedVault(cfg)


def test_node_snapshots_record_the_members(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    me = Member("solo", "dc1", address, "127.0.0.1:1")
    cfg = RaftConfig(node_id="solo", self_address=address, peer_addresses=[address],
                     data_dir=tmp_path, transport_secret=os.urandom(32), members=(me,),
                     link_key=LinkKey.generate())
    with ReplicatedVault(cfg) as vault:
        deadline = time.monotonic() + 10
        while not vault.is_leader():
            assert time.monotonic() < deadline, "single node never became leader"
            time.sleep(0.02)
        vault.force_snapshot()
        while vault.status().snapshots_written == 0:
            assert time.monotonic() < deadline, "no snapshot written"
            time.sleep(0.02)
        assert vault.members() == [me]
    assert read_header(tmp_path / SNAPSHOT_FILE).members == [me.to_plain()]
