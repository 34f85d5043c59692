"""Live membership changes on a real shard: add two, remove one, restart, refuse intruders."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bkv_tools.launcher_layout import free_ports
from tests.vault.conftest import (
    NODE_CMD,
    Cluster,
    VaultTestClient,
    clean_env,
    new_link_key_file,
    started_cluster,
)
from vault_node import cli
from vault_node.admin.client import AdminClient, AdminError
from vault_node.raft.admin_endpoint import CMD_ADD, CMD_MEMBERS
from vault_node.raft.membership import Member
from vault_node.raft.transport_cipher import LinkKey, LinkSecrets

pytestmark = pytest.mark.cluster
CATCH_UP_DEADLINE = 30.0
ADMIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Ran:
    """`bkv-vault-node ARGS` in this process (its real entry point), without BKV_* variables."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("BKV_")}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        os.environ.update(saved)
    return Ran(code, out.getvalue(), err.getvalue())


def admin(cfg: dict[str, Any], *args: str) -> Ran:
    """Run a `bkv-vault-node` admin command against ``cfg``'s node."""
    return run_cli(*args, "--config", cfg["config_path"])


def members_json(cfg: dict[str, Any]) -> dict[str, Any]:
    out = admin(cfg, "member", "list", "--json", "--timeout", str(ADMIN_TIMEOUT))
    assert out.returncode == 0, out.stderr
    view: dict[str, Any] = json.loads(out.stdout)
    return view


def new_node_config(cluster: Cluster, node_id: str, datacenter: str) -> dict[str, Any]:
    """A config for a joining node: the current members as its peers, plus itself."""
    raft_port, grpc_port = free_ports(2)
    base = cluster.configs[0]
    key_file = cluster.state / "secrets" / f"{node_id}.link.key"
    me = {"node_id": node_id, "datacenter": datacenter,
          "raft_address": f"127.0.0.1:{raft_port}", "grpc_address": f"127.0.0.1:{grpc_port}",
          "link_public_key": new_link_key_file(key_file)}
    peers = [{k: p[k] for k in me} for p in base["peers"]] + [me]
    cfg = {k: v for k, v in base.items() if k not in ("config_path", "peers", *me)}
    cfg.update(me, peers=peers, data_dir=str(cluster.state / "nodes" / node_id),
               link_key_file=str(key_file))
    path = cluster.state / f"{node_id}.toml"
    path.write_text(tomli_w.dumps(cfg))
    cfg["config_path"] = str(path)
    return cfg


def start_node(cluster: Cluster, cfg: dict[str, Any]) -> None:
    with open(cluster.state / f"{cfg['node_id']}.log", "ab") as log:
        proc = subprocess.Popen([*NODE_CMD, "run", "--config", cfg["config_path"]],
                                stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    cluster.configs.append(cfg)
    cluster.procs.append(proc)


def stop_node(cluster: Cluster, node_id: str) -> None:
    for cfg, proc in zip(cluster.configs, cluster.procs, strict=True):
        if cfg["node_id"] == node_id and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


def wait_caught_up(cluster: Cluster, leader_grpc: str, follower_grpc: str) -> None:
    """Bounded wait until the follower's state digest equals the leader's."""
    end = time.monotonic() + CATCH_UP_DEADLINE
    while time.monotonic() < end:
        lead, follow = cluster.status(leader_grpc), cluster.status(follower_grpc)
        if lead is not None and follow is not None and lead.state_digest == follow.state_digest \
                and follow.last_applied >= lead.commit_index - 1:
            return
        time.sleep(0.3)
    raise AssertionError(f"{follower_grpc} did not catch up: {cluster.logs()}")


def leader_grpc(view: dict[str, Any]) -> str:
    leader = next(m for m in view["members"] if m["raft_address"] == view["leader"])
    address: str = leader["grpc_address"]
    return address


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with started_cluster(tmp_path_factory.mktemp("membership"), 3) as c:
        yield c


def test_wrong_secret_is_refused_and_changes_nothing(shard: Cluster) -> None:
    cfg = shard.configs[0]
    # the right member key but a wrong transport secret, and the right secret but a stranger's key
    member_key = LinkKey.from_hex(Path(cfg["link_key_file"]).read_text())
    secret = Path(cfg["transport_secret_file"]).read_bytes().strip()
    keys = {p["raft_address"]: bytes.fromhex(p["link_public_key"]) for p in cfg["peers"]}
    outsider = Member("evil", "dc9", "127.0.0.1:1", "127.0.0.1:2", LinkKey.generate().public_hex)
    for intruder in (
        AdminClient(LinkSecrets(b"not the transport secret at all", member_key), keys),
        AdminClient(LinkSecrets(secret, LinkKey.generate()), keys),
    ):
        for command in ([CMD_MEMBERS], [CMD_ADD, outsider.to_plain()]):
            with pytest.raises(AdminError, match="refused the connection"):
                intruder.request(cfg["raft_address"], command, timeout=5.0)
    assert len(members_json(cfg)["members"]) == 3
    # The CLI with a wrong secret file: clear one-line error, exit 3, nothing changed.
    bad = shard.state / "wrong.toml"
    wrong_secret = shard.state / "secrets" / "wrong.secret"
    wrong_secret.write_text(secrets.token_hex(32))
    raw = {k: v for k, v in cfg.items() if k != "config_path"}
    bad.write_text(tomli_w.dumps({**raw, "transport_secret_file": str(wrong_secret)}))
    out = subprocess.run(
        [*NODE_CMD, "member", "add", "--config", str(bad), "--timeout", "3", "--node-id", "evil",
         "--datacenter", "dc9", "--raft-address", "127.0.0.1:1", "--grpc-address", "127.0.0.1:2",
         "--link-public-key", outsider.link_key],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )
    assert out.returncode == 12  # the setup was refused (exit code table)
    assert "Traceback" not in out.stderr and "transport secret" in out.stderr
    assert [m["node_id"] for m in members_json(cfg)["members"]].count("evil") == 0


def test_guard_rails_refuse_clearly(shard: Cluster) -> None:
    cfg, other = shard.configs[0], shard.configs[1]
    below = admin(cfg, "member", "remove", "--node-id", other["node_id"], "--timeout", "10")
    assert below.returncode == 1 and "below 3 members" in below.stderr
    taken = admin(cfg, "member", "add", "--node-id", other["node_id"], "--datacenter", "dc1",
                  "--raft-address", "127.0.0.1:1", "--grpc-address", "127.0.0.1:2",
                  "--link-public-key", LinkKey.generate().public_hex, "--timeout", "10")
    assert taken.returncode == 1 and "already a member" in taken.stderr
    bad = admin(cfg, "member", "add", "--node-id", "x", "--datacenter", "dc1",
                "--raft-address", "nowhere", "--grpc-address", "127.0.0.1:2",
                "--link-public-key", LinkKey.generate().public_hex)
    assert bad.returncode == 2 and "host:port" in bad.stderr
    for out in (below, taken, bad):
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert len(members_json(cfg)["members"]) == 3


def test_add_two_remove_one_then_restart(shard: Cluster) -> None:
    first = shard.configs[0]
    client = VaultTestClient(shard.wait_for_leader(), shard.fleet_public_key)
    accounts = {f"acct-{secrets.token_hex(5)}": secrets.token_bytes(32) for _ in range(3)}
    try:
        for account, key in accounts.items():
            client.register(account, b"pw-" + account.encode(), key)
    finally:
        client.close()

    for node_id, dc in (("dc1-n4", "dc1"), ("dc2-n5", "dc2")):
        cfg = new_node_config(shard, node_id, dc)
        start_node(shard, cfg)
        out = admin(first, "member", "add", "--node-id", node_id, "--datacenter", dc,
                    "--raft-address", cfg["raft_address"], "--grpc-address", cfg["grpc_address"],
                    "--link-public-key", cfg["link_public_key"], "--timeout", str(ADMIN_TIMEOUT))
        assert out.returncode == 0, out.stderr + shard.logs()
        assert node_id in out.stdout
        # one change at a time: the command returned only once the change committed
        view = members_json(first)
        assert not view.get("change_in_progress")
        wait_caught_up(shard, leader_grpc(view), cfg["grpc_address"])
    assert len(members_json(first)["members"]) == 5

    # Remove the leader itself: leadership moves first, then the shard keeps serving.
    view = members_json(first)
    victim = next(c for c in shard.configs if c["raft_address"] == view["leader"])
    asker = next(c for c in shard.configs if c is not victim)
    out = admin(asker, "member", "remove", "--node-id", victim["node_id"],
                "--timeout", str(ADMIN_TIMEOUT))
    assert out.returncode == 0, out.stderr
    assert victim["node_id"] not in out.stdout
    stop_node(shard, victim["node_id"])
    survivors = [c for c in shard.configs if c["node_id"] != victim["node_id"]]
    view = members_json(survivors[0])
    assert sorted(m["node_id"] for m in view["members"]) == sorted(c["node_id"]
                                                                   for c in survivors)
    _recover_all(shard, view, accounts)
    changes = [("add", "dc1-n4"), ("add", "dc2-n5"), ("remove", victim["node_id"])]
    audited = _wait_membership_audited(survivors, changes)

    # Restart every survivor with its unchanged TOML: membership comes from the log.
    shard.stop()
    shard.configs, shard.procs = [], []
    for cfg in survivors:
        start_node(shard, cfg)
    view = members_json(survivors[-1])
    assert sorted(m["node_id"] for m in view["members"]) == sorted(c["node_id"]
                                                                   for c in survivors)
    _recover_all(shard, view, accounts)
    # the journal replay at restart audits no change twice
    assert _wait_membership_audited(survivors, changes) == audited


def _membership_lines(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The node's membership audit lines, as ``bkv-vault-node audit`` prints them."""
    out = run_cli("audit", "--config", cfg["config_path"])
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    covered = [(x["first"], x["index"]) for x in lines if x["event"] == "gap"]
    assert not covered, "entries arrived by snapshot: the changes in them have no lines"
    return [x for x in lines if x["event"] == "membership"]


def _wait_membership_audited(
    nodes: list[dict[str, Any]], changes: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Every node audits each committed change once, with the same line; returns the lines."""
    end = time.monotonic() + CATCH_UP_DEADLINE
    while True:
        seen = {cfg["node_id"]: _membership_lines(cfg) for cfg in nodes}
        if all([(x["change"], x["node"]) for x in lines] == changes for lines in seen.values()):
            break
        assert time.monotonic() < end, f"membership audit lines: {seen}"
        time.sleep(0.3)
    first = seen[nodes[0]["node_id"]]
    assert all(lines == first for lines in seen.values())  # index, member, key fingerprint
    keys = {c["node_id"]: c["link_public_key"] for c in nodes}
    for line in first:
        assert line["time"] is None  # the leader stamps no time into membership entries
        assert line["raft_address"] and len(line["link_key_fingerprint"]) == 16
        if line["node"] in keys:
            assert line["link_key_fingerprint"] == hashlib.sha256(
                bytes.fromhex(keys[line["node"]])).hexdigest()[:16]
    return first


def _recover_all(shard: Cluster, view: dict[str, Any], accounts: dict[str, bytes]) -> None:
    client = VaultTestClient(leader_grpc(view), shard.fleet_public_key)
    try:
        for account, key in accounts.items():
            assert client.recover(account, b"pw-" + account.encode()) == key
    finally:
        client.close()


def test_removal_below_three_members_is_refused(tmp_path: Path) -> None:
    from vault_node.raft.membership import MembershipError, check_removal

    three = [Member(f"n{i}", "dc1", f"127.0.0.1:{9000 + i}", f"127.0.0.1:{9100 + i}")
             for i in range(3)]
    with pytest.raises(MembershipError, match="below 3"):
        check_removal(three, "n0")
    assert check_removal([*three, Member("n3", "dc2", "127.0.0.1:9003", "")], "n3").node_id == "n3"



def test_a_node_added_long_after_it_started_keeps_the_leader_and_term(tmp_path: Path) -> None:
    """`join = true`, the procedure README gives: started well before `member add`, the
    new node never campaigns, so the add keeps the leader and its term."""
    with started_cluster(tmp_path, 3) as c:
        first = c.configs[0]
        cfg = new_node_config(c, "dc3-n4", "dc3")
        cfg["join"] = True
        Path(cfg["config_path"]).write_text(
            tomli_w.dumps({k: v for k, v in cfg.items() if k != "config_path"}))
        start_node(c, cfg)
        time.sleep(3.0)  # many election timeouts with no leader heard from
        before = _leader_term(c, first)
        out = admin(first, "member", "add", "--node-id", "dc3-n4", "--datacenter", "dc3",
                    "--raft-address", cfg["raft_address"], "--grpc-address", cfg["grpc_address"],
                    "--link-public-key", cfg["link_public_key"], "--timeout", str(ADMIN_TIMEOUT))
        assert out.returncode == 0, out.stderr
        wait_caught_up(c, leader_grpc(members_json(first)), cfg["grpc_address"])
        time.sleep(1.0)
        assert _leader_term(c, first) == before


def _leader_term(cluster: Cluster, cfg: dict[str, Any]) -> tuple[str, int]:
    address = leader_grpc(members_json(cfg))
    status = cluster.status(address)
    assert status is not None and status.role == "leader"
    return address, int(status.term)
