"""The PKCS#11 master-key backend against a real SoftHSM2 token set up by the test.

The tokens live in a temporary SoftHSM2 token directory shared by every PKCS#11 test
module of the process (``tests/vault/softhsm.py``): SoftHSM reads SOFTHSM2_CONF once
per process, so every token is initialised up front.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomli_w

from tests.vault.conftest import (
    NODE_CMD,
    Cluster,
    VaultTestClient,
    clean_env,
    write_node_configs,
)
from tests.vault.softhsm import KEY_LABEL, SoftHsm, softhsm_fixture
from vault_node.config import ConfigError, NodeConfig, Pkcs11Settings
from vault_node.hsm.fleet import FleetHsm, HsmError, SoftwareMasterKey, init_fleet
from vault_node.hsm.pkcs11 import (
    PIN_ENV,
    Pkcs11MasterKey,
    create_token_key,
    load_master_key,
    load_pin,
)

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed")

AAD = b"bkv test aad"


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    for hsm in softhsm_fixture(tmp_path_factory):
        for label in ("bkv-a", "bkv-b"):
            assert create_token_key(hsm.settings(label)) is True
        yield hsm


@pytest.fixture(scope="module")
def master_a(softhsm: SoftHsm) -> Iterator[Pkcs11MasterKey]:
    master = Pkcs11MasterKey.open_token(softhsm.settings("bkv-a"))
    yield master
    master.close()


def test_seal_open_round_trip(master_a: Pkcs11MasterKey) -> None:
    for plaintext in (b"", b"x", secrets.token_bytes(4096)):
        sealed = master_a.seal(plaintext, AAD)
        assert sealed[:1] == b"\x02" and len(sealed) == 1 + 12 + len(plaintext) + 16
        assert master_a.open(sealed, AAD) == plaintext
    one, two = master_a.seal(b"same", AAD), master_a.seal(b"same", AAD)
    assert one[1:13] != two[1:13] and one != two  # fresh random IV per seal


def test_create_is_idempotent_and_never_replaces_the_key(
    softhsm: SoftHsm, master_a: Pkcs11MasterKey
) -> None:
    sealed = master_a.seal(b"kept", AAD)
    assert create_token_key(softhsm.settings("bkv-a")) is False
    assert master_a.open(sealed, AAD) == b"kept"


def test_wrong_aad_is_refused(master_a: Pkcs11MasterKey) -> None:
    sealed = master_a.seal(b"secret", AAD)
    with pytest.raises(HsmError, match="does not open"):
        master_a.open(sealed, AAD + b"!")
    with pytest.raises(HsmError, match="does not open"):
        master_a.open(sealed, b"")


def test_tampering_anywhere_is_refused(master_a: Pkcs11MasterKey) -> None:
    sealed = master_a.seal(b"secret payload", AAD)
    for index in (0, 1, 12, 13, len(sealed) - 17, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(HsmError):
            master_a.open(bytes(tampered), AAD)
    for cut in (0, 1, 13, 28, len(sealed) - 1):
        with pytest.raises(HsmError):
            master_a.open(sealed[:cut], AAD)
    with pytest.raises(HsmError):
        master_a.open(sealed + b"\x00", AAD)
    assert master_a.open(sealed, AAD) == b"secret payload"  # the session survives failures


def test_the_key_is_generated_non_extractable(softhsm: SoftHsm, master_a: Pkcs11MasterKey) -> None:
    attr = pkcs11.Attribute
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label="bkv-a")
    # master_a's session has logged this process in, so a new session sees private objects.
    with token.open() as session:
        (key,) = list(
            session.get_objects({attr.CLASS: pkcs11.ObjectClass.SECRET_KEY, attr.LABEL: KEY_LABEL})
        )
        assert key[attr.KEY_TYPE] == pkcs11.KeyType.AES and key[attr.VALUE_LEN] == 32
        assert key[attr.TOKEN] and key[attr.PRIVATE] and key[attr.SENSITIVE]
        assert not key[attr.EXTRACTABLE] and not key[attr.WRAP]
        assert key[attr.NEVER_EXTRACTABLE] and key[attr.ALWAYS_SENSITIVE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[attr.VALUE]


def test_a_different_tokens_key_cannot_open(softhsm: SoftHsm, master_a: Pkcs11MasterKey) -> None:
    other = Pkcs11MasterKey.open_token(softhsm.settings("bkv-b"))  # same key label, own key
    try:
        with pytest.raises(HsmError, match="does not open"):
            other.open(master_a.seal(b"secret", AAD), AAD)
        with pytest.raises(HsmError, match="does not open"):
            master_a.open(other.seal(b"secret", AAD), AAD)
    finally:
        other.close()


def test_software_and_pkcs11_blobs_do_not_mix(master_a: Pkcs11MasterKey) -> None:
    software = SoftwareMasterKey(secrets.token_bytes(32))
    with pytest.raises(HsmError, match="not sealed by a PKCS#11"):
        master_a.open(software.seal(b"x", AAD), AAD)
    with pytest.raises(HsmError):
        software.open(master_a.seal(b"x", AAD), AAD)


def test_concurrent_callers_share_one_session(master_a: Pkcs11MasterKey) -> None:
    def work(i: int) -> bool:
        payload = i.to_bytes(4, "big") * 8
        return all(master_a.open(master_a.seal(payload, AAD), AAD) == payload for _ in range(25))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(work, range(16), timeout=60))


def test_fleet_sealed_in_the_token_loads(master_a: Pkcs11MasterKey, softhsm: SoftHsm) -> None:
    blob = init_fleet(master_a)
    hsm = FleetHsm.open_fleet(master_a, blob)
    assert FleetHsm.open_fleet(master_a, blob).fleet_public_key == hsm.fleet_public_key
    account_id, record_id = hsm.account_id("alice"), secrets.token_bytes(16)
    sealed = hsm.seal_record(account_id, record_id, b"record")
    assert hsm.open_record(account_id, record_id, sealed) == b"record"
    other = Pkcs11MasterKey.open_token(softhsm.settings("bkv-b"))
    try:
        with pytest.raises(HsmError):
            FleetHsm.open_fleet(other, blob)
    finally:
        other.close()


def test_pin_sources_and_refusals(softhsm: SoftHsm, tmp_path: Path) -> None:
    assert load_pin(softhsm.pin_file, env={}) == softhsm.pin
    assert load_pin(None, env={PIN_ENV: " 1234 "}) == "1234"  # the environment wins
    with pytest.raises(HsmError, match=PIN_ENV):
        load_pin(None, env={})
    loose = tmp_path / "pin"
    loose.write_text(softhsm.pin)
    loose.chmod(0o644)
    with pytest.raises(HsmError, match="more open than 0600") as info:
        load_pin(loose, env={})
    assert softhsm.pin not in str(info.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(HsmError, match="empty"):
        load_pin(empty, env={})


def test_token_errors_are_one_line_and_secret_free(softhsm: SoftHsm) -> None:
    wrong = "0" * 12
    with pytest.raises(HsmError, match="rejected the PIN") as info:
        Pkcs11MasterKey.open_token(softhsm.settings("bkv-other"), env={PIN_ENV: wrong})
    assert wrong not in str(info.value)
    with pytest.raises(HsmError, match="no PKCS#11 token labelled 'nope'"):
        Pkcs11MasterKey.open_token(softhsm.settings("nope"))
    with pytest.raises(HsmError, match=r"has no key labelled 'absent'.*init-fleet"):
        Pkcs11MasterKey.open_token(softhsm.settings("bkv-a", key_label="absent"))
    missing = Pkcs11Settings(softhsm.root / "missing.so", "bkv-a", KEY_LABEL, softhsm.pin_file)
    with pytest.raises(HsmError, match="cannot load PKCS#11 module"):
        Pkcs11MasterKey.open_token(missing)
    master = Pkcs11MasterKey.open_token(softhsm.settings("bkv-a"))
    try:
        assert softhsm.pin not in repr(master) and repr(master) == "Pkcs11MasterKey(token='bkv-a')"
    finally:
        master.close()


def _node_config(softhsm: SoftHsm, token: str, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "node_id": "n1",
        "datacenter": "dc1",
        "shard": 0,
        "grpc_address": "127.0.0.1:1",
        "raft_address": "127.0.0.1:2",
        "data_dir": "/nonexistent",
        "fleet_file": "/nonexistent/fleet",
        "peers": [
            {"node_id": "n1", "datacenter": "dc1"}
            | {"raft_address": "127.0.0.1:2", "grpc_address": "127.0.0.1:1"}
        ],
        "master_key_backend": "pkcs11",
        "pkcs11_module": str(softhsm.module),
        "pkcs11_token_label": token,
        "pkcs11_key_label": KEY_LABEL,
        "pkcs11_pin_file": str(softhsm.pin_file),
    }
    return base | overrides


def test_config_selects_the_backend(softhsm: SoftHsm) -> None:
    cfg = NodeConfig.from_mapping(_node_config(softhsm, "bkv-a"))
    assert cfg.pkcs11 == softhsm.settings("bkv-a")
    master = load_master_key(cfg, env={})
    assert isinstance(master, Pkcs11MasterKey)
    master.close()
    software = _node_config(softhsm, "bkv-a", master_key_backend="software")
    assert NodeConfig.from_mapping(software).pkcs11 is None
    with pytest.raises(ConfigError, match="master_key_backend"):
        NodeConfig.from_mapping(_node_config(softhsm, "bkv-a", master_key_backend="tpm"))
    incomplete = _node_config(softhsm, "bkv-a")
    del incomplete["pkcs11_module"]
    with pytest.raises(ConfigError, match="pkcs11_module"):
        NodeConfig.from_mapping(incomplete)


@pytest.mark.cluster
def test_vault_node_runs_with_a_token_sealed_fleet(softhsm: SoftHsm, tmp_path: Path) -> None:
    extra = {
        "master_key_backend": "pkcs11",
        "pkcs11_module": str(softhsm.module),
        "pkcs11_token_label": "bkv-node",
        "pkcs11_key_label": KEY_LABEL,
        "pkcs11_pin_file": str(softhsm.pin_file),
    }
    configs = write_node_configs(tmp_path, 1, **extra)
    config = configs[0]["config_path"]
    env = clean_env()
    assert env["SOFTHSM2_CONF"] == os.environ["SOFTHSM2_CONF"]
    init = [*NODE_CMD, "init-fleet", "--config", config]
    out = subprocess.run(init, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "generated master key 'bkv-master' in PKCS#11 token" in out.stdout
    assert not (tmp_path / "secrets" / "master.key").exists()  # no key material on disk
    keys = dict(
        (name.strip(), value.strip())
        for name, value in (line.split("=") for line in out.stdout.splitlines() if "=" in line)
    )
    again = subprocess.run(init, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr

    cluster = Cluster(tmp_path, keys, configs)
    cluster.start()
    try:
        client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
        try:
            account, backup_key = f"acct-{secrets.token_hex(6)}", secrets.token_bytes(32)
            client.register(account, b"pw", backup_key)
            assert client.recover(account, b"pw") == backup_key
        finally:
            client.close()
    finally:
        cluster.stop()
    assert [p.returncode for p in cluster.procs] == [0]
    assert softhsm.pin not in cluster.logs()

    # The same fleet file with another token's key: refused before anything listens.
    (tmp_path / "other.toml").write_text(
        tomli_w.dumps(_node_config(softhsm, "bkv-b", fleet_file=configs[0]["fleet_file"]))
    )
    refused = subprocess.run(
        [*NODE_CMD, "run", "--config", str(tmp_path / "other.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env | {"BKV_TRANSPORT_SECRET": secrets.token_hex(16)},
    )
    assert refused.returncode == 2
    assert "master key does not open the fleet file" in refused.stderr
    assert softhsm.pin not in refused.stderr
