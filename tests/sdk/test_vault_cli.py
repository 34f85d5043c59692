"""`bkv vault register|recover`: argument errors, password handling, one-line messages."""

from __future__ import annotations

import getpass
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bkv_tools.cli import main
from client_sdk.config import ClientConfig
from client_sdk.keys import BackupKey, write_key_file

SECRET = "correct horse battery staple"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "backup.key"
    write_key_file(path, BackupKey.generate())
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.toml"
    ClientConfig(
        fleet_public_key=b"\x01" * 32,
        shard_count=1,
        chatd=["127.0.0.1:1"],
        deadline_seconds=1.0,
        token="tok",
    ).save(path)
    return path


@pytest.fixture(autouse=True)
def no_default_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BKV_STATE_DIR", str(tmp_path / "no-cluster"))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `bkv` in-process; argparse usage errors count as exit code 2."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize(
    "form", [["--password", SECRET], [f"--password={SECRET}"], ["--pass", SECRET], ["-p", SECRET]]
)
@pytest.mark.parametrize("command", ["register", "recover"])
def test_password_on_argv_is_refused_without_echo(
    capsys: pytest.CaptureFixture[str], command: str, form: list[str]
) -> None:
    target = ["--key-file", "k"] if command == "register" else ["--out-key-file", "k"]
    code, err = run(["vault", command, "--account", "alice", *target, *form], capsys)
    assert code == 2
    assert "never accepted on the command line" in err
    assert "horse" not in err


def test_required_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["vault", "register", "--account", "alice"], capsys)
    assert code == 2 and "--key-file" in err
    code, err = run(["vault", "recover", "--out-key-file", "x"], capsys)
    assert code == 2 and "--account" in err


def test_missing_default_config_says_how_to_get_one(
    capsys: pytest.CaptureFixture[str], key_file: Path, tmp_path: Path
) -> None:
    code, err = run(["vault", "register", "--account", "a", "--key-file", str(key_file)], capsys)
    expected = tmp_path / "no-cluster" / "client.toml"
    assert code == 2
    assert err == (
        f"bkv: no cluster config at {expected}: start one with `bkv cluster up` or pass --config\n"
    )


def test_bad_config_is_one_line(
    capsys: pytest.CaptureFixture[str], key_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('fleet_public_key = "00"\nchatd = ["h:1"]\n')
    argv = ["vault", "register", "--account", "a", "--key-file", str(key_file)]
    code, err = run([*argv, "--config", str(bad)], capsys)
    assert code == 2
    assert err == f"bkv: client config {bad}: fleet_public_key must be 64 hex digits\n"


def test_config_without_token(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "nt.toml"
    cfg.write_text(f'fleet_public_key = "{"01" * 32}"\nchatd = ["h:1"]\n')
    argv = ["vault", "recover", "--account", "a", "--out-key-file", str(tmp_path / "k")]
    code, err = run([*argv, "--config", str(cfg)], capsys)
    assert code == 2 and "neither token_signing_key_file nor token" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "can't read key file"), ("0123 zz", "unexpected character 'z'")],
)
def test_bad_key_file(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    config_file: Path,
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / "given.key"
    if content is not None:
        path.write_text(content)
    argv = ["vault", "register", "--account", "a", "--key-file", str(path)]
    code, err = run([*argv, "--config", str(config_file)], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_recover_refuses_to_overwrite_before_asking_the_vault(
    capsys: pytest.CaptureFixture[str], key_file: Path, config_file: Path
) -> None:
    before = key_file.read_bytes()
    argv = ["vault", "recover", "--account", "a", "--out-key-file", str(key_file)]
    code, err = run([*argv, "--config", str(config_file)], capsys)
    assert code == 2 and "already exists" in err
    assert key_file.read_bytes() == before


def test_register_prompts_twice_and_needs_a_match(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    key_file: Path,
    config_file: Path,
) -> None:
    answers = iter([SECRET, SECRET + "!"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    argv = ["vault", "register", "--account", "a", "--key-file", str(key_file)]
    code, err = run([*argv, "--config", str(config_file)], capsys)
    assert code == 2 and err == "bkv: the passwords do not match\n"
    assert len(prompts) == 2


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "no password on standard input"),
        ("\n", "no password on standard input"),
        ("short\n", "password must be at least 8 characters"),
        ("x" * 2000 + "\n", "longer than 1024 characters"),
    ],
)
def test_register_password_stdin_checks(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    key_file: Path,
    config_file: Path,
    stdin: str,
    message: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    argv = ["vault", "register", "--account", "a", "--key-file", str(key_file)]
    code, err = run([*argv, "--config", str(config_file), "--password-stdin"], capsys)
    assert code == 2 and message in err


@pytest.mark.parametrize("account", ["", "tab\there", "x" * 300])
def test_bad_account(capsys: pytest.CaptureFixture[str], key_file: Path, account: str) -> None:
    code, err = run(
        ["vault", "register", "--account", account, "--key-file", str(key_file)], capsys
    )
    assert code == 2 and "--account must be" in err


def test_console_script_gives_one_line_no_traceback(tmp_path: Path) -> None:
    bkv = Path(sys.executable).parent / "bkv"
    result = subprocess.run(
        [
            str(bkv),
            "vault",
            "recover",
            "--account",
            "a",
            "--out-key-file",
            str(tmp_path / "k"),
            "--config",
            str(tmp_path / "absent.toml"),
            "--password-stdin",
        ],
        input="whatever\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == f"bkv: client config {tmp_path / 'absent.toml'}: no such file\n"


def test_unreachable_vault_exits_8(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    config_file: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    cfg = ClientConfig.load(config_file)
    unreachable = tmp_path / "dead.toml"
    ClientConfig(
        fleet_public_key=cfg.fleet_public_key,
        shard_count=1,
        chatd=[dead],
        deadline_seconds=1.0,
        token="tok",
    ).save(unreachable)
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))
    argv = ["vault", "recover", "--account", "a", "--out-key-file", str(tmp_path / "out.key")]
    code, err = run([*argv, "--config", str(unreachable), "--password-stdin"], capsys)
    assert code == 8  # unavailable: try later
    assert err.startswith(f"bkv: vault unreachable via {dead}") and err.count("\n") == 1
    assert not (tmp_path / "out.key").exists()
