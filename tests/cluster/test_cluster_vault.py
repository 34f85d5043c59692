"""The vault's guarantees, end to end through ChatD on a real 5-node, 3-DC cluster.

Tests in this module share one cluster and run in file order; the fault tests
at the end (leader kill, full restart, wrong transport secret) come last.
"""

from __future__ import annotations

import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_api.v1 import services_pb2_grpc
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_protocol.sharding import shard_for
from bkv_tools.launcher import LocalCluster, node_status
from client_sdk.config import ClientConfig
from client_sdk.errors import (
    AlreadyRegistered,
    KeyDestroyed,
    NotRegistered,
    VaultError,
    WrongPassword,
)
from client_sdk.vault_client import VaultClient
from client_sdk.vault_replies import seal_client_request

from .conftest import RawClient, converged, digests, wait_until

pytestmark = pytest.mark.cluster
LIMIT = 10


def _account() -> str:
    return f"acct-{secrets.token_hex(6)}"


def test_layout_secrets_and_client_config(cluster: LocalCluster, config: ClientConfig) -> None:
    assert stat.S_IMODE(cluster.secrets_dir.stat().st_mode) == 0o700
    for name in ("master.key", "transport.secret", "token-signing.key"):
        assert stat.S_IMODE((cluster.secrets_dir / name).stat().st_mode) == 0o600
    views = cluster.status()
    assert Counter(v.datacenter for v in views) == {"dc1": 2, "dc2": 2, "dc3": 1}
    assert all(v.status is not None for v in views)
    assert sorted(config.chatd) == sorted(cluster.chatd_addresses())
    assert len(config.chatd) == 3 and config.shard_count == 1


def test_second_up_reuses_everything(cluster: LocalCluster) -> None:
    before = cluster.layout
    again = LocalCluster(cluster.state_dir, allow_identity_ksf=True)
    again.up(timeout=60)
    assert again.layout == before  # same ports, same fleet key


def test_cluster_status_cli(cluster: LocalCluster) -> None:
    bkv = str(Path(sys.executable).parent / "bkv")
    proc = subprocess.run([bkv, "cluster", "status", "--state-dir", str(cluster.state_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for needle in ("dc1:", "dc2:", "dc3:", "leader", "follower", "commit", "applied"):
        assert needle in proc.stdout


def test_register_then_recover(client: VaultClient) -> None:
    account, key = _account(), secrets.token_bytes(32)
    client.register(account, key, "correct horse")
    assert client.recover(account, "correct horse") == key


def test_unknown_account_is_not_registered(client: VaultClient) -> None:
    with pytest.raises(NotRegistered):
        client.recover(_account(), "anything")


def test_re_register_replaces_only_when_asked(client: VaultClient) -> None:
    account = _account()
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    client.register(account, old, "first password")
    with pytest.raises(AlreadyRegistered):
        client.register(account, new, "second password")
    assert client.recover(account, "first password") == old  # untouched, no attempt lost
    client.register(account, new, "second password", replace=True)
    assert client.recover(account, "second password") == new
    with pytest.raises(WrongPassword):
        client.recover(account, "first password")


def test_delete_needs_the_password_and_erases_the_deposit(
    client: VaultClient, cluster: LocalCluster
) -> None:
    account, key = _account(), secrets.token_bytes(32)
    client.register(account, key, "right password")
    with pytest.raises(WrongPassword) as err:
        client.delete(account, "wrong password")
    assert err.value.attempts_left == LIMIT - 1
    assert client.recover(account, "right password") == key  # still there
    client.delete(account, "right password")
    with pytest.raises(NotRegistered):
        client.recover(account, "right password")
    with pytest.raises(NotRegistered):
        client.delete(account, "right password")
    # audited on every node, as one "delete" line with outcome ok
    from vault_node.raft.audit import read_audit

    def audited_everywhere() -> bool:  # followers apply the entry a moment later
        return all(
            ("delete", "ok") in [(line["event"], line["outcome"]) for line in read_audit(
                cluster.state_dir / "nodes" / node / "audit.jsonl")]
            for node in cluster.nodes())

    wait_until(audited_everywhere, 20, "the delete line in every node's audit trail")
    # a deleted account can register again, without --replace
    client.register(account, key, "new password")
    assert client.recover(account, "new password") == key


def test_cli_register_twice_needs_replace_and_delete_works(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    bkv = str(Path(sys.executable).parent / "bkv")
    key_file = tmp_path / "k.key"
    subprocess.run([bkv, "key", "new", "--out", str(key_file)], check=True, timeout=60,
                   capture_output=True)
    account = _account()
    config = ["--config", str(cluster.client_config_path), "--account", account]

    def vault(*argv: str, password: str = "a good password") -> subprocess.CompletedProcess[str]:
        return subprocess.run([bkv, "vault", *argv, *config, "--password-stdin"],
                              input=password + "\n", capture_output=True, text=True, timeout=120)

    assert vault("register", "--key-file", str(key_file)).returncode == 0
    again = vault("register", "--key-file", str(key_file), password="another password")
    assert again.returncode != 0 and "--replace" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    replaced = vault("register", "--key-file", str(key_file), "--replace",
                     password="another password")
    assert replaced.returncode == 0, replaced.stderr
    wrong = vault("delete", password="a good password")  # the old password
    assert wrong.returncode != 0 and "attempts left" in wrong.stderr, wrong.stderr
    gone = vault("delete", password="another password")
    assert gone.returncode == 0 and "deleted" in gone.stdout, gone.stderr
    out = tmp_path / "found.key"
    missing = vault("recover", "--out-key-file", str(out), password="another password")
    assert missing.returncode != 0 and "no key is deposited" in missing.stderr
    assert not out.exists()


def test_wrong_password_reports_attempts_left(client: VaultClient) -> None:
    account = _account()
    client.register(account, secrets.token_bytes(32), "right")
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "wrong")
    assert info.value.attempts_left == LIMIT - 1
    assert "9 attempts left" in str(info.value)


def test_success_resets_the_counter(client: VaultClient) -> None:
    account, key = _account(), secrets.token_bytes(32)
    client.register(account, key, "right")
    for _ in range(3):
        with pytest.raises(WrongPassword):
            client.recover(account, "wrong")
    assert client.recover(account, "right") == key
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "wrong")
    assert info.value.attempts_left == LIMIT - 1


def test_tenth_wrong_guess_destroys(client: VaultClient, raw: RawClient) -> None:
    account = _account()
    client.register(account, secrets.token_bytes(32), "right")
    left = []
    for _ in range(LIMIT):
        with pytest.raises(WrongPassword) as info:
            client.recover(account, "wrong")
        left.append(info.value.attempts_left)
    assert left == list(range(LIMIT - 1, -1, -1))
    # The right password no longer helps, and no KE2 is ever sent again.
    with pytest.raises(KeyDestroyed):
        client.recover(account, "right")
    for _ in range(3):
        with pytest.raises(KeyDestroyed):
            raw.login_start(account, b"right")


def test_ke1_without_ke3_counts_as_a_guess(client: VaultClient, raw: RawClient) -> None:
    account = _account()
    client.register(account, secrets.token_bytes(32), "right")
    reply = raw.login_start(account, b"right")  # KE2 received, KE3 never sent
    assert reply.ke2 and reply.attempts_left == LIMIT - 1
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "wrong")
    assert info.value.attempts_left == LIMIT - 2


def test_concurrent_logins_never_exceed_the_limit(client: VaultClient,
                                                  config: ClientConfig) -> None:
    account = _account()
    client.register(account, secrets.token_bytes(32), "right")
    ke2_count = 0
    destroyed = 0
    others: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        nonlocal ke2_count, destroyed
        r = RawClient(config)
        try:
            r.login_start(account, b"guess")
            with lock:
                ke2_count += 1
        except KeyDestroyed:
            with lock:
                destroyed += 1
        except VaultError as err:  # anything else is a failure, reported below
            with lock:
                others.append(repr(err))
        finally:
            r.close()

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not others, others
    assert 1 <= ke2_count <= LIMIT
    assert ke2_count + destroyed == 20
    with pytest.raises(KeyDestroyed):
        client.recover(account, "right")


def test_followers_never_answer(cluster: LocalCluster, config: ClientConfig) -> None:
    leader = cluster.leader(0)
    assert leader is not None
    follower = next(n for n in cluster.nodes(0) if n != leader)
    account = _account()
    request, _ = seal_client_request(
        config.fleet_public_key, account, shard_for(account, 1), pb.LOGIN_START,
        pb.LoginStart(ke1=b"\x00" * 96),
    )
    address = cluster.node(follower)["grpc_address"]
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        services_pb2_grpc.VaultStub(channel).Handle(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    hints = dict(info.value.trailing_metadata() or ())
    assert hints.get("bkv-leader") == cluster.node(leader)["grpc_address"]


def test_state_digests_agree(cluster: LocalCluster) -> None:
    wait_until(lambda: converged(cluster), 30, "all nodes to hold the same state digest")
    assert None not in digests(cluster).values()


def test_leader_sigkill_mid_workload(cluster: LocalCluster, config: ClientConfig) -> None:
    accounts = {_account(): secrets.token_bytes(32) for _ in range(4)}
    with VaultClient(config, ksf=IDENTITY_KSF) as c:
        for account, key in accounts.items():
            c.register(account, key, "right")
        probe = next(iter(accounts))
        with pytest.raises(WrongPassword):
            c.recover(probe, "wrong")  # 9 left
        old_leader = cluster.leader(0)
        assert old_leader is not None
        errors: list[BaseException] = []
        successes: list[float] = []
        done = threading.Event()
        others = list(accounts.items())[1:]

        def workload() -> None:
            deadline = time.monotonic() + 90
            i = 0
            while not done.is_set() and time.monotonic() < deadline and i < 2000:
                account, key = others[i % len(others)]
                i += 1
                try:
                    assert c.recover(account, "right") == key
                except (VaultError, AssertionError) as err:
                    errors.append(err)
                    return
                successes.append(time.monotonic())

        worker = threading.Thread(target=workload)
        worker.start()
        try:
            wait_until(lambda: len(successes) >= 3, 30, "the workload to run")
            killed_at = time.monotonic()
            cluster.kill_node(old_leader, signal.SIGKILL)
            wait_until(lambda: sum(t > killed_at for t in successes) >= 5 or bool(errors), 60,
                       "recoveries to continue after the leader was killed")
        finally:
            done.set()
            worker.join(60)
        assert not worker.is_alive()
        assert not errors, errors
        new_leader = cluster.leader(0)
        assert new_leader not in (None, old_leader)
        with pytest.raises(WrongPassword) as info:
            c.recover(probe, "wrong")
        assert info.value.attempts_left == LIMIT - 2  # the counter survived the failover
        for account, key in accounts.items():
            assert c.recover(account, "right") == key
    cluster.restart_node(old_leader)
    wait_until(lambda: converged(cluster), 60, "the restarted node to catch up")


def test_wrong_transport_secret_cannot_join(cluster: LocalCluster, client: VaultClient) -> None:
    leader = cluster.leader(0)
    victim = next(n for n in cluster.nodes(0) if n != leader)
    config_file = cluster.config_path(victim)
    original = config_file.read_text()
    bad_secret = cluster.state_dir / "secrets" / "wrong.secret"
    bad_secret.write_text(secrets.token_hex(32))
    bad_secret.chmod(0o600)
    right_secret = str(cluster.secrets_dir / "transport.secret")
    try:
        cluster.kill_node(victim, signal.SIGTERM)
        config_file.write_text(original.replace(right_secret, str(bad_secret)))
        cluster.restart_node(victim)
        account, key = _account(), secrets.token_bytes(32)
        client.register(account, key, "pw")  # the other four carry on
        address = cluster.node(victim)["grpc_address"]
        leader_view = node_status(cluster.node(cluster.leader(0) or leader)["grpc_address"])
        assert leader_view is not None

        def behind() -> bool:
            st = node_status(address)
            return st is not None and st.last_applied < leader_view.last_applied

        wait_until(behind, 30, "the misconfigured node to answer Status")
        st = node_status(address)
        assert st is not None and st.role != "leader"
        assert st.state_digest != leader_view.state_digest
    finally:
        cluster.kill_node(victim, signal.SIGTERM)
        config_file.write_text(original)
        bad_secret.unlink(missing_ok=True)
        cluster.restart_node(victim)
    wait_until(lambda: converged(cluster), 60, "the node to catch up with the right secret")


def test_full_restart_keeps_records_and_counters(cluster: LocalCluster,
                                                 client: VaultClient) -> None:
    account, key = _account(), secrets.token_bytes(32)
    client.register(account, key, "right")
    for _ in range(2):
        with pytest.raises(WrongPassword):
            client.recover(account, "wrong")
    wait_until(lambda: converged(cluster), 30, "convergence before the restart")
    before = digests(cluster)
    for node in cluster.nodes(0):
        cluster.kill_node(node, signal.SIGTERM)
    for node in cluster.nodes(0):
        cluster.restart_node(node)
    cluster.wait_healthy(120)
    wait_until(lambda: converged(cluster), 60, "convergence after the restart")
    assert digests(cluster) == before
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "wrong")
    assert info.value.attempts_left == LIMIT - 3
    assert client.recover(account, "right") == key
