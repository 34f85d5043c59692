"""Rebuilding a shard from a snapshot on real nodes: the HSM refuses a rollback unless the
operator accepts it (software and SoftHSM2 backends), and the fork an operator could
once make by restoring one member now converges with nothing acknowledged lost and no
counter rolled back."""

from __future__ import annotations

import json
import os
import secrets
import shutil
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
    started_cluster,
    write_node_configs,
)
from tests.vault.softhsm import KEY_LABEL, SoftHsm, softhsm_fixture

Code = pb.VaultError.Code
PW = b"pw"


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from softhsm_fixture(tmp_path_factory)


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODE_CMD, *args], capture_output=True, text=True, timeout=120,
                          env=clean_env(), check=False)


def wrong_guess(client: VaultTestClient, account: str) -> None:
    with pytest.raises(VaultCallError) as err:
        client.recover(account, b"wrong")
    assert err.value.code == Code.LOGIN_FAILED


def attempts_left(client: VaultTestClient, account: str) -> int:
    """Start a login (one counted attempt) and report what the vault says is left."""
    return int(client.login_start(account, PW).reply.attempts_left)


def wait_attested(c: Cluster, index: int) -> None:
    """Until every member's HSM attested at least ``index`` (bounded)."""
    deadline = time.monotonic() + 30
    for cfg in c.configs:
        while True:
            out = admin("hsm", "high-water", "show", "--config", cfg["config_path"], "--json")
            assert out.returncode == 0, out.stderr
            mark = json.loads(out.stdout)["high_water"]
            if mark is not None and mark["index"] >= index:
                break
            assert time.monotonic() < deadline, f"{cfg['node_id']} never attested {index}"
            time.sleep(0.3)


def restart_one(c: Cluster, node_id: str) -> subprocess.Popen[bytes]:
    i = next(i for i, cfg in enumerate(c.configs) if cfg["node_id"] == node_id)
    with open(c.state / f"{node_id}.log", "ab") as log:
        c.procs[i] = subprocess.Popen([*NODE_CMD, "run", "--config", c.configs[i]["config_path"]],
                                      stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    return c.procs[i]


def config_args(c: Cluster) -> list[str]:
    return [a for cfg in c.configs for a in ("--config", cfg["config_path"])]


def rollback_story(c: Cluster) -> None:
    """An old snapshot, guesses after it; rebuild refused, then accepted and audited."""
    leader = c.wait_for_leader()
    client = VaultTestClient(leader, c.fleet_public_key)
    account, key = f"acct-{secrets.token_hex(5)}", secrets.token_bytes(32)
    try:
        client.register(account, PW, key)
        old = c.state / "old.snapshot"
        took = admin("snapshot", "take", "--config", c.configs[0]["config_path"], "--out", str(old))
        assert took.returncode == 0, took.stderr
        for _ in range(TEST_ATTEMPT_LIMIT - 1):
            wrong_guess(client, account)
    finally:
        client.close()
    status = c.status(leader)
    assert status is not None
    wait_attested(c, int(status.last_applied))
    c.stop()
    dirs = {cfg["node_id"]: sorted(p.name for p in Path(cfg["data_dir"]).iterdir())
            for cfg in c.configs}

    refused = admin("shard", "rebuild", "--from", str(old), *config_args(c))
    assert refused.returncode == 12, refused.stdout + refused.stderr
    assert "HSM refuses" in refused.stderr and "--accept-rollback" in refused.stderr
    assert f"predates {TEST_ATTEMPT_LIMIT - 1} counted attempts" in refused.stdout
    assert dirs == {cfg["node_id"]: sorted(p.name for p in Path(cfg["data_dir"]).iterdir())
                    for cfg in c.configs}  # nothing touched

    accepted = admin("shard", "rebuild", "--from", str(old), *config_args(c),
                     "--accept-rollback", "--json")
    assert accepted.returncode == 0, accepted.stderr
    result = json.loads(accepted.stdout)
    assert result["accepted_rollback"] and result["rollback"]["attempts_after"] == \
        TEST_ATTEMPT_LIMIT - 1
    for cfg in c.configs:
        first = json.loads((Path(cfg["data_dir"]) / "audit.jsonl").read_text().splitlines()[0])
        assert first["event"] == "rollback_accepted"
        assert first["rolled_back"]["attempts_after"] == TEST_ATTEMPT_LIMIT - 1
    c.start()
    client = VaultTestClient(c.wait_for_leader(), c.fleet_public_key)
    try:  # the accepted rollback gave the guesses back: this is the first attempt again
        assert attempts_left(client, account) == TEST_ATTEMPT_LIMIT - 1
    finally:
        client.close()


def test_an_older_snapshot_is_refused_by_the_software_hsm(tmp_path: Path) -> None:
    with started_cluster(tmp_path, 3) as c:
        rollback_story(c)


@pytest.mark.cluster
def test_an_older_snapshot_is_refused_by_a_pkcs11_token(softhsm: SoftHsm, tmp_path: Path
                                                        ) -> None:
    extra = {"master_key_backend": "pkcs11", "pkcs11_module": str(softhsm.module),
             "pkcs11_token_label": "bkv-rebuild", "pkcs11_key_label": KEY_LABEL,
             "pkcs11_pin_file": str(softhsm.pin_file)}
    configs = write_node_configs(tmp_path, 1, **extra)
    init = subprocess.run([*NODE_CMD, "init-fleet", "--config", configs[0]["config_path"]],
                          capture_output=True, text=True, timeout=60, env=clean_env())
    assert init.returncode == 0, init.stderr
    keys = dict((k.strip(), v.strip()) for k, v in
                (line.split("=") for line in init.stdout.splitlines() if "=" in line))
    c = Cluster(tmp_path, keys, configs)
    c.start()
    try:
        rollback_story(c)
    finally:
        c.stop()


def test_the_fork_an_operator_could_make_now_converges(tmp_path: Path) -> None:
    with started_cluster(tmp_path, 3) as c:
        client = VaultTestClient(c.wait_for_leader(), c.fleet_public_key)
        try:
            client.register("x1", PW, b"1" * 32)
            snap_s = c.state / "s.snapshot"
            assert admin("snapshot", "take", "--config", c.configs[0]["config_path"],
                         "--out", str(snap_s)).returncode == 0
            client.register("x2", PW, b"2" * 32)
            snap_s2 = c.state / "s2.snapshot"
            assert admin("snapshot", "take", "--config", c.configs[0]["config_path"],
                         "--out", str(snap_s2)).returncode == 0
        finally:
            client.close()
        c.stop()
        rebuilt = admin("shard", "rebuild", "--from", str(snap_s), *config_args(c),
                        "--accept-rollback")
        assert rebuilt.returncode == 0, rebuilt.stderr
        c.start()
        leader = c.wait_for_leader()
        client = VaultTestClient(leader, c.fleet_public_key)
        try:
            client.register("y2", PW, b"3" * 32)  # acknowledged
            wrong_guess(client, "y2")  # a counted attempt that must never come back
        finally:
            client.close()
        follower = next(cfg for cfg in c.configs if cfg["grpc_address"] != leader)
        # restoring S2 into one member is refused, whichever command is tried
        one = admin("snapshot", "restore", "--config", follower["config_path"],
                    "--in", str(snap_s2))
        assert one.returncode == 2 and "shard rebuild" in one.stderr
        alone = admin("shard", "rebuild", "--from", str(snap_s2), "--config",
                      follower["config_path"], "--accept-rollback")
        assert alone.returncode == 1 and "every member" in alone.stderr
        status = c.status(leader)
        assert status is not None
        wait_attested(c, int(status.last_applied))
        # the same by hand: put the old history (holding x2) back on its disk
        data = Path(follower["data_dir"])
        c.kill(follower["grpc_address"])
        old = next(data.parent.glob(data.name + ".before-rebuild-*"))
        shutil.rmtree(data)
        shutil.copytree(old, data)
        proc = restart_one(c, follower["node_id"])
        assert proc.wait(timeout=60) != 0  # its HSM refuses the older state
        assert "HSM refuses" in (c.state / f"{follower['node_id']}.log").read_text()
        # emptied, it catches up from the leader
        shutil.rmtree(data)
        restart_one(c, follower["node_id"])
        deadline = time.monotonic() + 60
        while (s := c.status(follower["grpc_address"])) is None or s.accounts != 2:
            assert time.monotonic() < deadline, (s, (c.state / f"{follower['node_id']}.log"
                                                     ).read_text()[-3000:])
            time.sleep(0.3)
        c.kill(leader)  # the caught-up member and the third one carry on
        client = VaultTestClient(c.wait_for_leader(), c.fleet_public_key)
        try:
            assert client.recover("x1", PW) == b"1" * 32
            assert client.recover("y2", PW) == b"3" * 32  # acknowledged: not lost
            with pytest.raises(VaultCallError) as err:  # x2 came back from nowhere
                client.recover("x2", PW)
            assert err.value.code == Code.NOT_REGISTERED
        finally:
            client.close()
        live = [cfg for cfg, p in zip(c.configs, c.procs, strict=True) if p.poll() is None]
        deadline = time.monotonic() + 30
        while True:
            views = [c.status(cfg["grpc_address"]) for cfg in live]
            if all(v is not None for v in views) and len(
                    {(v.last_applied, v.state_digest) for v in views if v is not None}) == 1:
                break
            assert time.monotonic() < deadline, views
            time.sleep(0.3)
        assert os.environ  # (keeps the env import used when run alone)
