"""The compose deployment files: configs the real loaders accept, secrets made once, and a
compose file that names every node, ChatD, network and secret the layout writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bkv_tools import compose_layout
from bkv_tools.launcher_layout import free_ports
from chatd_proxy.config import ChatDConfig
from client_sdk.config import ClientConfig
from vault_node.config import NodeConfig

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deploy") / "state"
    compose_layout.prepare(path, attempt_limit=4)
    return path


def test_node_configs_load_and_address_peers_by_service_name(state: Path) -> None:
    names = [n for n, _ in compose_layout.node_names()]
    assert names == ["dc1-n1", "dc1-n2", "dc2-n1", "dc2-n2", "dc3-n1"]
    for name, dc in compose_layout.node_names():
        cfg = NodeConfig.load(state / "config" / f"{name}.toml")
        assert (cfg.node_id, cfg.datacenter, cfg.attempt_limit) == (name, dc, 4)
        assert cfg.grpc_address == f"{name}:7100" and cfg.raft_address == f"{name}:7200"
        # listens on both of its networks, is reached by name
        assert (cfg.grpc_listen, cfg.raft_bind) == ("0.0.0.0:7100", "0.0.0.0:7200")
        assert [p.node_id for p in cfg.peers] == names
        # secrets are read from the memory-only copy the entry point makes
        assert cfg.master_key_file == Path("/run/bkv/master_key")
        assert cfg.transport_secret_file == Path("/run/bkv/transport_secret")
        assert cfg.link_key_file == Path("/run/bkv/link_key")
        assert all(p.link_public_key for p in cfg.peers)


def test_chatd_and_client_configs(state: Path) -> None:
    client = ClientConfig.load(state / "client.toml")
    env = dict(line.split("=", 1) for line in (state / "compose.env").read_text().split())
    assert env["BKV_STATE"] == str(state.resolve())
    ports = [env[compose_layout.port_variable(n)] for n, _ in compose_layout.chatd_names()]
    assert client.chatd == [f"127.0.0.1:{p}" for p in ports]
    assert client.token_signing_key_file == state.resolve() / "secrets" / "token-signing.key"
    for name, dc in compose_layout.chatd_names():
        cfg = ChatDConfig.load(state / "config" / f"{name}.toml")
        assert cfg.datacenter == dc and cfg.listen == "0.0.0.0:7001"
        assert cfg.shards == (tuple(f"{n}:7100" for n, _ in compose_layout.node_names()),)


def test_secrets_are_private_and_kept_on_a_second_run(state: Path) -> None:
    secret_files = [state / "secrets" / f for f in
                    ("master.key", "transport.secret", "token-signing.key")]
    secret_files.append(state / "fleet" / "fleet.sealed")
    secret_files += [state / "secrets" / "link" / f"{n}.key"
                     for n, _ in compose_layout.node_names()]
    before = {f: f.read_bytes() for f in secret_files}
    env_before = (state / "compose.env").read_text()
    for f in secret_files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    compose_layout.prepare(state, attempt_limit=9)  # layout exists: limit and ports kept
    assert {f: f.read_bytes() for f in secret_files} == before
    assert (state / "compose.env").read_text() == env_before
    assert NodeConfig.load(state / "config" / "dc3-n1.toml").attempt_limit == 4


def test_compose_file_matches_the_layout() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    services = doc["services"]
    assert set(doc["networks"]) == {"dc1", "dc2", "dc3", "wan"}
    shared = {"master_key", "transport_secret", "fleet_sealed"}
    link_keys = {f"link_key_{n.replace('-', '_')}" for n, _ in compose_layout.node_names()}
    assert set(doc["secrets"]) == shared | link_keys
    for name, dc in compose_layout.node_names():
        svc = services[name]
        assert svc["networks"] == [dc, "wan"]
        assert "extra_hosts" not in svc  # the listen keys replace the name mapping
        assert f"/config/{name}.toml:/etc/bkv/node.toml:ro" in svc["volumes"][0]
        assert svc["volumes"][1] == f"{name}:/var/lib/bkv"
        # the shared secrets, and this node's own link key only
        own = {"source": f"link_key_{name.replace('-', '_')}", "target": "link_key"}
        assert svc["secrets"] == ["master_key", "transport_secret", "fleet_sealed", own]
        assert svc["command"][0] == "bkv-vault-node" and "healthcheck" in svc
    for name, dc in compose_layout.chatd_names():
        svc = services[name]
        assert svc["networks"] == [dc, "wan"] and "secrets" not in svc
        assert svc["ports"][0].startswith(f"127.0.0.1:${{{compose_layout.port_variable(name)}")
        assert svc["command"][0] == "bkv-chatd" and "healthcheck" in svc
    assert len(services) == 8


def test_health_probe_fails_when_nothing_listens() -> None:
    port = free_ports(1)[0]
    assert not compose_layout.healthy("vault", f"127.0.0.1:{port}", timeout=0.5)
    assert compose_layout.main(["health", "chatd", "--address", f"127.0.0.1:{port}"]) == 1


def test_member_changes_keep_the_prepared_settings(tmp_path: Path) -> None:
    state = tmp_path / "state"
    compose_layout.prepare(state, attempt_limit=5, allow_identity_ksf=True)
    compose_layout.record_member(state, "remove", "dc2-n2")
    assert not (state / "config" / "dc2-n2.toml").exists()
    compose_layout.record_member(state, "add", "dc2-n2", "dc2")
    for name, _ in compose_layout.node_names(state):
        cfg = NodeConfig.load(state / "config" / f"{name}.toml")
        assert (cfg.attempt_limit, cfg.allow_identity_ksf) == (5, True), name
    compose_layout.prepare(state, allow_identity_ksf=False)  # an explicit choice is recorded
    assert not NodeConfig.load(state / "config" / "dc1-n1.toml").allow_identity_ksf
