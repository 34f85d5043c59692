"""The vault's audit trail: no secrets, the same order and times on every node, no duplicates.

Guards: ``VaultSyncObj._bkv_apply`` writes one line per applied entry through
``AuditLog.record`` (idempotent by Raft index), the leader stamps its clock into
the entry (``log_entries.encode_entry``), and ``audit_record`` copies only ids,
counters and outcomes. Removing the index check duplicates lines on restart;
stamping the time on each node instead of in the entry makes the times differ;
copying the sealed record leaks it -- each is caught below.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vault.conftest import (
    NODE_CMD,
    TEST_ATTEMPT_LIMIT,
    Cluster,
    VaultCallError,
    VaultTestClient,
    clean_env,
    started_cluster,
)
from vault_node import state as st
from vault_node.raft import log_entries as le
from vault_node.raft.audit import (
    AUDIT_FILE,
    AuditError,
    AuditLog,
    audit_record,
    format_time,
    read_audit,
)
from vault_node.raft.membership import Member, encode_change
from vault_node.raft.replication import RaftConfig, ReplicatedVault
from vault_node.raft.transport_cipher import LinkKey

WAIT_SECONDS = 30.0


def _encodings(secret: bytes) -> list[bytes]:
    """Ways a secret could show up in a text file."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode(),
             base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]
    return [f for f in forms if len(f) >= 8]


def _assert_absent(data: bytes, secret: bytes) -> None:
    for form in _encodings(secret):
        assert form not in data


# ---- the record builder (pure) ------------------------------------------------------------


def _commands() -> list[st.Command]:
    account, record_id = os.urandom(32), os.urandom(16)
    sealed = secrets.token_bytes(400)
    return [
        st.Put(account, record_id, sealed, 3),
        st.BeginAttempt(account),
        st.ResetAttempts(account, record_id),
        st.DestroyIfExhausted(account, record_id),
        st.Delete(account),
    ]


def test_records_name_the_event_and_never_the_sealed_record() -> None:
    state, lines = st.VaultState(), b""
    commands = _commands()
    sealed = commands[0].sealed_record  # type: ignore[union-attr]
    for index, command in enumerate(commands, 1):
        result = state.apply(command)
        record = audit_record(index, command, result, 1_700_000_000_123)
        lines += json.dumps(record).encode()
        assert record["account"] == command.account_id.hex()
        assert record["time"] == "2023-11-14T22:13:20.123Z"
        assert set(record) <= {"index", "time", "event", "outcome", "account", "record",
                               "attempts", "limit"}
    events = [json.loads(x)["event"] for x in lines.replace(b"}{", b"}\n{").splitlines()]
    assert events == ["registration", "attempt", "success", "destruction", "delete"]
    _assert_absent(lines, sealed)
    # The granted attempt's result carries the sealed record; the audit line must not.
    granted = st.VaultState()
    granted.apply(commands[0])
    result = granted.apply(commands[1])
    assert result.sealed_record == sealed
    line = json.dumps(audit_record(2, commands[1], result, None)).encode()
    _assert_absent(line, sealed)
    assert json.loads(line)["outcome"] == "granted" and json.loads(line)["attempts"] == 1


def test_a_re_delivered_guess_is_marked_repeated() -> None:
    state, account, tag = st.VaultState(), b"\x01" * 32, b"\x07" * 16
    state.apply(st.Put(account, b"\x02" * 16, b"sealed", 3))
    first = state.apply(st.BeginAttempt(account, tag))
    again = state.apply(st.BeginAttempt(account, tag))
    assert "repeated" not in audit_record(2, st.BeginAttempt(account, tag), first, None)
    line = audit_record(3, st.BeginAttempt(account, tag), again, None)
    assert line["repeated"] is True and line["attempts"] == 1 == first.attempts


def test_stamped_entries_round_trip_and_old_entries_still_decode() -> None:
    for command in _commands():
        assert le.decode_entry(le.encode_entry(command, 42)) == (command, 42)
        assert le.decode_entry(le.encode_command(command)) == (command, None)
    for junk in (b"\x10", b"\x10" + bytes(8), b"\x10" + bytes(8) + b"\x02"):
        with pytest.raises(ValueError):
            le.decode_entry(junk)
    with pytest.raises(ValueError):
        le.encode_entry(_commands()[1], -1)
    assert format_time(None) is None


def test_audit_file_is_idempotent_by_index_and_repairs_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / AUDIT_FILE
    command = _commands()[1]
    result = st.ApplyResult(st.Outcome.NOT_REGISTERED)
    log = AuditLog(path, fsync=False)
    for index in (3, 4, 4, 2, 7):  # replays of 4 and 2 are skipped
        log.record(index, command, result, 1000)
    log.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with path.open("ab") as f:
        f.write(b'{"index":8,"ev')  # a crash in the middle of a line
    log = AuditLog(path, fsync=False)
    assert log.last_index == 7
    log.snapshot_installed(5)  # older than what is audited: nothing to note
    log.snapshot_installed(20)
    log.record(21, None, st.ApplyResult(st.Outcome.INVALID), None)
    log.close()
    lines = list(read_audit(path))
    assert [x["index"] for x in lines] == [3, 4, 7, 20, 21]
    assert lines[3] == {"index": 20, "event": "gap", "first": 8, "reason": "snapshot"}
    assert [x["index"] for x in read_audit(path, since=7)] == [7, 20, 21]
    path.write_bytes(path.read_bytes() + b'{"index":4}\n')
    with pytest.raises(AuditError, match="out of order"):
        list(read_audit(path))
    with pytest.raises(AuditError):
        AuditLog(path, fsync=False)


def test_membership_changes_are_audited_by_index(tmp_path: Path) -> None:
    """A committed member add/remove gets one line; a journal replay adds none."""
    path = tmp_path / AUDIT_FILE
    key = LinkKey.generate().public_hex
    member = Member("dc3-n6", "dc3", "10.0.3.6:7000", "10.0.3.6:7100", key)
    log = AuditLog(path, fsync=False)
    log.record(1, _commands()[1], st.ApplyResult(st.Outcome.NOT_REGISTERED), 1000)
    log.membership(2, encode_change("add", member))
    log.membership(3, encode_change("rem", member))
    log.membership(4, b"garbage")
    log.close()
    log = AuditLog(path, fsync=False)  # restart: the journal is applied again
    for index, kind in ((2, "add"), (3, "rem")):
        log.membership(index, encode_change(kind, member))
    log.close()
    lines = list(read_audit(path))
    assert [x["index"] for x in lines] == [1, 2, 3, 4]
    fingerprint = hashlib.sha256(bytes.fromhex(key)).hexdigest()[:16]
    assert lines[1] == {"index": 2, "time": None, "event": "membership", "change": "add",
                        "node": "dc3-n6", "datacenter": "dc3", "raft_address": "10.0.3.6:7000",
                        "link_key_fingerprint": fingerprint}
    assert lines[2]["change"] == "remove" and lines[2]["node"] == "dc3-n6"
    assert lines[3] == {"index": 4, "time": None, "event": "membership", "outcome": "invalid"}


def test_a_failed_write_never_raises_and_leaves_a_gap(tmp_path: Path) -> None:
    path = tmp_path / AUDIT_FILE
    command, result = _commands()[1], st.ApplyResult(st.Outcome.NOT_REGISTERED)
    log = AuditLog(path, fsync=False)
    log.record(1, command, result, 1000)
    writable, log._fd = log._fd, os.open(path, os.O_RDONLY)  # writes now fail (EBADF)
    log.record(2, command, result, 1000)
    log.record(3, command, result, 1000)
    assert log.write_errors == 2 and log.last_index == 1
    os.close(log._fd)
    log._fd = writable
    log.record(4, command, result, 1000)
    log.close()
    lines = list(read_audit(path))
    assert [(x["index"], x["event"]) for x in lines] == [(1, "attempt"), (3, "gap"), (4, "attempt")]
    assert lines[1]["first"] == 2 and lines[1]["reason"] == "write_error"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_single_node_restart_replays_without_duplicates(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_port()}"
    config = RaftConfig(node_id="solo", self_address=address, peer_addresses=[],
                        data_dir=tmp_path, transport_secret=os.urandom(32), fsync=False,
                        link_key=LinkKey.generate())
    put, attempt = _commands()[:2]
    for round_ in range(2):
        with ReplicatedVault(config) as vault:
            deadline = time.monotonic() + 10
            while not vault.is_leader():
                assert time.monotonic() < deadline, "single node never became leader"
                time.sleep(0.02)
            vault.submit(put if round_ == 0 else attempt)
    lines = list(read_audit(tmp_path / AUDIT_FILE))
    assert [x["event"] for x in lines] == ["registration", "attempt"]
    assert all(x["time"] is not None for x in lines)
    _assert_absent((tmp_path / AUDIT_FILE).read_bytes(), put.sealed_record)  # type: ignore[union-attr]


# ---- a real cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with started_cluster(tmp_path_factory.mktemp("audit-cluster"), 3) as c:
        yield c


def _trail(cfg: dict[str, Any]) -> list[tuple[Any, ...]]:
    path = Path(cfg["data_dir"]) / AUDIT_FILE
    if not path.exists():
        return []
    return [(x["index"], x["event"], x.get("account"), x.get("outcome"), x["time"],
             x.get("attempts")) for x in read_audit(path)]


def _wait_same_trails(cluster: Cluster, count: int) -> list[tuple[Any, ...]]:
    """Every node's trail once they agree and hold at least ``count`` lines (bounded wait)."""
    end = time.monotonic() + WAIT_SECONDS
    while True:
        trails = [_trail(cfg) for cfg in cluster.configs]
        if len(trails[0]) >= count and all(t == trails[0] for t in trails):
            return trails[0]
        if time.monotonic() > end:
            pytest.fail(f"audit trails differ or are short: {trails}")
        time.sleep(0.2)


def _restart(cluster: Cluster, index: int) -> None:
    proc, cfg = cluster.procs[index], cluster.configs[index]
    proc.terminate()
    proc.wait(timeout=15)
    with open(cluster.state / f"{cfg['node_id']}.log", "ab") as log:
        cluster.procs[index] = subprocess.Popen(
            [*NODE_CMD, "run", "--config", cfg["config_path"]],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        )


@pytest.mark.cluster
def test_cluster_trails_match_and_survive_a_restart(audit_cluster: Cluster) -> None:
    cluster = audit_cluster
    leader = cluster.wait_for_leader()
    client = VaultTestClient(leader, cluster.fleet_public_key)
    password, wrong = b"correct horse " + secrets.token_bytes(8), b"wrong"
    backup_key = secrets.token_bytes(32)
    alice, bob = f"alice-{secrets.token_hex(4)}", f"bob-{secrets.token_hex(4)}"
    try:
        client.register(alice, password, backup_key)
        with pytest.raises(VaultCallError):
            client.recover(alice, wrong)
        assert client.recover(alice, password) == backup_key
        client.register(bob, password, backup_key)
        for _ in range(TEST_ATTEMPT_LIMIT):
            with pytest.raises(VaultCallError):
                client.recover(bob, wrong)
        with pytest.raises(VaultCallError):  # the deposit is gone
            client.login_start(bob, password)
    finally:
        client.close()

    trail = _wait_same_trails(cluster, 1)
    events = [(event, outcome) for _i, event, _a, outcome, _t, _n in trail]
    # alice: put, wrong guess, right guess + reset; bob: put, 3 wrong guesses, destruction.
    assert events[:4] == [("registration", "ok"), ("attempt", "granted"),
                          ("attempt", "granted"), ("success", "ok")]
    assert ("destruction", "destroyed") in events
    assert events[-1] == ("attempt", "destroyed")
    assert all(t is not None for *_rest, t, _n in trail)
    times = [t for *_rest, t, _n in trail]
    assert times == sorted(times)
    accounts = {a for _i, _e, a, *_rest in trail}
    assert len(accounts) == 2 and all(len(a) == 64 for a in accounts)

    # Restart a follower: it replays its journal; its trail must not repeat a line.
    follower = next(i for i, c in enumerate(cluster.configs) if c["grpc_address"] != leader)
    _restart(cluster, follower)
    leader = cluster.wait_for_leader()
    client = VaultTestClient(leader, cluster.fleet_public_key)
    try:
        assert client.recover(alice, password) == backup_key
    finally:
        client.close()
    after = _wait_same_trails(cluster, len(trail) + 2)
    assert after[: len(trail)] == trail
    indices = [i for i, *_rest in after]
    assert indices == sorted(set(indices))

    for cfg in cluster.configs:
        data = (Path(cfg["data_dir"]) / AUDIT_FILE).read_bytes()
        for secret in (password, backup_key):
            _assert_absent(data, secret)
        assert alice.encode() not in data and bob.encode() not in data

    out = subprocess.run(
        [*NODE_CMD, "audit", "--config", cluster.configs[0]["config_path"], "--since",
         str(indices[-2])], capture_output=True, text=True, timeout=30, env=clean_env(),
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["index"] for x in out.stdout.splitlines()] == indices[-2:]
