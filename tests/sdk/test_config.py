"""Client config: strict TOML loading, one-line errors naming file and key, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from client_sdk.config import ClientConfig, default_client_config_path, default_state_dir
from client_sdk.errors import ConfigError

FLEET_HEX = "ab" * 32
GOOD = f"""
fleet_public_key = "{FLEET_HEX}"
shard_count = 2
chatd = ["127.0.0.1:7001", "localhost:7002", "[::1]:7003"]
deadline_seconds = 15
token_signing_key_file = "secrets/token-signing.key"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_the_contract_format(tmp_path: Path) -> None:
    cfg = ClientConfig.load(write(tmp_path, GOOD))
    assert cfg.fleet_public_key == bytes.fromhex(FLEET_HEX)
    assert cfg.shard_count == 2
    assert cfg.chatd == ["127.0.0.1:7001", "localhost:7002", "[::1]:7003"]
    assert cfg.deadline_seconds == 15.0
    # relative paths are relative to the config file, not the working directory
    assert cfg.token_signing_key_file == tmp_path / "secrets" / "token-signing.key"
    assert cfg.token is None


def test_defaults_for_optional_keys(tmp_path: Path) -> None:
    cfg = ClientConfig.load(
        write(
            tmp_path, f'fleet_public_key = "{FLEET_HEX.upper()}"\nchatd = ["h:1"]\ntoken = "t0k"\n'
        )
    )
    assert (cfg.shard_count, cfg.deadline_seconds, cfg.token_signing_key_file) == (1, 15.0, None)
    assert cfg.token == "t0k"


def test_save_round_trips_and_is_private(tmp_path: Path) -> None:
    cfg = ClientConfig.load(write(tmp_path, GOOD + 'token = "secret-token"\n'))
    out = tmp_path / "copy.toml"
    cfg.save(out)
    assert ClientConfig.load(out) == cfg
    assert out.stat().st_mode & 0o777 == 0o600


def test_repr_hides_the_token(tmp_path: Path) -> None:
    cfg = ClientConfig.load(write(tmp_path, GOOD + 'token = "secret-token"\n'))
    assert "secret-token" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('chatd = ["h:1"]', "missing fleet_public_key"),
        (f'fleet_public_key = "{FLEET_HEX}"', "missing chatd"),
        ('fleet_public_key = "abcd"\nchatd = ["h:1"]', "fleet_public_key must be 64 hex digits"),
        (
            f'fleet_public_key = "{"zz" * 32}"\nchatd = ["h:1"]',
            "fleet_public_key must be 64 hex digits",
        ),
        ('fleet_public_key = 12\nchatd = ["h:1"]', "fleet_public_key must be 64 hex digits"),
        (f'fleet_public_key = "{FLEET_HEX}"\nchatd = []', "chatd must be a non-empty list"),
        (f'fleet_public_key = "{FLEET_HEX}"\nchatd = "h:1"', "chatd must be a non-empty list"),
        (f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["nohost"]', "'nohost' is not \"host:port\""),
        (f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:99999"]', 'is not "host:port"'),
        (f'fleet_public_key = "{FLEET_HEX}"\nchatd = [1]', 'must be "host:port" strings'),
        (
            f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\nshard_count = 0',
            "shard_count must be an integer",
        ),
        (
            f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\nshard_count = true',
            "shard_count must be an integer",
        ),
        (
            f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\ndeadline_seconds = 0',
            "deadline_seconds must be above 0",
        ),
        (
            f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\ndeadline_seconds = "5"',
            "deadline_seconds must be a number",
        ),
        (
            f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\ntoken = ""',
            "token must be a non-empty printable ASCII string",
        ),
        (
            f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\ntoken_signing_key_file = 3',
            "token_signing_key_file must be a file path",
        ),
        (f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\nchat_d = 1', "unknown key 'chat_d'"),
        ("fleet_public_key = ", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"client config {path}: ")
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        ClientConfig.load(tmp_path / "absent.toml")


def test_a_secret_token_value_is_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path, f'fleet_public_key = "{FLEET_HEX}"\nchatd = ["h:1"]\ntoken = "sec\tret"\n'
    )
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    assert "sec" not in str(info.value).replace(str(path), "")


def test_default_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BKV_STATE_DIR", str(tmp_path / "state"))
    assert default_state_dir() == tmp_path / "state"
    assert default_client_config_path() == tmp_path / "state" / "client.toml"
    monkeypatch.delenv("BKV_STATE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / ".local" / "state" / "bkv" / "local-cluster"
