"""Node config validation, the in-memory login session table (fake clock), guess tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bkv_protocol import opaque
from bkv_protocol.opaque_messages import NOE
from vault_node import cli
from vault_node.config import (
    LINK_KEY_ENV,
    TRANSPORT_SECRET_ENV,
    ConfigError,
    NodeConfig,
    load_transport_secret,
)
from vault_node.raft.membership import bootstrap_members
from vault_node.raft.transport_cipher import LinkKey, load_link_key
from vault_node.service.sessions import LoginSession, SessionTable
from vault_node.service.vault import guess_tag


def _raw(**over: Any) -> dict[str, Any]:
    peers = [
        {
            "node_id": f"n{i}",
            "datacenter": f"dc{i}",
            "raft_address": f"127.0.0.1:{7200 + i}",
            "grpc_address": f"127.0.0.1:{7100 + i}",
        }
        for i in (1, 2, 3)
    ]
    raw: dict[str, Any] = {
        "node_id": "n1",
        "datacenter": "dc1",
        "shard": 0,
        "grpc_address": "127.0.0.1:7101",
        "raft_address": "127.0.0.1:7201",
        "data_dir": "/tmp/x",
        "fleet_file": "/tmp/fleet",
        "master_key_file": "/tmp/master.key",
        "transport_secret_file": "/tmp/transport.secret",
        "peers": peers,
    }
    raw.update(over)
    return raw


def test_valid_config_and_leader_mapping() -> None:
    cfg = NodeConfig.from_mapping(_raw())
    assert cfg.attempt_limit == 10 and not cfg.allow_identity_ksf
    assert [p.node_id for p in cfg.other_peers] == ["n2", "n3"]
    peer = cfg.peer_by_raft_address("127.0.0.1:7203")
    assert peer is not None and peer.grpc_address == "127.0.0.1:7103"
    assert cfg.peer_by_raft_address(None) is None


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"node_id": "n9"}, "must include this node"),
        ({"grpc_address": "nowhere"}, "host:port"),
        ({"attempt_limit": 0}, "attempt_limit"),
        ({"shard": "0"}, "shard"),
        ({"peers": []}, "peers"),
        ({"grpc_address": "127.0.0.1:7999"}, "disagrees"),
    ],
)
def test_bad_configs_give_one_line_errors(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        NodeConfig.from_mapping(_raw(**over))
    assert "\n" not in str(err.value)


def test_missing_key_and_unreadable_file(tmp_path: Path) -> None:
    raw = _raw()
    del raw["fleet_file"]
    with pytest.raises(ConfigError, match="fleet_file"):
        NodeConfig.from_mapping(raw)
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig.load(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("node_id = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        NodeConfig.load(tmp_path / "bad.toml")


def test_transport_secret_sources(tmp_path: Path) -> None:
    secret = tmp_path / "t.secret"
    cfg = NodeConfig.from_mapping(_raw(transport_secret_file=str(secret)))
    with pytest.raises(ConfigError, match="no Raft transport secret"):
        load_transport_secret(cfg, env={})
    secret.write_text("short")
    with pytest.raises(ConfigError, match="shorter"):
        load_transport_secret(cfg, env={})
    secret.write_text("a" * 32 + "\n")
    assert load_transport_secret(cfg, env={}) == b"a" * 32
    assert load_transport_secret(cfg, env={TRANSPORT_SECRET_ENV: "b" * 20}) == b"b" * 20


def test_link_keys_in_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`link-key new` writes a 0600 key once; peers carry public keys; the node loads its own."""
    key_file = tmp_path / "link.key"
    assert cli.main(["link-key", "new", "--out", str(key_file)]) == 0
    public = capsys.readouterr().out.strip()
    assert key_file.stat().st_mode & 0o777 == 0o600 and public not in key_file.read_text()
    assert cli.main(["link-key", "new", "--out", str(key_file)]) == 2  # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().err
    others = [LinkKey.generate().public_hex for _ in range(2)]
    raw = _raw(link_key_file=str(key_file))
    for peer, key in zip(raw["peers"], [public.upper(), *others], strict=True):
        peer["link_public_key"] = key
    cfg = NodeConfig.from_mapping(raw)
    assert cfg.self_peer.link_public_key == public  # normalised to lower case
    assert [m.link_key for m in bootstrap_members(cfg.peers)] == [public, *others]
    assert load_link_key(cfg, env={}).public_hex == public
    secret = tmp_path / "t.secret"
    secret.write_text("a" * 32)
    loaded = load_transport_secret(NodeConfig.from_mapping({**raw,
                                   "transport_secret_file": str(secret)}), env={})
    assert loaded == b"a" * 32  # the link key is loaded on its own (load_link_key)
    config = tmp_path / "node.toml"
    config.write_text(tomli_w.dumps(raw))
    assert cli.main(["link-key", "show", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == public
    other = LinkKey.generate()
    assert load_link_key(cfg, env={LINK_KEY_ENV: other.private_hex()}).public == other.public
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="must be 0600"):
        load_link_key(cfg, env={})
    with pytest.raises(ConfigError, match="no Raft link key"):
        load_link_key(NodeConfig.from_mapping(_raw()), env={})


@pytest.mark.parametrize(
    ("key", "message"),
    [("zz" * 32, "64 hex digits"), ("00" * 31, "64 hex digits"), ("same", "duplicate")],
)
def test_bad_link_public_keys(key: str, message: str) -> None:
    raw = _raw()
    duplicate = LinkKey.generate().public_hex
    for peer in raw["peers"]:
        peer["link_public_key"] = duplicate if key == "same" else LinkKey.generate().public_hex
    if key != "same":
        raw["peers"][1]["link_public_key"] = key
    with pytest.raises(ConfigError, match=message):
        NodeConfig.from_mapping(raw)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _session(table: SessionTable, account_id: bytes, *, last: bool = False) -> LoginSession:
    return LoginSession(
        session_id=table.new_session_id(),
        account="alice",
        shard=0,
        account_id=account_id,
        record_id=b"r" * 16,
        server_state=object(),
        key_deposit=b"d",
        attempts_left=0 if last else 5,
        last_attempt=last,
        expires_at=table.deadline(),
    )


def test_sessions_single_use_bound_and_expiring() -> None:
    clock = FakeClock()
    table = SessionTable(max_sessions=2, ttl_seconds=30, clock=clock)
    a = _session(table, b"A" * 32)
    table.add(a)
    assert table.take(a.session_id, b"B" * 32, 0) is None  # other account: untouched
    assert table.take(a.session_id, b"A" * 32, 1) is None  # other shard: untouched
    assert table.take(a.session_id, b"A" * 32, 0) is a
    assert table.take(a.session_id, b"A" * 32, 0) is None  # single use
    b, c = _session(table, b"A" * 32), _session(table, b"A" * 32, last=True)
    table.add(b)
    table.add(c)
    assert not table.has_room()
    clock.now += 29
    assert table.sweep() == []
    clock.now += 1
    assert {s.session_id for s in table.sweep()} == {b.session_id, c.session_id}
    assert len(table) == 0 and table.has_room()


def test_taken_session_past_deadline_is_expired() -> None:
    clock = FakeClock()
    table = SessionTable(max_sessions=5, ttl_seconds=30, clock=clock)
    s = _session(table, b"A" * 32)
    table.add(s)
    clock.now += 31
    taken = table.take(s.session_id, b"A" * 32, 0)
    assert taken is s and table.expired(taken)
    assert "alice" not in repr(s)


def test_guess_tag_names_the_blinded_element_per_account() -> None:
    """The tag depends on the account and the blinded element only, not on the rest of KE1."""
    a, b = b"a" * 32, b"b" * 32
    _, ke1 = opaque.client_start_login(b"pw")
    _, other = opaque.client_start_login(b"pw")  # same password, fresh blind
    tag = guess_tag(a, ke1[:NOE])
    assert len(tag) == 16 and tag == guess_tag(a, bytes(ke1[:NOE]))
    assert tag != guess_tag(b, ke1[:NOE]) and tag != guess_tag(a, other[:NOE])
    for bad_account, element in ((a[:31], ke1[:NOE]), (a, ke1[: NOE - 1]), (a, ke1)):
        with pytest.raises(ValueError):
            guess_tag(bad_account, element)
