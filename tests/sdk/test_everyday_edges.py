"""Small edges of the console scripts: exit codes, --version, XDG_STATE_HOME, the first ETA.

The scripts run as real processes (the installed console scripts of pyproject).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest

from bkv_tools.cli.exit_codes import MEANINGS, TRY_LATER, ExitCode, classify
from chatd_proxy import routing
from chatd_proxy.routing import ShardRouter
from client_sdk import errors
from client_sdk.age import errors as age_errors
from client_sdk.backup import errors as backup_errors
from client_sdk.config import default_state_dir
from client_sdk.keys import KeyFormatError
from client_sdk.progress import ProgressBar, render
from client_sdk.storage import base as storage
from tests.vault.conftest import new_link_key_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def scripts() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return sorted(tomllib.load(handle)["project"]["scripts"])


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False,
                          env=env)


@pytest.mark.parametrize("script", scripts())
def test_every_console_script_has_version(script: str) -> None:
    done = run(str(BIN / script), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{script} 0.1.0"


def test_bkv_help_lists_every_exit_code() -> None:
    done = run(str(BIN / "bkv"), "--help")
    assert done.returncode == 0
    table = done.stdout.split("exit codes:", 1)[1]
    for code in ExitCode:
        assert f"{int(code):>3}  {MEANINGS[code]}" in table


@pytest.mark.parametrize(("err", "code"), [
    (errors.WrongPassword(2), ExitCode.WRONG_SECRET),
    (errors.KeyDestroyed(), ExitCode.DESTROYED),
    (errors.NotRegistered(), ExitCode.NOT_REGISTERED),
    (errors.NoQuorum(3, 5), ExitCode.NO_QUORUM),
    (errors.VaultUnavailable("vault unreachable"), ExitCode.UNAVAILABLE),
    (errors.SessionExpired("forgot"), ExitCode.UNAVAILABLE),
    (errors.RateLimited("slow down"), ExitCode.RATE_LIMITED),
    (errors.AccountRejected("token"), ExitCode.CONFIG),
    (errors.VaultProtocolError("fleet key"), ExitCode.CONFIG),
    (errors.ConfigError("bad toml"), ExitCode.USAGE),
    (errors.VaultError("odd"), ExitCode.ERROR),
    (age_errors.NoIdentityMatchError("no"), ExitCode.WRONG_SECRET),
    (age_errors.PayloadError("cut"), ExitCode.DAMAGED),
    (KeyFormatError("not hex"), ExitCode.USAGE),
    (backup_errors.WrongKeyError("other key"), ExitCode.WRONG_SECRET),
    (backup_errors.DamagedBackupError("bad"), ExitCode.DAMAGED),
    (backup_errors.BackupNotFound("no such backup"), ExitCode.STORAGE_MISSING),
    (backup_errors.SourceError("no folder"), ExitCode.ERROR),
    (backup_errors.DestinationError("not empty"), ExitCode.ERROR),
    (backup_errors.BackupError("an id, not a URL"), ExitCode.USAGE),
    (storage.StorageNotFound("no folder"), ExitCode.STORAGE_MISSING),
    (storage.StorageUnavailable("down"), ExitCode.UNAVAILABLE),
    (storage.StorageURLError("ftp://"), ExitCode.USAGE),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED),
])
def test_classify_gives_each_outcome_its_code(err: BaseException, code: ExitCode) -> None:
    got = classify(err)
    assert got is not None and got[0] == code
    assert "\n" not in got[1]


def test_classify_leaves_unknown_errors_alone_and_try_later_is_told_apart() -> None:
    assert classify(RuntimeError("bug")) is None
    assert classify(errors.NoQuorum(3, 5)) == (
        ExitCode.NO_QUORUM, "the vault has no quorum: 3 of 5 nodes unreachable; try again later")
    assert ExitCode.WRONG_SECRET not in TRY_LATER and ExitCode.NO_QUORUM in TRY_LATER
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def test_cli_errors_wraps_sdk_errors_and_lets_bugs_through() -> None:
    from bkv_tools.cli.common import CliError, cli_errors

    with pytest.raises(CliError) as caught, cli_errors():
        raise storage.StorageNotFound("no folder ./backups")
    assert (caught.value.exit_code, str(caught.value)) == (ExitCode.STORAGE_MISSING,
                                                           "no folder ./backups")
    with pytest.raises(RuntimeError), cli_errors():
        raise RuntimeError("a bug")


def test_server_scripts_use_the_table(tmp_path: Path) -> None:
    bad = tmp_path / "chatd.toml"
    bad.write_text("listen = 1\n")
    done = run(str(BIN / "bkv-chatd"), "--config", str(bad))
    assert done.returncode == ExitCode.USAGE and "Traceback" not in done.stderr


def test_vault_admin_codes_are_the_table() -> None:
    """The vault does not import the client SDK, so it mirrors the codes it uses."""
    from vault_node.admin import cli as admin_cli
    from vault_node.admin.client import AdminError, AdminRefusedError, AdminUnavailableError

    assert admin_cli.EXIT_REFUSED == ExitCode.ERROR
    assert admin_cli.EXIT_BAD_INPUT == ExitCode.USAGE
    assert admin_cli._admin_code(AdminUnavailableError("no reply")) == ExitCode.UNAVAILABLE
    assert admin_cli._admin_code(AdminRefusedError("secret")) == ExitCode.CONFIG
    assert admin_cli._admin_code(AdminError("below 3 members")) == ExitCode.ERROR


def test_vault_admin_without_an_answer_is_try_later(tmp_path: Path) -> None:
    """A real `bkv-vault-node member list` against a Raft port nobody listens on."""
    import socket

    import tomli_w

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    secret = tmp_path / "transport.secret"
    secret.write_text("s" * 40)
    secret.chmod(0o600)
    link_key = tmp_path / "link.key"
    me = {"node_id": "n1", "datacenter": "dc1", "raft_address": dead,
          "grpc_address": "127.0.0.1:1", "link_public_key": new_link_key_file(link_key)}
    config = tmp_path / "node.toml"
    config.write_text(tomli_w.dumps({
        **me, "shard": 0, "data_dir": str(tmp_path / "data"),
        "fleet_file": str(tmp_path / "fleet"), "transport_secret_file": str(secret),
        "link_key_file": str(link_key), "peers": [me]}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("BKV_TRANSPORT_SECRET", "BKV_LINK_KEY")}
    done = run(str(BIN / "bkv-vault-node"), "member", "list", "--config", str(config),
               "--timeout", "1", env=env)
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_default_state_dir_honours_xdg_state_home(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BKV_STATE_DIR"}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = run(str(BIN / "bkv"), "vault", "recover", "--account", "a", "--out-key-file", "-",
               "--password-stdin", env=env)
    expected = tmp_path / "xdg" / "bkv" / "local-cluster" / "client.toml"
    assert done.returncode == ExitCode.USAGE
    assert done.stderr == (f"bkv: no cluster config at {expected}: start one with "
                           "`bkv cluster up` or pass --config\n")


def test_default_state_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BKV_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "bkv" / "local-cluster"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert default_state_dir() == Path.home() / ".local" / "state" / "bkv" / "local-cluster"
    monkeypatch.setenv("BKV_STATE_DIR", str(tmp_path / "explicit"))
    assert default_state_dir() == tmp_path / "explicit"


def test_the_first_eta_is_not_a_wild_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    # a first 64 KiB chunk after 4 ms predicts nothing
    assert "ETA --:--" in render("x", 64 * 1024, 20 * 1024**3, 0.004)
    assert "ETA 0:10" in render("x", 50, 100, 10.0)

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = [1000.0]
    monkeypatch.setattr("client_sdk.progress.time.monotonic", lambda: clock[0])
    out = _Tty()
    bar = ProgressBar("encrypting", stream=out, interval=0.0)
    clock[0] += 30.0  # the archive took 30 s to start producing: not part of the rate
    bar(64 * 1024, 10 * 1024**2)
    assert "ETA --:--" in out.getvalue()
    clock[0] += 2.0
    bar(64 * 1024 + 2 * 1024**2, 10 * 1024**2)
    assert out.getvalue().rstrip().endswith("1.0 MiB/s  ETA 0:08")  # 7.9 MiB left


def test_router_calls_no_quorum_only_on_a_confirmed_fresh_view() -> None:
    nodes = [f"127.0.0.1:{port}" for port in (1, 2, 3, 4, 5)]
    router = ShardRouter(0, nodes)
    try:
        for i, address in enumerate(nodes):  # a leader change: one node down
            router.note(address, i != 0, now=100.0)
        assert router.quorum_lost(now=100.0) is None
        assert router.quorum_lost(now=102.0) is None
        for i, address in enumerate(nodes):  # three of five down
            router.note(address, i >= 3, now=110.0)
        assert router.quorum_lost(now=110.0) is None  # not confirmed yet
        confirmed = 110.0 + routing.NO_QUORUM_CONFIRM_SECONDS
        assert router.quorum_lost(now=confirmed) == (3, 5)
        stale = 110.0 + routing.VIEW_FRESH_SECONDS + 0.1
        assert router.quorum_lost(now=stale) is None  # a stale view never counts
        router.note(nodes[0], True, now=120.0)  # partial view: unknown, not lost
        assert router.quorum_lost(now=120.0) is None
        later = 200.0 + routing.NO_QUORUM_CONFIRM_SECONDS + 0.2
        for when in (200.0, later):  # probes noted it; the first request sees it confirmed
            for i, address in enumerate(nodes):
                router.note(address, i < 2, now=when)
        assert router.quorum_lost(now=later) == (3, 5)
        router.note(nodes[2], True, now=later + 0.1)  # one back: a majority answers again
        assert router.quorum_lost(now=later + 0.1) is None
        failure = routing.no_quorum_failure(3, 5)
        assert failure.code == grpc.StatusCode.UNAVAILABLE and failure.no_quorum == (3, 5)
    finally:
        router.close()
