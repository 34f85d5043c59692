"""The membership pieces without a cluster: the digest comparison behind `cluster status`,
ChatD's router following a new node list, configs written once, the compose record."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bkv_api.v1 import services_pb2
from bkv_ops.cluster_status import build_rows, diverged, format_table, status_document
from bkv_tools import compose_layout
from bkv_tools.cli.cluster_cmd import _report
from bkv_tools.cli.exit_codes import ExitCode
from bkv_tools.launcher_layout import (
    create_secrets,
    new_layout,
    update_config_key,
    write_configs,
)
from chatd_proxy.config import ChatDConfig
from chatd_proxy.routing import ShardRouter
from vault_node.config import NodeConfig

A = bytes.fromhex("aa" * 32)
B = bytes.fromhex("bb" * 32)


def _st(node: str, role: str, applied: int, digest: bytes, shard: int = 0
        ) -> services_pb2.NodeStatus:
    return services_pb2.NodeStatus(node_id=node, datacenter="dc1", shard=shard, role=role,
                                   term=2, commit_index=applied, last_applied=applied,
                                   healthy=True, state_digest=digest)


def test_same_applied_index_with_different_digests_is_a_divergence() -> None:
    rows = build_rows([("a:1", _st("n1", "leader", 7, A)), ("a:2", _st("n2", "follower", 7, B)),
                       ("a:3", _st("n3", "follower", 7, A)), ("a:4", None)])
    [found] = diverged(rows)
    assert (found.shard, found.applied) == (0, 7)
    assert found.by_digest == {A.hex(): ["n1", "n3"], B.hex(): ["n2"]}
    assert "STATE DIVERGED at applied index 7" in found.describe()
    assert status_document(rows)["diverged"] == [
        {"shard": 0, "applied": 7, "digests": {A.hex(): ["n1", "n3"], B.hex(): ["n2"]}}]
    assert "aaaaaaaaaaaa" in format_table(rows)  # the digest column shows a prefix


def test_a_node_behind_or_in_another_shard_is_not_a_divergence() -> None:
    rows = build_rows([("a:1", _st("n1", "leader", 8, A)), ("a:2", _st("n2", "follower", 7, B)),
                       ("b:1", _st("m1", "leader", 8, B, shard=1))])
    assert diverged(rows) == []


def test_status_exits_damaged_on_divergence(capsys: pytest.CaptureFixture[str]) -> None:
    same = build_rows([("a:1", _st("n1", "leader", 7, A)), ("a:2", _st("n2", "follower", 7, A)),
                       ("a:3", _st("n3", "follower", 6, B))])
    assert _report(same, [], False) == ExitCode.OK
    split = build_rows([("a:1", _st("n1", "leader", 7, A)), ("a:2", _st("n2", "follower", 7, B)),
                        ("a:3", _st("n3", "follower", 7, A))])
    assert _report(split, [], False) == ExitCode.DAMAGED == 6
    assert "shard 0: STATE DIVERGED" in capsys.readouterr().err


def test_router_follows_a_new_node_list_and_no_hint_to_a_removed_node() -> None:
    router = ShardRouter(0, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    try:
        router._leader = "127.0.0.1:1"
        added, removed = router.set_nodes(["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"])
        assert (added, removed) == (["127.0.0.1:4"], ["127.0.0.1:1"])
        assert router.nodes == ("127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")
        assert router.leader is None  # the removed leader is forgotten
        assert not router._follow("127.0.0.1:2", "127.0.0.1:1")  # a hint to a non-member
        assert router.leader is None
        assert router._follow("127.0.0.1:2", "127.0.0.1:4")  # a hint to the new member
        assert {a for a, _ in router.status(0.01)} == set(router.nodes)
        with pytest.raises(ValueError):
            router.set_nodes([])
    finally:
        router.close()


def test_configs_are_written_once_and_only_membership_keys_change(tmp_path: Path) -> None:
    layout = new_layout(1, 10, True)
    layout["fleet_public_key"] = "00" * 32
    for sub in ("config", "secrets"):
        (tmp_path / sub).mkdir()
    create_secrets(tmp_path / "secrets")
    written = write_configs(tmp_path, layout)
    assert len(written) == 5 + 3 + 1
    node = layout["nodes"][0]["node_id"]
    path = tmp_path / "config" / f"{node}.toml"
    path.write_text(path.read_text() + "# the operator's note\n")
    assert write_configs(tmp_path, layout) == []
    assert path.read_text().endswith("# the operator's note\n")
    before = tomllib.loads(path.read_text())
    update_config_key(path, "peers", before["peers"][:3])
    after = tomllib.loads(path.read_text())
    assert len(after["peers"]) == 3
    assert {k: v for k, v in after.items() if k != "peers"} == {
        k: v for k, v in before.items() if k != "peers"}


def test_compose_configs_follow_the_recorded_members(tmp_path: Path) -> None:
    state = tmp_path / "state"
    compose_layout.prepare(state, attempt_limit=4, use_tls=False)
    names = compose_layout.record_member(state.resolve(), "add", "dc3-n2", "dc3")
    assert names[-1] == "dc3-n2"
    assert compose_layout.node_names(state)[-1] == ("dc3-n2", "dc3")
    cfg = NodeConfig.load(state / "config" / "dc3-n2.toml")
    assert [p.node_id for p in cfg.peers] == names
    compose_layout.record_member(state.resolve(), "remove", "dc2-n2")
    assert not (state / "config" / "dc2-n2.toml").exists()
    chatd = ChatDConfig.load(state / "config" / "chatd-dc1.toml")
    assert chatd.shards == (("dc1-n1:7100", "dc1-n2:7100", "dc2-n1:7100", "dc3-n1:7100",
                             "dc3-n2:7100"),)
    assert [p.node_id for p in NodeConfig.load(state / "config" / "dc1-n1.toml").peers] == [
        "dc1-n1", "dc1-n2", "dc2-n1", "dc3-n1", "dc3-n2"]
