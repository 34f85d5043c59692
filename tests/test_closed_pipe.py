"""Every console script ends quietly when the reader of its output goes away (``| head``).

The scripts run as real processes. A pipe whose read end is already closed makes
the first write fail for certain (no race with a reader); a real shell pipeline
into ``head -1`` checks the everyday case, with more output than a pipe buffers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from bkv_ops.console import CLOSED_PIPE_EXIT
from tests.vault.conftest import clean_env, write_node_configs
from vault_node import state as st
from vault_node.raft.audit import AuditLog

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AUDIT_LINES = 5000  # ~0.5 MB of audit lines: far more than a pipe holds


def scripts() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return sorted(tomllib.load(handle)["project"]["scripts"])


def user_env(*, unbuffered: bool = False) -> dict[str, str]:
    """A user's shell: standard output block-buffered into a pipe, unless ``unbuffered``."""
    env = {k: v for k, v in clean_env().items() if k != "PYTHONUNBUFFERED"}
    return env | {"PYTHONUNBUFFERED": "1"} if unbuffered else env


def into_closed_pipe(*argv: str, unbuffered: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with standard output a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(list(argv), stdout=write_end, stderr=subprocess.PIPE,
                              timeout=60, check=False, env=user_env(unbuffered=unbuffered))
    finally:
        os.close(write_end)


@pytest.fixture(scope="module")
def node_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node config whose data directory holds a long audit trail."""
    state = tmp_path_factory.mktemp("closed-pipe")
    cfg = write_node_configs(state, 1)[0]
    data_dir = Path(cfg["data_dir"])
    audit = AuditLog(data_dir / "audit.jsonl", fsync=False)
    command = st.BeginAttempt(bytes(32))
    result = st.ApplyResult(st.Outcome.NOT_REGISTERED)
    for index in range(1, AUDIT_LINES + 1):
        audit.record(index, command, result, 1_700_000_000_000 + index)
    audit.close()
    path = Path(cfg["config_path"])
    path.write_text(tomli_w.dumps({k: v for k, v in cfg.items() if k != "config_path"}))
    return path


def test_audit_into_head_prints_one_line_and_no_traceback(node_config: Path) -> None:
    script = (f'"{BIN / "bkv-vault-node"}" audit --config "{node_config}" | head -1; '
              'echo "status=${PIPESTATUS[0]}" >&2')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          check=False, env=user_env())
    assert done.stdout.count("\n") == 1 and '"index":1,' in done.stdout
    assert done.stderr == f"status={CLOSED_PIPE_EXIT}\n"  # no traceback, no "Exception ignored"


@pytest.mark.parametrize("unbuffered", [False, True])
def test_audit_into_a_closed_pipe(node_config: Path, unbuffered: bool) -> None:
    """Buffered, the flush fails; unbuffered (``PYTHONUNBUFFERED``), the first print does."""
    done = into_closed_pipe(str(BIN / "bkv-vault-node"), "audit", "--config", str(node_config),
                            unbuffered=unbuffered)
    assert (done.returncode, done.stderr) == (CLOSED_PIPE_EXIT, b"")


@pytest.mark.parametrize("script", scripts())
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_every_console_script_is_quiet_on_a_closed_pipe(script: str, flag: str) -> None:
    done = into_closed_pipe(str(BIN / script), flag)
    assert (done.returncode, done.stderr) == (CLOSED_PIPE_EXIT, b"")


def test_bkv_commands_are_quiet_on_a_closed_pipe(tmp_path: Path) -> None:
    done = into_closed_pipe(str(BIN / "bkv"), "key", "new")
    assert (done.returncode, done.stderr) == (CLOSED_PIPE_EXIT, b"")
    key = tmp_path / "k.key"
    subprocess.run([str(BIN / "bkv"), "key", "new", "--out", str(key)], check=True,
                   capture_output=True, timeout=60, env=user_env())
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(300_000))
    sealed = tmp_path / "sealed.age"
    subprocess.run([str(BIN / "bkv"), "file", "encrypt", "--key-file", str(key), str(plain),
                    str(sealed)], check=True, capture_output=True, timeout=60, env=user_env())
    done = into_closed_pipe(str(BIN / "bkv"), "file", "decrypt", "--key-file", str(key),
                            str(sealed), "-")
    assert (done.returncode, done.stderr) == (CLOSED_PIPE_EXIT, b"")
