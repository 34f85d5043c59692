"""`bkv-vault-node`: init-fleet output, and every refusal of `run` before it listens."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.vault.conftest import NODE_CMD, Cluster, clean_env, write_node_configs
from vault_node.cli import main


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("BKV_MASTER_KEY", "BKV_TRANSPORT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_init_fleet_prints_keys_and_writes_private_files(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, fleet = state / "master.key", state / "fleet" / "fleet.sealed"
    args = ["init-fleet", "--master-key-file", str(key), "--fleet-file", str(fleet), "--json"]
    assert main(args) == 0
    keys = json.loads(capsys.readouterr().out)
    assert len(bytes.fromhex(keys["fleet_public_key"])) == 32
    assert len(bytes.fromhex(keys["opaque_public_key"])) == 32
    assert key.stat().st_mode & 0o777 == 0o600 and fleet.stat().st_mode & 0o777 == 0o600
    assert key.read_text().strip() not in fleet.read_bytes().hex()
    assert main(args) == 2  # never overwrites a fleet
    assert "already exists" in capsys.readouterr().err


def _one_node(state: Path) -> Path:
    assert (
        main(
            [
                "init-fleet",
                "--master-key-file",
                str(state / "secrets" / "master.key"),
                "--fleet-file",
                str(state / "fleet" / "fleet.sealed"),
            ]
        )
        == 0
    )
    return Path(write_node_configs(state, 1)[0]["config_path"])


def test_run_refuses_a_master_key_more_open_than_0600(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _one_node(state)
    (state / "secrets" / "master.key").chmod(0o644)
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 2
    assert "more open than 0600" in capsys.readouterr().err


def test_run_refuses_a_fleet_the_master_key_does_not_open(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _one_node(state)
    key = state / "secrets" / "master.key"
    key.write_text("11" * 32)
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "master key does not open the fleet file" in err and "11" * 32 not in err


def test_run_with_a_bad_config_is_one_line(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (state / "c.toml").write_text('node_id = "x"\n')
    assert main(["run", "--config", str(state / "c.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bkv-vault-node:") and "\n" not in err


@pytest.mark.cluster
def test_run_without_transport_secret_exits_2(state: Path) -> None:
    config = _one_node(state)
    (state / "secrets" / "transport.secret").unlink()
    proc = subprocess.run(
        [*NODE_CMD, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 2
    assert "no Raft transport secret" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.cluster
def test_single_node_serves_and_shuts_down_cleanly_on_sigterm(state: Path) -> None:
    config = _one_node(state)
    cluster = Cluster(state, {}, [tomllib.loads(config.read_text()) | {"config_path": str(config)}])
    cluster.start()
    try:
        cluster.wait_for_leader()
    finally:
        cluster.stop()
    assert [p.returncode for p in cluster.procs] == [0]
    log = cluster.logs()
    assert "stopped" in log and "Traceback" not in log
