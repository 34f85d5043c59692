"""Destruction at the N-th failure, on whichever node leads then, and gone from every disk.

Real node processes (tests/vault harness). The record's sealed bytes are read
from a follower's Raft journal while the deposit is live; after the last
allowed attempt fails, no file in any live node's data directory may hold them
(raw, as in the journal, or hex, as in a snapshot) within 60 s. A deposed
leader, paused with SIGSTOP and resumed, must not answer a KE1 with a KE2.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import opaque
from bkv_protocol.ksf import IDENTITY_KSF
from tests.vault.conftest import (
    TEST_ATTEMPT_LIMIT,
    Cluster,
    VaultCallError,
    VaultTestClient,
    init_fleet,
    started_cluster,
    write_node_configs,
)
from vault_node.raft import safe_pickle
from vault_node.raft.journal import read_records
from vault_node.raft.log_entries import decode_entry
from vault_node.raft.replication import JOURNAL_FILE
from vault_node.state import Put

pytestmark = pytest.mark.cluster

PASSWORD = b"the right one"
WRONG = b"a wrong guess"
ERASE_DEADLINE = 60.0  # the promise in SECURITY.md
SESSION_TTL = 4.0  # a new leader sweeps records exhausted before it after one lifetime


def _sealed_records(data_dir: Path) -> list[bytes]:
    """Every sealed record a node's journal holds in a Put entry."""
    entries, _, _ = read_records((data_dir / JOURNAL_FILE).read_bytes())
    found = []
    for command, _idx, _term in entries:
        try:
            call = safe_pickle.loads(command[1:])
            entry, _ = decode_entry(call[1][0])
        except Exception:
            continue
        if isinstance(entry, Put):
            found.append(entry.sealed_record)
    return found


def _copies_on_disk(data_dirs: list[Path], sealed: bytes) -> list[str]:
    """Files under ``data_dirs`` holding ``sealed``: raw, hex, or as a protocol-2 pickle spells it.

    pysyncobj pickles an entry's bytes with protocol 2, which writes them as a
    latin-1 string in UTF-8; a snapshot writes state and entries in hex.
    """
    pickled = sealed.decode("latin-1").encode("utf-8")
    needles = (sealed, sealed.hex().encode(), pickled, pickled.hex().encode())
    return [str(p) for d in data_dirs for p in d.rglob("*")
            if p.is_file() and any(n in p.read_bytes() for n in needles)]


def _wait_erased(data_dirs: list[Path], sealed: bytes) -> float:
    start = time.monotonic()
    while time.monotonic() - start < ERASE_DEADLINE:
        if not _copies_on_disk(data_dirs, sealed):
            return time.monotonic() - start
        time.sleep(0.5)
    pytest.fail(f"sealed record still on disk after {ERASE_DEADLINE:g}s: "
                f"{_copies_on_disk(data_dirs, sealed)}")


def _exhaust(client: VaultTestClient, account: str) -> object:
    """Register, spend every attempt but the last, then open the last one (KE2, no KE3)."""
    client.register(account, PASSWORD, secrets.token_bytes(32))
    for _ in range(TEST_ATTEMPT_LIMIT - 1):
        client.login_start(account, WRONG)
    last = client.login_start(account, WRONG)
    assert last.reply.attempts_left == 0
    return last


def _data_dir(cfg: dict[str, object]) -> Path:
    return Path(str(cfg["data_dir"]))


@contextlib.contextmanager
def _shard(tmp_path: Path) -> Iterator[tuple[VaultTestClient, list[Path]]]:
    """Three real nodes and a client of their leader; (client, the nodes' data dirs)."""
    with started_cluster(tmp_path, 3) as cluster:
        client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
        try:
            yield client, [_data_dir(c) for c in cluster.configs]
        finally:
            client.close()


def test_a_new_leader_destroys_a_last_attempt_its_predecessor_held(tmp_path: Path) -> None:
    """The leader holding the last attempt dies; its successor destroys the record unasked."""
    configs = write_node_configs(tmp_path, 3, session_ttl_seconds=SESSION_TTL)
    cluster = Cluster(tmp_path, init_fleet(tmp_path), configs)
    cluster.start()
    try:
        leader = cluster.wait_for_leader()
        client = VaultTestClient(leader, cluster.fleet_public_key)
        account = f"lapse-{secrets.token_hex(5)}"
        try:
            _exhaust(client, account)
        finally:
            client.close()
        survivors = [c for c in configs if c["grpc_address"] != leader]
        sealed = _sealed_records(_data_dir(survivors[0]))
        assert len(sealed) == 1 and _copies_on_disk([_data_dir(survivors[0])], sealed[0])
        before = cluster.status(str(survivors[0]["grpc_address"]))
        assert before is not None
        cluster.kill(leader)
        new_leader = cluster.wait_for_leader()
        # No request is sent: the new leader's sweep alone destroys the record, one
        # session lifetime after it took over.
        deadline = time.monotonic() + SESSION_TTL + 20
        while time.monotonic() < deadline:
            now = cluster.status(new_leader)
            if now is not None and now.state_digest != before.state_digest:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the new leader did not destroy the exhausted record")
        _wait_erased([_data_dir(c) for c in survivors], sealed[0])
        client = VaultTestClient(new_leader, cluster.fleet_public_key)
        try:
            with pytest.raises(VaultCallError) as err:
                client.login_start(account, PASSWORD)
            assert err.value.code == pb.VaultError.KEY_DESTROYED
        finally:
            client.close()
    finally:
        cluster.stop()


def test_a_wrong_last_ke3_leaves_no_copy_on_any_disk(tmp_path: Path) -> None:
    with _shard(tmp_path) as (client, dirs):
        account = f"ke3-{secrets.token_hex(5)}"
        last = _exhaust(client, account)
        sealed = _sealed_records(dirs[0])
        assert len(sealed) == 1 and len(_copies_on_disk(dirs, sealed[0])) >= 3
        with pytest.raises(VaultCallError) as err:
            client.login_finish(account, last)  # type: ignore[arg-type]
        assert err.value.code == pb.VaultError.LOGIN_FAILED
        print(f"erased from every disk in {_wait_erased(dirs, sealed[0]):.1f} s")
        with pytest.raises(VaultCallError) as err:
            client.login_start(account, PASSWORD)
        assert err.value.code == pb.VaultError.KEY_DESTROYED


def test_a_deposed_leader_resumed_after_sigstop_sends_no_ke2(tmp_path: Path) -> None:
    configs = write_node_configs(tmp_path, 3)
    cluster = Cluster(tmp_path, init_fleet(tmp_path), configs)
    cluster.start()
    try:
        leader = cluster.wait_for_leader()
        client = VaultTestClient(leader, cluster.fleet_public_key)
        account = f"paused-{secrets.token_hex(5)}"
        client.register(account, PASSWORD, secrets.token_bytes(32))
        proc = cluster.procs[[c["grpc_address"] for c in configs].index(leader)]
        others = [str(c["grpc_address"]) for c in configs if c["grpc_address"] != leader]
        proc.send_signal(signal.SIGSTOP)
        outcome: list[object] = []
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # a new leader among the others
                statuses = [cluster.status(a) for a in others]
                if any(s is not None and s.role == "leader" for s in statuses):
                    break
                time.sleep(0.2)
            else:
                pytest.fail("no new leader while the old one was paused")

            def knock() -> None:  # reaches the paused node's socket, handled on resume
                try:
                    outcome.append(client.login_start(account, PASSWORD))
                except (grpc.RpcError, VaultCallError) as err:
                    outcome.append(err)

            caller = threading.Thread(target=knock)
            caller.start()
            time.sleep(1.0)  # the request waits in the paused process's socket
        finally:
            proc.send_signal(signal.SIGCONT)
        caller.join(timeout=30)
        assert len(outcome) == 1
        result = outcome[0]
        assert isinstance(result, grpc.RpcError), "a deposed leader answered with a KE2"
        assert result.code() in (grpc.StatusCode.FAILED_PRECONDITION,
                                 grpc.StatusCode.UNAVAILABLE), result
        client.close()
        # The shard is fine and the right password still works. The refused KE1 may
        # or may not have been counted: Raft can commit an entry of a deposed leader
        # later (when that node wins again with it in its log). Counted without a
        # KE2 is safe; a KE2 without a count is what must never happen.
        new_leader = cluster.wait_for_leader()
        client = VaultTestClient(new_leader, cluster.fleet_public_key)
        try:
            login = client.login_start(account, PASSWORD)
            assert login.reply.attempts_left in (TEST_ATTEMPT_LIMIT - 1, TEST_ATTEMPT_LIMIT - 2)
            assert len(client.login_finish(account, login)) == 32
        finally:
            client.close()
    finally:
        cluster.stop()


def test_a_replaced_deposit_leaves_no_copy_on_any_disk(tmp_path: Path) -> None:
    """Re-registration replaces the record; the old one (old password) is erased too."""
    with _shard(tmp_path) as (client, dirs):
        account = f"replaced-{secrets.token_hex(5)}"
        client.register(account, PASSWORD, secrets.token_bytes(32))
        (old,) = _sealed_records(dirs[0])
        key = secrets.token_bytes(32)
        client.register(account, b"a new password", key)
        _wait_erased(dirs, old)
        assert client.recover(account, b"a new password") == key


def test_a_deleted_deposit_leaves_no_copy_on_any_disk(tmp_path: Path) -> None:
    """LOGIN_FINISH with delete_deposit: nothing released, the record erased everywhere."""
    with _shard(tmp_path) as (client, dirs):
        account = f"deleted-{secrets.token_hex(5)}"
        client.register(account, PASSWORD, secrets.token_bytes(32))
        (sealed,) = _sealed_records(dirs[0])
        login = client.login_start(account, PASSWORD)
        ke3, _, _ = opaque.client_finish_login(
            login.state, login.reply.ke2, ksf=IDENTITY_KSF, context=opaque.PRODUCT_CONTEXT,
            client_identity=account.encode())
        reply = client.call(account, pb.LOGIN_FINISH, login_finish=pb.LoginFinish(
            session_id=login.reply.session_id, ke3=ke3, delete_deposit=True))
        assert reply.login_finish.deleted and not reply.login_finish.sealed_deposit
        _wait_erased(dirs, sealed)
        with pytest.raises(VaultCallError) as err:
            client.login_start(account, PASSWORD)
        assert err.value.code == pb.VaultError.NOT_REGISTERED
