"""Lifecycle: a leader crash (5 nodes over 3 DCs), a full restart, session expiry."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from bkv_api.v1 import envelope_pb2 as pb
from tests.vault.conftest import (
    TEST_ATTEMPT_LIMIT,
    Cluster,
    VaultCallError,
    VaultTestClient,
    init_fleet,
    write_node_configs,
)

pytestmark = pytest.mark.cluster


def test_leader_crash_keeps_records_and_counted_guesses(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, init_fleet(tmp_path), write_node_configs(tmp_path, 5))
    assert sorted(c["datacenter"] for c in cluster.configs) == ["dc1", "dc1", "dc2", "dc2", "dc3"]
    cluster.start()
    try:
        leader = cluster.wait_for_leader()
        account, key = f"acct-{secrets.token_hex(6)}", secrets.token_bytes(32)
        client = VaultTestClient(leader, cluster.fleet_public_key)
        client.register(account, b"pw", key)
        # A guess whose KE3 never comes: counted on a majority before KE2 left.
        assert client.login_start(account, b"guess").reply.attempts_left == TEST_ATTEMPT_LIMIT - 1
        client.close()
        cluster.kill(leader)
        new_leader = cluster.wait_for_leader()
        assert new_leader != leader
        client = VaultTestClient(new_leader, cluster.fleet_public_key)
        try:
            login = client.login_start(account, b"pw")
            assert login.reply.attempts_left == TEST_ATTEMPT_LIMIT - 2
            assert client.login_finish(account, login) == key
        finally:
            client.close()
    finally:
        cluster.stop()


def test_full_restart_keeps_records_and_counters(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, init_fleet(tmp_path), write_node_configs(tmp_path, 1))
    account, key = f"acct-{secrets.token_hex(6)}", secrets.token_bytes(32)
    cluster.start()
    try:
        client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
        client.register(account, b"pw", key)
        client.login_start(account, b"guess")
        client.close()
        cluster.stop()
        assert [p.returncode for p in cluster.procs] == [0]
        # The node's disk holds keyed account ids and sealed records only.
        on_disk = b"".join(f.read_bytes() for f in tmp_path.glob("nodes/**/*") if f.is_file())
        assert on_disk and account.encode() not in on_disk and key not in on_disk
        cluster.start()
        client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
        try:
            login = client.login_start(account, b"pw")
            assert login.reply.attempts_left == TEST_ATTEMPT_LIMIT - 2
            assert client.login_finish(account, login) == key
        finally:
            client.close()
    finally:
        cluster.stop()


def test_expired_last_attempt_destroys_the_record(tmp_path: Path) -> None:
    configs = write_node_configs(tmp_path, 1, session_ttl_seconds=1.0)
    cluster = Cluster(tmp_path, init_fleet(tmp_path), configs)
    account = f"acct-{secrets.token_hex(6)}"
    cluster.start()
    try:
        leader = cluster.wait_for_leader()
        client = VaultTestClient(leader, cluster.fleet_public_key)
        try:
            client.register(account, b"pw", secrets.token_bytes(32))
            for _ in range(TEST_ATTEMPT_LIMIT - 1):
                client.login_start(account, b"guess")
            last = client.login_start(account, b"pw")  # the right password, never finished
            assert last.reply.attempts_left == 0
            before = cluster.status(leader)
            assert before is not None
            # The sweeper destroys the record on its own once the session lapses.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = cluster.status(leader)
                if now is not None and now.state_digest != before.state_digest:
                    break
                time.sleep(0.2)
            else:
                pytest.fail("expired last-attempt session did not destroy the record")
            with pytest.raises(VaultCallError) as err:
                client.login_finish(account, last)
            assert err.value.code == pb.VaultError.SESSION_EXPIRED
        finally:
            client.close()
    finally:
        cluster.stop()
